"""Tests of the tool registry and the dagwright.python activity."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from dagwright.activities.errors import permanent
from dagwright.activities.python_tool import ToolCall, make_python_activity, run_tool
from dagwright.activities.tools import (
    Tool,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolLoadError,
    ToolNotFoundError,
    ToolRegistry,
    default_registry,
    tool,
)

FIXTURE_MODULE = Path(__file__).with_name("tools_fixture.py")


def registry_with(*functions: Callable[..., Any], **named: Callable[..., Any]) -> ToolRegistry:
    registry = ToolRegistry()
    for function in functions:
        registry.register(Tool(name=function.__name__, function=function))
    for name, function in named.items():
        registry.register(Tool(name=name, function=function))
    return registry


async def call(registry: ToolRegistry, function: str, args: dict[str, Any], env: ActivityEnvironment | None = None) -> Any:
    activity_function = make_python_activity(registry)
    return await (env or ActivityEnvironment()).run(activity_function, ToolCall(node_id="node", function=function, args=args))


async def call_failing(registry: ToolRegistry, function: str, args: dict[str, Any]) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await call(registry, function, args)
    return caught.value


def write_module(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


# Registry


def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Long explanation that the description leaves out.
    """
    return a + b


def add_other(a: int, b: int = 1) -> int:
    return a - b


def test_registry_get_and_names() -> None:
    registry = ToolRegistry()
    registry.register(Tool(name="math.add", function=add, version="3"))
    registry.register(Tool(name="count", function=add_other))

    found = registry.get("math.add")

    assert registry.names() == ["count", "math.add"]
    assert found.function is add
    assert found.version == "3"
    assert not found.is_async
    assert "math.add" in registry


def test_unknown_tool_did_you_mean() -> None:
    registry = registry_with(add)

    with pytest.raises(ToolNotFoundError) as caught:
        registry.get("ad")

    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "No tool named 'ad' is registered on this worker. Did you mean 'add'?"


def test_unknown_tool_lists_registered() -> None:
    registry = registry_with(add)

    with pytest.raises(ToolNotFoundError, match="Registered tools: add"):
        registry.get("zzzzzz")


def test_duplicate_name_names_both_functions() -> None:
    registry = registry_with(add)

    with pytest.raises(ToolDefinitionError) as caught:
        registry.register(Tool(name="add", function=add_other))

    assert str(caught.value) == (
        f"Tool name 'add' is already registered by {__name__}.add, so {__name__}.add_other "
        "cannot use it. Give one of them another name with @tool(name=...)."
    )


def test_same_function_registers_twice() -> None:
    registry = registry_with(add)

    registry.register(Tool(name="add", function=add))

    assert registry.names() == ["add"]


@pytest.mark.parametrize("name", ["_private", "1st", "has space", ""])
def test_invalid_tool_names_rejected(name: str) -> None:
    with pytest.raises(ToolDefinitionError, match="Invalid tool name"):
        Tool(name=name, function=add)


def test_positional_only_rejected() -> None:
    def positional(a: int, /) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="positional-only parameter 'a'"):
        Tool(name="positional", function=positional)


class Opaque:
    """A type that pydantic cannot validate."""


def test_unsupported_annotation_rejected() -> None:
    def takes_opaque(value: Opaque) -> None:
        return None

    with pytest.raises(ToolDefinitionError, match="Cannot build an argument model"):
        Tool(name="takes_opaque", function=takes_opaque)


def test_decorator_registers_default() -> None:
    name = f"decorated_{uuid.uuid4().hex[:8]}"

    @tool(name, version="5", description="Multiply.")
    async def multiply(a: int, b: int) -> int:
        return a * b

    registered = default_registry.get(name)
    assert registered.function is multiply
    assert registered.is_async
    assert registered.version == "5"
    assert registered.description == "Multiply."


# Argument validation


def test_arguments_schema() -> None:
    schema = Tool(name="add", function=add).arguments_schema()

    assert schema == {
        "title": "add",
        "description": "Add two integers.",
        "type": "object",
        "properties": {
            "a": {"title": "A", "type": "integer"},
            "b": {"title": "B", "type": "integer", "default": 1},
        },
        "required": ["a"],
        "additionalProperties": False,
    }


def test_decorator_description_from_docstring() -> None:
    name = f"documented_{uuid.uuid4().hex[:8]}"
    tool(name)(add)

    assert default_registry.get(name).description == "Add two integers."
    assert default_registry.get(name).arguments_schema()["description"] == "Add two integers."


def test_validate_arguments_converts() -> None:
    assert Tool(name="add", function=add).validate_arguments({"a": "4"}) == {"a": 4, "b": 1}


