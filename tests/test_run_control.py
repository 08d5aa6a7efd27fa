"""Run control on a real worker: pause and resume, cancel, and `dagwright rerun`.

HTTP nodes call an `HttpStub` that holds replies until the test releases them, so the test
controls which requests are in flight when it pauses or cancels a run. LLM nodes call the LLM
stand-in. `dagwright pause`, `resume` and `rerun` run as real CLI subprocesses against the
session's dev server. `rerun` gets `--detach`, so the test's worker runs every node.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_helpers import INHERITED_ENV_TO_DROP
from http_stub import HttpStub, RecordedRequest, Reply
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import CancelledError
from workflow_helpers import (
    TOOLS,
    compile_yaml,
    event_type_names,
    history_events,
    start_run,
    wait_for_outcome,
)

from dagwright.activities.llm.activity import LlmActivities
from dagwright.cli.server import search_attribute_keys
from dagwright.interpreter.approvals import PAUSE_SIGNAL, RESUME_SIGNAL, ControlRequest
from dagwright.testing.llm_server import LlmStandIn
from dagwright.worker import WorkerOptions, build_worker

STATE_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.05
# A CLI subprocess imports dagwright and temporalio and connects before it acts (about 2 s).
CLI_TIMEOUT_SECONDS = 60.0
# The stub holds a reply this long unless the test releases it first.
HELD = 60.0
SUMMARY = "Rates stay flat; the outlook is calm."


# ---------------------------------------------------------------- helpers


@asynccontextmanager
async def control_worker(client: Client, task_queue: str,
                         stand_in: LlmStandIn | None = None) -> AsyncIterator[None]:
    """Run a worker with the test tools, whose `mistral` provider calls the stand-in if given."""
    llm = None
    if stand_in is not None:
        providers = {"providers": {"mistral": {"kind": "mistral", "base_url": stand_in.base_url}}}
        llm = LlmActivities.from_config(providers, {"MISTRAL_API_KEY": stand_in.api_key})
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS, llm=llm):
        yield


async def poll_state(handle: WorkflowHandle, ready: Callable[[dict[str, Any]], bool], *,
                     timeout: float = STATE_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Query the run's state until `ready(state)` holds, and return that state."""
    state: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                state = await handle.query("state")
                if ready(state):
                    return state
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
    except TimeoutError:
        pytest.fail(f"run {handle.id} did not reach the expected state within {timeout:g} s; last state: {state}")


async def wait_until_finished(request: RecordedRequest, *, timeout: float = STATE_TIMEOUT_SECONDS) -> None:
    """Wait until the stub is done with `request`: it replied, or the client hung up."""
    try:
        async with asyncio.timeout(timeout):
            while request.finished_at is None:
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
    except TimeoutError:
        pytest.fail(f"the stub still handles {request.method} {request.path} after {timeout:g} s")


@dataclass
class CliResult:
    """Exit status and output of one `dagwright` subprocess."""

    code: int
    stdout: str
    stderr: str


async def run_cli(client: Client, task_queue: str, folder: Path, *args: str) -> CliResult:
    """Run `python -m dagwright ARGS` against the session's dev server and the test's task queue."""
    env = {name: value for name, value in os.environ.items() if name not in INHERITED_ENV_TO_DROP}
    # An empty client config file keeps the developer's Temporal profiles out of the test.
    config_file = folder / "temporal-client.toml"
    config_file.touch()
    env.update({
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_CONFIG_FILE": str(config_file),
        "DAGWRIGHT_STATE_DIR": str(folder / "cli-state"),
        "DAGWRIGHT_TASK_QUEUE": task_queue,
    })
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dagwright", *args, env=env, cwd=folder,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT_SECONDS):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"dagwright {' '.join(args)} did not exit within {CLI_TIMEOUT_SECONDS:g} s")
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


async def signals(client: Client, handle: WorkflowHandle) -> list[tuple[str, dict[str, Any]]]:
    """Return (signal name, decoded argument) for each signal in the run's history."""
    found = []
    for event in await history_events(handle):
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            continue
        attributes = event.workflow_execution_signaled_event_attributes
        [argument] = await client.data_converter.decode(list(attributes.input.payloads), [dict])
        found.append((attributes.signal_name, argument))
    return found


def scheduled_count(event_names: list[str]) -> int:
    return event_names.count("ACTIVITY_TASK_SCHEDULED")


# ---------------------------------------------------------------- pause and resume


FAN_OUT = """
dagwright: 1
name: pause-fan-out
nodes:
  ids: {type: transform, value: [0, 1, 2, 3, 4, 5]}
  fetch:
    type: http
    for_each: nodes.ids.output
    max_parallel: 2
    url: "STUB/item?n={{ item }}"
    output: "{{ result.json.n }}"
  count: {type: transform, value: "{{ nodes.fetch.output | length }}"}
outputs:
  fetched: "{{ nodes.fetch.output }}"
  count: "{{ nodes.count.output }}"
"""


