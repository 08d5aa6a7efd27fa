"""Hand-written Temporal workflows and the shared tool that interpreter_bench.py compares against.

The chain and fan-out workflows call the same `dagwright.python` activity as a dagwright python
node, with the same input model, timeouts, heartbeat timeout and retry policy that the compiler
gives a python node by default. So any difference in wall time between a hand-written run and a
dagwright run is the interpreter's own work. `NoopChainWorkflow` calls a bare activity with no
envelope and no heartbeats, to measure Temporal's round trip alone.

This module is imported by name inside the workflow sandbox, so interpreter_bench.py puts its
folder on `sys.path`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from dagwright.activities.tools import Tool, ToolRegistry

PYTHON_ACTIVITY = "dagwright.python"
NOOP_ACTIVITY = "bench.noop"
TOOL_NAME = "bench_echo"

# The options a compiled python node gets when the workflow file sets none: the compiler's
# default timeout of 300 s, the interpreter's 30 s heartbeat timeout and the default retry policy.
START_TO_CLOSE = timedelta(seconds=300)
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=3,
)


async def bench_echo(value: Any) -> Any:
    """Return `value`: a tool that does no work, so a run measures orchestration only."""
    return value


def bench_registry() -> ToolRegistry:
    """Return a tool registry that contains only `bench_echo`."""
    registry = ToolRegistry()
    registry.register(Tool(name=TOOL_NAME, function=bench_echo))
    return registry


@activity.defn(name=NOOP_ACTIVITY)
async def noop(value: int) -> int:
    """Return `value` unchanged."""
    return value


def _tool_call(node_id: str, value: Any) -> dict[str, Any]:
    # The same shape as dagwright.activities.python_tool.ToolCall.
    return {"node_id": node_id, "function": TOOL_NAME, "args": {"value": value}}


async def _call_tool(node_id: str, value: Any) -> Any:
    envelope = await workflow.execute_activity(
        PYTHON_ACTIVITY,
        _tool_call(node_id, value),
        activity_id=node_id,
        start_to_close_timeout=START_TO_CLOSE,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=RETRY_POLICY,
        result_type=dict,
    )
    return envelope["output"]


@workflow.defn(name="HandChain")
class HandChainWorkflow:
    """Run `steps` tool calls one after another, each taking the previous output."""

    @workflow.run
    async def run(self, steps: int) -> Any:
        value: Any = 1
        for step in range(1, steps + 1):
            value = await _call_tool(f"n{step}", value)
        return value


@workflow.defn(name="HandFanOut")
class HandFanOutWorkflow:
    """Run `width` tool calls at once and return their outputs in order."""

    @workflow.run
    async def run(self, width: int) -> list[Any]:
        calls = [_call_tool(f"n{branch}", branch) for branch in range(1, width + 1)]
        return list(await asyncio.gather(*calls))


@workflow.defn(name="NoopChain")
class NoopChainWorkflow:
    """Run `steps` bare no-op activities one after another."""

    @workflow.run
    async def run(self, steps: int) -> int:
        value = 0
        for _ in range(steps):
            value = await workflow.execute_activity(
                NOOP_ACTIVITY, value + 1, start_to_close_timeout=timedelta(seconds=30), result_type=int
            )
        return value
