"""Pass a run's identity to its node activities in a Temporal header.

An activity receives its own ids (workflow id, activity id, attempt) but not which workflow
definition it belongs to. `RunMetadataInterceptor` adds a `dagwright-run` header to every
activity the workflow schedules. The header carries the workflow name, version, definition
hash, run id, node id and node type, so the activity side (`activities/telemetry.py`) can
label spans, metrics and log lines.

The header is built only from the run's input and `workflow.info()`, so a replay builds the
same header. Temporal does not compare headers during replay in any case. The module uses
nothing outside the standard library and `temporalio`, so it is safe inside the sandbox.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadConverter
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

HEADER_KEY = "dagwright-run"
NODE_ACTIVITY_PREFIX = "dagwright."

# `<node>[<item index>]~fallback<variant>`, as the workflow names node activities.
_ACTIVITY_ID = re.compile(r"^(?P<node>.+?)(?:\[(?P<index>\d+)\])?(?:~fallback(?P<variant>\d+))?$")

# The header uses the plain JSON converter, not the client's, so both sides decode it the same
# way whatever data converter (or payload codec) a deployment configures.
_CONVERTER = PayloadConverter.default


@dataclass(frozen=True)
class RunMetadata:
    """Identity of the run and node that scheduled one activity."""

    workflow: str = "unknown"
    version: str | None = None
    definition_hash: str | None = None
    run_id: str | None = None
    node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class ActivityIdParts:
    """A node activity id split into node id, `for_each` item index and fallback variant."""

    node_id: str
    index: int | None
    variant: int


def parse_activity_id(activity_id: str) -> ActivityIdParts:
    """Split an activity id such as `fetch[3]~fallback1` into its parts."""
    match = _ACTIVITY_ID.match(activity_id)
    if match is None:  # pragma: no cover - the pattern matches every non-empty string
        return ActivityIdParts(activity_id, None, 0)
    index = match.group("index")
    variant = match.group("variant")
    return ActivityIdParts(match.group("node"), int(index) if index else None, int(variant) if variant else 0)


def encode_metadata(metadata: RunMetadata) -> Payload:
    """Return the header payload for `metadata`."""
    return _CONVERTER.to_payloads([asdict(metadata)])[0]


def decode_metadata(headers: Mapping[str, Payload]) -> RunMetadata | None:
    """Return the metadata from an activity's headers, or None when the header is absent or invalid."""
    payload = headers.get(HEADER_KEY)
    if payload is None:
        return None
    try:
        values = _CONVERTER.from_payloads([payload], [dict])[0]
    except Exception:  # a header from a newer or foreign worker must not fail the activity
        return None
    if not isinstance(values, dict):
        return None
    known = {name: values.get(name) for name in RunMetadata.__dataclass_fields__}
    return RunMetadata(**{name: value for name, value in known.items() if value is not None})


class RunMetadataInterceptor(Interceptor):
    """Install on a worker that runs `DagWorkflow` to add the `dagwright-run` activity header."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _RunMetadataInbound


class _RunMetadataInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self._outbound = _RunMetadataOutbound(outbound)
        super().init(self._outbound)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        definition = _definition_of(input.args)
        self._outbound.definition = definition
        return await super().execute_workflow(input)


class _RunMetadataOutbound(WorkflowOutboundInterceptor):
    definition: Mapping[str, Any] = {}

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle:
        if input.activity.startswith(NODE_ACTIVITY_PREFIX) and input.activity_id:
            metadata = self._metadata(input.activity, input.activity_id)
            input.headers = {**input.headers, HEADER_KEY: encode_metadata(metadata)}
        return super().start_activity(input)

    def _metadata(self, activity_type: str, activity_id: str) -> RunMetadata:
        node_id = parse_activity_id(activity_id).node_id
        node = (self.definition.get("nodes") or {}).get(node_id) or {}
        version = self.definition.get("version")
        return RunMetadata(
            workflow=str(self.definition.get("name") or "unknown"),
            version=None if version is None else str(version),
            definition_hash=self.definition.get("hash"),
            run_id=workflow.info().workflow_id,
            node_id=node_id,
            node_type=node.get("type") or activity_type.removeprefix(NODE_ACTIVITY_PREFIX),
        )


def _definition_of(args: Any) -> Mapping[str, Any]:
    """Return the compiled definition from `DagWorkflow`'s input (a RunRequest or its dict form)."""
    if not args:
        return {}
    request = args[0]
    definition = request.get("definition") if isinstance(request, Mapping) else getattr(request, "definition", None)
    return definition if isinstance(definition, Mapping) else {}
