"""The `secrets` name in expressions: it renders markers, never values.

The workflow renders `{{ secrets.NAME }}` to a marker such as `⟦secret:NAME⟧`, so
only the marker enters history; the activity that sends the request replaces it
with the worker's value (`dagwright.activities.secrets`).
"""

from __future__ import annotations

import re

MARKER_OPEN = "\u27e6secret:"
MARKER_CLOSE = "\u27e7"
NAME_PATTERN = re.compile(r"[A-Z0-9_]+")
MARKER_PATTERN = re.compile(re.escape(MARKER_OPEN) + r"([A-Z0-9_]+)" + re.escape(MARKER_CLOSE))


class SecretNameError(ValueError):
    """Raised when a secret name is not of the form `[A-Z0-9_]+`."""


def validate_secret_name(name: str) -> str:
    """Return `name` unchanged if it is a valid secret name, else raise SecretNameError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SecretNameError(
            f"invalid secret name {name!r}: secret names contain only upper-case letters, digits"
            " and '_' (for example API_TOKEN)"
        )
    return name


def secret_marker(name: str) -> str:
    """Return the placeholder that stands for secret `name` until an activity resolves it."""
    return f"{MARKER_OPEN}{validate_secret_name(name)}{MARKER_CLOSE}"


class SecretsView:
    """Expression-context object for `secrets`: `secrets.NAME` and `secrets["NAME"]` give markers."""

    __slots__ = ()

    def __getattr__(self, name: str) -> str:
        # Names with a leading underscore are protocol probes (copy, pickle, Jinja's
        # __html__), which must see a missing attribute, not an invalid secret name.
        if name.startswith("_"):
            raise AttributeError(name)
        return secret_marker(name)

    def __getitem__(self, name: str) -> str:
        return secret_marker(name)

    def __repr__(self) -> str:
        return "<secrets>"
