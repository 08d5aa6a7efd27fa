"""`dagwright trace`, `status --watch`, `graph --run` and `list --status waiting_approval` on real runs.

Runs are started as `dagwright run` starts them (memo, search attributes), on the session's
dev server, which has dagwright's search attributes registered. CLI commands reach that server
through TEMPORAL_ADDRESS, in this process or as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dagwright.activities.llm.activity import LlmActivities
from dagwright.cli.common import EXIT_OK
from dagwright.cli.run import start_run as start_cli_run
from dagwright.cli.runs import _list, watch_status
from dagwright.cli.trace import build_timeline, render_timeline, timeline_json
from dagwright.interpreter.approvals import DECIDE_UPDATE, ApprovalDecision
from dagwright.interpreter.inputs import validate_inputs
from dagwright.interpreter.run_types import RunRequest
from dagwright.testing.llm_server import LlmStandIn
from dagwright.worker import WorkerOptions, build_worker
from http_stub import HttpStub, Reply
from workflow_helpers import TOOLS, compile_yaml

WAIT_SECONDS = 20.0

# fetch retries once, classify calls the LLM stand-in, review waits for a person, publish runs after.
REVIEWED = """
dagwright: 1
name: reviewed
version: "2"
nodes:
  fetch:
    type: http
    url: STUB/fetch
    retry: {max_attempts: 3, initial_interval: 0.1s}
  classify:
    type: llm
    model: mistral-small-latest
    prompt: "Label: {{ nodes.fetch.output.json.text }}"
  review:
    type: approval
    prompt: "Publish {{ nodes.classify.output.text }}?"
    needs: [classify]
  publish:
    type: python
    function: echo
    args: {value: "{{ nodes.review.output.decision }}"}
outputs:
  usage: "{{ nodes.classify.output.usage }}"
  cost: "{{ nodes.classify.output.cost_usd }}"
"""


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point CLI commands, here and in subprocesses, at the session's dev server."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", temporal_env.client.namespace)


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[HttpStub]:
    async with HttpStub() as server:
        server.script("/fetch", Reply(status=500), Reply(json={"text": "the invoice total is wrong"}))
        yield server


@pytest_asyncio.fixture
async def reviewed_worker(client: Client, task_queue: str, llm_stand_in: LlmStandIn) -> AsyncIterator[None]:
    """A dagwright worker on the test's task queue whose LLM provider is the stand-in."""
    llm = LlmActivities.from_config({}, {
        "DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": llm_stand_in.base_url,
        "MISTRAL_API_KEY": llm_stand_in.api_key,
    })
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS, llm=llm):
        yield


async def start_reviewed(client: Client, task_queue: str, folder: Path, stub: HttpStub,
                         text: str = REVIEWED) -> tuple[WorkflowHandle, dict[str, Any]]:
    """Start a run the way `dagwright run` does: with memo and search attributes."""
    definition = compile_yaml(folder, text.replace("STUB", stub.url))
    request = RunRequest(definition=definition, inputs=validate_inputs(definition["inputs"], {}),
                         search_attributes=True)
    handle = await start_cli_run(client, request, f"{definition['name']}-{uuid.uuid4()}", task_queue, True)
    return handle, definition


