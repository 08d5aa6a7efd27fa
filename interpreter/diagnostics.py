"""Located compile errors: the one error shape every compiler stage reports."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a workflow file, located by 1-based line and column."""

    file: str
    line: int
    column: int
    message: str
    code: str
    node: str | None = None
    field: str | None = None
    hint: str | None = None

    def format(self) -> str:
        """Render as `file:line:column: message`, with the hint appended as a sentence."""
        text = f"{self.file}:{self.line}:{self.column}: {self.message}"
        if self.hint:
            text += ("" if text.endswith((".", "?", "!")) else ".") + f" {self.hint}"
        return text

    def to_json(self) -> dict:
        return asdict(self)


class CompileError(Exception):
    """Raised when a workflow file has one or more diagnostics; carries all of them."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.file, d.line, d.column, d.message))
        super().__init__("\n".join(d.format() for d in self.diagnostics))


def did_you_mean(value: str, candidates: Iterable[str]) -> str | None:
    """Return a "Did you mean 'x'?" sentence for the closest candidate, or None."""
    matches = difflib.get_close_matches(value, list(candidates), n=1, cutoff=0.6)
    if not matches:
        return None
    return f"Did you mean '{matches[0]}'?"
