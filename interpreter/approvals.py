"""Approval decisions: the update payload, the validator's rules and the node output.

The rules are pure functions of the run's state so the update validator can run
them without touching history: a rejected decision leaves no event behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field

DECIDE_UPDATE = "decide"
PAUSE_SIGNAL = "pause"
RESUME_SIGNAL = "resume"


class ApprovalDecision(BaseModel):
    """The argument of the `decide` update: one person's decision on one approval."""

    model_config = ConfigDict(extra="forbid")

    node: str
    index: int | None = None
    decision: Literal["approve", "reject"]
    data: dict[str, Any] | None = None
    comment: str | None = Field(None, max_length=10_000)
    by: str | None = Field(None, max_length=200)


class ControlRequest(BaseModel):
    """The argument of the `pause` and `resume` signals."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = None
    reason: str | None = None


@dataclass
class PendingApproval:
    """An approval the run is waiting for, as listed by the `approvals` query."""

    node: str
    index: int | None
    prompt: str
    assignees: list[str]
    form: dict[str, Any] | None
    waiting_since: str
    remind_at: str | None
    timeout_at: str | None
    overdue: bool = False
    decision: dict[str, Any] | None = field(default=None)

    def key(self) -> str:
        return approval_key(self.node, self.index)

    def listing(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "index": self.index,
            "prompt": self.prompt,
            "assignees": self.assignees,
            "form": self.form,
            "waiting_since": self.waiting_since,
            "remind_at": self.remind_at,
            "timeout_at": self.timeout_at,
            "overdue": self.overdue,
        }


def approval_key(node: str, index: int | None) -> str:
    return node if index is None else f"{node}[{index}]"


class DecisionRejected(ValueError):
    """Raised by the validator; the message goes back to the caller unchanged."""


def check_decision(
    decision: ApprovalDecision,
    *,
    approval_nodes: dict[str, dict],
    node_status: dict[str, str],
    pending: dict[str, PendingApproval],
) -> PendingApproval:
    """Return the pending approval a decision is for, or raise DecisionRejected saying why."""
    if decision.node not in approval_nodes:
        known = ", ".join(approval_nodes) or "none"
        raise DecisionRejected(f"unknown approval node '{decision.node}'; approval nodes in this run: {known}")

    key = approval_key(decision.node, decision.index)
    waiting = pending.get(key)
    if waiting is None or waiting.decision is not None:
        raise DecisionRejected(_not_waiting_reason(decision, approval_nodes, node_status, pending))

    params = approval_nodes[decision.node]
    assignees = params.get("assignees") or []
    if assignees and decision.by not in assignees:
        raise DecisionRejected(
            f"'{decision.by or '(no name)'}' may not decide approval '{key}'; assignees: {', '.join(assignees)}."
            " Pass --by with one of them."
        )

    form = params.get("form")
    if form is not None and decision.decision == "approve":
        _check_form(key, form, decision.data)
    return waiting


def _not_waiting_reason(decision, approval_nodes, node_status, pending) -> str:
    key = approval_key(decision.node, decision.index)
    waiting_items = sorted(k for k, p in pending.items() if p.node == decision.node and p.decision is None)
    if decision.index is None and waiting_items and waiting_items[0] != key:
        return f"approval '{decision.node}' runs for each item; pass the item index (waiting: {', '.join(waiting_items)})"
    decided = pending.get(key)
    if decided is not None and decided.decision is not None:
        by = decided.decision.get("by") or "someone"
        return f"approval '{key}' was already decided ({decided.decision['decision']} by {by})"
    status = node_status.get(decision.node, "pending")
    if status == "pending":
        return f"approval '{key}' is not waiting yet: the run has not reached it"
    if status in ("skipped", "cancelled", "failed", "succeeded"):
        return f"approval '{key}' is not waiting: the node is {status}"
    return f"approval '{key}' is not waiting for a decision"


def _check_form(key: str, form: dict, data: dict[str, Any] | None) -> None:
    validator = validator_for(form, default=jsonschema.Draft202012Validator)(form)
    errors = sorted(validator.iter_errors(data if data is not None else {}), key=lambda e: list(e.path))
    if errors:
        problems = "; ".join(
            f"{'/'.join(str(part) for part in error.path) or '(form)'}: {error.message}" for error in errors[:5]
        )
        raise DecisionRejected(f"form data for approval '{key}' is invalid: {problems}")


def decision_output(decision: ApprovalDecision, at: str) -> dict[str, Any]:
    """Return the approval node's output for a human decision."""
    approved = decision.decision == "approve"
    return {
        "decision": "approved" if approved else "rejected",
        "approved": approved,
        "data": decision.data,
        "comment": decision.comment,
        "by": decision.by,
        "at": at,
    }


def timeout_output(on_timeout: str, at: str) -> dict[str, Any]:
    """Return the output of an approval whose timeout passed with no decision."""
    return {
        "decision": "timed_out",
        "approved": on_timeout == "approve",
        "data": None,
        "comment": None,
        "by": None,
        "at": at,
    }
