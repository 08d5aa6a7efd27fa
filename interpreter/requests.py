"""Build the input of each node activity from a compiled node and the run's context.

Pure functions: they render templates and shape plain dicts, so the workflow can
call them and replay gives the same result. Field names match the activities'
pydantic input models in `dagwright.activities`.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping
from urllib.parse import urlsplit

from dagwright.interpreter.expressions import render_value

ACTIVITY_NAMES = {
    "http": "dagwright.http",
    "python": "dagwright.python",
    "llm": "dagwright.llm",
    "embed": "dagwright.embed",
    "sql": "dagwright.sql",
}

# A fixed namespace makes idempotency keys a pure function of run, node and item.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1b7a52-3c1e-4d8e-9a57-6e0f3f1f2b10")


def idempotency_key(workflow_id: str, run_id: str, node_id: str, index: int | None) -> str:
    """Return a key that is the same for every retry of one node (and item) in one run."""
    item = "" if index is None else f"[{index}]"
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{workflow_id}/{run_id}/{node_id}{item}"))


def build_request(
    node: Mapping[str, Any],
    params: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    workflow_id: str,
    run_id: str,
    index: int | None,
    timeout: float | None,
) -> dict[str, Any]:
    """Render one variant's params into the activity input for its node type."""
    node_type = node["type"]
    if node_type == "http":
        return _http_request(node, params, context, workflow_id, run_id, index, timeout)
    if node_type == "python":
        return {
            "node_id": node["id"],
            "function": params["function"],
            "args": render_value(params["args"], context),
        }
    if node_type == "sql":
        rendered = render_value({"params": params["params"]}, context)
        return {
            "node_id": node["id"],
            "connection": params["connection"],
            "query": params["query"],
            "params": rendered["params"],
            "mode": params["mode"],
            "read_only": params["read_only"],
            "max_rows": params["max_rows"],
            "timeout_seconds": timeout,
        }
    rendered = render_value(dict(params), context)
    rendered["node_id"] = node["id"]
    rendered["timeout_seconds"] = timeout
    return rendered


def _http_request(node, params, context, workflow_id, run_id, index, timeout) -> dict[str, Any]:
    rendered = render_value(
        {key: params.get(key) for key in ("url", "headers", "query", "json", "body", "form")}, context
    )
    key_setting = params.get("idempotency_key")
    if key_setting is True:
        key = idempotency_key(workflow_id, run_id, node["id"], index)
    elif isinstance(key_setting, str):
        key = str(render_value(key_setting, context))
    else:
        key = None
    return {
        "node_id": node["id"],
        "method": params["method"],
        "url": str(rendered["url"]),
        "headers": {name: str(value) for name, value in (rendered["headers"] or {}).items()},
        "query": rendered["query"] or {},
        "json_body": rendered["json"],
        "has_json": bool(params.get("has_json")),
        "body": None if rendered["body"] is None else str(rendered["body"]),
        "form": rendered["form"],
        "expect_status": params.get("expect_status"),
        "response": params.get("response", "auto"),
        "idempotency_key": key,
        "timeout_seconds": timeout or 60.0,
    }


def activity_summary(node: Mapping[str, Any], params: Mapping[str, Any], index: int | None) -> str:
    """Return the one-line summary Temporal Web shows for a node's activity."""
    label = node["id"] if index is None else f"{node['id']}[{index}]"
    node_type = node["type"]
    if node_type == "http":
        return f"{label}: http {params['method']} {_host(params['url'])}"
    if node_type in ("llm", "embed"):
        return f"{label}: {node_type} {params.get('provider')}/{params.get('model')}"
    if node_type == "python":
        return f"{label}: python {params['function']}"
    if node_type == "sql":
        return f"{label}: sql {params['connection']} ({params['mode']})"
    return f"{label}: {node_type}"


def _host(url: str) -> str:
    # The summary uses the unrendered URL so no secret or input value reaches it.
    prefix = url.split("{{", 1)[0]
    return urlsplit(prefix).hostname or "(templated url)"