async def wait_until(check: Callable[[], Awaitable[bool]], description: str) -> None:
    """Poll `check` until it returns True; fail the test after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_SECONDS:g} s waiting for {description}")
        await asyncio.sleep(0.1)


async def waiting_for_review(handle: WorkflowHandle) -> bool:
    return bool(await handle.query("approvals"))


async def approve(handle: WorkflowHandle) -> None:
    await handle.execute_update(DECIDE_UPDATE, ApprovalDecision(node="review", decision="approve", by="ana"))


async def run_cli(*arguments: str) -> tuple[int, str, str]:
    """Run `python -m dagwright ...` without blocking the event loop the worker runs on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dagwright", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_list_finds_run_waiting_for_approval(client: Client, task_queue: str, tmp_path: Path,
                                                   stub: HttpStub, reviewed_worker: None, cli_env: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`dagwright list --status waiting_approval` finds the run through its DagwrightStatus attribute."""
    handle, _ = await start_reviewed(client, task_queue, tmp_path, stub)
    await wait_until(lambda: waiting_for_review(handle), "the approval")

    async def listed() -> bool:
        assert await _list(None, "waiting_approval", 50, True) == EXIT_OK
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return any(row["run_id"] == handle.id for row in rows)

    # Visibility is eventually consistent, so the listing may lag the workflow by a moment.
    await wait_until(listed, "the run in `list --status waiting_approval`")
    timeline = await build_timeline(client, handle.id)
    review = next(row for row in timeline.rows if row.node_id == "review")
    assert (review.node_type, review.status, review.end) == ("approval", "waiting", None)
    assert timeline.status == "running"

    await approve(handle)
    await handle.result()


async def test_trace_shows_retries_tokens_cost_and_waits(client: Client, task_queue: str, tmp_path: Path,
                                                         stub: HttpStub, reviewed_worker: None,
                                                         cli_env: None) -> None:
    """The timeline has one row per node with attempts, the retry's error, tokens, cost and approval wait."""
    handle, _ = await start_reviewed(client, task_queue, tmp_path, stub)
    await wait_until(lambda: waiting_for_review(handle), "the approval")
    await approve(handle)
    result = await handle.result()
    usage, cost = result["outputs"]["usage"], result["outputs"]["cost"]

    timeline = await build_timeline(client, handle.id)
    rows = [(row.label, row.node_type, row.status, row.attempts, row.tokens_in, row.tokens_out, row.cost_usd)
            for row in timeline.rows]
    assert rows == [
        ("fetch", "http", "succeeded", 2, None, None, None),
        ("classify", "llm", "succeeded", 1, usage["prompt_tokens"], usage["completion_tokens"], cost),
        ("review", "approval", "succeeded", 0, None, None, None),
        ("publish", "python", "succeeded", 1, None, None, None),
    ]
    fetch = timeline.rows[0]
    assert fetch.last_error is not None
    assert "returned status 500" in fetch.last_error
    now = datetime.now(timezone.utc)
    review_wait = timeline.rows[2].wait(now)
    assert review_wait is not None
    assert review_wait.total_seconds() > 0
    assert (timeline.workflow, timeline.version, timeline.status) == ("reviewed", "2", "completed")
    assert timeline.totals() == {"activities": 3, "retries": 1, "tokens_in": usage["prompt_tokens"],
                                 "tokens_out": usage["completion_tokens"], "cost_usd": pytest.approx(cost)}

    text = render_timeline(timeline, now, width=20)
    lines = text.splitlines()
    assert lines[0].startswith(f"run {handle.id} (reviewed v2): completed, ")
    assert "3 activities, 1 retry, " in lines[0]
    assert lines[1].startswith("NODE")
    assert [line.split()[0] for line in lines[2:] if not line.startswith(" ")] == [
        "fetch", "classify", "review", "publish"]
    assert any("↳ last error:" in line and "returned status 500" in line for line in lines)
    assert all(line.endswith("|") and len(line.rsplit("|", 2)[1]) == 20 for line in lines[2:]
               if not line.startswith(" "))

    code, stdout, stderr = await run_cli("trace", handle.id, "--json")
    assert code == EXIT_OK, stderr
    assert json.loads(stdout)["rows"] == timeline_json(timeline, now)["rows"]


async def test_status_watch_ends_when_run_closes(client: Client, task_queue: str, tmp_path: Path,
                                                 stub: HttpStub, reviewed_worker: None, cli_env: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`status --watch` prints each change and returns once the run has closed."""
    handle, _ = await start_reviewed(client, task_queue, tmp_path, stub)
    watcher = asyncio.create_task(watch_status(handle.id, True, 0.1, clear=False))
    await wait_until(lambda: waiting_for_review(handle), "the approval")
    printed_lines: list[str] = []

    async def watch_shows_waiting() -> bool:
        printed_lines.extend(capsys.readouterr().out.splitlines())
        snapshots = [json.loads(line) for line in printed_lines]
        return any(snapshot["state"] and snapshot["state"]["status"] == "waiting_approval"
                   for snapshot in snapshots)

    await wait_until(watch_shows_waiting, "the watch to show waiting_approval")
    await approve(handle)

    assert await asyncio.wait_for(watcher, WAIT_SECONDS) == EXIT_OK
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (last["execution_status"], last["state"]["status"]) == ("completed", "succeeded")
    assert {row["status"] for row in last["state"]["nodes"].values()} == {"succeeded"}


async def test_graph_run_colours_nodes_by_status(client: Client, task_queue: str, tmp_path: Path,
                                                 stub: HttpStub, reviewed_worker: None, cli_env: None) -> None:
    """`graph FILE --run RUN` marks each node with its status class in the run."""
    stub.script("/broken", Reply(status=404))
    handle, _ = await start_reviewed(client, task_queue, tmp_path, stub, text="""
dagwright: 1
name: coloured
nodes:
  fetch: {type: http, url: "STUB/fetch", retry: {initial_interval: 0.1s}}
  check: {type: http, url: "STUB/broken", on_error: continue}
  after: {type: transform, value: "{{ nodes.check.output }}", needs: [check]}
""")
    await handle.result()

    code, stdout, stderr = await run_cli("graph", str(tmp_path / "workflow.yaml"), "--run", handle.id)
    assert code == EXIT_OK, stderr
    assert [line.strip() for line in stdout.splitlines() if line.strip().startswith("class ")] == [
        "class fetch succeeded", "class check failed", "class after skipped"]
