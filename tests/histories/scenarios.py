"""The scenarios of the replay corpus: which workflow file each one runs and how it is driven.

Each scenario runs one file from `workflows/` with a fixed workflow id. A driver acts on the
run while it is open (decides an approval, pauses and resumes, raises the budget, cancels),
and the recorder then checks that the run ended as the scenario expects before it saves the
history, so a stub reply that differs from the script cannot slip a different code path into the corpus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from dagwright.interpreter.approvals import DECIDE_UPDATE, PAUSE_SIGNAL, RESUME_SIGNAL, ApprovalDecision, ControlRequest
from dagwright.interpreter.run_types import BudgetIncrease

# How long a driver waits for a run to reach the point it acts on.
DRIVER_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.05


class RecordingError(Exception):
    """A scenario did not run as scripted, so its history must not enter the corpus."""


Driver = Callable[[WorkflowHandle], Awaitable[None]]


@dataclass(frozen=True)
class ChildHistory:
    """A child run of a scenario whose history is recorded too."""

    label: str
    id_suffix: str


@dataclass(frozen=True)
class Scenario:
    """One recorded run.

    `http` maps a stub path to its replies, each `(status, json body, delay seconds)`; when it
    is set, the recorder passes the stub's base URL as the input `base`. `llm` lists the LLM
    stand-in's rules. `rerun_from` makes the recorder run the workflow once,
    then record a rerun from that node with the first run's results reused.
    """

    name: str
    workflow: str
    expected_status: str
    expected_nodes: dict[str, str]
    description: str
    inputs: dict[str, Any] = field(default_factory=dict)
    http: dict[str, list[tuple[int, Any, float]]] = field(default_factory=dict)
    llm: list[dict[str, Any]] = field(default_factory=list)
    expected_llm_requests: int | None = None
    uses_sql: bool = False
    driver: Driver | None = None
    children: tuple[ChildHistory, ...] = ()
    rerun_from: str | None = None

    @property
    def workflow_id(self) -> str:
        return f"replay-{self.name.replace('_', '-')}"


# ---------------------------------------------------------------- drivers


async def wait_for_state(handle: WorkflowHandle, ready: Callable[[dict[str, Any]], bool],
                         event: str) -> dict[str, Any]:
    """Poll the run's `state` query until `ready` returns true, or raise RecordingError after the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRIVER_TIMEOUT_SECONDS
    state: dict[str, Any] = {}
    while loop.time() < deadline:
        try:
            state = await handle.query("state")
        except (RPCError, WorkflowQueryFailedError):
            # The first workflow task may not have run yet, so query again.
            state = {}
        if state and ready(state):
            return state
        await asyncio.sleep(POLL_INTERVAL_SECONDS)
    raise RecordingError(f"run {handle.id} timed out waiting for {event} after {DRIVER_TIMEOUT_SECONDS:g}s; "
                         f"last state: {state}")


def _node_status(state: dict[str, Any], node_id: str) -> str:
    return state["nodes"][node_id]["status"]


async def approve_review(handle: WorkflowHandle) -> None:
    await wait_for_state(handle, lambda state: _node_status(state, "review") == "waiting",
                         "approval 'review' to wait for a decision")
    decision = ApprovalDecision(node="review", decision="approve", data={"note": "looks right"}, by="ana")
    await handle.execute_update(DECIDE_UPDATE, decision, result_type=dict)


async def approve_after_reminder(handle: WorkflowHandle) -> None:
    await wait_for_state(handle, lambda state: _node_status(state, "remind") == "succeeded",
                         "node 'remind' to succeed")
    decision = ApprovalDecision(node="review", decision="approve", by="recorder")
    await handle.execute_update(DECIDE_UPDATE, decision, result_type=dict)


