"""`dagwright run` and `dagwright worker`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets as random_tokens
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import typer
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from dagwright.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, compile_or_exit, fail, load_tools, settings_for
from dagwright.cli.connect import Target, TemporalSetupError, connect, ensure_server
from dagwright.cli.live import LiveView
from dagwright.cli.server import search_attribute_keys
from dagwright.cli.telemetry_setup import (
    DEFAULT_METRICS_HOST,
    TelemetrySetupError,
    configure_logging,
    configure_tracing,
    create_runtime,
    metrics_address,
)
from dagwright.activities.telemetry import tracing_installed
from dagwright.config import ConfigError, Settings
from dagwright.interpreter.loader import LoadError, load_file
from dagwright.interpreter.inputs import InputError, parse_input_value, validate_inputs
from dagwright.interpreter.run_types import WORKFLOW_TYPE, RunRequest
from dagwright.worker import WorkerOptions, build_worker, run_worker

logger = logging.getLogger(__name__)

# The run's own `limits.timeout` is enforced inside the workflow, which cancels running
# nodes and names the cause; the server-side execution timeout is only a backstop.
EXECUTION_TIMEOUT_GRACE = timedelta(minutes=5)


def run(
    file: Path = typer.Argument(..., help="Workflow file (YAML or JSON).", show_default=False),
    inputs: Optional[list[str]] = typer.Option(None, "--input", "-i", help="An input as name=value. Repeatable."),
    input_file: Optional[Path] = typer.Option(None, "--input-file", help="A JSON or YAML file of inputs."),
    run_id: Optional[str] = typer.Option(None, "--id", help="Workflow id for the run (default: <name>-<random>)."),
    detach: bool = typer.Option(False, "--detach", help="Start the run, print its id and return at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not run a worker in this process."),
    task_queue: Optional[str] = typer.Option(None, "--task-queue", help="Task queue (default: from config, else 'dagwright')."),
    config: Optional[str] = typer.Option(None, "--config", help="Path to a dagwright.toml."),
    tools: Optional[list[str]] = typer.Option(None, "--tools", help="Extra tool module: dotted name or .py path. Repeatable."),
) -> None:
    """Compile a workflow, start a run on Temporal, show its progress and print its outputs.

    Exit status: 0 when the run succeeded (or was started with --detach), 1 when it
    failed or the file has errors, 2 on bad inputs or usage.
    """
    quiet_logging()
    settings = settings_for(file, config)
    if task_queue:
        settings.task_queue = task_queue
    registry = load_tools(settings, tools)
    definition = compile_or_exit(str(file), registry)
    run_inputs = _collect_inputs(definition, inputs or [], input_file)
    request = RunRequest(definition=definition, inputs=run_inputs)
    workflow_id = run_id or f"{definition['name']}-{random_tokens.token_hex(4)}"
    tracer_provider = _tracing_or_exit(None)
    try:
        code = asyncio.run(_start_and_follow(request, workflow_id, settings, registry, detach=detach,
                                             as_json=as_json, in_process_worker=not (no_worker or detach)))
    finally:
        # Sends the spans still buffered; main() exits without running atexit handlers.
        if tracer_provider is not None:
            tracer_provider.shutdown()
    raise typer.Exit(code)


def quiet_logging() -> None:
    """Show only real problems while `run` follows a run in the terminal.

    The in-process worker logs every failed activity attempt with a traceback. The live
    view already shows each node's attempts and errors, so those records are dropped.
    """
    configure_logging("human", level=logging.WARNING)
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)


def _collect_inputs(definition: dict, pairs: list[str], input_file: Path | None) -> dict[str, Any]:
    declared = definition["inputs"]
    given: dict[str, Any] = {}
    if input_file is not None:
        # The workflow loader reads input files too, so they follow the same YAML 1.2 rules.
        try:
            loaded = load_file(input_file).data
        except LoadError as exc:
            fail("; ".join(diagnostic.format() for diagnostic in exc.diagnostics), EXIT_USAGE)
        if not isinstance(loaded, dict):
            fail(f"{input_file} must contain a mapping of input names to values", EXIT_USAGE)
        given.update(loaded)
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator or not name:
            fail(f"invalid input '{pair}'; write it as name=value", EXIT_USAGE)
        given[name] = parse_input_value(declared.get(name, {}), text)
    try:
        return validate_inputs(declared, given)
    except InputError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


async def _start_and_follow(request, workflow_id, settings, registry, *, detach, as_json, in_process_worker) -> int:
    try:
        target = await ensure_server()
        client = await connect(target, settings=settings, interceptors=_client_interceptors())
    except TemporalSetupError as exc:
        fail(str(exc))
    use_attributes = await server_has_search_attributes(client)
    request.search_attributes = use_attributes

    try:
        worker_context = (
            build_worker(client, WorkerOptions(task_queue=settings.task_queue), registry=registry, settings=settings)
            if in_process_worker else contextlib.nullcontext()
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    async with worker_context:
        try:
            handle = await start_run(client, request, workflow_id, settings.task_queue, use_attributes)
        except WorkflowAlreadyStartedError:
            fail(already_running_message(workflow_id), EXIT_USAGE)
        except RPCError as exc:
            fail(f"cannot start run '{workflow_id}': {exc.message}")
        link = web_link(target, workflow_id, handle.result_run_id)
        if detach:
            return await _report_detached(client, target, handle, settings.task_queue, as_json, link)
        return await _follow(handle, as_json, link)


async def server_has_search_attributes(client: Client) -> bool:
    """Return whether the server has dagwright's custom search attributes registered."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    try:
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError:
        return False
    return all(name in response.custom_attributes for name in search_attribute_keys())


