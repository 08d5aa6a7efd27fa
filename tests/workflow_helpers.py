"""Run workflow files end to end in tests: compile YAML, run it on a real worker, inspect it.

`run_yaml` does it all in one call. It writes the YAML to a temporary folder, compiles it
with the test tool registry `TOOLS` and starts a worker on the test's task queue. Then it
runs the workflow and returns a `RunOutcome`: the result or the failure, and the final
`state` query.
Tests that must act while the worker is still up (for example to release a slow HTTP
reply before the worker shuts down) use `compile_yaml`, `dag_worker` and `run_definition`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import FailureError
from temporalio.worker import Worker

from dagwright.activities.errors import permanent
from dagwright.activities.tools import Tool, ToolRegistry
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.inputs import validate_inputs
from dagwright.interpreter.run_types import WORKFLOW_TYPE, RunRequest
from dagwright.worker import WorkerOptions, build_worker

# A run that has not finished by then is treated as stuck: the test fails with its state.
RUN_TIMEOUT_SECONDS = 60.0


# ---------------------------------------------------------------- tools used by python nodes


def echo(value: Any) -> Any:
    """Return the value unchanged."""
    return value


async def square(value: int) -> int:
    """Return value * value."""
    return value * value


def fail(message: str) -> None:
    """Fail permanently with `message`, so the node fails after one attempt."""
    raise permanent(message, type="TestFailure")


def reject(value: int, rejected: int) -> int:
    """Return value, but fail permanently when it equals `rejected`."""
    if value == rejected:
        raise permanent(f"value {value} is rejected", type="TestFailure")
    return value


def _build_registry() -> ToolRegistry:
    registry = ToolRegistry()
    for function in (echo, square, fail, reject):
        registry.register(Tool(name=function.__name__, function=function))
    return registry


TOOLS = _build_registry()


# ---------------------------------------------------------------- running


@dataclass
class RunOutcome:
    """How one run ended: its result or failure, and the `state` query after the end."""

    handle: WorkflowHandle
    result: dict[str, Any] | None
    failure: WorkflowFailureError | None
    state: dict[str, Any]
    elapsed: float

    @property
    def error_message(self) -> str:
        """Return the message of the run's failure cause ("" if the run succeeded)."""
        if self.failure is None:
            return ""
        cause = self.failure.cause
        return cause.message if isinstance(cause, FailureError) else str(self.failure)

    def statuses(self) -> dict[str, str]:
        """Return node id -> status from the final state."""
        return {node_id: row["status"] for node_id, row in self.state["nodes"].items()}

    def node(self, node_id: str) -> dict[str, Any]:
        """Return one node's row of the final state."""
        return self.state["nodes"][node_id]


def write_files(folder: Path, files: Mapping[str, str]) -> None:
    """Write each `name -> text` entry into `folder`."""
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def compile_yaml(folder: Path, text: str, *, files: Mapping[str, str] | None = None,
                 name: str = "workflow.yaml") -> dict[str, Any]:
    """Write `text` (and any extra `files`, such as child workflows) and compile it."""
    write_files(folder, {**(files or {}), name: text})
    return compile_file(folder / name, tools=TOOLS)


@asynccontextmanager
async def dag_worker(client: Client, task_queue: str) -> AsyncIterator[Worker]:
    """Run a dagwright worker with the test tools on `task_queue` for the block."""
    worker = build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS)
    async with worker:
        yield worker


async def start_run(client: Client, task_queue: str, definition: dict[str, Any],
                    inputs: Mapping[str, Any] | None = None) -> WorkflowHandle:
    """Validate the inputs and start a run of a compiled definition; do not wait for it."""
    request = RunRequest(definition=definition, inputs=validate_inputs(definition["inputs"], inputs or {}))
    return await client.start_workflow(
        WORKFLOW_TYPE, request, id=f"{definition['name']}-{uuid.uuid4()}", task_queue=task_queue
    )


async def wait_for_outcome(handle: WorkflowHandle, *, timeout: float = RUN_TIMEOUT_SECONDS) -> RunOutcome:
    """Wait for a run to end and return its outcome; `elapsed` counts from this call.

    A run that does not end within `timeout` seconds is terminated and the test fails with
    the run's last state, because the interpreter must never leave a run stuck.
    """
    started = time.monotonic()
    result: dict[str, Any] | None = None
    failure: WorkflowFailureError | None = None
    try:
        async with asyncio.timeout(timeout):
            result = await handle.result()
    except WorkflowFailureError as exc:
        failure = exc
    except TimeoutError:
        state = await handle.query("state")
        await handle.terminate(reason="test timeout")
        pytest.fail(f"run {handle.id} did not end within {timeout:g} s; last state: {state}")
    elapsed = time.monotonic() - started
    state = await handle.query("state")
    return RunOutcome(handle=handle, result=result, failure=failure, state=state, elapsed=elapsed)


async def run_definition(client: Client, task_queue: str, definition: dict[str, Any],
                         inputs: Mapping[str, Any] | None = None, *,
                         timeout: float = RUN_TIMEOUT_SECONDS) -> RunOutcome:
    """Run a compiled definition on a worker that is already polling `task_queue`."""
    handle = await start_run(client, task_queue, definition, inputs)
    return await wait_for_outcome(handle, timeout=timeout)


async def run_yaml(client: Client, task_queue: str, folder: Path, text: str, *,
                   inputs: Mapping[str, Any] | None = None, files: Mapping[str, str] | None = None,
                   timeout: float = RUN_TIMEOUT_SECONDS) -> RunOutcome:
    """Compile `text`, run it on a fresh worker on `task_queue` and return the outcome."""
    definition = compile_yaml(folder, text, files=files)
    async with dag_worker(client, task_queue):
        return await run_definition(client, task_queue, definition, inputs, timeout=timeout)


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class ScheduledActivity:
    """An ActivityTaskScheduled event: what Temporal Web lists for one activity."""

    activity_id: str
    activity_type: str
    summary: str | None


async def history_events(handle: WorkflowHandle) -> list[HistoryEvent]:
    """Return the run's whole history."""
    history = await handle.fetch_history()
    return list(history.events)


def event_type_names(events: list[HistoryEvent]) -> list[str]:
    """Return each event's type without the EVENT_TYPE_ prefix, e.g. "TIMER_STARTED"."""
    return [EventType.Name(event.event_type).removeprefix("EVENT_TYPE_") for event in events]


async def scheduled_activities(client: Client, handle: WorkflowHandle) -> list[ScheduledActivity]:
    """Return the activities the run scheduled, in order, with their user-facing summary."""
    scheduled = []
    for event in await history_events(handle):
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attributes = event.activity_task_scheduled_event_attributes
        summary = None
        if event.user_metadata.HasField("summary"):
            summary = client.data_converter.payload_converter.from_payload(event.user_metadata.summary, str)
        scheduled.append(ScheduledActivity(attributes.activity_id, attributes.activity_type.name, summary))
    return scheduled


async def started_children(handle: WorkflowHandle) -> list[str]:
    """Return the workflow ids of the child runs the run started, in order."""
    return [
        event.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for event in await history_events(handle)
        if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
