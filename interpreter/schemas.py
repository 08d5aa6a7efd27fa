"""Check the JSON Schemas a workflow declares (inputs, approval forms, LLM output)."""

from __future__ import annotations

from typing import Any, Callable

import jsonschema
from jsonschema.validators import validator_for

from dagwright.interpreter.diagnostics import did_you_mean

JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")


def check_json_schema(schema: Any, path: tuple, report: Callable[..., None], *, node: str | None) -> None:
    """Report an invalid JSON Schema at the place inside it that is wrong."""
    if not isinstance(schema, dict):
        report(path, "a JSON Schema must be a mapping", "invalid-schema", node=node)
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
        report(path + inner, f"invalid JSON Schema at {where}: {message}", "invalid-schema", node=node, hint=hint)
        return
    if "default" in schema:
        errors = sorted(validator(schema).iter_errors(schema["default"]), key=lambda e: list(e.path))
        if errors:
            report(
                path + ("default",),
                f"the default does not match its own schema: {errors[0].message}",
                "invalid-schema",
                node=node,
            )
