"""Heartbeat a running activity so that a cancel request reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio import activity

# Heartbeats go out this often when the activity has no heartbeat timeout, and at most this far
# apart when it has one. The worker throttles what reaches the server, so extra calls are cheap.
MAX_HEARTBEAT_INTERVAL = timedelta(seconds=5)


@asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat the current activity in the background until the block exits.

    Use it around any long await in an async activity: the server delivers a cancellation only
    in the response to a heartbeat, and the worker then cancels the activity's task.
    """
    beater = asyncio.create_task(_heartbeat_forever(_heartbeat_interval()))
    try:
        yield
    finally:
        beater.cancel()
        # asyncio.wait never raises the task's own CancelledError, so a cancellation of the
        # caller that arrives here still propagates.
        await asyncio.wait([beater])


def _heartbeat_interval() -> float:
    interval = MAX_HEARTBEAT_INTERVAL
    heartbeat_timeout = activity.info().heartbeat_timeout
    if heartbeat_timeout:
        # Three beats per timeout window survive one lost or delayed heartbeat.
        interval = min(interval, heartbeat_timeout / 3)
    return interval.total_seconds()


async def _heartbeat_forever(interval_seconds: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(interval_seconds)
