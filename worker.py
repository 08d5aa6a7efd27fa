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
from typing import Sequence

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from dagwright.activities.envelope import NodeEnvelopeInterceptor
from dagwright.activities.http import close_http_clients, http_request
from dagwright.activities.python_tool import make_python_activity
from dagwright.activities.tools import ToolRegistry, default_registry
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


def build_worker(
    client: Client,
    options: WorkerOptions | None = None,
    *,
    registry: ToolRegistry | None = None,
    extra_activities: Sequence = (),
) -> Worker:
    """Create a worker that serves `DagWorkflow` and the node activities on one task queue."""
    options = options or WorkerOptions()
    activities = [http_request, make_python_activity(registry or default_registry), *extra_activities]
    return Worker(
        client,
        task_queue=options.task_queue,
        workflows=[DagWorkflow],
        activities=activities,
        interceptors=[NodeEnvelopeInterceptor()],
        workflow_runner=workflow_runner(),
        max_concurrent_activities=options.max_concurrent_activities,
        max_concurrent_workflow_tasks=options.max_concurrent_workflow_tasks,
        max_cached_workflows=options.max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=10),
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