async def test_pause_stops_new_items_until_resume(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/item", Reply(json={"n": "done"}, delay=HELD))
        definition = compile_yaml(tmp_path, FAN_OUT.replace("STUB", stub.url))
        async with control_worker(client, task_queue):
            handle = await start_run(client, task_queue, definition)
            await stub.wait_for_requests("/item", 2)
            await handle.signal(PAUSE_SIGNAL, ControlRequest(by="ana", reason="quota check"))
            await poll_state(handle, lambda state: state["paused"])

            # The two held items finish; the paused run starts no further item.
            stub.release()
            paused = await poll_state(handle, lambda state: state["nodes"]["fetch"]["items"]["done"] == 2)
            requests_while_paused = len(stub.requests("/item"))
            scheduled_while_paused = scheduled_count(event_type_names(await history_events(handle)))

            await handle.signal(RESUME_SIGNAL, ControlRequest(by="ben", reason="quota ok"))
            outcome = await wait_for_outcome(handle)

    assert paused["status"] == "paused"
    assert paused["nodes"]["fetch"]["items"] == {"total": 6, "done": 2, "failed": 0}
    assert paused["nodes"]["count"]["status"] == "pending"
    assert requests_while_paused == 2
    assert scheduled_while_paused == 2
    assert outcome.failure is None
    assert outcome.result["outputs"] == {"fetched": ["done"] * 6, "count": 6}
    assert sorted(request.query for request in stub.requests("/item")) == [f"n={n}" for n in range(6)]
    assert stub.max_concurrent("/item") == 2


async def test_pause_resume_recorded_with_requester(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={"ok": True}, delay=HELD))
        definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: pause-record
nodes:
  call: {{type: http, url: "{stub.url}/slow"}}
""")
        async with control_worker(client, task_queue):
            handle = await start_run(client, task_queue, definition)
            await stub.wait_for_requests("/slow", 1)
            paused = await run_cli(client, task_queue, tmp_path, "pause", handle.id, "--by", "ana",
                                   "--reason", "quota check")
            await poll_state(handle, lambda state: state["paused"])
            resumed = await run_cli(client, task_queue, tmp_path, "resume", handle.id, "--by", "ben",
                                    "--reason", "quota ok")
            await poll_state(handle, lambda state: not state["paused"])
            stub.release()
            outcome = await wait_for_outcome(handle)

    assert (paused.code, paused.stdout) == (0, f"pause sent to run {handle.id}\n")
    assert (resumed.code, resumed.stdout) == (0, f"resume sent to run {handle.id}\n")
    assert await signals(client, handle) == [
        ("pause", {"by": "ana", "reason": "quota check"}),
        ("resume", {"by": "ben", "reason": "quota ok"}),
    ]
    control = outcome.state["control"]
    assert [{key: value for key, value in entry.items() if key != "at"} for entry in control] == [
        {"action": "pause", "by": "ana", "reason": "quota check"},
        {"action": "resume", "by": "ben", "reason": "quota ok"},
    ]
    assert all(isinstance(entry["at"], str) for entry in control)
    assert outcome.failure is None


# ---------------------------------------------------------------- cancel


async def test_cancel_stops_running_http_node(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/slow", Reply(json={"ok": True}, delay=HELD))
        definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: cancel-http
nodes:
  call: {{type: http, url: "{stub.url}/slow"}}
  after: {{type: transform, value: done, needs: [call]}}
""")
        async with control_worker(client, task_queue):
            handle = await start_run(client, task_queue, definition)
            [request] = await stub.wait_for_requests("/slow", 1)
            await handle.cancel()
            outcome = await wait_for_outcome(handle)
            # The activity learns of the cancellation from its next heartbeat, a few seconds later.
            await wait_until_finished(request)

    description = await handle.describe()
    names = event_type_names(await history_events(handle))
    assert isinstance(outcome.failure.cause, CancelledError)
    assert description.status == WorkflowExecutionStatus.CANCELED
    assert "ACTIVITY_TASK_CANCEL_REQUESTED" in names
    assert request.client_disconnected is True
    assert outcome.statuses() == {"call": "cancelled", "after": "cancelled"}
    assert outcome.state["status"] == "cancelled"


# ---------------------------------------------------------------- rerun


