"""Per-node run state, as kept by the workflow and returned by its `state` query."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PREVIEW_CHARS = 200


@dataclass
class NodeState:
    """The run's record of one node: status, attempts, times, output and error."""

    node_type: str
    status: str = "pending"
    attempt: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    output: Any = None
    error: str | None = None
    variant: int | None = None
    reused: bool = False
    items_total: int | None = None
    items_done: int = 0
    items_failed: int = 0
    waiting_for: str | None = None
    overdue: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """Return the node as seen by expressions: `nodes.<id>.status/output/error`."""
        view = {"status": self.status, "output": self.output, "error": self.error}
        if self.overdue:
            view["overdue"] = True
        return view

    def summary(self) -> dict[str, Any]:
        """Return the node's row in the `state` query, with a short output preview."""
        row: dict[str, Any] = {
            "type": self.node_type,
            "status": self.status,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "output_preview": preview(self.output) if self.status == "succeeded" else None,
            "error": self.error,
        }
        if self.variant:
            row["variant"] = self.variant
        if self.reused:
            row["reused"] = True
        if self.items_total is not None:
            row["items"] = {"total": self.items_total, "done": self.items_done, "failed": self.items_failed}
        if self.waiting_for:
            row["waiting_for"] = self.waiting_for
        if self.overdue:
            row["overdue"] = True
        if self.attempts:
            row["failed_variants"] = self.attempts
        return row


def preview(value: Any) -> str | None:
    """Render a value as at most PREVIEW_CHARS characters of JSON."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."
