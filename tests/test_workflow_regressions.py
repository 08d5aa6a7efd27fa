"""Interpreter bugs found once, kept fixed."""

from __future__ import annotations

from workflow_helpers import event_type_names, history_events, run_yaml


async def test_sibling_cancelled_before_start_ends_run(client, task_queue, tmp_path):
    """Two nodes start in one round and the first fails at once: the run ends, never hangs."""
    text = """
dagwright: 1
name: cancelled-before-start
nodes:
  bad: {type: http, url: "http://127.0.0.1:1/nothing", retry: {max_attempts: 1}, on_error: continue}
  first: {type: transform, when: always(), needs: [bad], value: "{{ nodes.bad.output.json.x }}"}
  second: {type: python, when: always(), needs: [bad], function: echo, args: {value: x}}
outputs: {r: "{{ nodes.second.output }}"}
"""
    outcome = await run_yaml(client, task_queue, tmp_path, text, timeout=30)

    assert outcome.failure is not None
    assert outcome.statuses() == {"bad": "failed", "first": "failed", "second": "cancelled"}
    assert "nodes.bad.output is null" in outcome.error_message
    assert outcome.node("second")["error"] == "not run because node 'first' failed"


def _transform_chain(length: int) -> str:
    lines = ["dagwright: 1", "name: long-chain", "nodes:", "  n0: {type: transform, value: 0}"]
    for number in range(1, length):
        lines.append(f'  n{number}: {{type: transform, value: "{{{{ nodes.n{number - 1}.output + 1 }}}}"}}')
    lines.append(f'outputs: {{last: "{{{{ nodes.n{length - 1}.output }}}}"}}')
    return "\n".join(lines)


async def test_long_transform_chain_spans_tasks(client, task_queue, tmp_path):
    """1,000 transforms in a chain finish; evaluation yields before the deadlock detector fires."""
    outcome = await run_yaml(client, task_queue, tmp_path, _transform_chain(1000), timeout=120)

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"last": 999}


def _transform_fan_out(width: int) -> str:
    lines = ["dagwright: 1", "name: wide-fan-out", "nodes:", "  root: {type: transform, value: 0}"]
    for number in range(1, width + 1):
        lines.append(f'  n{number}: {{type: transform, value: "{{{{ nodes.root.output + {number} }}}}"}}')
    lines.append(f'outputs: {{last: "{{{{ nodes.n{width}.output }}}}"}}')
    return "\n".join(lines)


async def test_wide_transform_fan_out_finishes(client, task_queue, tmp_path):
    """1,000 transforms ready at once share the yields, so no workflow task runs them all."""
    outcome = await run_yaml(client, task_queue, tmp_path, _transform_fan_out(1000), timeout=120)

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"last": 1000}
    timers = event_type_names(await history_events(outcome.handle)).count("TIMER_STARTED")
    assert 5 <= timers <= 20
