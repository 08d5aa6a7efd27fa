"""Check a run's inputs against the workflow's input schemas and fill in defaults."""

from __future__ import annotations

from typing import Any, Mapping

import jsonschema
from jsonschema.validators import validator_for


class InputError(ValueError):
    """Raised when run inputs do not match the workflow; `problems` lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid inputs: " + "; ".join(problems))


def validate_inputs(declared: Mapping[str, dict], given: Mapping[str, Any]) -> dict[str, Any]:
    """Return the inputs with defaults applied, or raise InputError naming every problem."""
    problems: list[str] = []
    for name in given:
        if name not in declared:
            known = ", ".join(declared) or "none"
            problems.append(f"unknown input '{name}' (this workflow declares: {known})")

    result: dict[str, Any] = {}
    for name, schema in declared.items():
        if name not in given:
            if "default" in schema:
                result[name] = schema["default"]
            else:
                problems.append(f"missing required input '{name}'")
            continue
        value = given[name]
        validator = validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
        errors = sorted(validator.iter_errors(value), key=lambda error: list(error.path))
        for error in errors[:3]:
            where = "".join(f"[{part!r}]" for part in error.path)
            problems.append(f"input '{name}{where}': {error.message}")
        result[name] = value

    if problems:
        raise InputError(problems)
    return result


def parse_input_value(schema: Mapping[str, Any], text: str) -> Any:
    """Read a `-i name=value` value: JSON where the schema expects a non-string type."""
    import json

    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared]
    if "string" in types and len(types) == 1:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