async def pause_then_resume(handle: WorkflowHandle) -> None:
    # A pause that arrives with the start would stop `first` from starting at all.
    await wait_for_state(handle, lambda state: _node_status(state, "first") == "running", "node 'first' to start")
    await handle.signal(PAUSE_SIGNAL, ControlRequest(by="recorder", reason="replay corpus: pause"))
    state = await wait_for_state(handle, lambda state: _node_status(state, "first") == "succeeded",
                                 "node 'first' to succeed")
    if _node_status(state, "second") != "pending":
        raise RecordingError(f"run {handle.id}: the pause signal arrived after node 'second' started,"
                             " so the run did not pause; record this scenario again")
    await handle.signal(RESUME_SIGNAL, ControlRequest(by="recorder", reason="replay corpus: resume"))


async def raise_budget(handle: WorkflowHandle) -> None:
    await wait_for_state(handle, lambda state: state.get("budget_request") is not None, "a budget increase request")
    increase = BudgetIncrease(max_tokens=5000, by="recorder", comment="replay corpus")
    await handle.execute_update("raise_budget", increase, result_type=dict)


async def cancel_while_holding(handle: WorkflowHandle) -> None:
    await wait_for_state(handle, lambda state: _node_status(state, "hold") == "running", "node 'hold' to start")
    await handle.cancel()


