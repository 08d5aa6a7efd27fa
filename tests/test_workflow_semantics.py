"""DSL semantics of `DagWorkflow` on a real dev server and worker: conditions, skips, errors,
transforms, timers, child workflows, limits and the `state` query."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

# tests/ is not a package and pytest's importlib mode leaves sys.path alone.
sys.path.insert(0, str(Path(__file__).parent))

from workflow_helpers import (  # noqa: E402
    compile_yaml,
    event_type_names,
    history_events,
    run_yaml,
    scheduled_activities,
    started_children,
)

from dagwright.interpreter.diagnostics import CompileError  # noqa: E402


async def test_skip_propagates_two_levels(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: skips
nodes:
  gate: {type: transform, when: "1 > 2", value: never}
  child: {type: transform, value: "{{ nodes.gate.output }}"}
  grandchild: {type: transform, value: "{{ nodes.child.output }}"}
  unrelated: {type: transform, value: ran}
outputs:
  unrelated: "{{ nodes.unrelated.output }}"
""")

    assert outcome.failure is None
    assert outcome.statuses() == {
        "gate": "skipped", "child": "skipped", "grandchild": "skipped", "unrelated": "succeeded",
    }
    assert outcome.result["outputs"] == {"unrelated": "ran"}


async def test_join_always_reads_skipped_branch_as_null(client: Client, task_queue: str,
                                                         tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: join
inputs:
  pick: {type: string}
nodes:
  a: {type: transform, when: "inputs.pick == 'a'", value: from-a}
  b: {type: python, function: echo, when: "inputs.pick == 'b'", args: {value: from-b}}
  join:
    type: transform
    when: always()
    value:
      chosen: "{{ nodes.a.output or nodes.b.output }}"
      a_output: "{{ nodes.a.output }}"
outputs:
  join: "{{ nodes.join.output }}"
""", inputs={"pick": "b"})

    assert outcome.failure is None
    assert outcome.statuses() == {"a": "skipped", "b": "succeeded", "join": "succeeded"}
    assert outcome.result["outputs"] == {"join": {"chosen": "from-b", "a_output": None}}


async def test_when_with_status_function_replaces_default_rule(client: Client, task_queue: str,
                                                                 tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: status-when
nodes:
  ok: {type: python, function: echo, args: {value: 1}}
  broken: {type: python, function: fail, args: {message: boom}, on_error: continue}
  on_broken: {type: transform, when: "failed('broken')", value: handled}
  on_ok_failed: {type: transform, when: "failed('ok')", value: never}
  after_both: {type: transform, when: "succeeded('ok') and failed('broken')", value: both}
""")

    assert outcome.failure is None
    assert outcome.statuses() == {
        "ok": "succeeded",
        "broken": "failed",
        "on_broken": "succeeded",
        "on_ok_failed": "skipped",
        "after_both": "succeeded",
    }


async def test_when_without_status_function_keeps_default_rule(client: Client, task_queue: str,
                                                                 tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: plain-when
inputs:
  flag: {type: boolean}
nodes:
  ok: {type: python, function: echo, args: {value: 7}}
  broken: {type: python, function: fail, args: {message: boom}, on_error: continue}
  true_after_ok: {type: transform, when: "nodes.ok.output > 5", value: ran}
  false_after_ok: {type: transform, when: "nodes.ok.output > 50", value: never}
  true_after_failure: {type: transform, when: inputs.flag, needs: [broken], value: never}
""", inputs={"flag": True})

    assert outcome.failure is None
    assert outcome.statuses() == {
        "ok": "succeeded",
        "broken": "failed",
        "true_after_ok": "succeeded",
        "false_after_ok": "skipped",
        "true_after_failure": "skipped",
    }


async def test_on_error_continue_handler_reads_error(client: Client, task_queue: str,
                                                     tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: continue
nodes:
  risky:
    type: python
    function: fail
    args: {message: disk full}
    on_error: continue
  handler:
    type: transform
    when: "failed('risky')"
    value: "recovered from: {{ nodes.risky.error }}"
outputs:
  handled: "{{ nodes.handler.output }}"
""")

    assert outcome.failure is None
    assert outcome.statuses() == {"risky": "failed", "handler": "succeeded"}
    assert "disk full" in outcome.node("risky")["error"]
    assert outcome.result["outputs"]["handled"].startswith("recovered from: ")
    assert "disk full" in outcome.result["outputs"]["handled"]


async def test_transform_and_conditions_schedule_no_activity(client: Client, task_queue: str,
                                                               tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: no-activities
inputs:
  values: {type: array}
nodes:
  fetch: {type: python, function: echo, args: {value: "{{ inputs.values }}"}}
  total: {type: transform, value: "{{ nodes.fetch.output | sum }}"}
  big: {type: transform, when: "nodes.total.output > 5", value: big}
  small: {type: transform, when: "nodes.total.output <= 5", value: small}
  doubled: {type: transform, for_each: nodes.fetch.output, value: "{{ item * 2 }}"}
outputs:
  size: "{{ nodes.big.output or nodes.small.output }}"
  doubled: "{{ nodes.doubled.output }}"
""", inputs={"values": [1, 2, 3]})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"size": "big", "doubled": [2, 4, 6]}
    assert [activity.activity_id for activity in await scheduled_activities(client, outcome.handle)] == ["fetch"]


async def test_wait_node_uses_durable_timer(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: pause
nodes:
  pause: {type: wait, duration: 200ms}
""")

    assert outcome.failure is None
    assert outcome.node("pause")["status"] == "succeeded"
    events = event_type_names(await history_events(outcome.handle))
    assert events.count("TIMER_STARTED") == 1
    assert events.count("TIMER_FIRED") == 1
    assert "ACTIVITY_TASK_SCHEDULED" not in events