async def start_run(client: Client, request: RunRequest, workflow_id: str, task_queue: str,
                    use_attributes: bool) -> WorkflowHandle:
    """Start a `DagWorkflow` run with its memo, summary and search attributes."""
    # The run updates DagwrightStatus only when the request marks the attributes as present.
    request.search_attributes = use_attributes
    definition = request.definition
    timeout = (definition.get("limits") or {}).get("timeout")
    keys = search_attribute_keys()
    attributes = None
    if use_attributes:
        pairs = [SearchAttributePair(keys["DagwrightWorkflow"], definition["name"]),
                 SearchAttributePair(keys["DagwrightDefinitionHash"], definition["hash"]),
                 SearchAttributePair(keys["DagwrightStatus"], "running")]
        if definition.get("version"):
            pairs.append(SearchAttributePair(keys["DagwrightVersion"], str(definition["version"])))
        if request.rerun_of:
            pairs.append(SearchAttributePair(keys["DagwrightParentRun"], request.rerun_of))
        attributes = TypedSearchAttributes(pairs)
    return await client.start_workflow(
        WORKFLOW_TYPE,
        request,
        id=workflow_id,
        task_queue=task_queue,
        execution_timeout=timedelta(seconds=timeout) + EXECUTION_TIMEOUT_GRACE if timeout else None,
        memo={"workflow": definition["name"], "version": definition.get("version"),
              "definition_hash": definition["hash"], "rerun_of": request.rerun_of},
        search_attributes=attributes,
        static_summary=f"{definition['name']} {definition.get('version') or ''}".strip(),
    )


def already_running_message(workflow_id: str) -> str:
    return (f"a run with id '{workflow_id}' is already running; pass another --id, or follow it with"
            f" `dagwright status {workflow_id} --watch`")


def web_link(target: Target, workflow_id: str, run_id: str | None) -> str | None:
    if not target.web_url:
        return None
    link = f"{target.web_url.rstrip('/')}/namespaces/{target.namespace}/workflows/{workflow_id}"
    return f"{link}/{run_id}/history" if run_id else link


async def _report_detached(client, target, handle, task_queue, as_json, link) -> int:
    if as_json:
        typer.echo(json.dumps({"run_id": handle.id, "run": handle.result_run_id, "web": link}))
    else:
        typer.echo(handle.id)
        if link:
            typer.echo(f"Temporal Web: {link}", err=True)
    if not await has_workflow_pollers(client, task_queue):
        typer.echo(
            f"warning: no worker is polling task queue '{task_queue}'; the run waits until one starts"
            f" (run `dagwright worker --task-queue {task_queue}`)",
            err=True,
        )
    return EXIT_OK


async def has_workflow_pollers(client: Client, task_queue: str) -> bool:
    """Return whether any worker polls the task queue for workflow tasks."""
    try:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
    except RPCError:
        return True
    return bool(response.pollers)


