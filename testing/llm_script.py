"""Scripts for the LLM stand-in: rules that pick a reply or a failure for each request.

A script is an ordered list of rules. For each request the stand-in takes the first rule whose
conditions all hold and that has uses left, so "fail twice, then succeed" is a rule with
`times: 2` above a rule without a limit. When no rule matches, the default reply is sent.

The same models validate rules built in Python and rules loaded from a YAML or JSON file.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_REPLY_TEXT = "This is a reply from the dagwright LLM stand-in."

# Cap on any scripted wait, so a script that keeps a connection open cannot hang a test run.
MAX_WAIT_SECONDS = 300.0

FailureKind = Literal[
    "rate_limit",
    "capacity",
    "server_error",
    "timeout",
    "disconnect",
    "unauthorized",
    "validation",
    "context_length",
    "invalid_model",
    "bad_request",
    "malformed_body",
    "http",
]
Endpoint = Literal["chat", "embeddings"]


class _ScriptModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScriptedToolCall(_ScriptModel):
    """A tool call the stand-in returns; `id` defaults to 9 characters derived from `name`."""

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None


class Reply(_ScriptModel):
    """A successful chat completion.

    The content is `text`, or `json` serialized (inside a ```json fence when `fenced`). With
    `chunks` or `thinking` the content is sent as a list of chunks, with a thinking chunk
    first when `thinking` is set. `delay` is waited, in seconds, before the reply is sent.
    """

    text: str | None = None
    json_value: Any = Field(default=None, alias="json")
    fenced: bool = False
    chunks: bool = False
    thinking: str | None = None
    tool_calls: list[ScriptedToolCall] | None = None
    finish_reason: str | None = None
    delay: float = Field(default=0.0, ge=0, le=MAX_WAIT_SECONDS)

    @model_validator(mode="after")
    def _one_content_source(self) -> Reply:
        if self.text is not None and self.has_json:
            raise ValueError("a reply takes `text` or `json`, not both; remove one of them")
        if self.fenced and not self.has_json:
            raise ValueError(
                "`fenced: true` applies only to a `json` reply; add `json` or remove `fenced`"
            )
        return self

    @property
    def has_json(self) -> bool:
        """Whether the reply serializes a JSON value (which may be null)."""
        return "json_value" in self.model_fields_set

    def content_text(self) -> str:
        """Return the text of the reply, before any chunk wrapping."""
        if self.has_json:
            serialized = json.dumps(self.json_value, ensure_ascii=False)
            return f"```json\n{serialized}\n```" if self.fenced else serialized
        if self.text is not None:
            return self.text
        return "" if self.tool_calls else DEFAULT_REPLY_TEXT


class Failure(_ScriptModel):
    """A failed request.

    `kind` picks the error. `retry_after` (seconds) sets the `Retry-After` header of
    `rate_limit` and `capacity`. `status` overrides the status of `capacity` (503),
    `server_error` (500) and sets it for `http`. `seconds` is how long `timeout` keeps the
    connection before closing it without a response. `message` is used by `validation` and
    `bad_request`. `body` and `headers` are sent as given by `http`.
    """

    kind: FailureKind
    retry_after: float | None = Field(default=None, ge=0)
    status: int | None = Field(default=None, ge=100, le=599)
    seconds: float = Field(default=60.0, ge=0, le=MAX_WAIT_SECONDS)
    message: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _http_has_status(self) -> Failure:
        if self.kind == "http" and (self.status is None or self.body is None):
            raise ValueError("a failure of kind 'http' needs both `status` and `body`")
        return self


class Rule(_ScriptModel):
    """One scripted rule: conditions, a use limit and either a reply or a failure.

    `model` must equal the requested model name. `contains` (substring) and `regex`
    (`re.search`) test the last user message, or every message when `search` is "any"; for
    embeddings they test the inputs. `times` limits how often the rule applies.
    """

    name: str | None = None
    endpoint: Endpoint = "chat"
    model: str | None = None
    contains: str | None = None
    regex: str | None = None
    search: Literal["last_user", "any"] = "last_user"
    times: int | None = Field(default=None, ge=1)
    reply: Reply | None = None
    fail: Failure | None = None

    @field_validator("reply", mode="before")
    @classmethod
    def _reply_from_text(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("fail", mode="before")
    @classmethod
    def _failure_from_kind(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> Rule:
        if (self.reply is None) == (self.fail is None):
            raise ValueError("a rule needs exactly one of `reply` or `fail`")
        if self.endpoint == "embeddings" and self.reply is not None:
            raise ValueError(
                "embedding rules can only `fail`; the stand-in computes embedding vectors itself"
            )
        return self

    def matches(
        self, endpoint: Endpoint, model: str | None, last_user: str, everything: str
    ) -> bool:
        """Return whether the rule's conditions hold for one request (uses are not checked).

        `last_user` is the text of the last user message and `everything` the text of all
        messages; for embeddings both are the inputs joined by newlines.
        """
        if endpoint != self.endpoint:
            return False
        if self.model is not None and model != self.model:
            return False
        text = everything if self.search == "any" else last_user
        if self.contains is not None and self.contains not in text:
            return False
        return self.regex is None or re.search(self.regex, text) is not None

    def label(self, index: int) -> str:
        """Return the rule's name, or its position when it has none."""
        return self.name or f"rule[{index}]"


class Script(_ScriptModel):
    """A whole script: rules, the default reply and extra model names to accept."""

    rules: list[Rule] = Field(default_factory=list)
    default_reply: Reply = Field(default_factory=lambda: Reply(text=DEFAULT_REPLY_TEXT))
    models: list[str] = Field(default_factory=list)

    @field_validator("default_reply", mode="before")
    @classmethod
    def _default_from_text(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value


def load_script(path: str | Path) -> Script:
    """Load a script from a YAML or JSON file.

    Raises:
        ValueError: the file is not valid YAML/JSON or does not describe a script; the
            message names the file and the invalid field.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"LLM stand-in script {path} is not valid YAML or JSON: {exc}") from exc

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"LLM stand-in script {path} must be a mapping with `rules`, `default_reply` and "
            f"`models`, got {type(data).__name__}"
        )
    try:
        return Script.model_validate(data)
    except ValueError as exc:
        raise ValueError(f"LLM stand-in script {path} is invalid: {exc}") from exc


class RuleBook:
    """The live rules of one stand-in, with the number of uses each rule has left.

    Handler threads call `take` concurrently, so every read and update holds one lock.
    """

    def __init__(self, script: Script) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._uses: list[int] = []
        self.default_reply = script.default_reply
        for rule in script.rules:
            self.add(rule)

    def add(self, rule: Rule) -> None:
        """Append a rule after the existing ones."""
        with self._lock:
            self._rules.append(rule)
            self._uses.append(0)

    def take(
        self, endpoint: Endpoint, model: str | None, last_user: str, everything: str
    ) -> tuple[str, Rule] | None:
        """Return the first matching rule with uses left and its label, and count one use."""
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.times is not None and self._uses[index] >= rule.times:
                    continue
                if rule.matches(endpoint, model, last_user, everything):
                    self._uses[index] += 1
                    return rule.label(index), rule
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._rules)

    def uses(self) -> dict[str, int]:
        """Return how many times each rule has applied, by label."""
        with self._lock:
            return {rule.label(i): self._uses[i] for i, rule in enumerate(self._rules)}
