"""Live node states while `dagwright run` follows a run."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import typer
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

POLL_SECONDS = 0.3
SYMBOLS = {
    "running": "…",
    "waiting": "⏸",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "–",
    "cancelled": "⊘",
}


class LiveView:
    """Poll the run's `state` query and print one line per node status change (stderr)."""

    def __init__(self, handle: WorkflowHandle, *, quiet: bool = False):
        self._handle = handle
        self._quiet = quiet
        self._seen: dict[str, tuple[str, Any]] = {}
        self._hints_shown: set[str] = set()

    async def watch(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_SECONDS)

    async def refresh(self) -> None:
        try:
            state = await self._handle.query("state", result_type=dict)
        except RPCError:
            return  # no worker yet, or the run is closing; the next poll tries again
        if not self._quiet:
            self._print_changes(state)
            return
        # --json keeps stdout for the result, but a run waiting for a decision must still print
        # the command that decides it, so the hints go to stderr in quiet mode too.
        for node_id, row in state.get("nodes", {}).items():
            self._print_hint(node_id, row)

    async def stop(self, task: asyncio.Task) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.refresh()

    def _print_changes(self, state: dict[str, Any]) -> None:
        for node_id, row in state.get("nodes", {}).items():
            key = (row["status"], row.get("attempt"), (row.get("items") or {}).get("done"))
            if row["status"] == "pending" or self._seen.get(node_id) == key:
                continue
            self._seen[node_id] = key
            typer.echo(f"  {SYMBOLS.get(row['status'], ' ')} {node_id:<24} {describe_row(row)}", err=True)
            self._print_hint(node_id, row)

    def _print_hint(self, node_id: str, row: dict[str, Any]) -> None:
        waiting = row.get("waiting_for")
        if waiting and node_id not in self._hints_shown:
            self._hints_shown.add(node_id)
            typer.echo(f"    {waiting}", err=True)


def describe_row(row: dict[str, Any]) -> str:
    """Return the status column of a node row: status, attempt, items, error."""
    parts = [row["status"]]
    if row.get("attempt", 0) > 1:
        parts.append(f"attempt {row['attempt']}")
    items = row.get("items")
    if items:
        parts.append(f"{items['done']}/{items['total']} items")
    if row.get("reused"):
        parts.append("reused")
    if row.get("variant"):
        parts.append(f"fallback {row['variant']}")
    if row.get("error") and row["status"] in ("failed", "cancelled"):
        parts.append(f"- {row['error']}")
    return "  ".join(parts)
