"""Observe every node activity attempt: one OpenTelemetry span, metrics and log fields.

`NodeTelemetryInterceptor` wraps each attempt of a `dagwright.*` activity. It reads the run's
identity from the `dagwright-run` header (added by `interpreter/tracing_headers.py`) and then:

- opens a span `node <node id>` under Temporal's `RunActivity` span, with `dagwright.*`
  attributes and, for LLM and embedding nodes, the OpenTelemetry GenAI attributes
  (`gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...);
- records the attempt metrics below through `activity.metric_meter()`. Activities never
  replay, so each attempt is counted once;
- puts `run_id`, `node_id`, `attempt`, `workflow` and `node_type` on every log record of the
  attempt (see `log_records.py`).

Inputs and outputs go on spans only with `trace_content=True` (`dagwright worker
--trace-content`), truncated and with known secret values redacted.

Install it after `NodeEnvelopeInterceptor` in the worker's list, so that it receives the
activity's own result and exception rather than the envelope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from dagwright.activities.log_records import SecretRedactor, node_log_fields
from dagwright.interpreter.tracing_headers import (
    NODE_ACTIVITY_PREFIX,
    RunMetadata,
    decode_metadata,
    parse_activity_id,
)

logger = logging.getLogger(__name__)

NODE_ATTEMPTS = "dagwright_node_attempts"
NODE_ATTEMPT_DURATION = "dagwright_node_attempt_duration"
NODE_RETRIES = "dagwright_node_retries"
NODE_FALLBACKS = "dagwright_node_fallbacks"
LLM_TOKENS = "dagwright_llm_tokens"
LLM_COST = "dagwright_llm_cost_usd"

# Characters of input or output JSON put on a span with trace_content. Backends reject or cut
# very large attribute values, and the full data is in the run's history anyway.
CONTENT_LIMIT = 8192

# GenAI operation names (OpenTelemetry semantic conventions) of dagwright's model activities.
_GEN_AI_OPERATIONS = {"dagwright.llm": "chat", "dagwright.embed": "embeddings"}

OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_RETRYING = "retrying"
OUTCOME_FAILED = "failed"
OUTCOME_CANCELLED = "cancelled"


@dataclass
class _Attempt:
    """Outcome, error and result of one attempt, collected while it runs."""

    outcome: str = OUTCOME_SUCCEEDED
    error_type: str | None = None
    error_message: str | None = None
    result: Any = None
    usage: Mapping[str, Any] | None = None


def tracing_installed() -> bool:
    """Return whether the process has a real tracer provider, so spans are recorded somewhere."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class NodeTelemetryInterceptor(Interceptor):
    """Trace, count and label each node activity attempt on this worker.

    Args:
        tracer: where spans go; the global tracer provider's `dagwright` tracer by default.
        trace_content: also put the attempt's input and output on its span.
    """

    def __init__(self, *, tracer: Tracer | None = None, trace_content: bool = False,
                 redactor: SecretRedactor | None = None) -> None:
        self.tracer = tracer or trace.get_tracer("dagwright")
        self.trace_content = trace_content
        self.redactor = redactor or SecretRedactor()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TelemetryInbound(next, self)


