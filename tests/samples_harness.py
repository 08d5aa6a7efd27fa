"""Run the sample workflows through the `dagwright` command line, as a user would.

`SampleCli` starts `python -m dagwright ...` in a subprocess whose environment points at the
test's Temporal server, state folder, LLM stand-in and helpdesk token. The helpers below read
what a run left behind: its result and history on Temporal, and the embedded PostgreSQL server
in the state folder.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pgserver
from dagwright.activities.sql_connections import EMBEDDED_SUBDIR
from temporalio.client import Client

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples"
FIXTURES_DIR = SAMPLES_DIR / "fixtures"
LLM_SCRIPT = FIXTURES_DIR / "llm-script.yaml"

# Bound on one CLI command, so a run that hangs fails the test instead of the whole session.
CLI_TIMEOUT_SECONDS = 90.0

# Variables of the outer environment that would send a run elsewhere or change its settings.
_INHERITED_PREFIXES = ("DAGWRIGHT_", "TEMPORAL_", "MISTRAL_", "OPENAI_")

_APPROVE_HINT = re.compile(r"dagwright approve (?P<run>\S+) (?P<node>\S+)")


def load_fixtures_module() -> ModuleType:
    """Import samples/fixtures/serve.py, which is a script and not part of a package."""
    name = "dagwright_samples_fixtures_serve"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FIXTURES_DIR / "serve.py")
    assert spec is not None and spec.loader is not None, f"cannot load {FIXTURES_DIR / 'serve.py'}"
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while the classes are created.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class CliResult:
    """A finished CLI command: exit status and both output streams as text."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> dict[str, Any]:
        """The JSON document that `--json` prints on stdout (its last line)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"{self.describe()} printed nothing on stdout"
        return json.loads(lines[-1])

    def describe(self) -> str:
        return (f"`dagwright {' '.join(self.args)}` exited with {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}")


@dataclass
class RunningCli:
    """A CLI command still running, with its output collected line by line as it arrives."""

    args: list[str]
    process: asyncio.subprocess.Process
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    _new_stderr: asyncio.Event = field(default_factory=asyncio.Event)
    _stderr_closed: bool = False
    _readers: list[asyncio.Task] = field(default_factory=list)

    def start_reading(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            asyncio.create_task(self._collect_stdout(self.process.stdout)),
            asyncio.create_task(self._collect_stderr(self.process.stderr)),
        ]

    async def _collect_stdout(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.stdout_lines.append(raw.decode("utf-8", errors="replace"))

    async def _collect_stderr(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.stderr_lines.append(raw.decode("utf-8", errors="replace"))
            self._new_stderr.set()
        self._stderr_closed = True
        self._new_stderr.set()

    async def wait_for_approval(self, node: str, timeout: float = CLI_TIMEOUT_SECONDS) -> str:
        """Wait until stderr names the `dagwright approve` command for `node`; return the run id."""
        async def scan() -> str:
            while True:
                # Cleared before the scan, so a line that arrives after it sets the event again.
                self._new_stderr.clear()
                for line in self.stderr_lines:
                    match = _APPROVE_HINT.search(line)
                    if match and match["node"] == node:
                        return match["run"]
                if self._stderr_closed:
                    raise AssertionError(f"the run ended before approval '{node}' was requested:\n"
                                         + "".join(self.stderr_lines[-50:]))
                await self._new_stderr.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def finish(self, timeout: float = CLI_TIMEOUT_SECONDS) -> CliResult:
        """Wait for the command to exit and for all of its output."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
            raise
        finally:
            await asyncio.gather(*self._readers)
        return CliResult(self.args, self.process.returncode or 0, "".join(self.stdout_lines),
                         "".join(self.stderr_lines))


class SampleCli:
    """Runs `python -m dagwright` from the repository root with a fixed environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    async def start(self, *args: str) -> RunningCli:
        """Start a command and return at once; call `finish` on the result."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dagwright", *args,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        running = RunningCli(list(args), process)
        running.start_reading()
        return running

    async def run(self, *args: str) -> CliResult:
        """Run a command to its end."""
        return await (await self.start(*args)).finish()


def cli_environment(
    *,
    temporal_address: str,
    state_dir: Path,
    llm_base_url: str,
    llm_api_key: str,
    helpdesk_token: str,
) -> dict[str, str]:
    """Return the environment of a CLI process: the outer one without dagwright, Temporal and
    provider settings, plus the given ones."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_INHERITED_PREFIXES)}
    env.update({
        "TEMPORAL_ADDRESS": temporal_address,
        "DAGWRIGHT_STATE_DIR": str(state_dir),
        "DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": llm_base_url,
        "MISTRAL_API_KEY": llm_api_key,
        "DAGWRIGHT_SECRET_HELPDESK_TOKEN": helpdesk_token,
        "PYTHONUNBUFFERED": "1",
    })
    return env


async def run_result(client: Client, workflow_id: str) -> dict[str, Any]:
    """Return a finished run's result (outputs, nodes, usage) from Temporal."""
    return await client.get_workflow_handle(workflow_id, result_type=dict).result()


async def history_text(client: Client, workflow_id: str) -> str:
    """Return a run's whole history as JSON, followed by the decoded text of every payload.

    Payload data is base64 in the history's JSON, so a plain search of it would miss a value
    inside an activity's input or result.
    """
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    document = json.loads(history.to_json())
    decoded: list[str] = []
    _collect_payloads(document, decoded)
    return json.dumps(document, ensure_ascii=False) + "\n" + "\n".join(decoded)


def _collect_payloads(value: Any, decoded: list[str]) -> None:
    if isinstance(value, dict):
        if isinstance(value.get("data"), str) and "metadata" in value:
            decoded.append(base64.b64decode(value["data"]).decode("utf-8", errors="replace"))
        for item in value.values():
            _collect_payloads(item, decoded)
    elif isinstance(value, list):
        for item in value:
            _collect_payloads(item, decoded)


class EmbeddedDatabase:
    """The embedded PostgreSQL server in a state folder, held open for the test's duration.

    Holding a handle in the test process keeps the server up between CLI runs, so each run
    reuses it, and lets the test read the tables that the runs wrote.
    """

    def __init__(self, state_dir: Path) -> None:
        # No cleanup by pgserver: `stop` stops the server explicitly.
        self._server = pgserver.get_server(state_dir / EMBEDDED_SUBDIR, cleanup_mode=None)

    def url(self, database: str) -> str:
        return self._server.get_uri(database)

    def stop(self) -> None:
        """Stop the server with a fast shutdown and wait for it to exit."""
        # NOTE: pgserver stops the server when the last process holding a handle exits. The CLI
        # leaves with os._exit, which skips pgserver's exit hook, so dead CLI pids stay in its
        # handle list and the server would keep running after the test.
        process = self._server.get_postmaster_info().process
        if process.is_running():
            process.send_signal(signal.SIGINT)
            process.wait(30)
