"""Plan a re-run: which nodes reuse an earlier run's results and which execute again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagwright.interpreter.run_types import ReusedNode

REUSABLE = ("succeeded", "failed", "skipped")


@dataclass
class RerunPlan:
    reuse: dict[str, ReusedNode]
    execute: list[str]


def plan_rerun(definition: dict[str, Any], snapshot: dict[str, dict], *, from_node: str | None) -> RerunPlan:
    """Execute `from_node` (or every failed node) and all their dependents; reuse the rest.

    A node that never finished in the earlier run (cancelled, still pending) executes too,
    since there is no result to reuse.

    Raises:
        ValueError: `from_node` is unknown, or the run has no failed node to start from.
    """
    nodes = definition["nodes"]
    if from_node is not None:
        if from_node not in nodes:
            raise ValueError(f"unknown node '{from_node}'; nodes: {', '.join(nodes)}")
        roots = [from_node]
    else:
        roots = [node_id for node_id in nodes if snapshot.get(node_id, {}).get("status") == "failed"]
        if not roots:
            raise ValueError("the run has no failed nodes; use --from NODE to choose where to start")

    execute = _with_dependents(nodes, roots)
    reuse: dict[str, ReusedNode] = {}
    for node_id in nodes:
        recorded = snapshot.get(node_id) or {}
        if node_id in execute or recorded.get("status") not in REUSABLE:
            execute.add(node_id)
            continue
        reuse[node_id] = ReusedNode(status=recorded["status"], output=recorded.get("output"),
                                    error=recorded.get("error"))
    # A node that executes again makes its dependents execute again as well.
    execute = _with_dependents(nodes, [node_id for node_id in nodes if node_id in execute])
    for node_id in execute:
        reuse.pop(node_id, None)
    return RerunPlan(reuse=reuse, execute=[node_id for node_id in nodes if node_id in execute])


def _with_dependents(nodes: dict[str, dict], roots: list[str]) -> set[str]:
    dependents: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for node_id, node in nodes.items():
        for dep in node["deps"]:
            dependents[dep].append(node_id)
    found = set(roots)
    stack = list(roots)
    while stack:
        for dependent in dependents[stack.pop()]:
            if dependent not in found:
                found.add(dependent)
                stack.append(dependent)
    return found
