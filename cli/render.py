"""Text renderings of a compiled definition: Mermaid and Graphviz dot."""

from __future__ import annotations

from typing import Any


def _label_lines(node: dict[str, Any]) -> list[str]:
    lines = [node["id"], node["type"]]
    if node.get("for_each"):
        lines.append(f"for each: {node['for_each']}")
    if node.get("when"):
        lines.append(f"when: {node['when']}")
    if node.get("on_error") == "continue":
        lines.append("on error: continue")
    if len(node["variants"]) > 1:
        lines.append(f"fallbacks: {len(node['variants']) - 1}")
    return lines


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def render_mermaid(definition: dict[str, Any], statuses: dict[str, str] | None = None) -> str:
    """Render as a Mermaid flowchart; conditional nodes get a rhombus-like hexagon shape."""
    lines = ["flowchart TD"]
    for node_id, node in definition["nodes"].items():
        label = "<br/>".join(_mermaid_text(part) for part in _label_lines(node))
        if node["type"] == "approval":
            shape = ('{{"', '"}}')
        elif node.get("when"):
            shape = ('{{"', '"}}')
        elif node["type"] in ("transform",):
            shape = ('("', '")')
        else:
            shape = ('["', '"]')
        lines.append(f"    {node_id}{shape[0]}{label}{shape[1]}")
    for node_id, node in definition["nodes"].items():
        for dep in node["deps"]:
            lines.append(f"    {dep} --> {node_id}")
    if statuses:
        lines.extend(_mermaid_classes(statuses))
    return "\n".join(lines)


_STATUS_COLOURS = {
    "succeeded": "#c8e6c9",
    "failed": "#ffcdd2",
    "skipped": "#eeeeee",
    "running": "#bbdefb",
    "waiting": "#fff9c4",
    "cancelled": "#d7ccc8",
}


def _mermaid_classes(statuses: dict[str, str]) -> list[str]:
    lines = [f"    classDef {status} fill:{colour}" for status, colour in _STATUS_COLOURS.items()]
    for node_id, status in statuses.items():
        if status in _STATUS_COLOURS:
            lines.append(f"    class {node_id} {status}")
    return lines


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render_dot(definition: dict[str, Any], statuses: dict[str, str] | None = None) -> str:
    """Render as a Graphviz digraph; conditional nodes are diamonds, approvals hexagons."""
    lines = [f'digraph "{_dot_text(definition["name"])}" {{', "    rankdir=TB;", "    node [fontname=Helvetica];"]
    for node_id, node in definition["nodes"].items():
        label = "\\n".join(_dot_text(part) for part in _label_lines(node))
        shape = "box"
        if node["type"] == "approval":
            shape = "hexagon"
        elif node.get("when"):
            shape = "diamond"
        attributes = [f'label="{label}"', f"shape={shape}"]
        status = (statuses or {}).get(node_id)
        if status in _STATUS_COLOURS:
            attributes += ["style=filled", f'fillcolor="{_STATUS_COLOURS[status]}"']
        lines.append(f"    {node_id} [{', '.join(attributes)}];")
    for node_id, node in definition["nodes"].items():
        for dep in node["deps"]:
            lines.append(f"    {dep} -> {node_id};")
    lines.append("}")
    return "\n".join(lines)
