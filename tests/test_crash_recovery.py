"""Crash recovery against real servers and real `dagwright worker` processes.

Each test kills something the way an outage would: SIGKILL of the worker in the middle of a
node, or a stop of the embedded Temporal server. Then it checks that every run still completes,
that no node that had completed runs again, and that the node that was cut off is retried
with the same request.

Retry latency after a worker crash: the server retries an attempt whose worker died only
when its heartbeat timeout (`HEARTBEAT_TIMEOUT` in interpreter/workflow.py, H below) or its
start-to-close timeout (the node's `timeout`) passes, and then waits the retry policy's first
interval. Activities heartbeat when they start and every min(5 s, H / 3) after that, so the
next attempt starts between 2H/3 and H after the crash, plus the first interval. With H = 10 s
and the default 1 s interval, the HTTP test measured 12.3 s (2-core machine) from SIGKILL to the retried
request (the kill came right after the first heartbeat, so this is the slow end). The LLM test
sets a short node `timeout`, the other bound, to keep the suite short.
A run that was cached on the dead worker also waits up to 10 s before another worker takes
its next workflow task. That is the default `sticky_queue_schedule_to_start_timeout` of the
temporalio Worker, and it is why queries and updates right after a crash can take that long.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

# tests/ is not a package and pytest's importlib mode leaves sys.path alone.
sys.path.insert(0, str(Path(__file__).parent))

from crash_helpers import WorkerProcesses, free_ports, wait_until_polling
from dagwright.activities.tools import ToolRegistry
from dagwright.cli.connect import connect
from dagwright.cli.server import (
    PORT_ENV,
    STATE_DIR_ENV,
    UI_PORT_ENV,
    load_settings,
    start_dev_server,
    stop_dev_server,
    target_for,
)
from dagwright.interpreter.approvals import DECIDE_UPDATE, ApprovalDecision
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.workflow import HEARTBEAT_TIMEOUT
from dagwright.testing.llm_server import LlmStandIn
from http_stub import MAX_WAIT_SECONDS, HttpStub, Reply
from workflow_helpers import start_run, wait_for_outcome, write_files

TOOLS_FILE = Path(__file__).parent / "tools_fixture.py"
# A request held this long is still pending when the test kills the worker that sent it.
HOLD_SECONDS = MAX_WAIT_SECONDS
# The server retries a crashed attempt once the heartbeat timeout passes. The extra 8 s cover
# the retry policy's 1 s first interval, task dispatch and a slow CI machine.
RETRY_AFTER_CRASH_MAX_SECONDS = HEARTBEAT_TIMEOUT.total_seconds() + 8.0
# How long a run may take once its worker is back (a workflow task that was bound to the dead
# worker's sticky queue moves to the normal queue after at most 10 s).
FINISH_SECONDS = 30.0


def _tool_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.load_module(str(TOOLS_FILE))
    return registry


def compile_workflow(folder: Path, text: str, name: str = "workflow.yaml") -> dict[str, Any]:
    """Write `text` to `folder` and compile it with the tools the worker processes load."""
    write_files(folder, {name: text})
    return compile_file(folder / name, tools=_tool_registry())


def server_address(client: Client) -> str:
    return client.service_client.config.target_host


async def wait_for(condition: Callable[[], Any], description: str, timeout: float = 30.0) -> None:
    """Wait until `condition()` (a value or an awaitable) is true, or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _evaluate(condition):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {description}")
        # The condition reads state of another thread or server, which has no event to await.
        await asyncio.sleep(0.05)


async def _evaluate(condition: Callable[[], Any]) -> bool:
    value = condition()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def pending_approvals(handle: WorkflowHandle) -> list[str]:
    """Return the node ids of the approvals the run waits for."""
    return [row["node"] for row in await handle.query("approvals")]


async def node_status(handle: WorkflowHandle, node_id: str) -> str:
    state = await handle.query("state")
    return state["nodes"][node_id]["status"]


