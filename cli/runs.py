"""`dagwright status`, `result`, `list` and `cancel`: look at and control runs."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Optional

import typer
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from dagwright.cli.common import EXIT_FAILED, EXIT_OK, fail
from dagwright.cli.connect import TemporalSetupError, connect, ensure_server
from dagwright.cli.live import describe_row
from dagwright.cli.run import failure_message, server_has_search_attributes

STATUS_FILTERS = {
    "running": "ExecutionStatus = 'Running'",
    "succeeded": "ExecutionStatus = 'Completed'",
    "completed": "ExecutionStatus = 'Completed'",
    "failed": "ExecutionStatus = 'Failed'",
    "cancelled": "ExecutionStatus = 'Canceled'",
    "terminated": "ExecutionStatus = 'Terminated'",
    "timed_out": "ExecutionStatus = 'TimedOut'",
}
DAG_STATUSES = ("waiting_approval", "paused")


async def client_for_cli() -> Client:
    """Connect to the configured or local Temporal server without starting one."""
    try:
        return await connect(await ensure_server(auto_start=False))
    except TemporalSetupError as exc:
        fail(str(exc))


# Terminal control sequence: cursor home, then clear the screen (ECMA-48 CUP and ED).
CLEAR_SCREEN = "\x1b[H\x1b[2J"
UNSUCCESSFUL_CLOSE = (
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
)


def status(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON (one line per change with --watch)."),
    watch: bool = typer.Option(
        False, "--watch", help="Refresh until the run closes; exit 1 if it did not succeed."
    ),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between refreshes with --watch."),
) -> None:
    """Show a run's status and the state of each node."""
    if watch:
        raise typer.Exit(asyncio.run(watch_status(run_id, as_json, interval)))
    raise typer.Exit(asyncio.run(_status(run_id, as_json)))


async def _status(run_id: str, as_json: bool) -> int:
    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    _, text, problem = await _status_snapshot(handle, run_id, as_json, indent=2)
    typer.echo(text)
    if problem:
        typer.echo(problem, err=True)
    return EXIT_OK


async def watch_status(run_id: str, as_json: bool, interval: float, *, clear: bool | None = None) -> int:
    """Print the run's status each time it changes, until the run closes.

    On a terminal (or with `clear=True`) the screen is redrawn instead of appended to.
    Returns EXIT_OK when the run succeeded and EXIT_FAILED when it closed otherwise.
    """
    clear = sys.stdout.isatty() and not as_json if clear is None else clear
    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    last_shown = None
    while True:
        execution_status, text, _ = await _status_snapshot(handle, run_id, as_json, indent=None)
        if text != last_shown:
            typer.echo(CLEAR_SCREEN + text if clear else text)
            last_shown = text
        if execution_status != WorkflowExecutionStatus.RUNNING:
            return EXIT_FAILED if execution_status in UNSUCCESSFUL_CLOSE else EXIT_OK
        await asyncio.sleep(max(interval, 0.1))


async def _status_snapshot(handle, run_id: str, as_json: bool,
                           indent: int | None) -> tuple[WorkflowExecutionStatus | None, str, str | None]:
    """Return the run's execution status, its status text, and a problem to show on stderr."""
    try:
        description = await handle.describe()
    except RPCError as exc:
        fail(rpc_message(exc, run_id))
    state = await run_state(handle, description.status)
    server_status = description.status.name.lower() if description.status else "unknown"
    if as_json:
        text = json.dumps({"run_id": run_id, "execution_status": server_status, "state": state}, indent=indent)
        return description.status, text, None
    lines = [f"run {run_id}: {state['status'] if state else server_status} (Temporal: {server_status})"]
    if state is None:
        return description.status, lines[0], "node states are unavailable: no worker answered the query"
    lines += [f"  {node_id:<24} {describe_row(row)}" for node_id, row in state["nodes"].items()]
    return description.status, "\n".join(lines), None


async def run_state(handle, execution_status) -> dict | None:
    """Return the run's state from its query, or from its result once it has completed."""
    try:
        return await handle.query("state", result_type=dict)
    except RPCError:
        pass  # no worker is polling, so the query cannot be served right now
    if execution_status == WorkflowExecutionStatus.COMPLETED:
        outcome = await handle.result()
        return {"status": "succeeded", "nodes": outcome.get("nodes", {}), "outputs": outcome.get("outputs")}
    return None


