"""Run `dagwright worker` as a real subprocess that a test can SIGKILL, and wait for it to poll.

Crash tests need a worker that dies the way a machine or container dies. It gets no graceful
shutdown, completes no activity and does not tell the server that it is gone. `WorkerProcesses` starts such workers with
an environment of their own, waits until the server lists them as pollers of the task queue,
and kills every one it started when the test ends, whatever the outcome.

Usage::

    with WorkerProcesses(address, tmp_path) as workers:
        first = workers.start(task_queue)
        await wait_until_polling(client, first)
        first.kill()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

# The worker subprocess imports dagwright and temporalio and connects before it polls. That
# took about 2 s on a 2-core machine, and the limit leaves room for a loaded CI machine.
POLL_WAIT_SECONDS = 30.0
# Seconds a stopped worker gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 15.0
# Environment variables of the developer's shell that would point the worker at another
# server, configuration file, tool module or task queue than the test's.
INHERITED_ENV_TO_DROP = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_PROFILE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_CONFIG_FILE",
    "DAGWRIGHT_CONFIG",
    "DAGWRIGHT_TOOL_MODULES",
    "DAGWRIGHT_TASK_QUEUE",
    "DAGWRIGHT_MAX_CONCURRENT_ACTIVITIES",
)


def free_ports(count: int) -> list[int]:
    """Return `count` different TCP ports of 127.0.0.1 that the OS reported free a moment ago."""
    # All sockets stay bound until every port is chosen, so the OS cannot hand one out twice.
    # NOTE: another program can still take a port between this call and its use.
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass
class WorkerProcess:
    """One `dagwright worker` subprocess and the files it writes."""

    process: subprocess.Popen[bytes]
    task_queue: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def identity_prefix(self) -> str:
        """Start of the identity the worker reports to the server (the SDK default is pid@host)."""
        return f"{self.pid}@"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Send SIGKILL and reap the process, so it can neither heartbeat nor finish anything."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_GRACE_SECONDS)

    def stop(self) -> None:
        """Ask the worker to shut down with SIGTERM; SIGKILL it if it is still running later."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the worker's combined stdout and stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])


class WorkerProcesses:
    """Starts worker subprocesses against one Temporal address and kills them all on exit."""

    def __init__(self, address: str, folder: Path, *, tools: list[Path] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.address = address
        self.folder = folder
        self.tools = list(tools or [])
        self.env = dict(env or {})
        self._started: list[WorkerProcess] = []

    def start(self, task_queue: str, *, extra_args: list[str] | None = None) -> WorkerProcess:
        """Start `python -m dagwright worker` on `task_queue`; it does not wait for polling."""
        number = len(self._started) + 1
        log_path = self.folder / f"worker-{number}.log"
        command = [sys.executable, "-m", "dagwright", "worker", "--task-queue", task_queue]
        for module in self.tools:
            command += ["--tools", str(module)]
        command += extra_args or []
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env=self._environment(), cwd=self.folder, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process=process, task_queue=task_queue, log_path=log_path)
        self._started.append(worker)
        return worker

    def kill_all(self) -> None:
        """SIGKILL every worker this object started that is still running."""
        for worker in self._started:
            worker.kill()

    def _environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in INHERITED_ENV_TO_DROP}
        state_dir = self.folder / "worker-state"
        state_dir.mkdir(exist_ok=True)
        # An empty client config file keeps the developer's Temporal profiles out of the test.
        config_file = self.folder / "temporal-client.toml"
        config_file.touch()
        env.update({
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_CONFIG_FILE": str(config_file),
            "DAGWRIGHT_STATE_DIR": str(state_dir),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env)
        return env

    def __enter__(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.kill_all()


async def wait_until_polling(client: Client, worker: WorkerProcess, *,
                             timeout: float = POLL_WAIT_SECONDS) -> None:
    """Wait until the server lists `worker` as a poller for both workflow and activity tasks.

    Pollers of killed workers stay listed for a while, so the check matches this worker's
    own identity (its pid) rather than counting pollers.

    Raises:
        RuntimeError: the worker exited first or was not polling within `timeout` seconds;
            the message contains the end of its log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not worker.alive():
            raise RuntimeError(
                f"worker pid {worker.pid} exited with code {worker.process.returncode} before it polled "
                f"task queue '{worker.task_queue}'. Its log ends with:\n{worker.log_tail()}"
            )
        if await _polls_both_task_types(client, worker):
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"worker pid {worker.pid} was not polling task queue '{worker.task_queue}' after "
                f"{timeout:g} s. Its log ends with:\n{worker.log_tail()}"
            )
        # The server has no way to push poller changes, so this loop has to ask again.
        await asyncio.sleep(0.1)


async def _polls_both_task_types(client: Client, worker: WorkerProcess) -> bool:
    for task_type in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        try:
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=worker.task_queue),
                                         task_queue_type=task_type)
            )
        except RPCError:
            return False
        if not any(poller.identity.startswith(worker.identity_prefix) for poller in response.pollers):
            return False
    return True
