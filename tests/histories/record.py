"""Record the replay corpus: run every scenario on a fresh dev server and save its history.

Usage (from the repository root)::

    .venv/bin/python tests/histories/record.py                 # every scenario
    .venv/bin/python tests/histories/record.py --only sql      # one scenario (repeatable)
    .venv/bin/python tests/histories/record.py --label v0.2.0  # into tests/histories/v0.2.0/

The script starts its own Temporal dev server (in memory, on a free port), an HTTP stub, the
LLM stand-in and, for the sql scenario, an embedded PostgreSQL server, all on 127.0.0.1 or a
Unix socket. One dagwright worker serves every scenario. Each run gets a fixed workflow id
(`replay-<scenario>`), and `<label>/<scenario>.json` receives `fetch_history().to_json()`.
`<label>/manifest.json` maps each file to its workflow id, which replay needs.

The label defaults to `v<installed dagwright version>`. Re-recording replaces the files of that
label only. Never re-record the folder of a released version: its histories are what runs still
in flight on that version look like, and the current code must keep replaying them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HISTORIES_DIR = Path(__file__).resolve().parent
REPO_ROOT = HISTORIES_DIR.parents[1]
# tests/ contains the HTTP stub and the test tool registry, and it is not a package.
sys.path.insert(0, str(HISTORIES_DIR.parent))

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from http_stub import HttpStub, Reply  # noqa: E402
from scenarios import SCENARIOS, RecordingError, Scenario, scenario_named  # noqa: E402
from workflow_helpers import TOOLS  # noqa: E402

from dagwright.activities.llm.activity import LlmActivities  # noqa: E402
from dagwright.activities.sql_connections import EMBEDDED_SUBDIR, SqlConnections  # noqa: E402
from dagwright.cli.connect import find_temporal_executable  # noqa: E402
from dagwright.cli.run import start_run  # noqa: E402
from dagwright.cli.server import dynamic_config_args, search_attribute_keys  # noqa: E402
from dagwright.config import Settings  # noqa: E402
from dagwright.interpreter.compiler import compile_file  # noqa: E402
from dagwright.interpreter.inputs import validate_inputs  # noqa: E402
from dagwright.interpreter.rerun import plan_rerun  # noqa: E402
from dagwright.interpreter.run_types import RunRequest  # noqa: E402
from dagwright.testing.llm_server import LlmStandIn  # noqa: E402
from dagwright.worker import WorkerOptions, build_worker  # noqa: E402

logger = logging.getLogger("record")

TASK_QUEUE = "dagwright-replay-corpus"
MANIFEST = "manifest.json"
# A run that has not ended by then is stuck, so the recording fails instead of hanging.
RUN_TIMEOUT_SECONDS = 60.0
# The connection name that workflows/sql.yaml uses.
SQL_CONNECTION = "replay"


@dataclass
class Recorder:
    """Everything one recording session shares: the client and the local stand-ins."""

    client: Client
    http: HttpStub
    llm: LlmStandIn
    out_dir: Path

    async def record(self, scenario: Scenario) -> dict[str, dict[str, Any]]:
        """Run `scenario`, check how it ended and save its histories. Return their manifest entries."""
        self._prepare_stubs(scenario)
        workflow_file = Path("tests/histories/workflows") / scenario.workflow
        definition = compile_file(workflow_file, tools=TOOLS)
        request = await self._request(scenario, definition)
        handle = await start_run(self.client, request, scenario.workflow_id, TASK_QUEUE, True)
        if scenario.driver is not None:
            await scenario.driver(handle)
        state = await self._wait_for_end(handle)
        self._check(scenario, state)

        entries = {f"{scenario.name}.json": await self._save(scenario, handle.id, scenario.name)}
        for child in scenario.children:
            name = f"{scenario.name}__{child.label}"
            entries[f"{name}.json"] = await self._save(scenario, handle.id + child.id_suffix, name)
        return entries

    def _prepare_stubs(self, scenario: Scenario) -> None:
        for path, replies in scenario.http.items():
            self.http.script(path, *(Reply(status=status, json=body, text="stub reply", delay=delay)
                                     for status, body, delay in replies))
        self.llm.reset()
        self.llm.script(scenario.llm)

    async def _request(self, scenario: Scenario, definition: dict[str, Any]) -> RunRequest:
        inputs = dict(scenario.inputs)
        if scenario.http:
            inputs["base"] = self.http.url
        request = RunRequest(definition=definition, inputs=validate_inputs(definition["inputs"], inputs),
                             search_attributes=True)
        if scenario.rerun_from is None:
            return request

        first_id = f"{scenario.workflow_id}-first"
        first = await start_run(self.client, request, first_id, TASK_QUEUE, True)
        await self._wait_for_end(first)
        snapshot = await first.query("snapshot")
        plan = plan_rerun(definition, snapshot, from_node=scenario.rerun_from)
        return RunRequest(definition=definition, inputs=request.inputs, reuse=plan.reuse, rerun_of=first_id,
                          search_attributes=True)

    async def _wait_for_end(self, handle: WorkflowHandle) -> dict[str, Any]:
        try:
            async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
                await handle.result()
        except WorkflowFailureError:
            pass  # failed and cancelled runs are scenarios too, and _check compares the status
        except TimeoutError:
            await handle.terminate(reason="replay corpus recording timed out")
            raise RecordingError(f"run {handle.id} timed out: it did not end within {RUN_TIMEOUT_SECONDS:g}s"
                                 " and was terminated; check the worker log above") from None
        return await handle.query("state")

    def _check(self, scenario: Scenario, state: dict[str, Any]) -> None:
        statuses = {node_id: row["status"] for node_id, row in state["nodes"].items()}
        problems = []
        if state["status"] != scenario.expected_status:
            problems.append(f"run status {state['status']!r}, expected {scenario.expected_status!r}"
                            f" (error: {state['error']})")
        if statuses != scenario.expected_nodes:
            problems.append(f"node statuses {statuses}, expected {scenario.expected_nodes}")
        llm_requests = len(self.llm.requests)
        if scenario.expected_llm_requests is not None and llm_requests != scenario.expected_llm_requests:
            problems.append(f"{llm_requests} LLM stand-in requests, expected {scenario.expected_llm_requests}")
        if problems:
            raise RecordingError(f"scenario '{scenario.name}' ran differently than scripted: " + "; ".join(problems)
                                 + ". Check its workflow file and its stub replies in scenarios.py")

    async def _save(self, scenario: Scenario, workflow_id: str, name: str) -> dict[str, Any]:
        history = await self.client.get_workflow_handle(workflow_id).fetch_history()
        path = self.out_dir / f"{name}.json"
        path.write_text(history.to_json() + "\n", encoding="utf-8")
        logger.info("saved %s (%d events, %d bytes)", path.relative_to(REPO_ROOT), len(history.events),
                    path.stat().st_size)
        return {
            "workflow_id": workflow_id,
            "scenario": scenario.name,
            "description": scenario.description,
            "workflow_file": f"workflows/{scenario.workflow}",
            "temporalio": importlib.metadata.version("temporalio"),
        }


# ---------------------------------------------------------------- environment


@asynccontextmanager
async def dev_server() -> AsyncIterator[Client]:
    """Start an in-memory dev server configured like the test suite's and yield its client."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_executable()),
        data_converter=pydantic_data_converter,
        search_attributes=list(search_attribute_keys().values()),
        dev_server_extra_args=dynamic_config_args(),
        ip="127.0.0.1",
    )
    try:
        yield env.client
    finally:
        await env.shutdown()