RERUN = """
dagwright: 1
name: rerun-chain
version: "2"
nodes:
  fetch: {type: http, url: "STUB/article"}
  summarize:
    type: llm
    model: mistral-small-latest
    prompt: "Summarize: {{ nodes.fetch.output.json.text }}"
  post:
    type: http
    method: POST
    url: "STUB/summary"
    json: {summary: "{{ nodes.summarize.output.text }}"}
    retry: {max_attempts: 1}
outputs:
  summary: "{{ nodes.summarize.output.text }}"
"""


async def test_rerun_from_node_reuses_upstream(client: Client, task_queue: str, tmp_path: Path,
                                               llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply=SUMMARY)
    new_id = f"rerun-chain-{uuid.uuid4()}"
    async with HttpStub() as stub:
        stub.script("/article", Reply(json={"text": "The central bank kept rates unchanged."}))
        stub.script("/summary", Reply(json={"ok": True}))
        definition = compile_yaml(tmp_path, RERUN.replace("STUB", stub.url))
        async with control_worker(client, task_queue, llm_stand_in):
            first = await wait_for_outcome(await start_run(client, task_queue, definition))
            cli = await run_cli(client, task_queue, tmp_path, "rerun", first.handle.id, "--from", "summarize",
                                "--id", new_id, "--detach")
            second = await wait_for_outcome(client.get_workflow_handle(new_id))

    assert first.failure is None
    assert (cli.code, cli.stdout) == (0, f"{new_id}\n")
    assert f"rerun of {first.handle.id}: reusing 1 node(s), executing summarize, post" in cli.stderr
    assert second.failure is None
    assert second.result["outputs"] == {"summary": SUMMARY}
    # The upstream fetch ran once in total; summarize and post ran in both runs.
    assert len(stub.requests("/article")) == 1
    prompts = [request.body["messages"] for request in llm_stand_in.requests]
    assert prompts == [[{"role": "user", "content": "Summarize: The central bank kept rates unchanged."}]] * 2
    assert [request.json() for request in stub.requests("/summary")] == [{"summary": SUMMARY}] * 2
    assert second.node("fetch")["reused"] is True
    assert "reused" not in second.node("summarize")
    assert "reused" not in second.node("post")


async def test_rerun_records_parent_run(client: Client, task_queue: str, tmp_path: Path,
                                        llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply=SUMMARY)
    new_id = f"rerun-chain-{uuid.uuid4()}"
    async with HttpStub() as stub:
        stub.script("/article", Reply(json={"text": "The central bank kept rates unchanged."}))
        stub.script("/summary", Reply(json={"ok": True}))
        definition = compile_yaml(tmp_path, RERUN.replace("STUB", stub.url))
        async with control_worker(client, task_queue, llm_stand_in):
            first = await wait_for_outcome(await start_run(client, task_queue, definition))
            cli = await run_cli(client, task_queue, tmp_path, "rerun", first.handle.id, "--from", "post",
                                "--id", new_id, "--detach")
            second = await wait_for_outcome(client.get_workflow_handle(new_id))

    description = await second.handle.describe()
    assert cli.code == 0, cli.stderr
    assert await description.memo() == {
        "workflow": "rerun-chain",
        "version": "2",
        "definition_hash": definition["hash"],
        "rerun_of": first.handle.id,
    }
    assert description.typed_search_attributes.get(search_attribute_keys()["DagwrightParentRun"]) == first.handle.id


async def test_rerun_from_failed_executes_failed_nodes(client: Client, task_queue: str, tmp_path: Path,
                                                       llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply=SUMMARY)
    new_id = f"rerun-chain-{uuid.uuid4()}"
    async with HttpStub() as stub:
        stub.script("/article", Reply(json={"text": "The central bank kept rates unchanged."}))
        stub.script("/summary", Reply(status=400, text="the chat service is down"), Reply(json={"ok": True}))
        definition = compile_yaml(tmp_path, RERUN.replace("STUB", stub.url))
        async with control_worker(client, task_queue, llm_stand_in):
            first = await wait_for_outcome(await start_run(client, task_queue, definition))
            cli = await run_cli(client, task_queue, tmp_path, "rerun", first.handle.id, "--from-failed",
                                "--id", new_id, "--detach")
            second = await wait_for_outcome(client.get_workflow_handle(new_id))

    assert first.statuses() == {"fetch": "succeeded", "summarize": "succeeded", "post": "failed"}
    assert f"rerun of {first.handle.id}: reusing 2 node(s), executing post" in cli.stderr
    assert second.failure is None
    assert second.statuses() == {"fetch": "succeeded", "summarize": "succeeded", "post": "succeeded"}
    assert len(stub.requests("/article")) == 1
    assert len(llm_stand_in.requests) == 1
    assert len(stub.requests("/summary")) == 2
    assert [second.node(node_id).get("reused", False) for node_id in ("fetch", "summarize", "post")] == [
        True, True, False,
    ]