async def test_workflow_node_returns_child_outputs(client: Client, task_queue: str,
                                                   tmp_path: Path) -> None:
    child = """
dagwright: 1
name: child
inputs:
  who: {type: string}
nodes:
  greet: {type: python, function: echo, args: {value: "hello {{ inputs.who }}"}}
outputs:
  greeting: "{{ nodes.greet.output }}"
  length: "{{ nodes.greet.output | length }}"
"""
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: parent
nodes:
  sub:
    type: workflow
    file: child.yaml
    inputs: {who: Ada}
outputs:
  from_child: "{{ nodes.sub.output }}"
""", files={"child.yaml": child})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"from_child": {"greeting": "hello Ada", "length": 9}}
    children = await started_children(outcome.handle)
    assert children == [f"{outcome.handle.id}/sub"]
    description = await client.get_workflow_handle(children[0]).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED


async def test_workflow_node_reports_child_failure(client: Client, task_queue: str,
                                                   tmp_path: Path) -> None:
    child = """
dagwright: 1
name: child
nodes:
  explode: {type: python, function: fail, args: {message: child exploded}}
"""
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: parent
nodes:
  sub: {type: workflow, file: child.yaml}
""", files={"child.yaml": child})

    assert outcome.failure is not None
    assert outcome.error_message == (
        "node 'sub': child run failed: node 'explode' failed after 1 attempt: child exploded"
    )
    assert outcome.statuses() == {"sub": "failed"}


async def test_run_timeout_fails_run(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: too-slow
limits: {timeout: 1s}
nodes:
  pause: {type: wait, duration: 1h}
""", timeout=20)

    assert outcome.failure is not None
    assert outcome.error_message == "run timed out after 1s (limits.timeout); running nodes were cancelled"
    assert outcome.node("pause")["status"] == "cancelled"
    assert outcome.state["status"] == "failed"
    assert outcome.elapsed < 15


async def test_expression_error_fails_node_and_run(client: Client, task_queue: str,
                                                   tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: bad-expression
inputs:
  data: {type: object}
nodes:
  a: {type: transform, value: "{{ inputs.data }}"}
  b: {type: transform, value: "{{ nodes.a.output.missing_key }}"}
""", inputs={"data": {"present": 1}}, timeout=20)

    assert outcome.failure is not None
    message = outcome.error_message
    assert "node 'b'" in message
    assert "missing_key" in message
    assert outcome.statuses() == {"a": "succeeded", "b": "failed"}
    assert outcome.node("b")["error"] == message
    assert outcome.state["failed_node"] == "b"
    assert outcome.elapsed < 15


async def test_state_query_reports_every_node(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: state-table
version: "3.1"
nodes:
  first: {type: python, function: echo, args: {value: {n: 1}}}
  skipped_one: {type: transform, when: "nodes.first.output.n > 1", value: never}
  broken: {type: python, function: fail, args: {message: bad input}, on_error: continue}
outputs:
  n: "{{ nodes.first.output.n }}"
""")

    assert outcome.failure is None
    state = outcome.state
    times = {}
    for node_id, row in state["nodes"].items():
        times[node_id] = (row.pop("started_at"), row.pop("ended_at"))
    assert state["nodes"] == {
        "first": {"type": "python", "status": "succeeded", "attempt": 1,
                  "output_preview": '{"n": 1}', "error": None},
        "skipped_one": {"type": "transform", "status": "skipped", "attempt": 0,
                        "output_preview": None, "error": None},
        "broken": {"type": "python", "status": "failed", "attempt": 1, "output_preview": None,
                   "error": "node 'broken' failed after 1 attempt: bad input",
                   "failed_variants": [{"variant": 0, "attempts": 1, "error": "bad input"}]},
    }
    # The run-level fields; other keys (usage, budget) have tests of their own.
    assert {key: state[key] for key in ("workflow", "version", "status", "paused", "error",
                                        "failed_node", "outputs")} == {
        "workflow": "state-table",
        "version": "3.1",
        "status": "succeeded",
        "paused": False,
        "error": None,
        "failed_node": None,
        "outputs": {"n": 1},
    }
    for node_id in ("first", "broken"):
        started, ended = (datetime.fromisoformat(value) for value in times[node_id])
        assert started <= ended
    assert times["skipped_one"] == (None, None)


async def test_activity_ids_and_summaries(client: Client, task_queue: str, tmp_path: Path) -> None:
    outcome = await run_yaml(client, task_queue, tmp_path, """
dagwright: 1
name: ids
nodes:
  fetch: {type: python, function: echo, args: {value: [10, 20, 30, 40]}}
  items:
    type: python
    for_each: nodes.fetch.output
    max_parallel: 1
    function: square
    args: {value: "{{ item }}"}
outputs:
  squares: "{{ nodes.items.output }}"
""")

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"squares": [100, 400, 900, 1600]}
    activities = await scheduled_activities(client, outcome.handle)
    assert [(activity.activity_id, activity.activity_type, activity.summary) for activity in activities] == [
        ("fetch", "dagwright.python", "fetch: python echo"),
        ("items[0]", "dagwright.python", "items[0]: python square"),
        ("items[1]", "dagwright.python", "items[1]: python square"),
        ("items[2]", "dagwright.python", "items[2]: python square"),
        ("items[3]", "dagwright.python", "items[3]: python square"),
    ]


def test_unregistered_tool_is_compile_error(tmp_path: Path) -> None:
    with pytest.raises(CompileError) as caught:
        compile_yaml(tmp_path, """
dagwright: 1
name: unknown-tool
nodes:
  run: {type: python, function: no_such_tool, args: {}}
""")

    assert "unknown tool 'no_such_tool' in python node 'run'" in str(caught.value)