async def _follow(handle: WorkflowHandle, as_json: bool, link: str | None) -> int:
    view = LiveView(handle, quiet=as_json)
    watcher = asyncio.create_task(view.watch())
    try:
        result = await handle.result()
    except WorkflowFailureError as exc:
        await view.stop(watcher)
        message = failure_message(exc)
        if as_json:
            typer.echo(json.dumps({"run_id": handle.id, "status": "failed", "error": message, "web": link}))
        else:
            typer.echo(f"run {handle.id} failed: {message}", err=True)
            if link:
                typer.echo(f"Temporal Web: {link}", err=True)
        return EXIT_FAILED
    await view.stop(watcher)
    outputs = result.get("outputs", {}) if isinstance(result, dict) else result
    if as_json:
        typer.echo(json.dumps({"run_id": handle.id, "status": "succeeded", "outputs": outputs, "web": link},
                              ensure_ascii=False))
    else:
        typer.echo(f"run {handle.id} succeeded", err=True)
        typer.echo(json.dumps(outputs, indent=2, ensure_ascii=False))
        if link:
            typer.echo(f"Temporal Web: {link}", err=True)
    return EXIT_OK


def failure_message(exc: BaseException) -> str:
    """Return the innermost user-facing message of a workflow failure."""
    message = str(exc)
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, FailureError) and current.message:
            message = current.message
        current = getattr(current, "cause", None) or current.__cause__
    return message


def worker(
    task_queue: Optional[str] = typer.Option(None, "--task-queue", help="Task queue to poll (default: from config, else 'dagwright')."),
    max_concurrent_activities: Optional[int] = typer.Option(None, "--max-concurrent-activities", help="Activities run at once by this worker."),
    config: Optional[str] = typer.Option(None, "--config", help="Path to a dagwright.toml."),
    tools: Optional[list[str]] = typer.Option(None, "--tools", help="Extra tool module: dotted name or .py path. Repeatable."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", help="Serve Prometheus metrics at http://HOST:PORT/metrics (off by default)."
    ),
    metrics_host: str = typer.Option(DEFAULT_METRICS_HOST, "--metrics-host", help="Address the metrics endpoint binds to."),
    log_format: str = typer.Option("human", "--log-format", help="Log line format on stderr: human or json."),
    otlp_endpoint: Optional[str] = typer.Option(
        None, "--otlp-endpoint",
        help="Export traces over OTLP to this URL (default: OTEL_EXPORTER_OTLP_ENDPOINT; no export when unset).",
    ),
    trace_content: bool = typer.Option(
        False, "--trace-content", help="Also put node inputs and outputs on spans (they may hold personal data)."
    ),
) -> None:
    """Run a worker that executes dagwright runs until SIGINT or SIGTERM."""
    try:
        configure_logging(log_format)
        bind_address = metrics_address(metrics_port, metrics_host)
    except TelemetrySetupError as exc:
        fail(str(exc), EXIT_USAGE)
    settings: Settings = settings_for(None, config)
    if task_queue:
        settings.task_queue = task_queue
    if max_concurrent_activities:
        settings.max_concurrent_activities = max_concurrent_activities
    registry = load_tools(settings, tools)
    tracer_provider = _tracing_or_exit(otlp_endpoint)
    try:
        asyncio.run(_serve(settings, registry, bind_address, trace_content))
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()


def _client_interceptors() -> list[TracingInterceptor]:
    # Only with an exporter installed: the interceptor's workflow spans cost time on every task.
    return [TracingInterceptor()] if tracing_installed() else []


def _tracing_or_exit(endpoint: str | None):
    try:
        return configure_tracing(endpoint)
    except TelemetrySetupError as exc:
        fail(str(exc), EXIT_USAGE)


async def _serve(settings: Settings, registry, bind_address: str | None = None, trace_content: bool = False) -> None:
    try:
        runtime = create_runtime(bind_address)
    except ValueError as exc:  # temporalio 1.35 reports a metrics address it cannot bind as ValueError
        fail(f"cannot serve metrics on {bind_address}: {exc}; choose another --metrics-port")
    try:
        target = await ensure_server()
        # The runtime carries the Prometheus endpoint; the worker's metrics go through its client.
        client = await connect(target, settings=settings, interceptors=_client_interceptors(), runtime=runtime)
    except TemporalSetupError as exc:
        fail(str(exc))
    if bind_address:
        logger.info("serving Prometheus metrics at http://%s/metrics", bind_address)
    options = WorkerOptions(task_queue=settings.task_queue,
                            max_concurrent_activities=settings.max_concurrent_activities,
                            max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks)
    typer.echo(f"worker polling task queue '{settings.task_queue}' on {target.describe()}; "
               f"tools: {', '.join(registry.names()) or 'none'}", err=True)
    try:
        worker = build_worker(client, options, registry=registry, settings=settings, trace_content=trace_content)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    await run_worker(worker)
