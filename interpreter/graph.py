"""Dependency graph of a workflow: cycles and a deterministic topological order."""

from __future__ import annotations

import heapq
from typing import Mapping, Sequence


def find_cycles(dependencies: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Return each cycle once as a closed path `[a, b, c, a]`, where a depends on b.

    Strongly connected components (Tarjan, iterative so deep chains do not hit the
    recursion limit) are walked in file order; self-loops are left to the caller,
    which reports them as self-references.
    """
    order = list(dependencies)
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for root in order:
        if root in index_of:
            continue
        work = [(root, iter(dependencies.get(root, ())))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in dependencies:
                    continue
                if child not in index_of:
                    index_of[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(dependencies.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    position = {node: i for i, node in enumerate(order)}
    cycles = [_cycle_path(sorted(c, key=position.__getitem__), dependencies) for c in components]
    return sorted(cycles, key=lambda cycle: position[cycle[0]])


def _cycle_path(members: list[str], dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    """Walk one closed path through a strongly connected component, from its first node."""
    inside = set(members)
    start = members[0]
    path = [start]
    seen = {start}
    current = start
    while True:
        nexts = [d for d in dependencies[current] if d in inside]
        if start in nexts and len(path) > 1:
            return path + [start]
        unvisited = [d for d in nexts if d not in seen]
        if not unvisited:
            return path + [start]
        current = unvisited[0]
        path.append(current)
        seen.add(current)


def topological_order(dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    """Return nodes so each comes after its dependencies; ties keep file order.

    The order is a pure function of the mapping's order, never of set iteration, so
    every worker schedules the same way.
    """
    remaining = {node: len([d for d in deps if d in dependencies]) for node, deps in dependencies.items()}
    dependents: dict[str, list[str]] = {node: [] for node in dependencies}
    for node, deps in dependencies.items():
        for dep in deps:
            if dep in dependents:
                dependents[dep].append(node)

    position = {node: i for i, node in enumerate(dependencies)}
    ready = [position[node] for node in dependencies if remaining[node] == 0]
    heapq.heapify(ready)
    names = list(dependencies)
    order: list[str] = []
    while ready:
        node = names[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    return order
