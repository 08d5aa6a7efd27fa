"""Check an LLM answer against a node's ``output_schema`` and write the repair turn.

Models asked for JSON still wrap it in ```json fences or add a sentence around it, so the
answer is unwrapped before it is parsed. An answer that fails gets a repair turn: the answer goes
back as the assistant's message, followed by a user message that quotes the errors and asks for
corrected JSON only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import ValidationError

# Validation errors quoted in one repair message; the first few are enough to fix most answers.
MAX_REPORTED_ERRORS = 5

# Finish reasons that mean the answer stopped at a token limit rather than where the model
# meant to stop: OpenAI's "length", and Mistral's "model_length" for the context window.
TRUNCATED_FINISH_REASONS = frozenset({"length", "model_length"})

_WHOLE_FENCE = re.compile(r"\A\s*```[\w+-]*[ \t]*\n(.*?)\n?[ \t]*```\s*\Z", re.DOTALL)
_ANY_FENCE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


@dataclass(frozen=True)
class Checked:
    """Outcome of checking one answer: the value when valid, else the reason it is not."""

    value: Any = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def check_answer(text: str, finish_reason: str | None, schema: dict[str, Any]) -> Checked:
    """Parse ``text`` as JSON and validate it against ``schema``.

    An answer cut off by a token limit is invalid even if what arrived happens to parse, because
    a truncated array or number can be valid JSON with the wrong content.
    """
    if finish_reason in TRUNCATED_FINISH_REASONS:
        return Checked(
            error=f"the answer was cut off by the token limit (finish_reason {finish_reason!r}) "
            "before it was complete"
        )
    if not text.strip():
        return Checked(error="the answer is empty")

    try:
        value = parse_json_answer(text)
    except ValueError as exc:
        return Checked(error=f"the answer is not valid JSON ({exc})")

    errors = schema_errors(value, schema)
    if errors:
        return Checked(error="the JSON does not match the schema: " + "; ".join(errors))
    return Checked(value=value)


def parse_json_answer(text: str) -> Any:
    """Parse an answer that may be fenced or surrounded by prose.

    Raises:
        ValueError: no JSON value can be read from the answer.
    """
    whole = _WHOLE_FENCE.match(text)
    candidate = whole.group(1) if whole else text
    try:
        return json.loads(candidate)
    except ValueError:
        fenced = _ANY_FENCE.search(text)
        if whole is None and fenced is not None:
            return json.loads(fenced.group(1))
        raise


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Return up to ``MAX_REPORTED_ERRORS`` messages such as ``at $.items[0]: 'x' is not ...``."""
    validator_class = validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(value), key=_error_order)
    messages = [f"at {_json_path(error)}: {error.message}" for error in errors]
    if len(messages) > MAX_REPORTED_ERRORS:
        hidden = len(messages) - MAX_REPORTED_ERRORS
        messages = messages[:MAX_REPORTED_ERRORS] + [f"and {hidden} more error(s)"]
    return messages


def repair_messages(answer: str, error: str, schema: dict[str, Any] | None) -> list[dict[str, str]]:
    """Return the turns that ask the model to correct ``answer``.

    Pass ``schema`` when the provider did not receive it as a response format, so that the model
    sees what it must match.
    """
    request = (
        f"Your previous answer cannot be used: {error}. Reply with only the corrected JSON "
        "value, without explanations or code fences."
    )
    if schema is not None:
        request += " It must match this JSON Schema:\n" + json.dumps(schema, ensure_ascii=False)

    turns = []
    # Mistral rejects an assistant message without content, so an empty answer is not echoed back.
    if answer.strip():
        turns.append({"role": "assistant", "content": answer})
    turns.append({"role": "user", "content": request})
    return turns


def _error_order(error: ValidationError) -> tuple[str, str]:
    return (_json_path(error), error.message)


def _json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