@pytest.fixture
def workers(client: Client, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker subprocesses against the session's dev server, all killed when the test ends."""
    with WorkerProcesses(server_address(client), tmp_path / "workers", tools=[TOOLS_FILE]) as started:
        yield started


# ---------------------------------------------------------------- worker killed during a node


HTTP_WORKFLOW = """
dagwright: 1
name: crash-http
nodes:
  fetch: {type: http, url: "STUB/fetch"}
  greet:
    type: python
    function: fixture.greet
    args: {name: "{{ nodes.fetch.output.json.name }}"}
  submit:
    type: http
    method: POST
    url: "STUB/submit"
    json: {greeting: "{{ nodes.greet.output }}"}
    expect_status: 201
outputs:
  greeting: "{{ nodes.greet.output }}"
  order: "{{ nodes.submit.output.json.id }}"
"""


async def test_worker_killed_during_http_node(client: Client, task_queue: str, tmp_path: Path,
                                             workers: WorkerProcesses) -> None:
    async with HttpStub() as stub:
        stub.script("/fetch", Reply(json={"name": "Ada"}))
        stub.script("/submit", Reply(status=201, json={"id": 1}, delay=HOLD_SECONDS),
                    Reply(status=201, json={"id": 7}))
        definition = compile_workflow(tmp_path, HTTP_WORKFLOW.replace("STUB", stub.url))

        first = workers.start(task_queue)
        await wait_until_polling(client, first)
        handle = await start_run(client, task_queue, definition)
        await stub.wait_for_requests("/submit", 1, timeout=30)
        killed_at = time.monotonic()
        first.kill()

        second = workers.start(task_queue)
        await wait_until_polling(client, second)
        await stub.wait_for_requests("/submit", 2, timeout=RETRY_AFTER_CRASH_MAX_SECONDS)
        outcome = await wait_for_outcome(handle, timeout=FINISH_SECONDS)

    assert outcome.failure is None, outcome.error_message
    assert outcome.result["outputs"] == {"greeting": "Hello, Ada!", "order": 7}
    assert outcome.statuses() == {"fetch": "succeeded", "greet": "succeeded", "submit": "succeeded"}
    # Completed nodes were neither called nor retried again after the crash.
    assert len(stub.requests("/fetch")) == 1
    assert outcome.node("fetch")["attempt"] == 1
    assert outcome.node("greet")["attempt"] == 1
    assert outcome.node("submit")["attempt"] == 2

    interrupted, retried = stub.requests("/submit")
    assert interrupted.client_disconnected
    assert interrupted.json() == retried.json() == {"greeting": "Hello, Ada!"}
    assert interrupted.headers["idempotency-key"]
    assert retried.headers["idempotency-key"] == interrupted.headers["idempotency-key"]
    assert retried.received_at - killed_at < RETRY_AFTER_CRASH_MAX_SECONDS


LLM_WORKFLOW = """
dagwright: 1
name: crash-llm
nodes:
  fetch: {type: http, url: "STUB/fetch"}
  summary:
    type: llm
    model: mistral-small-latest
    prompt: "Summarize: {{ nodes.fetch.output.json.text }}"
    # Bounds how long the server waits for the killed attempt (see the module docstring).
    timeout: 4s
    retry: {initial_interval: 200ms}
outputs:
  summary: "{{ nodes.summary.output.text }}"
"""


async def test_worker_killed_during_llm_node(client: Client, task_queue: str, tmp_path: Path,
                                            llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply={"text": "too late", "delay": HOLD_SECONDS}, times=1)
    llm_stand_in.add_rule(reply="Two cats slept.")
    provider_env = {"DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": llm_stand_in.base_url,
                    "MISTRAL_API_KEY": llm_stand_in.api_key}

    async with HttpStub() as stub:
        stub.script("/fetch", Reply(json={"text": "The cats slept all day."}))
        definition = compile_workflow(tmp_path, LLM_WORKFLOW.replace("STUB", stub.url))
        with WorkerProcesses(server_address(client), tmp_path / "workers", env=provider_env) as workers:
            first = workers.start(task_queue)
            await wait_until_polling(client, first)
            handle = await start_run(client, task_queue, definition)
            await wait_for(lambda: len(llm_stand_in.requests) == 1, "the first LLM request")
            first.kill()

            second = workers.start(task_queue)
            await wait_until_polling(client, second)
            outcome = await wait_for_outcome(handle, timeout=FINISH_SECONDS)

    assert outcome.failure is None, outcome.error_message
    assert outcome.result["outputs"] == {"summary": "Two cats slept."}
    assert len(stub.requests("/fetch")) == 1
    assert outcome.node("fetch")["attempt"] == 1
    assert outcome.node("summary")["attempt"] == 2
    interrupted, retried = llm_stand_in.requests
    assert interrupted.status is None
    assert retried.status == 200
    assert retried.body["messages"] == interrupted.body["messages"]


APPROVAL_WORKFLOW = """
dagwright: 1
name: crash-approval
nodes:
  fetch: {type: http, url: "STUB/fetch"}
  review:
    type: approval
    prompt: "Publish {{ nodes.fetch.output.json.name }}?"
    assignees: [ana]
  publish:
    type: http
    method: POST
    url: "STUB/publish"
    when: nodes.review.output.approved
    json: {name: "{{ nodes.fetch.output.json.name }}", by: "{{ nodes.review.output.by }}"}
outputs:
  decision: "{{ nodes.review.output.decision }}"
  by: "{{ nodes.review.output.by }}"
  comment: "{{ nodes.review.output.comment }}"
"""


async def test_worker_killed_while_approval_waits(client: Client, task_queue: str, tmp_path: Path,
                                                 workers: WorkerProcesses) -> None:
    async with HttpStub() as stub:
        stub.script("/fetch", Reply(json={"name": "report"}))
        stub.script("/publish", Reply(json={"ok": True}))
        definition = compile_workflow(tmp_path, APPROVAL_WORKFLOW.replace("STUB", stub.url))

        first = workers.start(task_queue)
        await wait_until_polling(client, first)
        handle = await start_run(client, task_queue, definition)
        await wait_for(lambda: pending_approvals(handle), "the approval to wait")
        first.kill()

        second = workers.start(task_queue)
        await wait_until_polling(client, second)
        assert await pending_approvals(handle) == ["review"]
        decision = ApprovalDecision(node="review", decision="approve", by="ana", comment="looks right")
        recorded = await handle.execute_update(DECIDE_UPDATE, decision, result_type=dict)
        outcome = await wait_for_outcome(handle, timeout=FINISH_SECONDS)

    assert recorded["decision"] == "approved"
    assert outcome.failure is None, outcome.error_message
    assert outcome.result["outputs"] == {"decision": "approved", "by": "ana", "comment": "looks right"}
    assert outcome.statuses() == {"fetch": "succeeded", "review": "succeeded", "publish": "succeeded"}
    assert len(stub.requests("/fetch")) == 1
    [published] = stub.requests("/publish")
    assert published.json() == {"name": "report", "by": "ana"}


# ---------------------------------------------------------------- Temporal server restarted


SERVER_WAIT_WORKFLOW = """
dagwright: 1
name: restart-wait
nodes:
  fetch: {type: http, url: "STUB/wait/fetch", query: {run: "{{ run.id }}"}}
  pause: {type: wait, duration: 3s}
  finish:
    type: http
    method: POST
    url: "STUB/wait/finish"
    query: {run: "{{ run.id }}"}
    needs: [fetch, pause]
outputs:
  done: true
"""

SERVER_APPROVAL_WORKFLOW = """
dagwright: 1
name: restart-approval
nodes:
  fetch: {type: http, url: "STUB/approval/fetch", query: {run: "{{ run.id }}"}}
  review: {type: approval, prompt: "Go on?", needs: [fetch]}
  finish:
    type: http
    method: POST
    url: "STUB/approval/finish"
    query: {run: "{{ run.id }}"}
    when: nodes.review.output.approved
outputs:
  decision: "{{ nodes.review.output.decision }}"
"""

RUNS_PER_WORKFLOW = 3


@pytest.fixture
def embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for an embedded dev server in a temporary state dir on free ports; stops it at the end."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "server-state"))
    port, ui_port = free_ports(2)
    monkeypatch.setenv(PORT_ENV, str(port))
    monkeypatch.setenv(UI_PORT_ENV, str(ui_port))
    try:
        yield
    finally:
        stop_dev_server()


async def test_server_restart_keeps_runs(task_queue: str, tmp_path: Path, embedded_server: None) -> None:
    # Without the Web UI the server starts faster and needs one port fewer.
    settings = replace(load_settings(), ui=False)
    status = await start_dev_server(settings)
    client = await connect(target_for(status, settings.namespace))

    async with HttpStub() as stub:
        for path in ("/wait/fetch", "/wait/finish", "/approval/fetch", "/approval/finish"):
            stub.script(path, Reply(json={"ok": True}))
        wait_definition = compile_workflow(tmp_path, SERVER_WAIT_WORKFLOW.replace("STUB", stub.url), "wait.yaml")
        approval_definition = compile_workflow(tmp_path, SERVER_APPROVAL_WORKFLOW.replace("STUB", stub.url),
                                               "approval.yaml")

        with WorkerProcesses(status.address, tmp_path / "workers") as workers:
            worker = workers.start(task_queue)
            await wait_until_polling(client, worker)
            waiting = [await start_run(client, task_queue, wait_definition) for _ in range(RUNS_PER_WORKFLOW)]
            approving = [await start_run(client, task_queue, approval_definition) for _ in range(RUNS_PER_WORKFLOW)]
            for handle in waiting:
                await wait_for(lambda run=handle: _status_is(run, "pause", "running"), f"{handle.id} to wait")
            for handle in approving:
                await wait_for(lambda run=handle: pending_approvals(run), f"{handle.id} to wait for its approval")

            assert stop_dev_server(settings) == status.pid
            restarted = await start_dev_server(settings)
            assert restarted.pid != status.pid
            client = await connect(target_for(restarted, settings.namespace))
            # The worker process lives through the outage and polls the new server process.
            await wait_until_polling(client, worker)

            for handle in approving:
                decided = await client.get_workflow_handle(handle.id).execute_update(
                    DECIDE_UPDATE, ApprovalDecision(node="review", decision="approve", by="ops"), result_type=dict)
                assert decided["decision"] == "approved"
            outcomes = [await wait_for_outcome(client.get_workflow_handle(handle.id), timeout=FINISH_SECONDS)
                        for handle in [*waiting, *approving]]

    for outcome in outcomes:
        assert outcome.failure is None, f"{outcome.handle.id}: {outcome.error_message}"
    assert [outcome.result["outputs"] for outcome in outcomes[:RUNS_PER_WORKFLOW]] == [{"done": True}] * RUNS_PER_WORKFLOW
    assert ([outcome.result["outputs"] for outcome in outcomes[RUNS_PER_WORKFLOW:]]
            == [{"decision": "approved"}] * RUNS_PER_WORKFLOW)
    # Every path was requested exactly once by each run: nothing was lost and nothing repeated.
    expected = {
        "/wait/fetch": sorted(handle.id for handle in waiting),
        "/wait/finish": sorted(handle.id for handle in waiting),
        "/approval/fetch": sorted(handle.id for handle in approving),
        "/approval/finish": sorted(handle.id for handle in approving),
    }
    for path, run_ids in expected.items():
        assert sorted(request.query.removeprefix("run=") for request in stub.requests(path)) == run_ids, path


async def _status_is(handle: WorkflowHandle, node_id: str, status: str) -> bool:
    return await node_status(handle, node_id) == status
