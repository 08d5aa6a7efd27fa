"""HTTP nodes inside `DagWorkflow` against a real local server: parallel branches, retries,
Retry-After, idempotency keys, fallbacks, fail-fast cancellation and concurrency limits."""

from __future__ import annotations

import sys
from pathlib import Path

from temporalio.client import Client

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
    start_run,
    wait_for_outcome,
)

# Fast retries keep the tests short; max_interval bounds the backoff.
FAST_RETRY = "{max_attempts: 3, initial_interval: 100ms, backoff: 1.0, max_interval: 100ms}"


def with_stub(text: str, stub: HttpStub) -> str:
    """Fill in the stub's base URL for STUB and the fast retry policy for FAST_RETRY."""
    return text.replace("STUB", stub.url).replace("FAST_RETRY", FAST_RETRY)


async def test_independent_nodes_run_in_parallel(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/a", Reply(json={"name": "a"}, delay=1.0))
        stub.script("/b", Reply(json={"name": "b"}, delay=1.0))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: parallel
nodes:
  a: {type: http, url: "STUB/a"}
  b: {type: http, url: "STUB/b"}
outputs:
  names: ["{{ nodes.a.output.json.name }}", "{{ nodes.b.output.json.name }}"]
""", stub))

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"names": ["a", "b"]}
    [a] = stub.requests("/a")
    [b] = stub.requests("/b")
    # Each request arrived before the other one got its response, so both were in flight together.
    assert b.received_at < a.finished_at
    assert a.received_at < b.finished_at
    assert stub.max_concurrent() == 2


async def test_server_error_retried_until_success(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/flaky", Reply(status=500, text="down"), Reply(status=503, text="down"),
                    Reply(json={"ok": True}))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: retry-500
nodes:
  call: {type: http, url: "STUB/flaky", retry: FAST_RETRY}
outputs:
  ok: "{{ nodes.call.output.json.ok }}"
""", stub))

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"ok": True}
    assert len(stub.requests("/flaky")) == 3
    assert outcome.node("call")["attempt"] == 3
    assert outcome.node("call")["status"] == "succeeded"


async def test_not_found_fails_without_retry(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/missing", Reply(status=404, text="no such thing"))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: not-found
nodes:
  call: {type: http, url: "STUB/missing", retry: FAST_RETRY}
""", stub))

    assert outcome.failure is not None
    assert len(stub.requests("/missing")) == 1
    message = outcome.error_message
    assert message.startswith("node 'call' failed after 1 attempt: ")
    assert "returned status 404" in message
    assert outcome.node("call")["status"] == "failed"
    assert outcome.node("call")["attempt"] == 1


async def test_rate_limit_honours_retry_after(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/limited", Reply(status=429, headers={"Retry-After": "2"}), Reply(json={"ok": True}))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: retry-after
nodes:
  call: {type: http, url: "STUB/limited", retry: FAST_RETRY}
""", stub))

    assert outcome.failure is None
    first, second = stub.requests("/limited")
    gap = second.received_at - first.received_at
    assert gap >= 1.8
    assert gap < 8.0
    assert outcome.node("call")["attempt"] == 2


async def test_post_retry_keeps_idempotency_key(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/orders", Reply(drop=True), Reply(status=201, json={"id": 7}))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: post-retry
nodes:
  order:
    type: http
    method: POST
    url: "STUB/orders"
    json: {item: book, quantity: 2}
    retry: FAST_RETRY
outputs:
  id: "{{ nodes.order.output.json.id }}"
""", stub))

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"id": 7}
    first, second = stub.requests("/orders")
    assert first.method == second.method == "POST"
    assert first.json() == second.json() == {"item": "book", "quantity": 2}
    assert first.headers["idempotency-key"]
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


async def test_fallback_variant_after_retries_exhausted(client: Client, task_queue: str,
                                                        tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/primary", Reply(status=500, text="primary down"))
        stub.script("/mirror", Reply(json={"source": "mirror"}))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: fallback
nodes:
  fetch:
    type: http
    url: "STUB/primary"
    retry: FAST_RETRY
    fallback:
      - {url: "STUB/mirror"}
outputs:
  fetched: "{{ nodes.fetch.output }}"
""", stub))

    assert outcome.failure is None
    assert len(stub.requests("/primary")) == 3
    assert len(stub.requests("/mirror")) == 1
    fetched = outcome.result["outputs"]["fetched"]
    assert fetched["json"] == {"source": "mirror"}
    assert fetched["variant"] == 1
    [failed] = fetched["failed_variants"]
    assert failed["variant"] == 0
    assert failed["attempts"] == 3
    assert "returned status 500" in failed["error"]
    assert outcome.node("fetch")["variant"] == 1
    activity_ids = [activity.activity_id for activity in await scheduled_activities(client, outcome.handle)]
    assert activity_ids == ["fetch", "fetch~fallback1"]


