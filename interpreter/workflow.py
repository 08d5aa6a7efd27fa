"""`DagWorkflow`: the one Temporal workflow that interprets every compiled DAG.

Everything here is deterministic. Ready nodes are taken in topological (file)
order, never from a set; time comes from `workflow.now()`; expressions are pure.
Activity nodes run as activities named by node id, `workflow` nodes as child
runs, and transforms, conditions, `for_each` expansion and outputs are evaluated
here without any activity.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
    TimeoutError as TemporalTimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from dagwright.interpreter.approvals import (
        DECIDE_UPDATE,
        PAUSE_SIGNAL,
        RESUME_SIGNAL,
        ApprovalDecision,
        ControlRequest,
        DecisionRejected,
        PendingApproval,
        check_decision,
        decision_output,
        timeout_output,
    )
    from dagwright.interpreter.budget import UsageLedger, budget_problem
    from dagwright.interpreter.metrics import RunMetrics
    from dagwright.interpreter.expressions import (
        ExpressionError,
        NodeViews,
        build_context,
        evaluate_expression,
        render_template,
        render_value,
    )
    from dagwright.interpreter.requests import ACTIVITY_NAMES, activity_summary, build_request
    from dagwright.interpreter.run_types import (
        TERMINAL_STATUSES,
        WORKFLOW_TYPE,
        BatchSpec,
        BudgetIncrease,
        ReusedNode,
        RunRequest,
        RunResult,
    )
    from dagwright.interpreter.secrets_view import SecretsView
    from dagwright.interpreter.state import NodeState, preview

# Items per child run when a `for_each` list is delegated to child runs. An activity
# item costs about 6 history events, so a batch stays near 3,000 events, well under
# the 10,240-event warning and the 51,200-event limit of one history.
BATCH_SIZE = 500
# The server allows 2,000 pending children; batches run one after another, so this
# only bounds the total: 1,000 batches of 500 items.
MAX_FOR_EACH_ITEMS = BATCH_SIZE * 1000
# Transforms, conditions and outputs are evaluated in workflow code, which must yield to the
# worker within 2 s (the SDK's deadlock detector). After this many evaluations in a row the
# run takes a 1 ms durable timer, so a long chain of transforms spans several workflow tasks.
EVALUATIONS_PER_TASK = 100
# Node activities heartbeat every few seconds. When a worker dies mid-node, the server
# notices after this long and schedules the next attempt on another worker.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)

STATUS_KEY = SearchAttributeKey.for_keyword("DagwrightStatus")


class NodeFailure(Exception):
    """A node failed after its retries and fallbacks; `message` is the user-facing cause."""

    def __init__(self, message: str, *, attempt: int = 0, failed_variants: list[dict] | None = None,
                 fatal: bool = False):
        super().__init__(message)
        self.message = message
        self.fatal = fatal
        self.attempt = attempt
        self.failed_variants = failed_variants or []


@workflow.defn(name=WORKFLOW_TYPE)
class DagWorkflow:
    """Interpret one compiled definition; see docs/running.md for the input format."""

    @workflow.init
    def __init__(self, request: RunRequest) -> None:
        # State is built here, not in run(), because update validators and queries can
        # arrive in the run's first activation, before run() starts.
        self._definition: dict[str, Any] = {}
        self._inputs: dict[str, Any] = {}
        self._nodes: dict[str, NodeState] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._changed = False
        self._paused = False
        self._status = "running"
        self._outputs: dict[str, Any] | None = None
        self._error: str | None = None
        self._failed_node: str | None = None

        self._slots: asyncio.Semaphore | None = None
        self._search_attributes = False
        self._run_started_at = ""
        self._control_log: list[dict[str, Any]] = []

        self._approvals: dict[str, PendingApproval] = {}
        self._ledger = UsageLedger()
        self._budget: dict[str, Any] = {}
        self._budget_request: dict[str, Any] | None = None
        self._metrics: RunMetrics | None = None

        self._invalid_request: str | None = None
        self._status_published = False
        self._evaluations = 0
        self._evaluations_task = -1
        self._yield_timer: asyncio.Task | None = None

        try:
            self._start(request)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The definition did not come from the compiler. run() fails the run with this
            # message instead of letting the workflow task retry for ever.
            self._invalid_request = f"{type(exc).__name__}: {exc}"

    # ------------------------------------------------------------ run

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        if self._invalid_request is not None:
            raise ApplicationError(
                f"invalid run request: the definition is not a compiled dagwright definition"
                f" ({self._invalid_request}); compile the file with `dagwright compile`",
                type="InvalidRunRequest",
                non_retryable=True,
            )
        self._metrics = RunMetrics(self._definition.get("name") or "unknown")
        self._set_status("running")
        try:
            if request.batch is not None:
                return await self._run_batch(request.batch)
            await self._schedule_until_done()
            if self._failed_node is not None:
                # Nodes that never started must not stay "pending" in a finished run.
                await self._cancel_running(f"not run because node '{self._failed_node}' failed")
                raise ApplicationError(self._error or "a node failed", type="NodeFailed", non_retryable=True)
            outputs = self._evaluate_outputs()
        except asyncio.CancelledError:
            await self._cancel_running("the run was cancelled")
            self._set_status("cancelled")
            raise
        except ApplicationError:
            self._set_status("failed")
            raise
        except workflow.NondeterminismError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail the run rather than retry the task for ever
            self._set_status("failed")
            raise ApplicationError(f"interpreter error: {type(exc).__name__}: {exc}", type="InterpreterError",
                                   non_retryable=True) from exc
        self._outputs = outputs
        self._set_status("succeeded")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return RunResult(outputs=outputs, nodes={node_id: state.summary() for node_id, state in self._nodes.items()},
                         usage=self._ledger.summary())

    def _start(self, request: RunRequest) -> None:
        self._definition = request.definition
        self._inputs = request.inputs
        self._search_attributes = request.search_attributes
        self._run_started_at = workflow.info().start_time.astimezone(timezone.utc).isoformat()
        limits = self._definition.get("limits") or {}
        self._slots = asyncio.Semaphore(int(limits.get("max_parallel") or 10))
        self._budget = dict(limits.get("budget") or {})
        for node_id, node in self._definition["nodes"].items():
            _check_node_shape(node_id, node)
            self._nodes[node_id] = NodeState(node_type=node["type"])
        for node_id, reused in request.reuse.items():
            if node_id in self._nodes:
                self._apply_reused(node_id, reused)

    def _apply_reused(self, node_id: str, reused: ReusedNode) -> None:
        state = self._nodes[node_id]
        state.status = reused.status
        state.output = reused.output
        state.error = reused.error
        state.reused = True

    # ------------------------------------------------------------ scheduling

    async def _schedule_until_done(self) -> None:
        # One timer for the whole run: a timeout on every wait below would add a timer
        # started and a timer cancelled event to history each time a node finishes.
        deadline = self._run_deadline()
        timer = None
        if deadline is not None:
            remaining = max((deadline - workflow.now()).total_seconds(), 0.001)
            timer = asyncio.create_task(workflow.sleep(remaining, summary="limits.timeout"))
        try:
            await self._schedule_loop(timer)
        finally:
            if timer is not None and not timer.done():
                timer.cancel()

    async def _schedule_loop(self, timer: asyncio.Task | None) -> None:
        order: list[str] = self._definition["order"]
        while True:
            self._changed = False
            if self._failed_node is None and not self._paused:
                for node_id in order:
                    state = self._nodes[node_id]
                    if state.status == "pending" and self._dependencies_finished(node_id):
                        self._decide(node_id)
            if not self._tasks and (not self._paused or self._failed_node is not None):
                return
            await workflow.wait_condition(lambda: self._changed or (timer is not None and timer.done()))
            if timer is not None and timer.done() and not self._changed:
                timeout = self._definition["limits"]["timeout"]
                await self._cancel_running(f"the run timed out after {timeout:g}s (limits.timeout)")
                raise ApplicationError(
                    f"run timed out after {timeout:g}s (limits.timeout); running nodes were cancelled",
                    type="RunTimedOut",
                    non_retryable=True,
                )

    def _run_deadline(self) -> datetime | None:
        timeout = (self._definition.get("limits") or {}).get("timeout")
        if not timeout:
            return None
        return workflow.info().start_time + timedelta(seconds=timeout)

    def _dependencies_finished(self, node_id: str) -> bool:
        node = self._definition["nodes"][node_id]
        early = node.get("ready_when_overdue") or ()
        return all(
            self._nodes[dep].status in TERMINAL_STATUSES or (dep in early and self._nodes[dep].overdue)
            for dep in node["deps"]
        )

    def _decide(self, node_id: str) -> None:
        """Skip the node or start it, by the default rule and its `when`."""
        node = self._definition["nodes"][node_id]
        all_succeeded = all(self._nodes[dep].status == "succeeded" for dep in node["deps"])
        if node.get("when") is None:
            run = all_succeeded
        elif not node.get("when_uses_status") and not all_succeeded:
            run = False
        else:
            try:
                run = bool(evaluate_expression(node["when"], self._context()))
            except ExpressionError as exc:
                self._finish_failed(node_id, f"node '{node_id}': invalid 'when': {exc}")
                return
        if not run:
            self._nodes[node_id].status = "skipped"
            self._changed = True
            self._record_outcome(node_id)
            return
        self._nodes[node_id].status = "running"
        self._nodes[node_id].started_at = workflow.now().isoformat()
        task = asyncio.create_task(self._execute_node(node_id))
        # A task cancelled before its first step never runs its own `finally`, so the
        # bookkeeping for a finished node also happens here.
        task.add_done_callback(lambda _, node_id=node_id: self._task_done(node_id))
        self._tasks[node_id] = task

    def _task_done(self, node_id: str) -> None:
        self._tasks.pop(node_id, None)
        state = self._nodes[node_id]
        if state.status in ("running", "waiting"):
            state.status = "cancelled"
            state.error = state.error or f"not run because node '{self._failed_node}' failed"
            state.ended_at = workflow.now().isoformat()
            self._record_outcome(node_id)
        self._changed = True

    async def _execute_node(self, node_id: str) -> None:
        node = self._definition["nodes"][node_id]
        state = self._nodes[node_id]
        try:
            if node.get("for_each") is not None:
                output = await self._run_for_each(node)
            else:
                output = await self._run_once(node, None, None)
        except NodeFailure as failure:
            state.attempt = max(state.attempt, failure.attempt)
            state.attempts = failure.failed_variants
            self._finish_failed(node_id, failure.message, fatal=failure.fatal)
        except asyncio.CancelledError:
            state.status = "cancelled"
            state.ended_at = workflow.now().isoformat()
            self._record_outcome(node_id)
            raise
        except workflow.NondeterminismError:
            raise  # the workflow task must fail and retry until compatible code is deployed
        except Exception as exc:  # noqa: BLE001 - any other error fails the node, never the task
            workflow.logger.warning("interpreter error in node", extra={"node_id": node_id}, exc_info=True)
            self._finish_failed(node_id, f"node '{node_id}': interpreter error: {type(exc).__name__}: {exc}",
                                fatal=True)
        else:
            state.status = "succeeded"
            state.output = output
            state.ended_at = workflow.now().isoformat()
            self._record_outcome(node_id)
        finally:
            self._tasks.pop(node_id, None)
            self._changed = True

    def _finish_failed(self, node_id: str, message: str, *, fatal: bool = False) -> None:
        state = self._nodes[node_id]
        state.status = "failed"
        state.error = message
        state.ended_at = workflow.now().isoformat()
        self._changed = True
        self._record_outcome(node_id)
        node = self._definition["nodes"][node_id]
        if (fatal or node.get("on_error", "fail") == "fail") and self._failed_node is None:
            self._failed_node = node_id
            self._error = message
            workflow.logger.info("node failed; cancelling running nodes", extra={"node_id": node_id})
            for other in sorted(self._tasks):
                if other != node_id:
                    self._tasks[other].cancel()

    def _record_outcome(self, node_id: str) -> None:
        if self._metrics is not None:
            state = self._nodes[node_id]
            self._metrics.node_finished(state.node_type, state.status, state.started_at)

    async def _cancel_running(self, reason: str) -> None:
        running = [self._tasks[node_id] for node_id in sorted(self._tasks)]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for state in self._nodes.values():
            if state.status in ("pending", "running", "waiting"):
                state.status = "cancelled"
                state.error = state.error or reason

    # ------------------------------------------------------------ one node

    def _context(self, item: Any = None, index: int | None = None, *, has_item: bool = False, result: Any = None,
                 has_result: bool = False) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if has_item:
            extra["item"] = item
            extra["index"] = index
        if has_result:
            extra["result"] = result
        return build_context(
            inputs=self._inputs,
            nodes=NodeViews(self._nodes, NodeState.view),
            run={
                "id": workflow.info().workflow_id,
                "workflow": self._definition["name"],
                "version": self._definition.get("version"),
                "started_at": self._run_started_at,
                "definition_hash": self._definition.get("hash"),
            },
            secrets=SecretsView(),
            **extra,
        )

    async def _yield_after_many_evaluations(self) -> None:
        """Wait for the next workflow task once this one has had its share of evaluations.

        Counted per workflow task, never timed, so every replay waits at the same place. The
        history length identifies the task and is the same on replay. All nodes that have to
        wait share one timer, so a wide fan-out takes one timer per 100 nodes.
        """
        while True:
            task = workflow.info().get_current_history_length()
            if task != self._evaluations_task:
                self._evaluations_task = task
                self._evaluations = 0
            if self._evaluations < EVALUATIONS_PER_TASK:
                self._evaluations += 1
                return
            if self._yield_timer is None or self._yield_timer.done():
                self._yield_timer = asyncio.create_task(
                    workflow.sleep(timedelta(milliseconds=1), summary="yield after many evaluations")
                )
            # Shielded, so a cancelled node does not cancel the timer other nodes wait for.
            await asyncio.shield(self._yield_timer)

    async def _run_once(self, node: dict, item: Any, index: int | None) -> Any:
        if node["type"] == "transform":
            await self._yield_after_many_evaluations()
        has_item = node.get("for_each") is not None
        context = self._context(item, index, has_item=has_item)
        node_type = node["type"]
        try:
            if node_type == "transform":
                result = render_value(node["variants"][0]["params"]["value"], context)
            elif node_type == "wait":
                result = await self._wait(node, context, index)
            elif node_type == "workflow":
                result = await self._run_child(node, context, index)
            elif node_type == "approval":
                result = await self._await_approval(node, context, index)
            else:
                result = await self._run_activity(node, context, index)
            if node.get("output") is None:
                return result
            shaped = self._context(item, index, has_item=has_item, result=result, has_result=True)
            return render_template(node["output"], shaped)
        except ExpressionError as exc:
            raise NodeFailure(f"node '{node['id']}'{_item_label(index)}: {exc}") from None

    async def _run_activity(self, node: dict, context: dict, index: int | None) -> Any:
        info = workflow.info()
        failed: list[dict] = []
        last_attempt = 0
        for number, variant in enumerate(node["variants"]):
            request = build_request(
                node, variant["params"], context, workflow_id=info.workflow_id, run_id=info.run_id,
                index=index, timeout=variant["timeout"],
            )
            await self._wait_until_resumed()
            if node["type"] in ("llm", "embed"):
                await self._check_budget(node, request, index)
            assert self._slots is not None
            async with self._slots:
                try:
                    envelope = await workflow.execute_activity(
                        ACTIVITY_NAMES[node["type"]],
                        request,
                        activity_id=_activity_id(node["id"], index, number),
                        summary=activity_summary(node, variant["params"], index),
                        start_to_close_timeout=_seconds(variant["timeout"]),
                        schedule_to_close_timeout=_seconds(variant.get("deadline")),
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        retry_policy=_retry_policy(variant["retry"]),
                        result_type=dict,
                    )
                except ActivityError as exc:
                    if isinstance(exc.cause, CancelledError):
                        raise asyncio.CancelledError() from exc
                    if node["type"] in ("llm", "embed"):
                        self._record_failed_usage(exc, request.get("model"))
                    attempt, cause = _describe_activity_error(exc, variant["retry"])
                    last_attempt = attempt
                    failed.append({"variant": number, "attempts": attempt, "error": cause})
                    self._record_attempt(node["id"], index, attempt)
                    continue
            self._record_attempt(node["id"], index, envelope.get("attempt", 1))
            if number and index is None:
                self._nodes[node["id"]].variant = number
            output = envelope.get("output")
            if node["type"] in ("llm", "embed"):
                self._ledger.record(output, requested_model=request.get("model"))
            if number and isinstance(output, dict):
                output = {**output, "variant": number, "failed_variants": failed}
            return output
        raise NodeFailure(_failure_message(node, index, failed), attempt=last_attempt, failed_variants=failed)

    def _record_failed_usage(self, exc: ActivityError, model: str | None) -> None:
        """Count the tokens of a failed LLM call (repairs that never validated still cost)."""
        cause = exc.cause
        for detail in cause.details if isinstance(cause, ApplicationError) else ():
            if isinstance(detail, dict) and isinstance(detail.get("usage"), dict):
                self._ledger.record(detail, requested_model=model)

    def _record_attempt(self, node_id: str, index: int | None, attempt: int) -> None:
        state = self._nodes[node_id]
        state.attempt = max(state.attempt, attempt) if index is not None else attempt

    async def _check_budget(self, node: dict, request: dict, index: int | None) -> None:
        """Stop before a call that could exceed `limits.budget`: fail the run, or wait for a raise."""
        while (problem := budget_problem(self._budget, self._ledger, request)) is not None:
            label = f"node '{node['id']}'{_item_label(index)}"
            if self._budget.get("on_exceed", "fail") != "approval":
                raise NodeFailure(f"budget exceeded before {label}: {problem}", fatal=True)
            self._budget_request = {"node": node["id"], "index": index, "reason": problem,
                                    "since": workflow.now().isoformat(), "budget": dict(self._budget)}
            self._nodes[node["id"]].waiting_for = (
                f"waiting for a budget increase: dagwright raise-budget {workflow.info().workflow_id}"
                " --max-cost-usd N --max-tokens N"
            )
            self._refresh_dag_status()
            await workflow.wait_condition(lambda: self._budget_request is None)
            self._nodes[node["id"]].waiting_for = None
            self._refresh_dag_status()

    async def _wait(self, node: dict, context: dict, index: int | None) -> dict:
        params = node["variants"][0]["params"]
        if params.get("duration") is not None:
            seconds = float(params["duration"])
        else:
            until = _parse_time(str(render_value(params["until"], context)), node["id"])
            seconds = max((until - workflow.now()).total_seconds(), 0.0)
        if seconds > 0:
            await workflow.sleep(timedelta(seconds=seconds), summary=f"{node['id']}{_item_label(index)}: wait")
        return {"waited_until": workflow.now().isoformat()}

    async def _run_child(self, node: dict, context: dict, index: int | None) -> Any:
        params = node["variants"][0]["params"]
        child_inputs = render_value(params["inputs"], context)
        request = RunRequest(definition=params["definition"], inputs=child_inputs,
                             search_attributes=self._search_attributes)
        return (await self._execute_child(node, request, index, "child"))["outputs"]

    async def _execute_child(self, node: dict, request: RunRequest, index: int | None, kind: str) -> dict:
        info = workflow.info()
        suffix = _item_label(index) if kind == "child" else f"#batch{index}"
        await self._wait_until_resumed()
        assert self._slots is not None
        async with self._slots:
            try:
                result = await workflow.execute_child_workflow(
                    WORKFLOW_TYPE,
                    request,
                    id=f"{info.workflow_id}/{node['id']}{suffix}",
                    task_queue=info.task_queue,
                    # A batch runs many items, so the node's per-attempt timeout does not bound it.
                    execution_timeout=_seconds(node["variants"][0].get("timeout")) if kind == "child" else None,
                    static_summary=f"{node['id']}{suffix}: {kind} of {self._definition['name']}",
                    result_type=dict,
                )
            except ChildWorkflowError as exc:
                cause = _root_message(exc)
                raise NodeFailure(f"node '{node['id']}'{suffix if kind == 'child' else ''}: child run failed: {cause}") from None
        return result

    async def _await_approval(self, node: dict, context: dict, index: int | None) -> Any:
        params = node["variants"][0]["params"]
        timeout = params.get("timeout")
        waiting = self._open_approval(node, params, context, index)
        key = waiting.key()

        try:
            decided = await self._wait_for_decision(waiting, timeout, params.get("remind_after"))
        except GeneratorExit:
            # The worker evicted the run from its cache (it was terminated, or the cache is full)
            # and closes this coroutine outside the workflow's event loop, where workflow calls
            # such as metrics and search attribute updates raise. The run's state is discarded.
            raise
        except BaseException:
            self._close_approval(waiting, "cancelled")
            raise
        self._close_approval(waiting, waiting.decision["decision"] if decided and waiting.decision else "timed_out")

        if decided:
            return waiting.decision
        waiting.decision = timeout_output(params.get("on_timeout", "reject"), workflow.now().isoformat())
        if params.get("on_timeout") == "fail":
            raise NodeFailure(f"approval '{key}' timed out after {timeout:g}s with no decision (on_timeout: fail)")
        return waiting.decision

    def _open_approval(self, node: dict, params: dict, context: dict, index: int | None) -> PendingApproval:
        """Register a pending approval and show the node as waiting, with the command to decide it."""
        now = workflow.now()
        timeout = params.get("timeout")
        remind_after = params.get("remind_after")
        waiting = PendingApproval(
            node=node["id"],
            index=index,
            prompt=str(render_value(params["prompt"], context)),
            assignees=list(params.get("assignees") or []),
            form=params.get("form"),
            waiting_since=now.isoformat(),
            remind_at=(now + timedelta(seconds=remind_after)).isoformat() if remind_after else None,
            timeout_at=(now + timedelta(seconds=timeout)).isoformat() if timeout else None,
        )
        self._approvals[waiting.key()] = waiting
        if self._metrics is not None:
            self._metrics.approval_opened()

        state = self._nodes[node["id"]]
        if index is None:
            state.status = "waiting"
        state.waiting_for = self._approval_hint(waiting.key(), node["id"], index)
        self._refresh_dag_status()
        return waiting

    def _close_approval(self, waiting: PendingApproval, closed_as: str) -> None:
        if self._metrics is not None:
            self._metrics.approval_closed(closed_as)
        state = self._nodes[waiting.node]
        if waiting.index is None and state.status == "waiting":
            state.status = "running"
        state.overdue = any(p.overdue and p.decision is None for p in self._approvals.values()
                            if p.node == waiting.node)
        state.waiting_for = None
        self._refresh_dag_status()

    async def _wait_for_decision(self, waiting: PendingApproval, timeout: float | None,
                                 remind_after: float | None) -> bool:
        """Wait for the decision; mark the approval overdue at `remind_after`. False on timeout."""
        started = workflow.now()
        if remind_after and (timeout is None or remind_after < timeout):
            try:
                await workflow.wait_condition(lambda: waiting.decision is not None, timeout=remind_after,
                                              timeout_summary=f"{waiting.key()}: remind")
                return True
            except asyncio.TimeoutError:
                waiting.overdue = True
                self._nodes[waiting.node].overdue = True
                self._changed = True
                self._refresh_dag_status()
        remaining = None
        if timeout is not None:
            remaining = max(timeout - (workflow.now() - started).total_seconds(), 0.001)
        try:
            await workflow.wait_condition(lambda: waiting.decision is not None, timeout=remaining,
                                          timeout_summary=f"{waiting.key()}: timeout")
        except asyncio.TimeoutError:
            return False
        return True

    def _approval_hint(self, key: str, node_id: str, index: int | None) -> str:
        run = workflow.info().workflow_id
        target = f"{run} {node_id}" + ("" if index is None else f" --index {index}")
        return f"waiting for approval: dagwright approve {target}  (or: dagwright reject {target})"

    def _refresh_dag_status(self) -> None:
        if self._status != "running" and self._status not in ("waiting_approval", "paused"):
            return
        if self._paused:
            self._set_status("paused")
        elif self._budget_request is not None or any(p.decision is None for p in self._approvals.values()):
            self._set_status("waiting_approval")
        else:
            self._set_status("running")

    # ------------------------------------------------------------ messages

    @workflow.update(name=DECIDE_UPDATE)
    def decide(self, decision: ApprovalDecision) -> dict[str, Any]:
        """Record a human decision on a waiting approval and return the node's output."""
        # Validators of two racing updates can both pass before either handler runs.
        # The handler checks again, so the loser gets an error and the winner the decision.
        try:
            waiting = self._check(decision)
        except DecisionRejected as exc:
            raise ApplicationError(f"decision lost: {exc}", type="DecisionRejected", non_retryable=True) from None
        waiting.decision = decision_output(decision, workflow.now().isoformat())
        self._changed = True
        workflow.logger.info("approval decided", extra={"node_id": decision.node, "decision": decision.decision})
        return waiting.decision

    @decide.validator
    def validate_decide(self, decision: ApprovalDecision) -> None:
        try:
            self._check(decision)
        except DecisionRejected as exc:
            raise ApplicationError(str(exc), type="DecisionRejected", non_retryable=True) from None

    def _check(self, decision: ApprovalDecision) -> PendingApproval:
        approval_nodes = {
            node_id: node["variants"][0]["params"]
            for node_id, node in self._definition.get("nodes", {}).items()
            if node["type"] == "approval"
        }
        return check_decision(
            decision,
            approval_nodes=approval_nodes,
            node_status={node_id: state.status for node_id, state in self._nodes.items()},
            pending=self._approvals,
        )

    @workflow.update(name="raise_budget")
    def raise_budget(self, increase: BudgetIncrease) -> dict[str, Any]:
        """Raise `limits.budget` for this run and let the waiting LLM call continue."""
        self._check_increase(increase)
        if increase.max_tokens is not None:
            self._budget["max_tokens"] = increase.max_tokens
        if increase.max_cost_usd is not None:
            self._budget["max_cost_usd"] = increase.max_cost_usd
        self._control_log.append({"action": "raise_budget", "by": increase.by, "reason": increase.comment,
                                  "at": workflow.now().isoformat(), "budget": dict(self._budget)})
        self._budget_request = None
        self._changed = True
        return dict(self._budget)

    @raise_budget.validator
    def validate_raise_budget(self, increase: BudgetIncrease) -> None:
        self._check_increase(increase)

    def _check_increase(self, increase: BudgetIncrease) -> None:
        if self._budget_request is None:
            raise ApplicationError("the run is not waiting for a budget increase", type="DecisionRejected",
                                   non_retryable=True)
        if increase.max_tokens is None and increase.max_cost_usd is None:
            raise ApplicationError("give a new max_tokens or max_cost_usd", type="DecisionRejected",
                                   non_retryable=True)
        for key, value in (("max_tokens", increase.max_tokens), ("max_cost_usd", increase.max_cost_usd)):
            current = self._budget.get(key)
            if value is not None and current is not None and value <= current:
                raise ApplicationError(f"the new {key} {value} is not above the current {current}",
                                       type="DecisionRejected", non_retryable=True)

    @workflow.signal(name=PAUSE_SIGNAL)
    def pause(self, request: ControlRequest) -> None:
        """Stop starting new nodes; running nodes finish."""
        self._control_log.append({"action": "pause", "by": request.by, "reason": request.reason,
                                  "at": workflow.now().isoformat()})
        self._paused = True
        self._changed = True
        self._refresh_dag_status()

    @workflow.signal(name=RESUME_SIGNAL)
    def resume(self, request: ControlRequest) -> None:
        """Start scheduling nodes again after a pause."""
        self._control_log.append({"action": "resume", "by": request.by, "reason": request.reason,
                                  "at": workflow.now().isoformat()})
        self._paused = False
        self._changed = True
        self._refresh_dag_status()

    @workflow.query
    def approvals(self) -> list[dict[str, Any]]:
        """Return the approvals waiting for a decision."""
        return [p.listing() for key, p in sorted(self._approvals.items()) if p.decision is None]

    @workflow.query
    def snapshot(self) -> dict[str, Any]:
        """Return every node's status, full output and error, for `dagwright rerun`."""
        return {node_id: state.view() for node_id, state in self._nodes.items()}

    async def _wait_until_resumed(self) -> None:
        if self._paused:
            await workflow.wait_condition(lambda: not self._paused)

    # ------------------------------------------------------------ for_each

    async def _run_for_each(self, node: dict) -> list[Any]:
        try:
            items = evaluate_expression(node["for_each"], self._context())
        except ExpressionError as exc:
            raise NodeFailure(f"node '{node['id']}': invalid 'for_each': {exc}") from None
        if isinstance(items, dict):
            items = list(items.items())
        if not isinstance(items, list):
            raise NodeFailure(
                f"node '{node['id']}': 'for_each' must give a list, got {type(items).__name__} ({preview(items)})"
            )
        if len(items) > MAX_FOR_EACH_ITEMS:
            raise NodeFailure(
                f"node '{node['id']}': 'for_each' gave {len(items)} items; the limit is {MAX_FOR_EACH_ITEMS}."
                " Split the list across several nodes or runs."
            )
        state = self._nodes[node["id"]]
        state.items_total = len(items)
        if len(items) > BATCH_SIZE and node["type"] != "transform":
            return await self._run_batches(node, items)
        return await self._run_items(node, items, offset=0)

    async def _run_items(self, node: dict, items: list[Any], *, offset: int) -> list[Any]:
        limit = node.get("max_parallel") or (self._definition.get("limits") or {}).get("max_parallel") or 10
        state = self._nodes[node["id"]]
        results: list[Any] = [None] * len(items)
        running: dict[int, asyncio.Task] = {}
        failure: NodeFailure | None = None
        next_item = 0

        async def run_item(position: int) -> None:
            results[position] = await self._run_once(node, items[position], offset + position)

        try:
            while (next_item < len(items) and failure is None) or running:
                while next_item < len(items) and len(running) < limit and failure is None:
                    running[next_item] = asyncio.create_task(run_item(next_item))
                    next_item += 1
                done, _ = await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                for position in sorted(p for p, task in running.items() if task in done):
                    task = running.pop(position)
                    # Items cancelled below after the first failure end here without an outcome.
                    if task.cancelled():
                        continue
                    error = task.exception()
                    if error is None:
                        state.items_done += 1
                        continue
                    state.items_failed += 1
                    if failure is None:
                        failure = error if isinstance(error, NodeFailure) else NodeFailure(str(error))
                        for other in sorted(running):
                            running[other].cancel()
        except asyncio.CancelledError:
            # The node itself was cancelled (another node failed, or the run timed out).
            # Cancelling a waiter does not cancel what it waits on, so stop the items here.
            for other in sorted(running):
                running[other].cancel()
            await asyncio.gather(*(running[other] for other in sorted(running)), return_exceptions=True)
            raise
        if failure is not None:
            raise failure
        return results

    async def _run_batches(self, node: dict, items: list[Any]) -> list[Any]:
        reuse = {dep: ReusedNode(status=self._nodes[dep].status, output=self._nodes[dep].output,
                                 error=self._nodes[dep].error)
                 for dep in node["deps"] if self._nodes[dep].status in ("succeeded", "failed", "skipped")}
        results: list[Any] = []
        for number, offset in enumerate(range(0, len(items), BATCH_SIZE)):
            chunk = items[offset : offset + BATCH_SIZE]
            request = RunRequest(definition=self._definition, inputs=self._inputs, reuse=reuse,
                                 batch=BatchSpec(node=node["id"], items=chunk, offset=offset))
            result = await self._execute_child(node, request, number, "batch")
            results.extend(result["outputs"]["items"])
            self._nodes[node["id"]].items_done += len(chunk)
        return results

    async def _run_batch(self, batch: BatchSpec) -> RunResult:
        node = self._definition["nodes"][batch.node]
        state = self._nodes[batch.node]
        state.status = "running"
        state.items_total = len(batch.items)
        try:
            results = await self._run_items(node, batch.items, offset=batch.offset)
        except NodeFailure as failure:
            raise ApplicationError(failure.message, type="NodeFailed", non_retryable=True) from None
        state.status = "succeeded"
        return RunResult(outputs={"items": results}, nodes={batch.node: state.summary()})

    # ------------------------------------------------------------ outputs and status

    def _evaluate_outputs(self) -> dict[str, Any]:
        try:
            return render_value(self._definition.get("outputs") or {}, self._context())
        except ExpressionError as exc:
            raise ApplicationError(f"invalid workflow output: {exc}", type="OutputError", non_retryable=True) from None

    def _set_status(self, status: str) -> None:
        # Each upsert is a command in history, so an unchanged status is not written again.
        changed = status != self._status
        self._status = status
        if self._search_attributes and (changed or not self._status_published):
            workflow.upsert_search_attributes([STATUS_KEY.value_set(status)])
            self._status_published = True

    @workflow.query
    def state(self) -> dict[str, Any]:
        """Return the live state: run status, each node's row, and outputs once done."""
        return {
            "workflow": self._definition.get("name"),
            "version": self._definition.get("version"),
            "status": self._status,
            "paused": self._paused,
            "error": self._error,
            "failed_node": self._failed_node,
            "nodes": {node_id: state.summary() for node_id, state in self._nodes.items()},
            "outputs": self._outputs,
            "control": self._control_log,
            "usage": self._ledger.summary(),
            "budget": self._budget or None,
            "budget_request": self._budget_request,
        }


