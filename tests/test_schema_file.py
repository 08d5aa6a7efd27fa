"""The JSON Schema shipped in docs/ for editors matches the language models."""

from __future__ import annotations

import json
from pathlib import Path

from dagwright.interpreter.models import language_json_schema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "dagwright.schema.json"


def test_docs_schema_matches_models():
    """Regenerate with `dagwright schema > docs/dagwright.schema.json` after a model change."""
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == language_json_schema()
