"""The record of every request the LLM stand-in received, kept in arrival order."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

ApiStyle = Literal["mistral", "openai"]

REDACTED = "<redacted>"


@dataclass
class RecordedRequest:
    """One request as the stand-in received it, and the response it got.

    `headers` has lower-case names and the Authorization value replaced by "<redacted>"; `auth_present` and
    `auth_valid` say whether a key was sent and whether it was the stand-in's key. `body` is
    the parsed JSON body (None when the body was empty or not JSON; `raw_body` has the text).
    `status` is None when no response was sent (a scripted timeout or disconnect).
    `unknown_fields` lists top-level body keys that the API style does not define.
    """

    method: str
    path: str
    api: ApiStyle
    headers: dict[str, str]
    auth_present: bool
    auth_valid: bool
    body: Any
    raw_body: str
    model: str | None = None
    status: int | None = None
    rule: str | None = None
    usage: dict[str, int] | None = None
    unknown_fields: list[str] = field(default_factory=list)
    index: int = -1


class Recorder:
    """A thread-safe, ordered list of `RecordedRequest`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    def add(self, request: RecordedRequest) -> None:
        """Append one request and set its `index` to its position in arrival order."""
        with self._lock:
            request.index = len(self._requests)
            self._requests.append(request)

    def snapshot(self) -> list[RecordedRequest]:
        """Return a copy of the list, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget every recorded request."""
        with self._lock:
            self._requests.clear()

    def model_counts(self) -> dict[str, int]:
        """Return how many requests named each model, whatever their outcome."""
        counts = Counter(r.model for r in self.snapshot() if r.model is not None)
        return dict(counts)

    def usage_total(self, model: str | None = None) -> dict[str, int]:
        """Sum the `usage` the stand-in reported, over all requests or those for `model`."""
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for request in self.snapshot():
            if request.usage is None or (model is not None and request.model != model):
                continue
            for key in total:
                total[key] += request.usage[key]
        return total