class _TelemetryInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: NodeTelemetryInterceptor) -> None:
        super().__init__(next)
        self._root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if not info.activity_type.startswith(NODE_ACTIVITY_PREFIX):
            return await self.next.execute_activity(input)

        metadata = _metadata_for(info, input)
        parts = parse_activity_id(info.activity_id)
        _count_start(metadata, info.attempt, parts.variant)
        attempt = _Attempt()
        started = time.monotonic()
        with self._root.tracer.start_as_current_span(
            f"node {metadata.node_id}",
            attributes=_node_attributes(metadata, info, parts.index, parts.variant),
            record_exception=False,
            set_status_on_exception=False,
        ) as span, node_log_fields(_log_fields(metadata, info)):
            if self._root.trace_content:
                span.set_attribute("dagwright.node.input", self._content(input.args[0] if input.args else None))
            try:
                attempt.result = await self.next.execute_activity(input)
                return attempt.result
            except BaseException as exc:
                _classify_failure(attempt, exc, info)
                raise
            finally:
                self._record(span, attempt, info, input, metadata, timedelta(seconds=time.monotonic() - started))

    def _record(self, span: Span, attempt: _Attempt, info: activity.Info, input: ExecuteActivityInput,
                metadata: RunMetadata, elapsed: timedelta) -> None:
        # Telemetry must never change an attempt's result, so its own failures are only logged.
        try:
            self._finish_span(span, attempt, info, input)
            _record_metrics(metadata, attempt, elapsed, info.activity_type)
        except Exception:
            logger.exception("recording telemetry failed node=%s attempt=%d", metadata.node_id, info.attempt)
        _log_attempt(metadata, info.attempt, attempt, elapsed)

    def _finish_span(self, span: Span, attempt: _Attempt, info: activity.Info, input: ExecuteActivityInput) -> None:
        span.set_attribute("dagwright.outcome", attempt.outcome)
        if attempt.outcome in (OUTCOME_FAILED, OUTCOME_RETRYING):
            span.set_status(Status(StatusCode.ERROR, self._root.redactor.redact(attempt.error_message or "")))
        if attempt.error_type:
            span.set_attribute("error.type", attempt.error_type)
        operation = _GEN_AI_OPERATIONS.get(info.activity_type)
        if operation is not None:
            request = input.args[0] if input.args else None
            for name, value in _gen_ai_attributes(operation, request, attempt).items():
                span.set_attribute(name, value)
        if self._root.trace_content and attempt.outcome == OUTCOME_SUCCEEDED:
            span.set_attribute("dagwright.node.output", self._content(attempt.result))

    def _content(self, value: Any) -> str:
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > CONTENT_LIMIT:
            text = text[:CONTENT_LIMIT] + "...(truncated)"
        return self._root.redactor.redact(text)


def _metadata_for(info: activity.Info, input: ExecuteActivityInput) -> RunMetadata:
    """Return the run metadata from the header, or what the activity's own info gives."""
    metadata = decode_metadata(input.headers)
    if metadata is not None:
        return metadata
    # A workflow without the header interceptor (another workflow type, or an older worker)
    # still gets spans and metrics, labelled from the activity's own info.
    return RunMetadata(
        workflow=info.workflow_type or "unknown",
        run_id=info.workflow_id,
        node_id=parse_activity_id(info.activity_id).node_id,
        node_type=info.activity_type.removeprefix(NODE_ACTIVITY_PREFIX),
    )


def _node_attributes(metadata: RunMetadata, info: activity.Info, index: int | None,
                     variant: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "dagwright.run_id": metadata.run_id or info.workflow_id or "",
        "dagwright.temporal_run_id": info.workflow_run_id or "",
        "dagwright.workflow": metadata.workflow,
        "dagwright.node_id": metadata.node_id or "",
        "dagwright.node_type": metadata.node_type or "",
        "dagwright.attempt": info.attempt,
        "dagwright.activity_id": info.activity_id,
    }
    if metadata.version is not None:
        attributes["dagwright.workflow_version"] = metadata.version
    if metadata.definition_hash is not None:
        attributes["dagwright.definition_hash"] = metadata.definition_hash
    if index is not None:
        attributes["dagwright.item_index"] = index
    if variant:
        attributes["dagwright.fallback"] = variant
    return attributes


def _log_fields(metadata: RunMetadata, info: activity.Info) -> dict[str, Any]:
    return {
        "run_id": metadata.run_id or info.workflow_id,
        "temporal_run_id": info.workflow_run_id,
        "node_id": metadata.node_id,
        "node_type": metadata.node_type,
        "workflow": metadata.workflow,
        "attempt": info.attempt,
    }


def _classify_failure(attempt: _Attempt, exc: BaseException, info: activity.Info) -> None:
    """Set the attempt's outcome: cancelled, retrying (Temporal will try again) or failed."""
    attempt.error_type = exc.type if isinstance(exc, ApplicationError) and exc.type else type(exc).__name__
    attempt.error_message = exc.message if isinstance(exc, ApplicationError) else str(exc)
    if isinstance(exc, ApplicationError):
        attempt.usage = _usage_in_details(exc.details)
    if isinstance(exc, (asyncio.CancelledError, CancelledError)):
        attempt.outcome = OUTCOME_CANCELLED
    elif _is_final(exc, info):
        attempt.outcome = OUTCOME_FAILED
    else:
        attempt.outcome = OUTCOME_RETRYING


def _is_final(exc: BaseException, info: activity.Info) -> bool:
    if isinstance(exc, ApplicationError) and exc.non_retryable:
        return True
    policy = info.retry_policy
    if policy is None:
        return False
    if policy.maximum_attempts and info.attempt >= policy.maximum_attempts:
        return True
    error_type = exc.type if isinstance(exc, ApplicationError) else type(exc).__name__
    # NOTE: a schedule-to-close deadline can also end the retries. The activity cannot tell
    # whether the next attempt would still fit, so such a last attempt shows as "retrying".
    return error_type in (policy.non_retryable_error_types or ())


