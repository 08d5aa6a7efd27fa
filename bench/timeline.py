"""Split the wall time of a finished run into the gaps between its history events.

The server stamps every history event, so the gaps show where a chain spends each step. A step
spends time on the activity (queue and run), then waits for a worker to pick up the next
workflow task, then runs the worker's workflow code. The stamps come from the server's clock and have
millisecond resolution at best, so each gap is only as exact as that.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

# Gaps between an event and the next one, named by the pair of event types. Together they
# cover one chain step: activity scheduled .. next activity scheduled.
GAP_NAMES = {
    ("ACTIVITY_TASK_SCHEDULED", "ACTIVITY_TASK_COMPLETED"): "activity scheduled to completed",
    ("ACTIVITY_TASK_COMPLETED", "WORKFLOW_TASK_SCHEDULED"): "completion to wf task",
    ("WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED"): "wf task queued",
    ("WORKFLOW_TASK_STARTED", "WORKFLOW_TASK_COMPLETED"): "wf task ran",
    ("WORKFLOW_TASK_COMPLETED", "ACTIVITY_TASK_SCHEDULED"): "wf task to next activity",
}


def _name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def _millis(event: HistoryEvent) -> float:
    return event.event_time.seconds * 1000.0 + event.event_time.nanos / 1e6


def step_gaps(events: Iterable[HistoryEvent]) -> dict[str, list[float]]:
    """Return the gaps of one run in milliseconds, grouped by `GAP_NAMES` label.

    ACTIVITY_TASK_STARTED events are skipped: for an activity with a retry policy the server
    writes that event only together with the completion, so its place in the history does
    not show when the worker received the task.
    """
    gaps: dict[str, list[float]] = defaultdict(list)
    previous: HistoryEvent | None = None
    for event in events:
        if _name(event) == "ACTIVITY_TASK_STARTED":
            continue
        if previous is not None:
            label = GAP_NAMES.get((_name(previous), _name(event)))
            if label is not None:
                gaps[label].append(_millis(event) - _millis(previous))
        previous = event
    return gaps


def median_gaps(runs: Iterable[dict[str, list[float]]]) -> dict[str, float]:
    """Return the median of each gap over all steps of all runs, in milliseconds."""
    merged: dict[str, list[float]] = defaultdict(list)
    for gaps in runs:
        for label, values in gaps.items():
            merged[label].extend(values)
    return {label: statistics.median(merged[label]) for label in GAP_NAMES.values() if merged[label]}
