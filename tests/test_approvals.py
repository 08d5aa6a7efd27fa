"""Approval nodes inside `DagWorkflow` on a real worker: the `decide` update and its validator,
timeouts, reminders, approvals inside `for_each`, and finding waiting runs by search attribute.

Each test starts a run, waits until the `approvals` query lists the approval, then sends
decisions as the `decide` update, the way `dagwright approve` and `dagwright reject` do.
A decision that the validator rejects must leave no update event in the run's history.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from http_stub import HttpStub, Reply
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import FailureError
from workflow_helpers import (
    compile_yaml,
    dag_worker,
    history_events,
    start_run,
    wait_for_outcome,
)

from dagwright.cli.run import start_run as start_cli_run
from dagwright.interpreter.approvals import DECIDE_UPDATE, ApprovalDecision
from dagwright.interpreter.run_types import RunRequest

# Upper bound for any wait on the run's state; the runs here take a few seconds at most.
STATE_TIMEOUT_SECONDS = 20.0
# Search attributes reach the visibility store a little after the run sets them.
VISIBILITY_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.05

REVIEW = """
dagwright: 1
name: review
nodes:
  review:
    type: approval
    prompt: "Publish the quarterly report?"
    assignees: [ana, ben]
    form:
      type: object
      properties:
        note: {type: string}
        score: {type: integer, minimum: 1, maximum: 5}
      required: [note]
      additionalProperties: false
outputs:
  review: "{{ nodes.review.output }}"
"""


# ---------------------------------------------------------------- helpers


async def poll(handle: WorkflowHandle, query: str, ready: Callable[[Any], bool], *,
               timeout: float = STATE_TIMEOUT_SECONDS) -> Any:
    """Run `query` on the run until `ready(result)` holds, and return that result."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await handle.query(query)
                if ready(last):
                    return last
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
    except TimeoutError:
        pytest.fail(f"query '{query}' of run {handle.id} did not reach the expected value within {timeout:g} s;"
                    f" last result: {last}")


