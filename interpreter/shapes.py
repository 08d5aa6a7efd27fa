"""Turn pydantic validation errors into located diagnostics.

Pydantic reports a `loc` tuple per error. Union members and validator steps add
segments that do not exist in the user's file, so each `loc` is first reduced to
the part that does, and errors at the same place are merged into one message.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Callable, Iterable, Union

from pydantic import BaseModel, ValidationError

from dagwright.interpreter.diagnostics import did_you_mean

Path = tuple[str | int, ...]


def data_path(data: Any, loc: Iterable[str | int]) -> tuple[Path, list[str | int]]:
    """Split a pydantic `loc` into the part that exists in `data` and the rest."""
    path: list[str | int] = []
    rest: list[str | int] = []
    current = data
    for part in loc:
        if rest:
            rest.append(part)
            continue
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif isinstance(current, dict) and isinstance(part, str) and part.endswith("_"):
            # Fields such as `json_` carry an alias without the underscore.
            alias = part[:-1]
            if alias in current:
                current = current[alias]
                path.append(alias)
                continue
            rest.append(part)
        else:
            rest.append(part)
    return tuple(path), rest


def fields_of(model: type[BaseModel], loc: Iterable[str | int]) -> list[str] | None:
    """Return the field names accepted at `loc` inside `model`, following nested models."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            current = _item_type(current)
            continue
        model_class = _model_in(current)
        if model_class is None:
            return None
        field = model_class.model_fields.get(part) or _field_by_alias(model_class, part)
        if field is None:
            return None
        current = field.annotation
    model_class = _model_in(current)
    if model_class is None:
        return None
    return [field.alias or name for name, field in model_class.model_fields.items()]


def _field_by_alias(model: type[BaseModel], alias: str):
    for field in model.model_fields.values():
        if field.alias == alias:
            return field
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _item_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            item = _item_type(arg)
            if item is not None:
                return item
        return None
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None


# Pydantic's wording for type errors names Python types ("a valid dictionary or instance
# of RetryDefaults"); a workflow author thinks in YAML terms.
_EXPECTED_TYPES = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "less_than_equal": ("at most", "le"),
    "greater_than": ("greater than", "gt"),
    "less_than": ("less than", "lt"),
}


def yaml_type_name(value: Any) -> str:
    """Name the YAML type of a loaded value, as used in "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _plain_message(error: dict) -> str:
    expected = _EXPECTED_TYPES.get(error["type"])
    if expected is not None:
        return f"expected {expected}, got {yaml_type_name(error.get('input'))}"
    bound = _BOUNDS.get(error["type"])
    if bound is not None:
        word, key = bound
        return f"must be {word} {error.get('ctx', {}).get(key)}"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


def _describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Report = Callable[[Path, str, str, str | None, bool], None]
"""report(path, message, code, hint, at_key)"""


def report_validation_error(
    exc: ValidationError,
    *,
    model: type[BaseModel],
    data: Any,
    base: Path,
    where: str,
    report: Report,
) -> None:
    """Report every error of `exc` once per place in the file.

    `where` names the object in messages ("node 'fetch'", "the top level"), and `base`
    is the path of `data` in the file.
    """
    grouped: dict[Path, list[tuple[dict, list[str | int]]]] = {}
    for error in exc.errors(include_url=False):
        path, rest = data_path(data, error["loc"])
        grouped.setdefault(path, []).append((error, rest))

    for path, errors in grouped.items():
        _report_place(path, errors, model=model, data=data, base=base, where=where, report=report)


def _report_place(path, errors, *, model, data, base, where, report) -> None:
    kinds = {error["type"] for error, _ in errors}
    field = str(path[-1]) if path else None

    if kinds == {"extra_forbidden"}:
        accepted = fields_of(model, path[:-1]) or []
        hint = did_you_mean(str(path[-1]), accepted)
        if not hint and accepted:
            hint = f"Accepted fields: {', '.join(accepted)}."
        inside = f"'{'.'.join(str(part) for part in path[:-1])}' of {where}" if len(path) > 1 else where
        report(base + path, f"unknown field '{path[-1]}' in {inside}", "unknown-field", hint, True)
        return

    missing = [rest[0] for error, rest in errors if error["type"] == "missing" and rest]
    if missing:
        for name in missing:
            alias = name[:-1] if isinstance(name, str) and name.endswith("_") else name
            report(base + path, f"missing required field '{alias}' in {where}", "missing-field", None, True)
        return

    if "literal_error" in kinds and len(errors) == 1:
        error = errors[0][0]
        expected = error.get("ctx", {}).get("expected", "")
        value = error.get("input")
        hint = None
        if isinstance(value, str):
            options = [option.strip().strip("'") for option in expected.replace(" or ", ", ").split(",")]
            hint = did_you_mean(value, [option for option in options if option])
        report(
            base + path,
            f"invalid value {_describe_value(value)} for '{field}' in {where}; expected {expected}",
            "invalid-value",
            hint,
            False,
        )
        return

    messages: list[str] = []
    for error, _ in errors:
        message = _plain_message(error)
        if message not in messages:
            messages.append(message)
    value = _value_at(data, path)
    dotted = ".".join(str(part) for part in path)
    subject = f"'{dotted}' in {where}" if path else where
    if path and not isinstance(value, (dict, list)):
        text = f"invalid value {_describe_value(value)} for {subject}: {' or '.join(messages)}"
    elif path:
        text = f"invalid {subject}: {' or '.join(messages)}"
    else:
        text = f"invalid {where}: {' or '.join(messages)}"
    # A rule about the whole object (such as "set exactly one of 'prompt' and 'messages'")
    # points at the object's key, the node id, rather than at its first field.
    report(base + path, text, "invalid-value", None, not path)


def _value_at(data: Any, path: Path) -> Any:
    current = data
    for part in path:
        current = current[part]
    return current


def string_coercions(exc: ValidationError, data: Any) -> list[Path]:
    """Return the paths where a string was expected but YAML produced another scalar."""
    paths: list[Path] = []
    for error in exc.errors(include_url=False):
        if error["type"] != "string_type":
            continue
        path, _ = data_path(data, error["loc"])
        value = _value_at(data, path) if path else None
        if isinstance(value, (int, float, bool)) and path not in paths:
            paths.append(path)
    return paths
