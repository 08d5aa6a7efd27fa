"""Build and run a dagwright worker: `DagWorkflow` plus every node activity.

Use `dagwright worker` to run one, or `build_worker(client, ...)` to embed one in
your own process or tests.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from dagwright.activities.envelope import NodeEnvelopeInterceptor
from dagwright.activities.llm.activity import LlmActivities
from dagwright.activities.http import close_http_clients, http_request
from dagwright.activities.python_tool import make_python_activity
from dagwright.activities.tools import ToolRegistry, default_registry
from dagwright.activities.sql import SqlActivities
from dagwright.activities.sql_connections import SqlConnections
from dagwright.config import Settings, state_dir
from dagwright.interpreter.workflow import DagWorkflow

logger = logging.getLogger(__name__)

# Modules the workflow sandbox shares with the worker instead of re-importing per run.
# jinja2 must be shared so its lazily imported submodules keep one class identity
# (an `except SecurityError` would otherwise miss); all of these are pure or
# deterministic given their inputs.
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
    """Return the sandbox runner with dagwright's pure modules passed through."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    return SandboxedWorkflowRunner(restrictions=restrictions)


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
) -> DagwrightWorker:
    """Create a worker that serves `DagWorkflow` and every node activity on one task queue.

    Providers, prices and SQL connections come from `settings` (a dagwright.toml); without
    settings the built-in `mistral` provider is configured from the environment.

    Raises:
        ConfigError: a provider or connection setting is invalid.
    """
    options = options or WorkerOptions()
    raw = settings.raw if settings is not None else {}
    llm = llm or LlmActivities.from_config(raw)
    base_dir = settings.base_dir if settings is not None else Path.cwd()
    sql = sql or SqlConnections.from_settings(raw, base_dir, state_dir=state_dir())
    activities = [
        http_request,
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
        interceptors=[NodeEnvelopeInterceptor()],
        workflow_runner=workflow_runner(),
        max_concurrent_activities=options.max_concurrent_activities,
        max_concurrent_workflow_tasks=options.max_concurrent_workflow_tasks,
        max_cached_workflows=options.max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A cancel request reaches an activity only in a heartbeat response, and the worker
        # sends heartbeats at most this often; 2 s bounds how long a cancelled node runs on.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
    )


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