def test_validate_arguments_lists_each_field() -> None:
    with pytest.raises(ToolArgumentsError) as caught:
        Tool(name="add", function=add).validate_arguments({"b": "x", "c": 3})

    assert caught.value.errors == [
        "'a': missing required argument",
        "'b': Input should be a valid integer, unable to parse string as an integer (got 'x')",
        "'c': unknown argument (expected one of: a, b)",
    ]
    assert str(caught.value).startswith("Invalid arguments for tool 'add': 'a': missing")


def test_parameter_named_like_model_attribute() -> None:
    def clash(json: str, schema: int = 0) -> str:
        return json * schema

    assert Tool(name="clash", function=clash).validate_arguments({"json": "ab", "schema": 2}) == {
        "json": "ab",
        "schema": 2,
    }


def test_var_keyword_accepts_extra() -> None:
    def flexible(name: str, **options: Any) -> dict:
        return {"name": name, **options}

    validated = Tool(name="flexible", function=flexible).validate_arguments({"name": "n", "depth": 2})

    assert validated == {"name": "n", "depth": 2}


# The dagwright.python activity


async def test_sync_tool_runs_in_thread() -> None:
    def which_thread() -> str:
        return threading.current_thread().name

    result = await call(registry_with(which_thread), "which_thread", {})

    assert result.startswith("dagwright-tool")


async def test_async_tool_awaited() -> None:
    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert await call(registry_with(slow_add), "slow_add", {"a": 2, "b": "3"}) == 5


class Summary(BaseModel):
    total: int
    delay: timedelta


async def test_pydantic_result_dumped() -> None:
    def summarize() -> list[Summary]:
        return [Summary(total=3, delay=timedelta(seconds=90))]

    assert await call(registry_with(summarize), "summarize", {}) == [{"total": 3, "delay": "PT1M30S"}]


async def test_non_json_result_permanent() -> None:
    def returns_set() -> dict:
        return {"items": [1, {2, 3}]}

    error = await call_failing(registry_with(returns_set), "returns_set", {})

    assert error.type == "ToolResultInvalid"
    assert error.non_retryable
    assert "Tool 'returns_set' on node 'node' returned a set at result['items'][1]" in error.message


async def test_unknown_tool_permanent() -> None:
    error = await call_failing(registry_with(add), "addd", {"a": 1})

    assert error.type == "ToolNotFound"
    assert error.non_retryable
    assert "Did you mean 'add'?" in error.message


async def test_invalid_arguments_permanent() -> None:
    error = await call_failing(registry_with(add), "add", {"a": "many"})

    assert error.type == "ToolArgumentsInvalid"
    assert error.non_retryable
    assert error.details[0]["errors"] == [
        "'a': Input should be a valid integer, unable to parse string as an integer (got 'many')"
    ]


async def test_tool_exception_retryable() -> None:
    def broken() -> None:
        raise RuntimeError("database is down")

    error = await call_failing(registry_with(broken), "broken", {})

    assert error.type == "ToolError"
    assert not error.non_retryable
    assert error.message == "Tool 'broken' failed on node 'node': RuntimeError: database is down"
    assert isinstance(error.__cause__, RuntimeError)


async def test_tool_chooses_own_error() -> None:
    async def picky() -> None:
        raise permanent("no such customer", type="CustomerNotFound")

    error = await call_failing(registry_with(picky), "picky", {})

    assert error.type == "CustomerNotFound"
    assert error.non_retryable


async def test_default_registry_activity() -> None:
    name = f"default_{uuid.uuid4().hex[:8]}"
    tool(name)(add)

    result = await ActivityEnvironment().run(run_tool, ToolCall(node_id="n", function=name, args={"a": 1, "b": 2}))

    assert result == 3


async def test_sync_tool_cancellable() -> None:
    started = threading.Event()
    release = threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(timeout=30)
        return "finished"

    env = ActivityEnvironment()
    env.info = replace(env.info, heartbeat_timeout=timedelta(milliseconds=300))
    heartbeats: list[tuple] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)

    running = asyncio.create_task(call(registry_with(blocking), "blocking", {}, env))
    await asyncio.to_thread(started.wait, 10)
    env.cancel()

    try:
        with pytest.raises(asyncio.CancelledError):
            await running
    finally:
        release.set()
    assert heartbeats


async def test_long_tool_heartbeats() -> None:
    async def waits() -> str:
        await asyncio.sleep(0.2)
        return "done"

    env = ActivityEnvironment()
    env.info = replace(env.info, heartbeat_timeout=timedelta(milliseconds=90))
    heartbeats: list[tuple] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)

    assert await call(registry_with(waits), "waits", {}, env) == "done"
    # One heartbeat at the start and one every 30 ms after it; the exact count depends on timing.
    assert len(heartbeats) >= 2


