"""Wrap every node activity's result with the attempt that produced it.

The workflow cannot see how many attempts a successful activity took, and a
failure's cause carries only the last attempt's error. This worker interceptor
adds the attempt number to both, so a run's state and its error messages say
"after 3 attempts". Results become `{"output": ..., "attempt": n}`.

It also enforces the hard cap on a node output's encoded size. An output that the worker
could not record would otherwise fail every attempt after doing the work again; here it fails
once, with a non-retryable `NodeOutputTooLarge` error that names the node and the cap.
"""

from __future__ import annotations

import contextvars
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

NODE_ACTIVITY_PREFIX = "dagwright."
NODE_OUTPUT_TOO_LARGE = "NodeOutputTooLarge"

_max_output_bytes: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_output_bytes", default=None)


def max_output_bytes() -> int | None:
    """Return the output cap of the running node activity, or None outside dagwright's worker."""
    return _max_output_bytes.get()


class NodeEnvelopeInterceptor(Interceptor):
    """Install on the worker that runs dagwright's node activities.

    ``max_output_bytes`` is the largest encoded result (envelope included) a node may return;
    None means no cap. See ``payload_storage.max_node_output_bytes``.
    """

    def __init__(self, max_output_bytes: int | None = None) -> None:
        self.max_output_bytes = max_output_bytes

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _EnvelopeInbound(next, self.max_output_bytes)


class _EnvelopeInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, max_output_bytes: int | None) -> None:
        super().__init__(next)
        self._max_output_bytes = max_output_bytes

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if not info.activity_type.startswith(NODE_ACTIVITY_PREFIX):
            return await self.next.execute_activity(input)
        token = _max_output_bytes.set(self._max_output_bytes)
        try:
            output = await self.next.execute_activity(input)
        except ApplicationError as exc:
            raise _with_attempt(exc, info.attempt) from exc
        except CancelledError:
            raise  # Temporal's own cancellation error must reach the worker unchanged
        except Exception as exc:
            raise ApplicationError(
                f"{type(exc).__name__}: {exc}", {"attempt": info.attempt}, type=type(exc).__name__
            ) from exc
        finally:
            _max_output_bytes.reset(token)
        envelope = {"output": output, "attempt": info.attempt}
        if self._max_output_bytes is not None:
            _check_size(envelope, self._max_output_bytes, _node_id(input))
        return envelope


def _node_id(input: ExecuteActivityInput) -> str:
    # Every node activity takes one request model or dict with a `node_id` field.
    request = input.args[0] if input.args else None
    node_id = request.get("node_id") if isinstance(request, dict) else getattr(request, "node_id", None)
    return str(node_id) if node_id else activity.info().activity_id


def _check_size(envelope: dict[str, Any], limit: int, node_id: str) -> None:
    """Raise a non-retryable error when the encoded result is larger than ``limit`` bytes."""
    payloads = activity.payload_converter().to_payloads([envelope])
    size = sum(payload.ByteSize() for payload in payloads)
    if size <= limit:
        return
    raise ApplicationError(
        f"Node {node_id!r}: its output is {size:,} bytes when encoded, above the node output cap of "
        f"{limit:,} bytes ([payloads] hard_cap, or the history payload limit when no payload store "
        "is configured). Return less data, for example pick fields with 'output:', or raise the cap.",
        {"attempt": activity.info().attempt, "size": size, "max_output_bytes": limit},
        type=NODE_OUTPUT_TOO_LARGE,
        non_retryable=True,
    )


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