def result(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Wait for a run to finish and print its outputs (exit 1 if it failed)."""
    raise typer.Exit(asyncio.run(_result(run_id, as_json)))


async def idle_task_queue(client: Client, run_id: str) -> str | None:
    """Return the task queue of a running run when no worker polls it, else None."""
    from dagwright.cli.run import has_workflow_pollers

    try:
        description = await client.get_workflow_handle(run_id).describe()
    except RPCError:
        return None
    if description.status != WorkflowExecutionStatus.RUNNING or not description.task_queue:
        return None
    if await has_workflow_pollers(client, description.task_queue):
        return None
    return description.task_queue


async def _result(run_id: str, as_json: bool) -> int:
    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    idle = await idle_task_queue(client, run_id)
    if idle is not None:
        typer.echo(f"warning: no worker is polling task queue '{idle}', so run {run_id} cannot make"
                   f" progress; waiting until one starts (`dagwright worker --task-queue {idle}`)", err=True)
    try:
        outcome: Any = await handle.result()
    except WorkflowFailureError as exc:
        typer.echo(f"run {run_id} failed: {failure_message(exc)}", err=True)
        return EXIT_FAILED
    except RPCError as exc:
        fail(rpc_message(exc, run_id))
    outputs = outcome.get("outputs", outcome) if isinstance(outcome, dict) else outcome
    typer.echo(json.dumps(outputs, indent=None if as_json else 2, ensure_ascii=False))
    return EXIT_OK


def list_runs(
    workflow: Optional[str] = typer.Option(None, "--workflow", help="Only runs of this workflow name."),
    status_filter: Optional[str] = typer.Option(
        None, "--status", help="running, succeeded, failed, cancelled, terminated, timed_out, waiting_approval or paused."
    ),
    limit: int = typer.Option(50, "--limit", help="Maximum number of runs to show."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON lines."),
) -> None:
    """List recent runs, newest first."""
    raise typer.Exit(asyncio.run(_list(workflow, status_filter, limit, as_json)))


async def _list(workflow: str | None, status_filter: str | None, limit: int, as_json: bool) -> int:
    client = await client_for_cli()
    clauses = ["WorkflowType = 'DagWorkflow'"]
    has_attributes = await server_has_search_attributes(client)
    if workflow:
        if not has_attributes:
            fail("filtering by workflow needs dagwright's search attributes on the server; see docs/operations.md")
        clauses.append(f"DagwrightWorkflow = '{_quote(workflow)}'")
    if status_filter:
        if status_filter in STATUS_FILTERS:
            clauses.append(STATUS_FILTERS[status_filter])
        elif status_filter in DAG_STATUSES and has_attributes:
            clauses.append(f"DagwrightStatus = '{status_filter}' AND ExecutionStatus = 'Running'")
        else:
            fail(f"unknown status '{status_filter}'; use one of: {', '.join([*STATUS_FILTERS, *DAG_STATUSES])}")
    query = " AND ".join(clauses)
    count = 0
    async for execution in client.list_workflows(query, limit=limit):
        count += 1
        memo = await execution.memo()
        row = {
            "run_id": execution.id,
            "workflow": memo.get("workflow"),
            "status": _status_word(execution.status),
            "started": execution.start_time.isoformat() if execution.start_time else None,
            "closed": execution.close_time.isoformat() if execution.close_time else None,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{row['run_id']:<40} {str(row['workflow']):<24} {row['status']:<12} {row['started']}")
    if not count and not as_json:
        typer.echo("no runs found", err=True)
    return EXIT_OK


# The CLI's words for run outcomes, shared with `status` and the live view.
_STATUS_WORDS = {"completed": "succeeded", "canceled": "cancelled"}


def _status_word(status: WorkflowExecutionStatus | None) -> str:
    word = status.name.lower() if status else "unknown"
    return _STATUS_WORDS.get(word, word)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def cancel(run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False)) -> None:
    """Cancel a run: running activities are cancelled and the run ends cancelled."""
    raise typer.Exit(asyncio.run(_cancel(run_id)))


async def _cancel(run_id: str) -> int:
    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    try:
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            fail(f"run {run_id} is not running (status {description.status.name.lower()})")
        await handle.cancel()
    except RPCError as exc:
        fail(rpc_message(exc, run_id))
    typer.echo(f"cancellation requested for run {run_id}")
    return EXIT_OK


def rpc_message(exc: RPCError, run_id: str) -> str:
    """Return a user-facing message for an RPC error on run `run_id`."""
    if exc.status == RPCStatusCode.NOT_FOUND:
        return f"no run with id '{run_id}' (check `dagwright list`)"
    return f"Temporal rejected the request for run '{run_id}': {exc.message}"
