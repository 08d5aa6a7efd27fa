"""The ``dagwright.python`` activity: run a registered tool with validated arguments.

``run_tool`` uses ``tools.default_registry``; ``make_python_activity(registry)`` builds the same
activity over another registry (one activity per worker, because both use the activity name
``dagwright.python``).

Async tools run on the worker's event loop. Sync tools run in a dedicated thread pool so they
cannot block the loop or starve the loop's default executor, which also resolves host names.
While a tool runs, the activity heartbeats, so a workflow that sets ``heartbeat_timeout`` can
cancel it. Cancellation of a sync tool is best effort: the activity stops waiting and reports the
cancellation at once, but Python cannot stop a thread, so the function runs on to its end and
its result is discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from dagwright.activities.heartbeat import heartbeating
from dagwright.activities.errors import (
    TOOL_ARGUMENTS_INVALID,
    TOOL_ERROR,
    TOOL_NOT_FOUND,
    TOOL_RESULT_INVALID,
    permanent,
    retryable,
)
from dagwright.activities.tools import (
    Tool,
    ToolArgumentsError,
    ToolNotFoundError,
    ToolRegistry,
    default_registry,
)

logger = logging.getLogger(__name__)

ACTIVITY_NAME = "dagwright.python"


# NOTE: 16 threads is a guess at "enough for I/O-bound tools". A worker with many long sync tools
# should raise it, because otherwise tools wait for a free thread while their attempt timeout runs.
TOOL_THREADS = 16

_executor: ThreadPoolExecutor | None = None


class ToolCall(BaseModel):
    """Input of the ``dagwright.python`` activity, with every template already rendered."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    function: str
    args: dict[str, Any] = {}


@activity.defn(name=ACTIVITY_NAME)
async def run_tool(call: ToolCall) -> Any:
    """Run the tool that ``call.function`` names in the default registry."""
    return await call_tool(call, default_registry)


def make_python_activity(registry: ToolRegistry) -> Callable[[ToolCall], Awaitable[Any]]:
    """Return a ``dagwright.python`` activity that looks tools up in ``registry``."""

    @activity.defn(name=ACTIVITY_NAME)
    async def run_registered_tool(call: ToolCall) -> Any:
        return await call_tool(call, registry)

    return run_registered_tool


async def call_tool(call: ToolCall, registry: ToolRegistry) -> Any:
    """Validate the arguments, run the tool while heartbeating and return its JSON-safe result.

    Raises:
        ApplicationError: of type ToolNotFound, ToolArgumentsInvalid, ToolError or
            ToolResultInvalid, or whatever ApplicationError the tool raised itself.
    """
    found = _find_tool(call, registry)
    arguments = _validate(call, found)

    try:
        async with heartbeating():
            result = await _invoke(found, arguments)
    except (ApplicationError, CancelledError, asyncio.CancelledError):
        # The tool chose its own classification, or the activity is being cancelled.
        raise
    except Exception as exc:
        logger.warning(
            "tool %s failed on node %s: %s", found.name, call.node_id, type(exc).__name__,
            extra={"node_id": call.node_id, "tool": found.name},
        )
        raise retryable(
            f"Tool {found.name!r} failed on node {call.node_id!r}: {type(exc).__name__}: {exc}",
            type=TOOL_ERROR,
        ) from exc

    return _to_json_value(result, tool_name=found.name, node_id=call.node_id, path="result")


def _find_tool(call: ToolCall, registry: ToolRegistry) -> Tool:
    try:
        return registry.get(call.function)
    except ToolNotFoundError as exc:
        raise permanent(
            f"Node {call.node_id!r}: {exc}", type=TOOL_NOT_FOUND, details={"tool": call.function}
        ) from None


def _validate(call: ToolCall, found: Tool) -> dict[str, Any]:
    try:
        return found.validate_arguments(call.args)
    except ToolArgumentsError as exc:
        raise permanent(
            f"Node {call.node_id!r}: {exc} Fix 'args' in the workflow to match the tool's "
            "signature.",
            type=TOOL_ARGUMENTS_INVALID,
            details={"tool": found.name, "errors": exc.errors},
        ) from None


async def _invoke(found: Tool, arguments: dict[str, Any]) -> Any:
    if found.is_async:
        return await found.function(**arguments)

    # Copying the context lets sync tools call activity.info() from the thread.
    context = contextvars.copy_context()
    call = functools.partial(context.run, found.function, **arguments)
    return await asyncio.get_running_loop().run_in_executor(_tool_executor(), call)


def _tool_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=TOOL_THREADS, thread_name_prefix="dagwright-tool"
        )
    return _executor


def _to_json_value(value: Any, *, tool_name: str, node_id: str, path: str) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [
            _to_json_value(item, tool_name=tool_name, node_id=node_id, path=f"{path}[{index}]")
            for index, item in enumerate(value)
        ]
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _result_error(tool_name, node_id, f"{path} key {key!r}", key)
            converted[key] = _to_json_value(
                item, tool_name=tool_name, node_id=node_id, path=f"{path}[{key!r}]"
            )
        return converted
    raise _result_error(tool_name, node_id, path, value)


def _result_error(tool_name: str, node_id: str, path: str, value: Any) -> ApplicationError:
    return permanent(
        f"Tool {tool_name!r} on node {node_id!r} returned a {type(value).__name__} at {path}, "
        "which is not JSON-serializable. Return dicts with string keys, lists, str, int, float, "
        "bool, None or pydantic models.",
        type=TOOL_RESULT_INVALID,
        details={"tool": tool_name, "path": path, "type": type(value).__name__},
    )
