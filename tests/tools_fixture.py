"""Example tool module: loaded by path and by module name in the tool registry tests."""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel

from dagwright.activities.tools import tool


class Point(BaseModel):
    x: float
    y: float


@tool(name="fixture.greet", version="2")
def greet(name: str, punctuation: str = "!") -> str:
    """Greet someone by name.

    The punctuation is appended as given.
    """
    return f"Hello, {name}{punctuation}"


@tool(name="fixture.double")
async def double(value: int) -> int:
    """Double a number after yielding to the event loop once."""
    await asyncio.sleep(0)
    return value * 2


@tool(name="fixture.midpoint")
def midpoint(start: Point, end: Point) -> Point:
    """Return the point halfway between two points."""
    return Point(x=(start.x + end.x) / 2, y=(start.y + end.y) / 2)


@tool(name="fixture.thread_name")
def thread_name() -> str:
    """Return the name of the thread that runs the tool."""
    return threading.current_thread().name


def helper_not_a_tool() -> None:
    """A plain function, which loading the module must not register."""