# Loading tool modules


def test_load_module_from_path() -> None:
    registry = ToolRegistry()

    registry.load_module(FIXTURE_MODULE.name, base_dir=FIXTURE_MODULE.parent)

    assert registry.names() == ["fixture.double", "fixture.greet", "fixture.midpoint", "fixture.thread_name"]
    greet = registry.get("fixture.greet")
    assert greet.version == "2"
    assert greet.description == "Greet someone by name."
    assert registry.get("fixture.double").is_async


async def test_fixture_tools_run() -> None:
    registry = ToolRegistry()
    registry.load_module(str(FIXTURE_MODULE))

    greeting = await call(registry, "fixture.greet", {"name": "Ada"})
    doubled = await call(registry, "fixture.double", {"value": 21})
    middle = await call(registry, "fixture.midpoint", {"start": {"x": 0, "y": 0}, "end": {"x": 2, "y": 4}})

    assert greeting == "Hello, Ada!"
    assert doubled == 42
    assert middle == {"x": 1.0, "y": 2.0}


def test_load_module_path_twice() -> None:
    registry = ToolRegistry()

    registry.load_module(str(FIXTURE_MODULE))
    registry.load_module(str(FIXTURE_MODULE))

    assert len(registry.names()) == 4


def test_load_module_dotted_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name = f"dotted_tools_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "toolpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_module(
        package,
        module_name,
        f"""
        from dagwright.activities.tools import tool

        @tool(name="{module_name}.shout")
        def shout(text: str) -> str:
            return text.upper()
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toolpkg", raising=False)
    registry = ToolRegistry()

    registry.load_module(f"toolpkg.{module_name}")

    assert registry.names() == [f"{module_name}.shout"]


def test_load_module_fixture_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path-loaded copy of the same file must not count as a conflicting tool.
    ToolRegistry().load_module(str(FIXTURE_MODULE))
    monkeypatch.syspath_prepend(str(FIXTURE_MODULE.parent))
    registry = ToolRegistry()

    registry.load_module("tools_fixture")

    assert "fixture.greet" in registry.names()


def test_load_module_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ToolLoadError, match="not found") as caught:
        ToolRegistry().load_module("nowhere/tools.py", base_dir=tmp_path)

    assert str(tmp_path / "nowhere" / "tools.py") in str(caught.value)


def test_load_module_import_error(tmp_path: Path) -> None:
    path = write_module(tmp_path, "broken_tools", "import module_that_does_not_exist_anywhere\n")

    with pytest.raises(ToolLoadError) as caught:
        ToolRegistry().load_module(str(path))

    assert str(path) in str(caught.value)
    assert "ModuleNotFoundError" in str(caught.value)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_load_module_unknown_dotted_name() -> None:
    with pytest.raises(ToolLoadError, match="Cannot import tool module 'no_such_tools_package'"):
        ToolRegistry().load_module("no_such_tools_package")


def test_load_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = uuid.uuid4().hex[:8]
    group = f"dagwright_test_{suffix}.tools"
    write_module(
        tmp_path,
        f"ep_module_{suffix}",
        f"""
        from dagwright.activities.tools import tool

        @tool(name="ep.lower_{suffix}")
        def lower(text: str) -> str:
            return text.lower()
        """,
    )
    write_module(
        tmp_path,
        f"ep_object_{suffix}",
        f"""
        from dagwright.activities.tools import Tool

        def reverse(text: str) -> str:
            return text[::-1]

        REVERSE = Tool(name="ep.reverse_{suffix}", function=reverse)
        """,
    )
    dist_info = tmp_path / f"fake_tools_{suffix}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-tools-{suffix}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{group}]\nmodule = ep_module_{suffix}\nsingle = ep_object_{suffix}:REVERSE\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = ToolRegistry()

    registry.load_entry_points(group)

    assert registry.names() == [f"ep.lower_{suffix}", f"ep.reverse_{suffix}"]


def test_entry_point_without_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = uuid.uuid4().hex[:8]
    group = f"dagwright_test_{suffix}.tools"
    write_module(tmp_path, f"ep_plain_{suffix}", "VALUE = 3\n")
    dist_info = tmp_path / f"plain_{suffix}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: plain-{suffix}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{group}]\nvalue = ep_plain_{suffix}:VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ToolLoadError, match="is of type int, but it must be a module"):
        ToolRegistry().load_entry_points(group)
