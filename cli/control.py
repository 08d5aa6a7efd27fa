"""`dagwright approvals`, `approve`, `reject`, `pause`, `resume` and `rerun`."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import secrets as random_tokens
from pathlib import Path
from typing import Any, Optional

import typer
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dagwright.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, load_tools, settings_for
from dagwright.cli.run import _follow, already_running_message, quiet_logging, server_has_search_attributes, start_run, web_link
from dagwright.cli.runs import client_for_cli, idle_task_queue
from dagwright.interpreter.approvals import (
    DECIDE_UPDATE,
    PAUSE_SIGNAL,
    RESUME_SIGNAL,
    ApprovalDecision,
    ControlRequest,
)
from dagwright.config import ConfigError
from dagwright.interpreter.run_types import BudgetIncrease, RunRequest
from dagwright.interpreter.rerun import plan_rerun
from dagwright.worker import WorkerOptions, build_worker


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def approvals(
    workflow: Optional[str] = typer.Option(None, "--workflow", help="Only runs of this workflow name."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON lines."),
) -> None:
    """List approvals waiting for a decision, across runs."""
    raise typer.Exit(asyncio.run(_approvals(workflow, as_json)))


async def _approvals(workflow: str | None, as_json: bool) -> int:
    client = await client_for_cli()
    if not await server_has_search_attributes(client):
        fail("listing approvals needs dagwright's search attributes on the server; see docs/operations.md")
    query = "WorkflowType = 'DagWorkflow' AND ExecutionStatus = 'Running' AND DagwrightStatus = 'waiting_approval'"
    if workflow:
        query += f" AND DagwrightWorkflow = '{workflow}'"
    found = 0
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id)
        try:
            pending = await handle.query("approvals", result_type=list)
        except RPCError as exc:
            typer.echo(f"{execution.id}: cannot read approvals ({exc.message})", err=True)
            continue
        for approval in pending:
            found += 1
            _print_approval(execution.id, approval, as_json)
    if not found and not as_json:
        typer.echo("no approvals are waiting", err=True)
    return EXIT_OK


def _print_approval(run_id: str, approval: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"run_id": run_id, **approval}))
        return
    label = approval["node"] if approval["index"] is None else f"{approval['node']} --index {approval['index']}"
    overdue = "  OVERDUE" if approval["overdue"] else ""
    assignees = ", ".join(approval["assignees"]) or "anyone"
    typer.echo(f"{run_id} {label}{overdue}")
    typer.echo(f"    waiting since {approval['waiting_since']}; assignees: {assignees}")
    typer.echo(f"    {approval['prompt'].strip().splitlines()[0] if approval['prompt'].strip() else ''}")


def _decision_options(data: str | None) -> dict[str, Any] | None:
    if data is None:
        return None
    text = data
    if data.startswith("@"):
        try:
            text = Path(data[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read form data from {data[1:]}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"--data is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, dict):
        fail("--data must be a JSON object", EXIT_USAGE)
    return value


def approve(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    node: str = typer.Argument(..., help="The approval node id.", show_default=False),
    index: Optional[int] = typer.Option(None, "--index", help="Item index, for an approval inside for_each."),
    data: Optional[str] = typer.Option(None, "--data", help="Form data as JSON, or @file.json."),
    comment: Optional[str] = typer.Option(None, "--comment", help="A comment recorded with the decision."),
    by: Optional[str] = typer.Option(None, "--by", help="Who decides (default: the current user)."),
) -> None:
    """Approve a waiting approval node."""
    decision = ApprovalDecision(node=node, index=index, decision="approve", data=_decision_options(data),
                                comment=comment, by=by or _default_user())
    raise typer.Exit(asyncio.run(_decide(run_id, decision)))


def reject(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    node: str = typer.Argument(..., help="The approval node id.", show_default=False),
    index: Optional[int] = typer.Option(None, "--index", help="Item index, for an approval inside for_each."),
    comment: Optional[str] = typer.Option(None, "--comment", help="A comment recorded with the decision."),
    by: Optional[str] = typer.Option(None, "--by", help="Who decides (default: the current user)."),
) -> None:
    """Reject a waiting approval node."""
    decision = ApprovalDecision(node=node, index=index, decision="reject", comment=comment,
                                by=by or _default_user())
    raise typer.Exit(asyncio.run(_decide(run_id, decision)))


async def _decide(run_id: str, decision: ApprovalDecision) -> int:
    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    # An update waits for a worker to accept it, so without one the command would hang.
    idle = await idle_task_queue(client, run_id)
    if idle is not None:
        fail(f"no worker is polling task queue '{idle}', so run {run_id} cannot take a decision now;"
             f" start one (`dagwright worker --task-queue {idle}`) and decide again")
    try:
        result = await handle.execute_update(DECIDE_UPDATE, decision, result_type=dict)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        typer.echo(f"error: {getattr(cause, 'message', None) or exc}", err=True)
        return EXIT_FAILED
    except RPCError as exc:
        fail(_closed_message(exc, run_id))
    typer.echo(f"{result['decision']} {decision.node} in run {run_id} by {result['by']}")
    return EXIT_OK


def _closed_message(exc: RPCError, run_id: str) -> str:
    # The server aborts an update when the run completes while it waits, which happens to
    # the loser of two racing decisions when the winning one let the run finish.
    if "aborted by closing workflow" in exc.message:
        return f"run '{run_id}' finished before this request was recorded (another decision ended it); nothing was decided"
    if exc.status == RPCStatusCode.NOT_FOUND:
        return f"run '{run_id}' is not running (it finished, or the id is wrong); nothing was decided"
    return f"Temporal rejected the request for run '{run_id}': {exc.message}"


def pause(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    reason: Optional[str] = typer.Option(None, "--reason", help="Recorded in the run's history."),
    by: Optional[str] = typer.Option(None, "--by", help="Who pauses (default: the current user)."),
) -> None:
    """Stop a run from starting new nodes; running nodes finish."""
    raise typer.Exit(asyncio.run(_signal(run_id, PAUSE_SIGNAL, ControlRequest(by=by or _default_user(), reason=reason))))


def resume(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    reason: Optional[str] = typer.Option(None, "--reason", help="Recorded in the run's history."),
    by: Optional[str] = typer.Option(None, "--by", help="Who resumes (default: the current user)."),
) -> None:
    """Let a paused run start nodes again."""
    raise typer.Exit(asyncio.run(_signal(run_id, RESUME_SIGNAL, ControlRequest(by=by or _default_user(), reason=reason))))


async def _signal(run_id: str, name: str, request: ControlRequest) -> int:
    client = await client_for_cli()
    try:
        await client.get_workflow_handle(run_id).signal(name, request)
    except RPCError as exc:
        fail(_closed_message(exc, run_id))
    typer.echo(f"{name} sent to run {run_id}")
    return EXIT_OK


def rerun(
    run_id: str = typer.Argument(..., help="The earlier run's workflow id.", show_default=False),
    from_node: Optional[str] = typer.Option(None, "--from", help="Execute this node and everything that depends on it."),
    from_failed: bool = typer.Option(False, "--from-failed", help="Execute the failed nodes and their dependents."),
    new_id: Optional[str] = typer.Option(None, "--id", help="Workflow id for the new run."),
    detach: bool = typer.Option(False, "--detach", help="Start the run, print its id and return at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not run a worker in this process."),
    config: Optional[str] = typer.Option(None, "--config", help="Path to a dagwright.toml."),
    tools: Optional[list[str]] = typer.Option(None, "--tools", help="Extra tool module. Repeatable."),
) -> None:
    """Start a new run of an earlier run's pinned definition and inputs, reusing recorded outputs.

    Nodes that do not depend on the chosen node(s) keep their recorded outputs, so no LLM
    tokens or side effects are paid again; the chosen nodes and their dependents execute.
    """
    if bool(from_node) == from_failed:
        fail("pass exactly one of --from NODE and --from-failed", EXIT_USAGE)
    quiet_logging()
    settings = settings_for(None, config)
    registry = load_tools(settings, tools)
    code = asyncio.run(_rerun(run_id, from_node, new_id, settings, registry, detach=detach, as_json=as_json,
                              in_process_worker=not (no_worker or detach)))
    raise typer.Exit(code)


async def _rerun(run_id, from_node, new_id, settings, registry, *, detach, as_json, in_process_worker) -> int:
    client = await client_for_cli()
    try:
        worker_context = (
            build_worker(client, WorkerOptions(task_queue=settings.task_queue), registry=registry,
                         settings=settings)
            if in_process_worker else contextlib.nullcontext()
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    async with worker_context:
        old = client.get_workflow_handle(run_id)
        request, snapshot = await _recorded_run(client, old)
        try:
            plan = plan_rerun(request.definition, snapshot, from_node=from_node)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        new_request = RunRequest(definition=request.definition, inputs=request.inputs, reuse=plan.reuse,
                                 rerun_of=run_id)
        new_request.search_attributes = await server_has_search_attributes(client)
        workflow_id = new_id or f"{request.definition['name']}-{random_tokens.token_hex(4)}"
        typer.echo(f"rerun of {run_id}: reusing {len(plan.reuse)} node(s), executing {', '.join(plan.execute)}",
                   err=True)
        try:
            handle = await start_run(client, new_request, workflow_id, settings.task_queue,
                                     new_request.search_attributes)
        except WorkflowAlreadyStartedError:
            fail(already_running_message(workflow_id), EXIT_USAGE)
        if detach:
            typer.echo(handle.id)
            return EXIT_OK
        from dagwright.cli.connect import ensure_server

        link = web_link(await ensure_server(auto_start=False), workflow_id, handle.result_run_id)
        return await _follow(handle, as_json, link)


async def _recorded_run(client: Client, handle: WorkflowHandle) -> tuple[RunRequest, dict[str, Any]]:
    """Return the earlier run's request (from its first history event) and its node results."""
    try:
        history = await handle.fetch_history()
    except RPCError as exc:
        fail(_closed_message(exc, handle.id))
    started = history.events[0].workflow_execution_started_event_attributes
    payloads = list(started.input.payloads)
    [request] = await client.data_converter.decode(payloads, [RunRequest])
    try:
        snapshot = await handle.query("snapshot", result_type=dict)
    except RPCError as exc:
        fail(f"cannot read the node results of run '{handle.id}': {exc.message}")
    return request, snapshot


def raise_budget(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    max_cost_usd: Optional[float] = typer.Option(None, "--max-cost-usd", help="New cost limit in US dollars."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="New token limit."),
    comment: Optional[str] = typer.Option(None, "--comment", help="Recorded in the run's history."),
    by: Optional[str] = typer.Option(None, "--by", help="Who raises it (default: the current user)."),
) -> None:
    """Raise the budget of a run that waits because its next LLM call could exceed it."""
    increase = BudgetIncrease(max_cost_usd=max_cost_usd, max_tokens=max_tokens, comment=comment,
                              by=by or _default_user())
    raise typer.Exit(asyncio.run(_raise_budget(run_id, increase)))


async def _raise_budget(run_id: str, increase: BudgetIncrease) -> int:
    client = await client_for_cli()
    try:
        budget = await client.get_workflow_handle(run_id).execute_update("raise_budget", increase, result_type=dict)
    except WorkflowUpdateFailedError as exc:
        typer.echo(f"error: {getattr(exc.cause, 'message', None) or exc}", err=True)
        return EXIT_FAILED
    except RPCError as exc:
        fail(_closed_message(exc, run_id))
    typer.echo(f"budget of run {run_id} is now {json.dumps(budget)}")
    return EXIT_OK
