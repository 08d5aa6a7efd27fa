"""`dagwright trace RUN`: a timeline of a run's node attempts, built from its history.

Each activity node gets one row per scheduled activity (one per `for_each` item and per
fallback variant). The row shows when the activity was scheduled, when its last attempt
started and when it closed, how many attempts it took, and for LLM and embedding nodes the
tokens and cost read from the `{"output", "attempt"}` result envelope. Approval, wait, child
workflow and transform nodes come from the run's `state` query (or its result), because they
run inside the workflow and leave no activity in the history.

Temporal records an activity's start event only when the activity closes, with the number of
the last attempt. The history therefore has no start time for earlier attempts: the "wait" of
a retried activity covers its earlier attempts and their backoff.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import typer
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from dagwright.cli.common import EXIT_OK, fail
from dagwright.cli.runs import client_for_cli, rpc_message, run_state
from dagwright.interpreter.tracing_headers import NODE_ACTIVITY_PREFIX, parse_activity_id

GANTT_WIDTH = 40
ERROR_CHARS = 120
_WAIT_CHAR = "░"
_RUN_CHAR = "█"
_MODEL_NODE_TYPES = ("llm", "embed")
# Node types that run inside the workflow, so only the run's state records their times.
_WORKFLOW_SIDE_TYPES = ("approval", "wait", "workflow", "transform")
# Node types whose whole time is waiting: for a decision, or for a durable timer.
_WAITING_TYPES = ("approval", "wait")

_CLOSE_STATUSES = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "succeeded",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "cancelled",
}


@dataclass
class TimelineRow:
    """One activity, or one node that runs inside the workflow, on the run's timeline."""

    label: str
    node_id: str
    node_type: str
    status: str
    start: datetime | None = None
    last_attempt_start: datetime | None = None
    end: datetime | None = None
    attempts: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    last_error: str | None = None

    def wait(self, now: datetime) -> timedelta | None:
        """Return the time spent waiting: queue wait and earlier attempts, or an approval's wait."""
        if self.start is None:
            return None
        if self.node_type in _WAITING_TYPES:
            return (self.end or now) - self.start
        if self.last_attempt_start is not None:
            return self.last_attempt_start - self.start
        return None

    def duration(self, now: datetime) -> timedelta | None:
        return None if self.start is None else (self.end or now) - self.start