async def test_failure_cancels_running_sibling(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={"late": True}, delay=30.0))
        # /broken fails only once /slow is in flight, so the sibling is surely running.
        stub.script("/broken", Reply(status=500, text="broken", after="/slow"))
        definition = compile_yaml(tmp_path, with_stub("""
dagwright: 1
name: fail-fast
nodes:
  slow: {type: http, url: "STUB/slow", timeout: 1m}
  broken:
    type: http
    url: "STUB/broken"
    retry: {max_attempts: 2, initial_interval: 100ms, backoff: 1.0, max_interval: 100ms}
  after_slow: {type: transform, value: "{{ nodes.slow.output.json.late }}"}
""", stub))
        async with dag_worker(client, task_queue):
            outcome = await run_definition(client, task_queue, definition, timeout=20)
            # The cancelled request would otherwise hold the worker's shutdown for its grace period.
            stub.release()

    assert outcome.failure is not None
    assert outcome.elapsed < 15
    message = outcome.error_message
    assert message.startswith("node 'broken' failed after 2 attempts: ")
    assert "returned status 500" in message
    assert outcome.statuses() == {"slow": "cancelled", "broken": "failed", "after_slow": "cancelled"}
    assert outcome.node("after_slow")["error"] == "not run because node 'broken' failed"
    assert outcome.state["failed_node"] == "broken"
    assert outcome.state["status"] == "failed"
    events = event_type_names(await history_events(outcome.handle))
    assert "ACTIVITY_TASK_CANCEL_REQUESTED" in events
    assert len(stub.requests("/slow")) == 1


async def test_limits_max_parallel_bounds_running_nodes(client: Client, task_queue: str,
                                                        tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/work", Reply(json={}, delay=0.5))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: limited
limits: {max_parallel: 2}
nodes:
  one: {type: http, url: "STUB/work"}
  two: {type: http, url: "STUB/work"}
  three: {type: http, url: "STUB/work"}
  four: {type: http, url: "STUB/work"}
  five: {type: http, url: "STUB/work"}
""", stub))

    assert outcome.failure is None
    assert len(stub.requests("/work")) == 5
    assert stub.max_concurrent("/work") == 2


async def test_http_summary_names_method_and_host(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/data", Reply(json=[1, 2]))
        outcome = await run_yaml(client, task_queue, tmp_path, with_stub("""
dagwright: 1
name: summary
nodes:
  fetch: {type: http, url: "STUB/data"}
""", stub))

    assert outcome.failure is None
    [activity] = await scheduled_activities(client, outcome.handle)
    assert (activity.activity_id, activity.activity_type, activity.summary) == (
        "fetch", "dagwright.http", "fetch: http GET 127.0.0.1",
    )


async def test_state_query_while_node_runs(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={"value": 5}, delay=30.0))
        definition = compile_yaml(tmp_path, with_stub("""
dagwright: 1
name: live-state
nodes:
  first: {type: python, function: echo, args: {value: go}}
  slow: {type: http, url: "STUB/slow", needs: [first]}
  last: {type: transform, value: "{{ nodes.slow.output.json.value }}"}
outputs:
  value: "{{ nodes.last.output }}"
""", stub))
        async with dag_worker(client, task_queue):
            handle = await start_run(client, task_queue, definition)
            await stub.wait_for_requests("/slow", 1)
            live = await handle.query("state")
            stub.release()
            outcome = await wait_for_outcome(handle, timeout=20)

    assert live["status"] == "running"
    assert live["outputs"] is None
    assert {node_id: row["status"] for node_id, row in live["nodes"].items()} == {
        "first": "succeeded", "slow": "running", "last": "pending",
    }
    slow = live["nodes"]["slow"]
    assert slow["started_at"] is not None
    assert slow["ended_at"] is None
    assert slow["output_preview"] is None
    assert live["nodes"]["first"]["output_preview"] == '"go"'
    assert outcome.failure is None
    assert outcome.state["status"] == "succeeded"
    assert outcome.state["outputs"] == {"value": 5}