# ---------------------------------------------------------------- scenarios

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="basics",
        workflow="basics.yaml",
        description="python, transform, wait, when/skip with propagation, join with always()",
        expected_status="succeeded",
        expected_nodes={"square": "succeeded", "label": "succeeded", "pause": "succeeded", "only_a": "skipped",
                        "only_b": "succeeded", "after_a": "skipped", "join": "succeeded"},
    ),
    Scenario(
        name="http_retry",
        workflow="http_retry.yaml",
        description="http node retried after a 500, then succeeds",
        http={"/flaky": [(500, None, 0.0), (200, {"ok": True}, 0.0)]},
        expected_status="succeeded",
        expected_nodes={"call": "succeeded"},
    ),
    Scenario(
        name="http_fallback",
        workflow="http_fallback.yaml",
        description="http node whose first variant gets a 404, fallback variant succeeds",
        http={"/primary": [(404, None, 0.0)], "/mirror": [(200, {"source": "mirror"}, 0.0)]},
        expected_status="succeeded",
        expected_nodes={"fetch": "succeeded"},
    ),
    Scenario(
        name="http_on_error",
        workflow="http_on_error.yaml",
        description="on_error: continue, a failed() handler and a skipped dependent",
        http={"/missing": [(404, None, 0.0)]},
        expected_status="succeeded",
        expected_nodes={"fetch": "failed", "handler": "succeeded", "dependent": "skipped"},
    ),
    Scenario(
        name="fail_fast",
        workflow="fail_fast.yaml",
        description="a failing node cancels a running sibling activity",
        http={"/slow": [(200, {"late": True}, 30.0)]},
        expected_status="failed",
        expected_nodes={"slow": "cancelled", "broken": "failed", "after_slow": "cancelled"},
    ),
    Scenario(
        name="foreach_small",
        workflow="foreach_small.yaml",
        description="for_each over 5 items with max_parallel 2",
        expected_status="succeeded",
        expected_nodes={"squares": "succeeded", "total": "succeeded"},
    ),
    Scenario(
        name="foreach_batches",
        workflow="foreach_batches.yaml",
        description="for_each over 501 items in two child batch runs; batch 0 recorded too",
        expected_status="succeeded",
        expected_nodes={"numbers": "succeeded", "ticks": "succeeded", "count": "succeeded"},
        children=(ChildHistory("batch0", "/ticks#batch0"),),
    ),
    Scenario(
        name="child_workflow",
        workflow="child_workflow.yaml",
        description="workflow node running a child run; the child is recorded too",
        expected_status="succeeded",
        expected_nodes={"greet": "succeeded", "wrap": "succeeded"},
        children=(ChildHistory("greet", "/greet"),),
    ),
    Scenario(
        name="approval_decided",
        workflow="approval_decided.yaml",
        description="approval decided with the decide update",
        driver=approve_review,
        expected_status="succeeded",
        expected_nodes={"review": "succeeded", "publish": "succeeded"},
    ),
    Scenario(
        name="approval_timeout",
        workflow="approval_timeout.yaml",
        description="approval timed out with on_timeout: reject",
        expected_status="succeeded",
        expected_nodes={"review": "succeeded", "outcome": "succeeded"},
    ),
    Scenario(
        name="approval_overdue",
        workflow="approval_overdue.yaml",
        description="overdue approval runs an overdue('review') reminder, then is approved",
        driver=approve_after_reminder,
        expected_status="succeeded",
        expected_nodes={"review": "succeeded", "remind": "succeeded", "publish": "succeeded"},
    ),
    Scenario(
        name="pause_resume",
        workflow="pause_resume.yaml",
        description="pause signal while a wait runs, resume signal after it",
        driver=pause_then_resume,
        expected_status="succeeded",
        expected_nodes={"first": "succeeded", "second": "succeeded"},
    ),
    Scenario(
        name="llm_repair",
        workflow="llm_repair.yaml",
        description="llm node with an output schema and one repair turn",
        llm=[{"contains": "Classify", "times": 1, "reply": '{"label": "spam",'},
             {"reply": {"json": {"label": "spam"}}}],
        expected_llm_requests=2,
        expected_status="succeeded",
        expected_nodes={"classify": "succeeded"},
    ),
    Scenario(
        name="llm_fallback",
        workflow="llm_fallback.yaml",
        description="llm node whose model is rejected; the fallback model answers",
        llm=[{"model": "mistral-medium-latest", "fail": "invalid_model"},
             {"model": "mistral-small-latest", "reply": "The quarter was flat."}],
        expected_llm_requests=2,
        expected_status="succeeded",
        expected_nodes={"summarize": "succeeded"},
    ),
    Scenario(
        name="embed",
        workflow="embed.yaml",
        description="embed node",
        expected_llm_requests=1,
        expected_status="succeeded",
        expected_nodes={"vectors": "succeeded", "count": "succeeded"},
    ),
    Scenario(
        name="budget_exceeded",
        workflow="budget_exceeded.yaml",
        description="limits.budget exceeded before the second llm call fails the run",
        llm=[{"reply": "Hello there."}],
        expected_llm_requests=1,
        expected_status="failed",
        expected_nodes={"first": "succeeded", "second": "failed"},
    ),
    Scenario(
        name="budget_raised",
        workflow="budget_raised.yaml",
        description="on_exceed: approval waits until the raise_budget update",
        llm=[{"reply": "Hello there."}],
        driver=raise_budget,
        expected_llm_requests=2,
        expected_status="succeeded",
        expected_nodes={"first": "succeeded", "second": "succeeded"},
    ),
    Scenario(
        name="sql",
        workflow="sql.yaml",
        description="sql nodes in execute and rows mode on embedded PostgreSQL",
        uses_sql=True,
        expected_status="succeeded",
        expected_nodes={"create": "succeeded", "insert": "succeeded", "select": "succeeded"},
    ),
    Scenario(
        name="run_timeout",
        workflow="run_timeout.yaml",
        description="limits.timeout passes during a wait and fails the run",
        expected_status="failed",
        expected_nodes={"quick": "succeeded", "hold": "cancelled"},
    ),
    Scenario(
        name="cancelled",
        workflow="cancelled.yaml",
        description="run cancelled by the client during a wait",
        driver=cancel_while_holding,
        expected_status="cancelled",
        expected_nodes={"quick": "succeeded", "hold": "cancelled", "after": "cancelled"},
    ),
    Scenario(
        name="rerun_reuse",
        workflow="rerun_reuse.yaml",
        description="rerun from 'double' with 'fetch' reused from the first run (RunRequest.reuse)",
        rerun_from="double",
        expected_status="succeeded",
        expected_nodes={"fetch": "succeeded", "double": "succeeded", "report": "succeeded"},
    ),
)


def scenario_named(name: str) -> Scenario:
    """Return the scenario called `name`.

    Raises:
        KeyError: no scenario has that name; the message lists the names.
    """
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(f"unknown scenario '{name}'; scenarios: {', '.join(s.name for s in SCENARIOS)}")
