"""Build and run a dagwright worker: `DagWorkflow` plus every node activity.

Use `dagwright worker` to run one, or `build_worker(client, ...)` to embed one in
your own process or tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, SourceFileLoader
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any, Sequence

from opentelemetry.trace import Tracer
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from dagwright.activities.envelope import NodeEnvelopeInterceptor
from dagwright.activities.telemetry import NodeTelemetryInterceptor, tracing_installed
from dagwright.activities.llm.activity import LlmActivities
from dagwright.activities.http import close_http_clients, make_http_activity
from dagwright.activities.network_policy import network_policy_from_config
from dagwright.activities.payload_storage import max_node_output_bytes
from dagwright.activities.python_tool import make_python_activity
from dagwright.activities.tools import ToolRegistry, default_registry
from dagwright.activities.sql import SqlActivities
from dagwright.activities.sql_connections import SqlConnections
from dagwright.config import Settings, state_dir
from dagwright.interpreter.tracing_headers import RunMetadataInterceptor
from dagwright.interpreter.workflow import DagWorkflow

logger = logging.getLogger(__name__)

# Modules the workflow sandbox shares with the worker instead of re-importing per run.
# jinja2 must be shared because its lazily imported submodules would otherwise exist twice,
# and an `except SecurityError` would miss the second copy. Every module listed is pure or
# deterministic given its inputs.
PASSTHROUGH_MODULES = (
    "jinja2",
    "markupsafe",
    "jsonschema",
    "jsonschema_specifications",
    "referencing",
    "rpds",
    "attrs",
    "dagwright.interpreter.expressions",
    "dagwright.interpreter.requests",
    "dagwright.interpreter.run_types",
    "dagwright.interpreter.state",
    "dagwright.interpreter.inputs",
    "dagwright.interpreter.secrets_view",
    "dagwright.interpreter.approvals",
    "dagwright.interpreter.budget",
    "dagwright.interpreter.metrics",
)


@dataclass
class WorkerOptions:
    """Concurrency settings of one worker process."""

    task_queue: str = "dagwright"
    max_concurrent_activities: int = 100
    max_concurrent_workflow_tasks: int = 100
    max_cached_workflows: int = 1000


def workflow_runner() -> SandboxedWorkflowRunner:
    """Return the sandbox runner with dagwright's pure modules passed through.

    It also installs `SandboxCodeCache` for the modules that the sandbox imports again for
    every run, so each run executes `interpreter/workflow.py` without compiling it again.
    """
    SandboxCodeCache.install(_reimported_modules(DagWorkflow.__module__))
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def _reimported_modules(workflow_module: str) -> list[str]:
    """Return the workflow module and its parent packages, which are not passed through."""
    parts = workflow_module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


class SandboxCodeCache(MetaPathFinder):
    """Import finder that lets the workflow sandbox compile each of its modules once per process.

    The sandbox imports the workflow module and its parent packages afresh for every run. Python
    reads their code from `__pycache__`, but when no .pyc file exists (PYTHONDONTWRITEBYTECODE=1,
    a read-only or editable install) it compiles the source every time. Compiling
    `interpreter/workflow.py` added about 7 ms to each run's first workflow task (Python 3.11.7
    on 2 x86_64 cores; docs/benchmarks.md has the measurements). This finder hands out a loader
    that keeps the compiled code objects in memory. Each run still executes the module in a
    namespace of its own, so the sandbox's isolation and restrictions are unchanged.
    """

    def __init__(self) -> None:
        self.module_names: set[str] = set()

    @classmethod
    def install(cls, module_names: Sequence[str]) -> None:
        """Add `module_names` to the cache, putting the finder first on `sys.meta_path` once."""
        finder = next((entry for entry in sys.meta_path if isinstance(entry, cls)), None)
        if finder is None:
            finder = cls()
            sys.meta_path.insert(0, finder)
        finder.module_names.update(module_names)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.module_names:
            return None
        # Let the other finders locate the file (the path finder, an editable install's finder).
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            # Only a plain source loader is replaced, because other loaders may not read a source file.
            if type(spec.loader) is SourceFileLoader and spec.origin:
                spec.loader = _CompiledOnceLoader(fullname, spec.origin)
            return spec
        return None


# Code objects by (path, mtime in ns, size), so an edited file is compiled again, as with a .pyc file.
_compiled: dict[tuple[str, int, int], CodeType] = {}


class _CompiledOnceLoader(SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        code = _compiled.get(key)
        if code is None:
            code = super().get_code(fullname)
            if code is None:
                raise ImportError(f"cannot load module {fullname}: the source loader returned no code for {path}",
                                  name=fullname, path=path)
            _compiled[key] = code
        return code


class DagwrightWorker(Worker):
    """A Temporal worker that also closes dagwright's provider clients when it shuts down."""

    def __init__(self, client: Client, *, llm: LlmActivities, sql: SqlConnections, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._llm = llm
        self._sql = sql

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            await self._llm.aclose()
            await self._sql.close()


def build_worker(
    client: Client,
    options: WorkerOptions | None = None,
    *,
    registry: ToolRegistry | None = None,
    settings: Settings | None = None,
    llm: LlmActivities | None = None,
    sql: SqlConnections | None = None,
    extra_activities: Sequence = (),
    tracer: Tracer | None = None,
    trace_content: bool = False,
) -> DagwrightWorker:
    """Create a worker that serves `DagWorkflow` and every node activity on one task queue.

    Providers, prices and SQL connections come from `settings` (a dagwright.toml); without
    settings the built-in `mistral` provider is configured from the environment.

    `tracer` receives the spans (the global tracer provider's by default; see
    `worker_interceptors`), and `trace_content` puts node inputs and outputs on them.

    Raises:
        ConfigError: a provider, connection, [network] or [payloads] setting is invalid.
    """
    options = options or WorkerOptions()
    raw = settings.raw if settings is not None else {}
    llm = llm or LlmActivities.from_config(raw)
    base_dir = settings.base_dir if settings is not None else Path.cwd()
    sql = sql or SqlConnections.from_settings(raw, base_dir, state_dir=state_dir())
    activities = [
        make_http_activity(network_policy_from_config(raw)),
        make_python_activity(registry or default_registry),
        llm.llm,
        llm.embed,
        # Registered even without connections, so a sql node fails with a clear
        # "connection not configured" error instead of an unknown activity type.
        SqlActivities(sql).sql,
        *extra_activities,
    ]
    return DagwrightWorker(
        client,
        llm=llm,
        sql=sql,
        task_queue=options.task_queue,
        workflows=[DagWorkflow],
        activities=activities,
        interceptors=worker_interceptors(client, tracer=tracer, trace_content=trace_content,
                                         max_output_bytes=max_node_output_bytes(client.data_converter, settings)),
        workflow_runner=workflow_runner(),
        max_concurrent_activities=options.max_concurrent_activities,
        max_concurrent_workflow_tasks=options.max_concurrent_workflow_tasks,
        max_cached_workflows=options.max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A cancel request reaches an activity only in a heartbeat response, and the worker
        # sends heartbeats at most this often; 2 s bounds how long a cancelled node runs on.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        # Runs cached on a worker that died wait this long before another worker takes
        # their next task; 10 s (the SDK default) made every query after a crash that slow.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=4),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
    )


def worker_interceptors(client: Client, *, tracer: Tracer | None = None,
                        trace_content: bool = False, max_output_bytes: int | None = None) -> list[Interceptor]:
    """Return the worker's interceptors, outermost first.

    Temporal's `TracingInterceptor` is added when spans have somewhere to go (a `tracer`, or a
    tracer provider installed in the process) and the client does not already have one, since a
    worker inherits its client's interceptors. Without it, workflow tasks skip the span work.
    The telemetry interceptor comes after the envelope one, so it receives each activity's own
    result and error.
    """
    interceptors: list[Interceptor] = []
    client_traces = any(isinstance(existing, TracingInterceptor) for existing in client.config()["interceptors"])
    if not client_traces and (tracer is not None or tracing_installed()):
        interceptors.append(TracingInterceptor(tracer))
    interceptors += [
        RunMetadataInterceptor(),
        NodeEnvelopeInterceptor(max_output_bytes),
        NodeTelemetryInterceptor(tracer=tracer, trace_content=trace_content),
    ]
    return interceptors


async def run_worker(worker: Worker) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully (running activities get 10 s)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("worker started", extra={"task_queue": worker.task_queue})
    async with worker:
        await stop.wait()
        logger.info("worker stopping", extra={"task_queue": worker.task_queue})
    await close_http_clients()
