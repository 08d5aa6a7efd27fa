"""`for_each` in `DagWorkflow`: empty and single-item lists, `max_parallel`, and large lists
that the interpreter delegates to child batch runs."""

from __future__ import annotations

import sys
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus

# tests/ is not a package and pytest's importlib mode leaves sys.path alone.
sys.path.insert(0, str(Path(__file__).parent))

from http_stub import HttpStub, Reply  # noqa: E402
from workflow_helpers import (  # noqa: E402
    compile_yaml,
    dag_worker,
    event_type_names,
    history_events,
    run_definition,
    run_yaml,
    scheduled_activities,
    started_children,
)

from dagwright.interpreter.workflow import BATCH_SIZE  # noqa: E402

EACH_SQUARE = """
dagwright: 1
name: squares
limits: {max_parallel: 50}
inputs:
  values: {type: array}
nodes:
  squares:
    type: python
    for_each: inputs.values
    max_parallel: 50
    function: square
    args: {value: "{{ item }}"}
outputs:
  squares: "{{ nodes.squares.output }}"
"""


async def test_for_each_over_empty_list(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, EACH_SQUARE, inputs={"values": []})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"squares": []}
    assert outcome.node("squares")["status"] == "succeeded"
    assert outcome.node("squares")["items"] == {"total": 0, "done": 0, "failed": 0}
    assert await scheduled_activities(client, outcome.handle) == []


async def test_for_each_over_one_item(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, EACH_SQUARE, inputs={"values": [12]})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"squares": [144]}
    assert outcome.node("squares")["items"] == {"total": 1, "done": 1, "failed": 0}
    activity_ids = [activity.activity_id for activity in await scheduled_activities(client, outcome.handle)]
    assert activity_ids == ["squares[0]"]


async def test_for_each_large_list_uses_child_batches(client: Client, task_queue: str,
                                                      tmp_path: Path) -> None:
    values = list(range(2000))

    outcome = await run_yaml(client, task_queue, tmp_path, EACH_SQUARE, inputs={"values": values}, timeout=120)

    assert outcome.failure is None
    assert outcome.result["outputs"]["squares"] == [value * value for value in values]
    assert outcome.node("squares")["status"] == "succeeded"
    assert outcome.node("squares")["items"] == {"total": 2000, "done": 2000, "failed": 0}
    # The parent schedules no item activity itself: every item runs in a child batch run.
    assert await scheduled_activities(client, outcome.handle) == []
    batch_count = len(values) // BATCH_SIZE
    children = await started_children(outcome.handle)
    assert children == [f"{outcome.handle.id}/squares#batch{number}" for number in range(batch_count)]
    for child_id in children:
        description = await client.get_workflow_handle(child_id).describe()
        assert description.status == WorkflowExecutionStatus.COMPLETED


async def test_for_each_max_parallel_bounds_items(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/item", Reply(json={"ok": True}, delay=0.5))
        outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: bounded
nodes:
  calls:
    type: http
    for_each: "[1, 2, 3, 4, 5, 6]"
    max_parallel: 2
    url: "STUB/item"
    query: {n: "{{ item }}"}
    output: "{{ result.json.ok }}"
outputs:
  calls: "{{ nodes.calls.output }}"
""".replace("STUB", stub.url))

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"calls": [True] * 6}
    assert sorted(request.query for request in stub.requests("/item")) == [f"n={n}" for n in range(1, 7)]
    assert stub.max_concurrent("/item") == 2


async def test_for_each_uses_limits_max_parallel(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/item", Reply(json={"ok": True}, delay=0.5))
        outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: run-limit
limits: {max_parallel: 3}
nodes:
  calls:
    type: http
    for_each: "[1, 2, 3, 4, 5, 6]"
    url: "STUB/item"
""".replace("STUB", stub.url))

    assert outcome.failure is None
    assert len(stub.requests("/item")) == 6
    assert stub.max_concurrent("/item") == 3


async def test_for_each_output_keeps_input_order(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        # The first item gets its response last, so completion order differs from input order.
        stub.script("/slow", Reply(json={"name": "slow"}, delay=0.5))
        stub.script("/fast", Reply(json={"name": "fast"}))
        outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: ordered
nodes:
  calls:
    type: http
    for_each: "['slow', 'fast', 'fast']"
    url: "STUB/{{ item }}"
    output: "{{ index }}:{{ result.json.name }}"
outputs:
  calls: "{{ nodes.calls.output }}"
""".replace("STUB", stub.url))

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"calls": ["0:slow", "1:fast", "2:fast"]}
    [slow] = stub.requests("/slow")
    assert all(fast.finished_at < slow.finished_at for fast in stub.requests("/fast"))


async def test_for_each_item_failure_cancels_other_items(client: Client, task_queue: str,
                                                         tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={}, delay=30.0))
        # /bad fails only once a /slow item is in flight, so that item is surely running.
        stub.script("/bad", Reply(status=404, text="gone", after="/slow"))
        definition = compile_yaml(tmp_path, """
dagwright: 1
name: item-failure
nodes:
  calls:
    type: http
    for_each: "['slow', 'bad', 'slow']"
    url: "STUB/{{ item }}"
""".replace("STUB", stub.url))
        async with dag_worker(client, task_queue):
            outcome = await run_definition(client, task_queue, definition, timeout=20)
            # The cancelled requests would otherwise hold the worker's shutdown for its grace period.
            stub.release()

    assert outcome.failure is not None
    assert outcome.elapsed < 15
    message = outcome.error_message
    assert message.startswith("node 'calls'[1] failed after 1 attempt: ")
    assert "returned status 404" in message
    row = outcome.node("calls")
    assert row["status"] == "failed"
    assert row["items"] == {"total": 3, "done": 0, "failed": 1}
    events = event_type_names(await history_events(outcome.handle))
    assert events.count("ACTIVITY_TASK_CANCEL_REQUESTED") == 2


async def test_for_each_items_cancelled_when_other_node_fails(client: Client, task_queue: str,
                                                              tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={}, delay=30.0))
        stub.script("/broken", Reply(status=404, text="gone", after="/slow"))
        definition = compile_yaml(tmp_path, """
dagwright: 1
name: sibling-failure
nodes:
  calls:
    type: http
    for_each: "[1, 2]"
    url: "STUB/slow"
  broken: {type: http, url: "STUB/broken"}
""".replace("STUB", stub.url))
        async with dag_worker(client, task_queue):
            outcome = await run_definition(client, task_queue, definition, timeout=20)
            stub.release()

    assert outcome.failure is not None
    assert outcome.error_message.startswith("node 'broken' failed after 1 attempt: ")
    assert outcome.statuses() == {"calls": "cancelled", "broken": "failed"}
    events = event_type_names(await history_events(outcome.handle))
    assert events.count("ACTIVITY_TASK_CANCEL_REQUESTED") == 2


async def test_for_each_batch_failure_names_item(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: batch-failure
inputs:
  values: {type: array}
nodes:
  checked:
    type: python
    for_each: inputs.values
    max_parallel: 50
    function: reject
    args: {value: "{{ item }}", rejected: 550}
""", inputs={"values": list(range(600))}, timeout=60)

    assert outcome.failure is not None
    message = outcome.error_message
    assert "node 'checked'[550] failed after 1 attempt: value 550 is rejected" in message
    assert outcome.node("checked")["status"] == "failed"
    assert outcome.node("checked")["error"] == message
