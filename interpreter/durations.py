"""Duration strings of the workflow language: `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`, ISO 8601 `PT30S`."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ISO = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


class DurationError(ValueError):
    """Raised when a duration string does not parse; the message lists the accepted forms."""


def parse_duration(value: object) -> float:
    """Return the duration in seconds.

    Bare numbers are rejected on purpose: `timeout: 30` is ambiguous between seconds
    and minutes, so the language requires a unit.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, (int, float)):
            raise DurationError(
                f"duration {value!r} has no unit; write it as '{value}s' (units: ms, s, m, h, d)"
            )
        raise DurationError(f"expected a duration such as '30s', got {type(value).__name__}")

    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise DurationError(
            f"duration '{text}' has no unit; write it as '{text}s' (units: ms, s, m, h, d)"
        )
    seconds = _parse_short(text) if not text.upper().startswith("P") else _parse_iso(text.upper())
    if seconds is None:
        raise DurationError(
            f"invalid duration '{value}'; use a number with a unit (500ms, 30s, 5m, 2h, 1d, 1h30m)"
            " or ISO 8601 (PT30S)"
        )
    return seconds


def _parse_short(text: str) -> float | None:
    position = 0
    total = 0.0
    for match in _SHORT.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return total


def _parse_iso(text: str) -> float | None:
    match = _ISO.fullmatch(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        return None
    parts = {key: float(number) for key, number in match.groupdict().items() if number is not None}
    if not parts:
        return None
    return (
        parts.get("w", 0) * 604800
        + parts.get("d", 0) * 86400
        + parts.get("h", 0) * 3600
        + parts.get("m", 0) * 60
        + parts.get("s", 0)
    )


def format_duration(seconds: float) -> str:
    """Render seconds in the language's short form, for messages and listings."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