@contextmanager
def sql_state_dir(needed: bool) -> Iterator[Path]:
    """Yield a state folder whose embedded PostgreSQL server is deleted afterwards."""
    # Outside the repository and with traversable parents: under root, pgserver runs the
    # server as another user, who must reach the data folder.
    state = Path(tempfile.mkdtemp(prefix="dagwright-replay-pg-"))
    server = None
    try:
        if needed:
            import pgserver

            server = pgserver.get_server(state / EMBEDDED_SUBDIR, cleanup_mode="delete")
        yield state
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(state, ignore_errors=True)


async def record_corpus(scenarios: list[Scenario], out_dir: Path) -> None:
    """Record `scenarios` into `out_dir` and merge their entries into its manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    needs_sql = any(scenario.uses_sql for scenario in scenarios)
    with sql_state_dir(needs_sql) as state, LlmStandIn() as llm:
        environ = {"DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": llm.base_url, "MISTRAL_API_KEY": llm.api_key}
        settings = Settings(raw={"network": {"allow": ["127.0.0.1/32"]}})
        sql = SqlConnections.from_settings({"connections": {SQL_CONNECTION: {"embedded": True}}}, state, {},
                                           state_dir=state)
        async with dev_server() as client, HttpStub() as http:
            worker = build_worker(client, WorkerOptions(task_queue=TASK_QUEUE), registry=TOOLS, settings=settings,
                                  llm=LlmActivities.from_config({}, environ), sql=sql)
            recorder = Recorder(client=client, http=http, llm=llm, out_dir=out_dir)
            async with worker:
                for scenario in scenarios:
                    logger.info("recording %s", scenario.name)
                    update_manifest(out_dir, await recorder.record(scenario))
                # Ends the held reply of the fail_fast scenario, so the worker can shut down.
                http.release()


def update_manifest(out_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Merge `entries` into `<out_dir>/manifest.json`, keeping other scenarios' entries."""
    path = out_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"histories": {}}
    manifest["histories"].update(entries)
    manifest["histories"] = dict(sorted(manifest["histories"].items()))
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Record the DagWorkflow replay corpus.")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="record only this scenario (repeatable). Default: every scenario")
    parser.add_argument("--label", default=f"v{importlib.metadata.version('dagwright')}",
                        help="folder under tests/histories/ to write to (default: v<dagwright version>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        scenarios = [scenario_named(name) for name in args.only] if args.only else list(SCENARIOS)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    # Workflow files are compiled by their repository-relative path, so that path (and not
    # this machine's checkout folder) is what the recorded definitions contain.
    os.chdir(REPO_ROOT)
    try:
        asyncio.run(record_corpus(scenarios, HISTORIES_DIR / args.label))
    except RecordingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