def _usage_in_details(details: Any) -> Mapping[str, Any] | None:
    # A failed LLM attempt that already received responses reports what it spent in its details.
    for detail in details or ():
        if isinstance(detail, Mapping) and isinstance(detail.get("usage"), Mapping):
            return detail
    return None


def _gen_ai_attributes(operation: str, request: Any, attempt: _Attempt) -> dict[str, Any]:
    """Return the GenAI semantic-convention attributes of a model call, plus dagwright's cost."""
    result = attempt.result if isinstance(attempt.result, Mapping) else attempt.usage or {}
    provider = result.get("provider") or getattr(request, "provider", None)
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
    if provider:
        # The provider name configured on the worker. gen_ai.system is the older name of the attribute.
        attributes["gen_ai.provider.name"] = provider
        attributes["gen_ai.system"] = provider
    request_model = getattr(request, "model", None)
    if request_model:
        attributes["gen_ai.request.model"] = request_model
    if result.get("model"):
        attributes["gen_ai.response.model"] = result["model"]
    usage = result.get("usage") or {}
    if usage.get("prompt_tokens") is not None:
        attributes["gen_ai.usage.input_tokens"] = int(usage["prompt_tokens"])
    if usage.get("completion_tokens") is not None:
        attributes["gen_ai.usage.output_tokens"] = int(usage["completion_tokens"])
    if result.get("cost_usd") is not None:
        attributes["dagwright.cost_usd"] = float(result["cost_usd"])
    return attributes


def _count_start(metadata: RunMetadata, attempt: int, variant: int) -> None:
    labels = {"workflow": metadata.workflow, "node_type": metadata.node_type or "unknown"}
    meter = activity.metric_meter()
    if attempt > 1:
        meter.create_counter(NODE_RETRIES, "Node activity attempts after the first (retries).").add(1, labels)
    elif variant:
        meter.create_counter(NODE_FALLBACKS, "Fallback variants started after a variant failed.").add(1, labels)


def _record_metrics(metadata: RunMetadata, attempt: _Attempt, elapsed: timedelta, activity_type: str) -> None:
    meter = activity.metric_meter()
    labels = {"workflow": metadata.workflow, "node_type": metadata.node_type or "unknown",
              "outcome": attempt.outcome}
    meter.create_counter(NODE_ATTEMPTS, "Node activity attempts, by outcome.").add(1, labels)
    meter.create_histogram_timedelta(
        NODE_ATTEMPT_DURATION, "Run time of one node activity attempt.", "ms"
    ).record(elapsed, labels)
    if activity_type in _GEN_AI_OPERATIONS:
        _record_model_usage(meter, metadata, attempt)


def _record_model_usage(meter: Any, metadata: RunMetadata, attempt: _Attempt) -> None:
    result = attempt.result if isinstance(attempt.result, Mapping) else attempt.usage
    if not result:
        return
    labels = {"workflow": metadata.workflow, "provider": str(result.get("provider") or "unknown"),
              "model": str(result.get("model") or "unknown")}
    usage = result.get("usage") or {}
    tokens = meter.create_counter(LLM_TOKENS, "Tokens sent to and received from model providers.")
    for token_type, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        if usage.get(key):
            tokens.add(int(usage[key]), {**labels, "token_type": token_type})
    if result.get("cost_usd") is not None:
        # Temporal's metric meter has integer counters only, so cost is a float histogram of
        # the cost per attempt. Its `_sum` series works as the cost counter.
        meter.create_histogram_float(LLM_COST, "Cost of model calls per node attempt.", "USD").record(
            float(result["cost_usd"]), labels
        )


def _log_attempt(metadata: RunMetadata, number: int, attempt: _Attempt, elapsed: timedelta) -> None:
    level = logging.DEBUG if attempt.outcome == OUTCOME_SUCCEEDED else logging.INFO
    logger.log(
        level,
        "node attempt ended node=%s attempt=%d outcome=%s error_type=%s duration_ms=%d",
        metadata.node_id,
        number,
        attempt.outcome,
        attempt.error_type,
        round(elapsed.total_seconds() * 1000),
        extra={"outcome": attempt.outcome, "error_type": attempt.error_type,
               "duration_ms": round(elapsed.total_seconds() * 1000)},
    )
