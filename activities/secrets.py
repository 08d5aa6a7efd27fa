"""Secret markers and their resolution on the worker.

The workflow never receives a secret value. When it renders ``{{ secrets.NAME }}`` it gets the
marker string ``secret_marker("NAME")`` (``⟦secret:NAME⟧``), so only the marker enters the
workflow history. An activity calls ``resolve_secrets`` just before it sends data out, which
replaces each marker with the value configured on the worker:

1. the environment variable ``DAGWRIGHT_SECRET_<NAME>``, if it is set;
2. otherwise the key ``NAME`` of the JSON file named by ``DAGWRIGHT_SECRETS_FILE``, which must
   contain one JSON object whose values are strings: ``{"API_TOKEN": "..."}``.

Secret names are case-sensitive and must match ``[A-Z0-9_]+``, the usual form of environment
variable names, so that ``secrets.api_token`` is rejected instead of silently finding nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from dagwright.activities.errors import (
    SECRET_NOT_FOUND,
    SECRETS_FILE_INVALID,
    permanent,
)

# The marker format lives with the workflow side, which renders the markers.
from dagwright.interpreter.secrets_view import (  # noqa: F401 (re-exported)
    MARKER_PATTERN as _MARKER_PATTERN,
    SecretNameError,
    SecretsView,
    secret_marker,
    validate_secret_name,
)

ENV_PREFIX = "DAGWRIGHT_SECRET_"
SECRETS_FILE_ENV = "DAGWRIGHT_SECRETS_FILE"
REDACTED = "[REDACTED]"


def referenced_secrets(value: Any) -> set[str]:
    """Return the names of all secret markers in ``value`` (str, dict or list, at any depth)."""
    names: set[str] = set()
    for text in _strings_in(value):
        names.update(_MARKER_PATTERN.findall(text))
    return names


class SecretResolver:
    """Replaces secret markers with values from the worker's environment or secrets file.

    Every value it substitutes is kept in ``used_values`` so the caller can scrub them from
    error messages with ``redact``. The secrets file is read at most once per resolver.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._file_values: dict[str, str] | None = None
        self.used_values: list[str] = []

    def resolve(self, value: Any) -> Any:
        """Return a copy of ``value`` with every marker replaced; containers are copied."""
        if isinstance(value, str):
            return _MARKER_PATTERN.sub(lambda match: self.lookup(match.group(1)), value)
        if isinstance(value, dict):
            return {self.resolve(key): self.resolve(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(item) for item in value]
        return value

    def lookup(self, name: str) -> str:
        """Return the value of secret ``name``; raise a permanent SecretNotFound error if unset."""
        validate_secret_name(name)
        value = self._environ.get(ENV_PREFIX + name)
        if value is None:
            value = self._read_file().get(name)
        if value is None:
            raise permanent(
                f"Secret {name!r} is not configured on this worker. Set the environment variable "
                f"{ENV_PREFIX}{name} or add the key {name!r} to the JSON file named by "
                f"{SECRETS_FILE_ENV}, then retry the run.",
                type=SECRET_NOT_FOUND,
                details={"secret": name},
            )
        if value not in self.used_values:
            self.used_values.append(value)
        return value

    def _read_file(self) -> dict[str, str]:
        if self._file_values is None:
            path = self._environ.get(SECRETS_FILE_ENV)
            self._file_values = _load_secrets_file(Path(path)) if path else {}
        return self._file_values


def resolve_secrets(value: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    """Return ``value`` with every secret marker replaced by the secret's value on this worker."""
    return SecretResolver(environ).resolve(value)


def redact(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in ``text`` with ``[REDACTED]``.

    The URL-encoded forms are scrubbed too, because HTTP libraries quote values in the URLs that
    they put in their exception messages.
    """
    variants = {
        variant
        for value in values
        if value
        for variant in (value, quote(value, safe=""), quote_plus(value, safe=""))
    }
    # Longest first, so a secret that contains another secret is not left half-replaced.
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, REDACTED)
    return text


def _strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings_in(key)
            yield from _strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings_in(item)


def _load_secrets_file(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # The exception text may quote file content, which is secret, so only its class is shown.
        raise permanent(
            f"Cannot read the secrets file {str(path)!r} named by {SECRETS_FILE_ENV} "
            f"({type(exc).__name__}). It must be a readable UTF-8 JSON file.",
            type=SECRETS_FILE_INVALID,
        ) from None
    if not isinstance(data, dict) or not all(isinstance(item, str) for item in data.values()):
        raise permanent(
            f"The secrets file {str(path)!r} named by {SECRETS_FILE_ENV} must contain one JSON "
            'object whose values are strings, for example {"API_TOKEN": "..."}.',
            type=SECRETS_FILE_INVALID,
        )
    return data
