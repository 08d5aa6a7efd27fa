"""Wrap every node activity's result with the attempt that produced it.

The workflow cannot see how many attempts a successful activity took, and a
failure's cause carries only the last attempt's error. This worker interceptor
adds the attempt number to both, so a run's state and its error messages say
"after 3 attempts". Results become `{"output": ..., "attempt": n}`.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

NODE_ACTIVITY_PREFIX = "dagwright."


class NodeEnvelopeInterceptor(Interceptor):
    """Install on the worker that runs dagwright's node activities."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _EnvelopeInbound(next)


class _EnvelopeInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if not info.activity_type.startswith(NODE_ACTIVITY_PREFIX):
            return await self.next.execute_activity(input)
        try:
            output = await self.next.execute_activity(input)
        except ApplicationError as exc:
            raise _with_attempt(exc, info.attempt) from exc
        except (CancelledError, activity.ActivityCancellationDetails.__class__):  # pragma: no cover
            raise
        except Exception as exc:
            raise ApplicationError(
                f"{type(exc).__name__}: {exc}", {"attempt": info.attempt}, type=type(exc).__name__
            ) from exc
        return {"output": output, "attempt": info.attempt}


def _with_attempt(exc: ApplicationError, attempt: int) -> ApplicationError:
    return ApplicationError(
        exc.message,
        *exc.details,
        {"attempt": attempt},
        type=exc.type,
        non_retryable=exc.non_retryable,
        next_retry_delay=exc.next_retry_delay,
        category=exc.category,
    )
