"""Check the JSON Schemas a workflow declares (inputs, approval forms, LLM output)."""

from __future__ import annotations

from typing import Any, Callable

import jsonschema
from jsonschema.validators import validator_for

from dagwright.interpreter.diagnostics import did_you_mean

JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")


def check_json_schema(schema: Any, path: tuple, report: Callable[..., None], *, node: str | None) -> None:
    """Report an invalid JSON Schema at the place inside it that is wrong."""
    owner = _describe_owner(path, node)
    if not isinstance(schema, dict):
        report(path, f"the JSON Schema of {owner} must be a mapping", "invalid-schema", node=node)
        return
    validator = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        inner = tuple(exc.path)
        where = "/".join(str(part) for part in inner) or "(root)"
        message, hint = exc.message, None
        if inner and inner[-1] == "type" and isinstance(exc.instance, str):
            message = f"unknown type '{exc.instance}'"
            hint = did_you_mean(exc.instance, JSON_TYPES) or f"Use one of: {', '.join(JSON_TYPES)}."
        report(
            path + inner,
            f"invalid JSON Schema of {owner} at {where}: {message}",
            "invalid-schema",
            node=node,
            hint=hint,
        )
        return
    if "default" in schema:
        errors = sorted(validator(schema).iter_errors(schema["default"]), key=lambda e: list(e.path))
        if errors:
            report(
                path + ("default",),
                f"the default of {owner} does not match its own schema: {errors[0].message}",
                "invalid-schema",
                node=node,
            )


def _describe_owner(path: tuple, node: str | None) -> str:
    """Name what the schema belongs to: "input 'ticker'" or "'form' of node 'review'"."""
    if node is not None and len(path) >= 3:
        return "'" + ".".join(str(part) for part in path[2:]) + f"' of node '{node}'"
    if len(path) >= 2 and path[0] == "inputs":
        return f"input '{path[1]}'"
    return "'" + ".".join(str(part) for part in path) + "'"
