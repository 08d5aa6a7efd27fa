"""Run metrics recorded from workflow code through Temporal's replay-safe metric meter.

`workflow.metric_meter()` records nothing while a worker replays history, so a run's
nodes are counted once however often its history is replayed. The worker exports these
on its Prometheus endpoint together with Temporal's own metrics.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

NODE_DURATION = "dagwright_node_duration"
NODE_OUTCOMES = "dagwright_node_outcomes"
APPROVALS_OPENED = "dagwright_approvals_opened"
APPROVALS_CLOSED = "dagwright_approvals_closed"


class RunMetrics:
    """Instruments of one run, labelled with the workflow name."""

    def __init__(self, workflow_name: str):
        meter = workflow.metric_meter().with_additional_attributes({"workflow": workflow_name})
        self._duration = meter.create_histogram_timedelta(
            NODE_DURATION, "Time from a node's start to its end, retries and waiting included.", "ms"
        )
        self._outcomes = meter.create_counter(NODE_OUTCOMES, "Nodes finished, by type and outcome.")
        self._opened = meter.create_counter(APPROVALS_OPENED, "Approvals that started waiting.")
        self._closed = meter.create_counter(
            APPROVALS_CLOSED, "Approvals that stopped waiting (decided, timed out or cancelled)."
        )

    def node_finished(self, node_type: str, outcome: str, started_at: str | None) -> None:
        attributes = {"node_type": node_type, "outcome": outcome}
        self._outcomes.add(1, attributes)
        if started_at:
            elapsed = workflow.now() - datetime.fromisoformat(started_at)
            self._duration.record(max(elapsed, timedelta(0)), attributes)

    def approval_opened(self) -> None:
        self._opened.add(1)

    def approval_closed(self, decision: str) -> None:
        self._closed.add(1, {"decision": decision})