def _check_node_shape(node_id: str, node: Any) -> None:
    if not isinstance(node, dict):
        raise TypeError(f"node '{node_id}' is {type(node).__name__}, not a mapping")
    missing = [key for key in ("type", "deps", "variants") if key not in node]
    if missing:
        raise KeyError(f"node '{node_id}' has no {', '.join(missing)}")


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def _retry_policy(retry: dict) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=retry["initial_interval"]),
        backoff_coefficient=float(retry["backoff"]),
        maximum_interval=timedelta(seconds=retry["max_interval"]),
        maximum_attempts=int(retry["max_attempts"]),
        non_retryable_error_types=list(retry.get("non_retryable") or []) or None,
    )


def _activity_id(node_id: str, index: int | None, variant: int) -> str:
    activity_id = node_id + _item_label(index)
    return activity_id if not variant else f"{activity_id}~fallback{variant}"


def _item_label(index: int | None) -> str:
    return "" if index is None else f"[{index}]"


def _describe_activity_error(exc: ActivityError, retry: dict) -> tuple[int, str]:
    """Return (attempts made, cause) for a failed activity."""
    cause = exc.cause
    attempt = 0
    if isinstance(cause, ApplicationError):
        for detail in cause.details or ():
            if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
                attempt = detail["attempt"]
        message = cause.message
    elif isinstance(cause, TemporalTimeoutError):
        message = f"timed out ({cause.type.name.lower().replace('_', '-') if cause.type else 'timeout'})"
    elif isinstance(cause, FailureError):
        message = cause.message
    else:
        message = str(exc)
    if not attempt:
        attempt = int(retry["max_attempts"]) if exc.retry_state and exc.retry_state.name == "MAXIMUM_ATTEMPTS_REACHED" else 1
    return attempt, message


def _failure_message(node: dict, index: int | None, failed: list[dict]) -> str:
    label = f"node '{node['id']}'{_item_label(index)}"
    last = failed[-1]
    attempts = last["attempts"]
    text = f"{label} failed after {attempts} attempt{'s' if attempts != 1 else ''}: {last['error']}"
    if len(failed) > 1:
        earlier = "; ".join(f"variant {f['variant']}: {f['error']}" for f in failed[:-1])
        text += f" (all {len(failed)} variants failed; {earlier})"
    return text


def _root_message(exc: BaseException) -> str:
    current: BaseException | None = exc
    message = str(exc)
    while current is not None:
        if isinstance(current, FailureError) and current.message:
            message = current.message
        current = current.__cause__ or getattr(current, "cause", None)
    return message


def _parse_time(text: str, node_id: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise NodeFailure(f"node '{node_id}': invalid time '{text}' in 'until'; use ISO 8601") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
