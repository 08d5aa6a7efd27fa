"""Interpreter bugs found once, kept fixed."""

from __future__ import annotations

from workflow_helpers import run_yaml


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