async def wait_for_approvals(handle: WorkflowHandle, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` approvals wait for a decision, and return the `approvals` listing."""
    return await poll(handle, "approvals", lambda listing: len(listing) >= count)


async def decide(handle: WorkflowHandle, **fields: Any) -> dict[str, Any]:
    """Send one decision and return the approval node's output."""
    return await handle.execute_update(DECIDE_UPDATE, ApprovalDecision(**fields), result_type=dict)


async def rejection(handle: WorkflowHandle, **fields: Any) -> str:
    """Send one decision that must be rejected, and return the error message its caller gets."""
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await decide(handle, **fields)
    cause = caught.value.cause
    assert isinstance(cause, FailureError), f"expected an application error as cause, got {cause!r}"
    return cause.message


async def update_events(handle: WorkflowHandle) -> dict[str, int]:
    """Count the update events in the run's history: accepted and completed."""
    events = await history_events(handle)
    return {
        "accepted": sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED for e in events),
        "completed": sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED for e in events),
    }


def decision_output(decision: str, approved: bool, *, by: str | None, data: Any = None,
                    comment: str | None = None) -> dict[str, Any]:
    """Return the approval output expected for a decision; `at` is checked separately."""
    return {"decision": decision, "approved": approved, "data": data, "comment": comment, "by": by}


def without_time(output: dict[str, Any]) -> dict[str, Any]:
    """Return the output without its `at` field, after checking that `at` is an ISO 8601 time."""
    assert isinstance(output["at"], str) and "T" in output["at"], f"invalid decision time in {output}"
    return {key: value for key, value in output.items() if key != "at"}


# ---------------------------------------------------------------- decisions


async def test_approve_with_valid_form_data(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        [listing] = await wait_for_approvals(handle)
        output = await decide(handle, node="review", decision="approve", data={"note": "ok", "score": 4},
                              comment="numbers checked", by="ana")
        outcome = await wait_for_outcome(handle)

    assert {key: value for key, value in listing.items() if key != "waiting_since"} == {
        "node": "review",
        "index": None,
        "prompt": "Publish the quarterly report?",
        "assignees": ["ana", "ben"],
        "form": definition["nodes"]["review"]["variants"][0]["params"]["form"],
        "remind_at": None,
        "timeout_at": None,
        "overdue": False,
    }
    expected = decision_output("approved", True, by="ana", data={"note": "ok", "score": 4},
                               comment="numbers checked")
    assert without_time(output) == expected
    assert outcome.failure is None
    assert outcome.result["outputs"] == {"review": output}
    assert outcome.node("review")["status"] == "succeeded"
    assert await update_events(handle) == {"accepted": 1, "completed": 1}


async def test_reject_decision_ends_approval(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        output = await decide(handle, node="review", decision="reject", comment="numbers look wrong", by="ben")
        outcome = await wait_for_outcome(handle)

    # A rejection carries no form data, so the form's required fields do not apply.
    assert without_time(output) == decision_output("rejected", False, by="ben", comment="numbers look wrong")
    assert outcome.failure is None
    assert outcome.result["outputs"] == {"review": output}
    assert outcome.node("review")["status"] == "succeeded"


async def test_invalid_form_data_rejected_by_validator(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        message = await rejection(handle, node="review", decision="approve", data={"note": 5, "score": 9},
                                  by="ana")
        events_after_rejection = await update_events(handle)
        still_waiting = await handle.query("approvals")
        await decide(handle, node="review", decision="approve", data={"note": "ok"}, by="ana")
        outcome = await wait_for_outcome(handle)

    assert message == (
        "form data for approval 'review' is invalid: note: 5 is not of type 'string';"
        " score: 9 is greater than the maximum of 5"
    )
    assert events_after_rejection == {"accepted": 0, "completed": 0}
    assert [(row["node"], row["index"]) for row in still_waiting] == [("review", None)]
    assert outcome.result["outputs"]["review"]["data"] == {"note": "ok"}


async def test_decision_for_unknown_node_rejected(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        message = await rejection(handle, node="reveiw", decision="approve", by="ana")
        events = await update_events(handle)
        await handle.terminate(reason="test finished")

    assert message == "unknown approval node 'reveiw'; approval nodes in this run: review"
    assert events == {"accepted": 0, "completed": 0}


async def test_decision_before_node_reached_rejected(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, """
dagwright: 1
name: review-later
nodes:
  hold: {type: wait, duration: 1m}
  review: {type: approval, prompt: "Go on?", needs: [hold]}
""")
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await poll(handle, "state", lambda state: state["nodes"]["hold"]["status"] == "running")
        message = await rejection(handle, node="review", decision="approve", by="ana")
        events = await update_events(handle)
        await handle.terminate(reason="test finished")

    assert message == "approval 'review' is not waiting yet: the run has not reached it"
    assert events == {"accepted": 0, "completed": 0}


async def test_decision_by_non_assignee_rejected(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        message = await rejection(handle, node="review", decision="approve", data={"note": "ok"}, by="mallory")
        events = await update_events(handle)
        still_waiting = await handle.query("approvals")
        await handle.terminate(reason="test finished")

    assert message == "'mallory' may not decide approval 'review'; assignees: ana, ben. Pass --by with one of them."
    assert events == {"accepted": 0, "completed": 0}
    assert [row["node"] for row in still_waiting] == ["review"]


async def test_second_decision_rejected(client: Client, task_queue: str, tmp_path: Path) -> None:
    # `hold` keeps the run open after the decision, so the second one reaches a running run.
    definition = compile_yaml(tmp_path, """
dagwright: 1
name: review-twice
nodes:
  review: {type: approval, prompt: "Go on?"}
  hold: {type: wait, duration: 1m, needs: [review]}
""")
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        await decide(handle, node="review", decision="approve", by="ana")
        message = await rejection(handle, node="review", decision="reject", by="ben")
        events = await update_events(handle)
        state = await handle.query("state")
        await handle.terminate(reason="test finished")

    assert message == "approval 'review' was already decided (approved by ana)"
    assert events == {"accepted": 1, "completed": 1}
    assert state["nodes"]["review"]["status"] == "succeeded"


async def test_racing_decisions_one_wins(client: Client, task_queue: str, tmp_path: Path) -> None:
    # `hold` keeps the run open after the first decision. Otherwise the run can finish before
    # the second update reaches it, and the server aborts that update instead.
    definition = compile_yaml(tmp_path, """
dagwright: 1
name: review-race
nodes:
  review: {type: approval, prompt: "Go on?"}
  hold: {type: wait, duration: 1m, needs: [review]}
""")
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle)
        results = await asyncio.gather(
            decide(handle, node="review", decision="approve", comment="ship it", by="ana"),
            decide(handle, node="review", decision="reject", comment="hold it", by="ben"),
            return_exceptions=True,
        )
        snapshot = await handle.query("snapshot")
        await handle.terminate(reason="test finished")

    winners = [result for result in results if isinstance(result, dict)]
    losers = [result for result in results if isinstance(result, WorkflowUpdateFailedError)]
    assert len(winners) == 1, f"expected one winning decision, got {results}"
    assert len(losers) == 1, f"expected one losing decision, got {results}"
    [winner] = winners
    loser_message = losers[0].cause.message
    # The validator rejects the loser, or the handler does when both validators ran first.
    assert "already decided" in loser_message
    assert f"by {winner['by']})" in loser_message
    assert snapshot["review"] == {"status": "succeeded", "output": winner, "error": None}


# ---------------------------------------------------------------- timeouts and reminders


@pytest.mark.parametrize(
    ("on_timeout", "approved"),
    [("reject", False), ("approve", True)],
)
async def test_timeout_gives_decision_by_on_timeout(client: Client, task_queue: str, tmp_path: Path,
                                                     on_timeout: str, approved: bool) -> None:
    definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: review-timeout
nodes:
  review: {{type: approval, prompt: "Go on?", timeout: 1s, on_timeout: {on_timeout}}}
outputs:
  review: "{{{{ nodes.review.output }}}}"
""")
    async with dag_worker(client, task_queue):
        outcome = await wait_for_outcome(await start_run(client, task_queue, definition))

    assert outcome.failure is None
    assert without_time(outcome.result["outputs"]["review"]) == decision_output("timed_out", approved, by=None)


async def test_timeout_with_on_timeout_fail_fails_run(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, """
dagwright: 1
name: review-timeout-fail
nodes:
  review: {type: approval, prompt: "Go on?", timeout: 1s, on_timeout: fail}
""")
    async with dag_worker(client, task_queue):
        outcome = await wait_for_outcome(await start_run(client, task_queue, definition))

    message = "approval 'review' timed out after 1s with no decision (on_timeout: fail)"
    assert outcome.failure is not None
    assert outcome.error_message == message
    assert outcome.node("review")["status"] == "failed"
    assert outcome.node("review")["error"] == message
    assert (outcome.state["status"], outcome.state["failed_node"]) == ("failed", "review")


async def test_overdue_approval_runs_reminder(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/remind", Reply(json={"ok": True}))
        definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: review-remind
nodes:
  review: {{type: approval, prompt: "Go on?", remind_after: 1s}}
  remind:
    type: http
    method: POST
    when: overdue('review')
    url: "{stub.url}/remind"
    json: {{text: "the review waits"}}
outputs:
  decision: "{{{{ nodes.review.output.decision }}}}"
""")
        async with dag_worker(client, task_queue):
            handle = await start_run(client, task_queue, definition)
            [reminder] = await stub.wait_for_requests("/remind", 1, timeout=STATE_TIMEOUT_SECONDS)
            state = await poll(handle, "state", lambda s: s["nodes"]["remind"]["status"] == "succeeded")
            listing = await handle.query("approvals")
            await decide(handle, node="review", decision="approve", by="ana")
            outcome = await wait_for_outcome(handle)

    assert reminder.json() == {"text": "the review waits"}
    # The reminder ran while the approval kept waiting.
    assert state["nodes"]["review"]["status"] == "waiting"
    assert state["nodes"]["review"]["overdue"] is True
    assert state["status"] == "waiting_approval"
    assert [(row["node"], row["overdue"]) for row in listing] == [("review", True)]
    assert outcome.result["outputs"] == {"decision": "approved"}
    assert outcome.statuses() == {"review": "succeeded", "remind": "succeeded"}


# ---------------------------------------------------------------- for_each and visibility


FOR_EACH_REVIEW = """
dagwright: 1
name: review-each
nodes:
  drafts: {type: transform, value: [intro, body, summary]}
  review:
    type: approval
    for_each: nodes.drafts.output
    prompt: "Publish the {{ item }} section?"
outputs:
  decisions: "{{ nodes.review.output | map(attribute='decision') | list }}"
"""


async def test_for_each_approval_decided_by_index(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, FOR_EACH_REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        listing = await wait_for_approvals(handle, 3)
        for index, decision in [(2, "approve"), (0, "approve"), (1, "reject")]:
            await decide(handle, node="review", index=index, decision=decision, by="ana")
        outcome = await wait_for_outcome(handle)

    assert [(row["node"], row["index"], row["prompt"]) for row in listing] == [
        ("review", 0, "Publish the intro section?"),
        ("review", 1, "Publish the body section?"),
        ("review", 2, "Publish the summary section?"),
    ]
    assert outcome.result["outputs"] == {"decisions": ["approved", "rejected", "approved"]}


async def test_for_each_decision_without_index_rejected(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, FOR_EACH_REVIEW)
    async with dag_worker(client, task_queue):
        handle = await start_run(client, task_queue, definition)
        await wait_for_approvals(handle, 3)
        await decide(handle, node="review", index=1, decision="approve", by="ana")
        message = await rejection(handle, node="review", decision="approve", by="ana")
        events = await update_events(handle)
        await handle.terminate(reason="test finished")

    assert message == "approval 'review' runs for each item; pass the item index (waiting: review[0], review[2])"
    assert events == {"accepted": 1, "completed": 1}


async def test_waiting_run_found_by_search_attribute(client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, REVIEW)
    workflow_id = f"review-{uuid.uuid4()}"
    # The query that `dagwright list --status waiting_approval` sends, narrowed to this run.
    query = (f"WorkflowId = '{workflow_id}' AND DagwrightStatus = 'waiting_approval'"
             " AND ExecutionStatus = 'Running'")
    async with dag_worker(client, task_queue):
        handle = await start_cli_run(client, RunRequest(definition=definition), workflow_id, task_queue, True)
        await wait_for_approvals(handle)
        found = await list_until_found(client, query)
        await decide(handle, node="review", decision="approve", data={"note": "ok"}, by="ana")
        await wait_for_outcome(handle)

    assert [execution.id for execution in found] == [workflow_id]


async def list_until_found(client: Client, query: str) -> list[Any]:
    """List runs matching `query` until there is one, since visibility lags behind the run."""
    try:
        async with asyncio.timeout(VISIBILITY_TIMEOUT_SECONDS):
            while True:
                found = [execution async for execution in client.list_workflows(query)]
                if found:
                    return found
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"no run matched {query!r} within {VISIBILITY_TIMEOUT_SECONDS:g} s")