@dataclass
class Timeline:
    """A run's rows plus the run's own span and totals."""

    run_id: str
    workflow: str
    version: str | None
    status: str
    start: datetime
    end: datetime | None
    rows: list[TimelineRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        """Return the run's activity count, retries, tokens and cost (None without model calls)."""
        costs = [row.cost_usd for row in self.rows if row.cost_usd is not None]
        model_rows = [row for row in self.rows if row.tokens_in is not None or row.tokens_out is not None]
        return {
            "activities": sum(1 for row in self.rows if row.node_type not in _WORKFLOW_SIDE_TYPES),
            "retries": sum(max(row.attempts - 1, 0) for row in self.rows),
            "tokens_in": sum(row.tokens_in or 0 for row in model_rows) if model_rows else None,
            "tokens_out": sum(row.tokens_out or 0 for row in model_rows) if model_rows else None,
            "cost_usd": round(sum(costs), 9) if costs else None,
        }


def trace(
    run_id: str = typer.Argument(..., help="The run's workflow id.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the timeline as JSON."),
    width: int = typer.Option(GANTT_WIDTH, "--width", help="Characters of the Gantt bar column."),
) -> None:
    """Show a run's timeline: node attempts, durations, retries, waiting, tokens and cost."""
    raise typer.Exit(asyncio.run(_trace(run_id, as_json, width)))


async def _trace(run_id: str, as_json: bool, width: int) -> int:
    client = await client_for_cli()
    try:
        timeline = await build_timeline(client, run_id)
    except RPCError as exc:
        fail(rpc_message(exc, run_id))
    now = datetime.now(timezone.utc)
    if as_json:
        typer.echo(json.dumps(timeline_json(timeline, now), indent=2))
    else:
        typer.echo(render_timeline(timeline, now, width=max(width, 10)))
    return EXIT_OK


async def build_timeline(client: Client, run_id: str) -> Timeline:
    """Build the timeline of run `run_id` from its history, pending activities and state.

    Raises:
        RPCError: when the run does not exist or the server rejects a request.
    """
    handle = client.get_workflow_handle(run_id)
    description = await handle.describe()
    history = await handle.fetch_history()
    events = list(history.events)

    definition = await _definition(client, events)
    status = description.status.name.lower() if description.status else "unknown"
    closed = description.status != WorkflowExecutionStatus.RUNNING
    timeline = Timeline(
        run_id=run_id,
        workflow=str(definition.get("name") or "unknown"),
        version=None if definition.get("version") is None else str(definition["version"]),
        status=status,
        start=events[0].event_time.ToDatetime(timezone.utc),
        end=events[-1].event_time.ToDatetime(timezone.utc) if closed else None,
    )
    node_types = {node_id: node.get("type", "") for node_id, node in (definition.get("nodes") or {}).items()}
    rows = await _activity_rows(client, events, node_types)
    _apply_pending(rows, description.raw_description.pending_activities)
    timeline.rows = list(rows.values())
    await _add_workflow_side_rows(timeline, handle, description.status, node_types)
    timeline.rows.sort(key=lambda row: (row.start or datetime.max.replace(tzinfo=timezone.utc), row.label))
    return timeline


async def _definition(client: Client, events: list[HistoryEvent]) -> dict[str, Any]:
    started = events[0].workflow_execution_started_event_attributes
    try:
        request = (await client.data_converter.decode(started.input.payloads, [dict]))[0]
    except Exception:  # a run of another workflow type, or a payload codec this client lacks
        return {}
    definition = request.get("definition") if isinstance(request, dict) else None
    return definition if isinstance(definition, dict) else {}


async def _activity_rows(client: Client, events: list[HistoryEvent],
                         node_types: dict[str, str]) -> dict[int, TimelineRow]:
    """Return one row per scheduled node activity, keyed by its scheduled event id."""
    rows: dict[int, TimelineRow] = {}
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            activity_type = attributes.activity_type.name
            if not activity_type.startswith(NODE_ACTIVITY_PREFIX):
                continue
            node_id = parse_activity_id(attributes.activity_id).node_id
            rows[event.event_id] = TimelineRow(
                label=attributes.activity_id,
                node_id=node_id,
                node_type=node_types.get(node_id) or activity_type.removeprefix(NODE_ACTIVITY_PREFIX),
                status="scheduled",
                start=event.event_time.ToDatetime(timezone.utc),
            )
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            row = rows.get(attributes.scheduled_event_id)
            if row is not None:
                row.last_attempt_start = event.event_time.ToDatetime(timezone.utc)
                row.attempts = attributes.attempt
                if attributes.HasField("last_failure"):
                    row.last_error = attributes.last_failure.message
        elif event.event_type in _CLOSE_STATUSES:
            await _close_row(client, rows, event)
    return rows


async def _close_row(client: Client, rows: dict[int, TimelineRow], event: HistoryEvent) -> None:
    kind = event.WhichOneof("attributes")
    attributes = getattr(event, kind)
    row = rows.get(attributes.scheduled_event_id)
    if row is None:
        return
    row.status = _CLOSE_STATUSES[event.event_type]
    row.end = event.event_time.ToDatetime(timezone.utc)
    if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
        row.last_error = attributes.failure.message
    elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
        row.last_error = attributes.failure.message or "timed out"
    elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        row.last_error = None if row.attempts <= 1 else row.last_error
        if row.node_type in _MODEL_NODE_TYPES:
            await _read_usage(client, row, attributes.result.payloads)


async def _read_usage(client: Client, row: TimelineRow, payloads: Any) -> None:
    """Copy tokens and cost from an LLM or embed activity's result envelope into the row."""
    try:
        envelope = (await client.data_converter.decode(payloads, [dict]))[0]
    except Exception:  # a payload this client cannot decode shows without usage
        return
    output = envelope.get("output") if isinstance(envelope, dict) else None
    if not isinstance(output, dict):
        return
    usage = output.get("usage") or {}
    row.tokens_in = usage.get("prompt_tokens")
    row.tokens_out = usage.get("completion_tokens")
    row.cost_usd = output.get("cost_usd")


def _apply_pending(rows: dict[int, TimelineRow], pending: Any) -> None:
    """Mark activities that have not closed with their current attempt from the run's description."""
    by_id = {info.activity_id: info for info in pending}
    for row in rows.values():
        info = by_id.get(row.label)
        if info is None or row.end is not None:
            continue
        row.attempts = info.attempt
        row.status = "running" if info.HasField("last_started_time") and info.attempt else "scheduled"
        if info.HasField("last_started_time"):
            row.last_attempt_start = info.last_started_time.ToDatetime(timezone.utc)
        if info.HasField("last_failure"):
            row.last_error = info.last_failure.message
            if info.HasField("next_attempt_schedule_time"):
                row.status = "backing_off"


async def _add_workflow_side_rows(timeline: Timeline, handle: WorkflowHandle, execution_status: Any,
                                  node_types: dict[str, str]) -> None:
    try:
        state = await run_state(handle, execution_status)
    except RPCError:
        state = None
    if state is None:
        timeline.notes.append("approval, wait and child workflow nodes are not shown: no worker answered the "
                              "run's state query (start `dagwright worker`)")
        return
    with_activities = {row.node_id for row in timeline.rows}
    for node_id, node in (state.get("nodes") or {}).items():
        node_type = node.get("type") or node_types.get(node_id, "")
        if node_id in with_activities or (node_type not in _WORKFLOW_SIDE_TYPES and node["status"] != "skipped"):
            continue
        timeline.rows.append(TimelineRow(
            label=node_id,
            node_id=node_id,
            node_type=node_type,
            status=node["status"],
            start=_parse_time(node.get("started_at")),
            end=_parse_time(node.get("ended_at")),
            last_error=node.get("error"),
        ))


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# ---------------------------------------------------------------- rendering


def render_timeline(timeline: Timeline, now: datetime, *, width: int = GANTT_WIDTH) -> str:
    """Render the timeline as a header line, a table with a text Gantt column, and notes."""
    end = timeline.end or now
    total = max((end - timeline.start).total_seconds(), 1e-6)
    totals = timeline.totals()
    version = f" v{timeline.version}" if timeline.version else ""
    header = (f"run {timeline.run_id} ({timeline.workflow}{version}): {timeline.status}, "
              f"{format_duration(end - timeline.start)}, {_plural(totals['activities'], 'activity', 'activities')}, "
              f"{_plural(totals['retries'], 'retry', 'retries')}")
    if totals["tokens_in"] is not None or totals["cost_usd"] is not None:
        header += (f", {_tokens_text(totals['tokens_in'], totals['tokens_out'])} tokens (in/out), "
                   f"cost {_cost_text(totals['cost_usd'])}")
    label_width = max([len(row.label) for row in timeline.rows] + [4])
    lines = [header, f"{'NODE':<{label_width}}  {'TYPE':<10}{'STATUS':<12}{'START':>8}{'DURATION':>10}{'WAIT':>9}"
                     f"{'TRIES':>6}  {'TOKENS':<11}{'COST':<11}TIMELINE ({_WAIT_CHAR} waiting, {_RUN_CHAR} running)"]
    for row in timeline.rows:
        lines.append(_render_row(row, timeline.start, now, total, width, label_width))
        if row.last_error and (row.attempts > 1 or row.status in ("failed", "timed_out", "backing_off")):
            prefix = "last error" if row.status not in ("failed", "timed_out") else "error"
            lines.append(f"{'':<{label_width}}  ↳ {prefix}: {_shorten(row.last_error)}")
    lines.extend(f"note: {note}" for note in timeline.notes)
    return "\n".join(lines)


def _render_row(row: TimelineRow, run_start: datetime, now: datetime, total: float, width: int,
                label_width: int) -> str:
    start = "" if row.start is None else f"+{format_duration(row.start - run_start)}"
    duration = row.duration(now)
    wait = row.wait(now)
    tokens = _tokens_text(row.tokens_in, row.tokens_out) if row.node_type in _MODEL_NODE_TYPES else ""
    cost = _cost_text(row.cost_usd) if row.cost_usd is not None else ""
    tries = str(row.attempts) if row.attempts else ""
    return (f"{row.label:<{label_width}}  {row.node_type:<10}{row.status:<12}{start:>8}"
            f"{format_duration(duration) if duration is not None else '':>10}"
            f"{format_duration(wait) if wait else '':>9}{tries:>6}  {tokens:<11}{cost:<11}"
            f"|{gantt_bar(row, run_start, now, total, width)}|")


def gantt_bar(row: TimelineRow, run_start: datetime, now: datetime, total: float, width: int) -> str:
    """Return the row's bar: waiting cells, then running cells, on a `width`-cell scale."""
    if row.start is None:
        return " " * width

    def column(moment: datetime) -> int:
        return min(int((moment - run_start).total_seconds() / total * width), width - 1)

    first = column(row.start)
    last = column(row.end or now)
    running_from = first
    if row.node_type in _WAITING_TYPES:
        running_from = last + 1
    elif row.last_attempt_start is not None:
        running_from = column(row.last_attempt_start)
    cells = [" "] * width
    for position in range(first, last + 1):
        cells[position] = _WAIT_CHAR if position < running_from else _RUN_CHAR
    return "".join(cells)


def format_duration(value: timedelta) -> str:
    """Format a duration as 0.42s, 12.3s, 4m05s or 2h03m."""
    seconds = max(value.total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _tokens_text(tokens_in: int | None, tokens_out: int | None) -> str:
    if tokens_in is None and tokens_out is None:
        return "-"
    return f"{tokens_in or 0}/{tokens_out or 0}"


def _cost_text(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.6f}"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def timeline_json(timeline: Timeline, now: datetime) -> dict[str, Any]:
    """Return the timeline as JSON-ready data: times in ISO 8601, durations in seconds."""
    rows = []
    for row in timeline.rows:
        data = asdict(row)
        for key in ("start", "last_attempt_start", "end"):
            data[key] = data[key].isoformat() if data[key] else None
        duration = row.duration(now)
        wait = row.wait(now)
        data["duration_seconds"] = None if duration is None else round(duration.total_seconds(), 3)
        data["wait_seconds"] = None if wait is None else round(wait.total_seconds(), 3)
        rows.append(data)
    return {
        "run_id": timeline.run_id,
        "workflow": timeline.workflow,
        "version": timeline.version,
        "status": timeline.status,
        "start": timeline.start.isoformat(),
        "end": timeline.end.isoformat() if timeline.end else None,
        "totals": timeline.totals(),
        "rows": rows,
        "notes": timeline.notes,
    }
