"""Pydantic models of the workflow language (DSL v1).

These models describe what a user may write. They check shapes and types; the
compiler checks everything that needs the whole document (references, cycles,
templates, tools, JSON Schemas). Unknown fields are errors everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dagwright.interpreter.durations import parse_duration

LANGUAGE_VERSION = 1
WORKFLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
NODE_ID = re.compile(r"^[a-z0-9_]+$")
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DURATION_PATTERN = (
    r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$|^P(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
    r"(T(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$"
)

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _DURATION_PATTERN,
            "description": "A duration: 500ms, 30s, 5m, 2h, 1d, 1h30m, or ISO 8601 such as PT30S.",
        }
    ),
]
"""Seconds, written in the file as a duration string."""

JsonSchema = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "description": "A JSON Schema (draft 2020-12)."}),
]
Expression = Annotated[
    Union[str, bool],
    WithJsonSchema(
        {
            "type": ["string", "boolean"],
            "description": "A Jinja2 expression, bare or in {{ }}, e.g. nodes.review.output.approved.",
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryPolicy(_Strict):
    """How often and how fast a failed attempt is tried again; always finite."""

    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval: Duration = 1.0
    backoff: float = Field(2.0, ge=1.0, le=100.0)
    max_interval: Duration = 60.0
    non_retryable: list[str] = Field(default_factory=list)


class RetryDefaults(_Strict):
    """`defaults.retry`: every field optional so a node overrides only what it names."""

    max_attempts: int | None = Field(None, ge=1, le=100)
    initial_interval: Duration | None = None
    backoff: float | None = Field(None, ge=1.0, le=100.0)
    max_interval: Duration | None = None
    non_retryable: list[str] | None = None


class LlmDefaults(_Strict):
    provider: str | None = None
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    random_seed: int | None = None


class EmbedDefaults(_Strict):
    provider: str | None = None
    model: str | None = None


class Defaults(_Strict):
    timeout: Duration | None = None
    deadline: Duration | None = None
    retry: RetryDefaults | None = None
    on_error: Literal["fail", "continue"] | None = None
    llm: LlmDefaults | None = None
    embed: EmbedDefaults | None = None


class Budget(_Strict):
    max_cost_usd: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    on_exceed: Literal["fail", "approval"] = "fail"


class Limits(_Strict):
    max_parallel: int = Field(10, ge=1, le=1000)
    timeout: Duration | None = None
    budget: Budget | None = None


class NodeBase(_Strict):
    """Fields every node type accepts."""

    description: str | None = None
    needs: list[str] = Field(default_factory=list)
    when: Expression | None = None
    for_each: Expression | None = None
    max_parallel: int | None = Field(None, ge=1, le=1000)
    timeout: Duration | None = None
    deadline: Duration | None = None
    retry: RetryDefaults | None = None
    on_error: Literal["fail", "continue"] | None = None
    fallback: list[dict[str, Any]] = Field(default_factory=list)
    output: str | None = None


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
HttpMethod = Annotated[
    Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    # The compiler upper-cases the method, so editors accept both spellings too.
    WithJsonSchema({"type": "string", "enum": [*_METHODS, *(method.lower() for method in _METHODS)]}),
]


class HttpNode(NodeBase):
    type: Literal["http"]
    method: HttpMethod = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json")
    body: str | None = None
    form: dict[str, Any] | None = None
    expect_status: int | list[int] | None = None
    response: Literal["auto", "json", "text"] = "auto"
    idempotency_key: bool | str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("expect_status")
    @classmethod
    def _status_range(cls, value: int | list[int] | None) -> int | list[int] | None:
        codes = [value] if isinstance(value, int) else value or []
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"HTTP status {code} is out of range; use a code from 100 to 599")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> "HttpNode":
        given = [name for name in ("json", "body", "form") if name in self._given_body_fields()]
        if len(given) > 1:
            raise ValueError(f"set only one of json, body and form (got {', '.join(given)})")
        return self

    def _given_body_fields(self) -> set[str]:
        fields = {"json" if name == "json_" else name for name in self.model_fields_set}
        return fields & {"json", "body", "form"}


class LlmNode(NodeBase):
    type: Literal["llm"]
    provider: str | None = None
    model: str | None = None
    messages: list[Message] | None = None
    prompt: str | None = None
    system: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    random_seed: int | None = None
    stop: str | list[str] | None = None
    output_schema: JsonSchema | None = None
    repair_attempts: int = Field(2, ge=0, le=10)

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "LlmNode":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("set exactly one of 'prompt' and 'messages'")
        if self.messages is not None and self.system is not None:
            raise ValueError("'system' goes with 'prompt'; with 'messages', add a system message")
        return self


class EmbedNode(NodeBase):
    type: Literal["embed"]
    provider: str | None = None
    model: str | None = None
    input: str | list[str]


class SqlNode(NodeBase):
    type: Literal["sql"]
    connection: str
    query: str
    params: list[Any] = Field(default_factory=list)
    mode: Literal["rows", "row", "value", "execute"] = "rows"
    # Strict, so that `read_only: yes` (a string under YAML 1.2) is rejected rather than
    # coerced to true by pydantic's lax mode.
    read_only: StrictBool = True
    max_rows: int = Field(10_000, ge=1, le=1_000_000)


class PythonNode(NodeBase):
    type: Literal["python"]
    function: str
    args: dict[str, Any] = Field(default_factory=dict)


class TransformNode(NodeBase):
    type: Literal["transform"]
    value: Any


class ApprovalNode(NodeBase):
    type: Literal["approval"]
    prompt: str
    assignees: list[str] = Field(default_factory=list)
    form: JsonSchema | None = None
    on_timeout: Literal["reject", "approve", "fail"] = "reject"
    remind_after: Duration | None = None


class WaitNode(NodeBase):
    type: Literal["wait"]
    duration: Duration | None = None
    until: str | None = None

    @model_validator(mode="after")
    def _duration_or_until(self) -> "WaitNode":
        if (self.duration is None) == (self.until is None):
            raise ValueError("set exactly one of 'duration' and 'until'")
        return self


class WorkflowNode(NodeBase):
    type: Literal["workflow"]
    file: str | None = None
    name: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _file_or_name(self) -> "WorkflowNode":
        if (self.file is None) == (self.name is None):
            raise ValueError("set exactly one of 'file' and 'name'")
        return self


NODE_MODELS: dict[str, type[NodeBase]] = {
    "http": HttpNode,
    "llm": LlmNode,
    "embed": EmbedNode,
    "sql": SqlNode,
    "python": PythonNode,
    "transform": TransformNode,
    "approval": ApprovalNode,
    "wait": WaitNode,
    "workflow": WorkflowNode,
}
ACTIVITY_TYPES = frozenset({"http", "llm", "embed", "sql", "python"})

Node = Annotated[
    Union[tuple(NODE_MODELS.values())],  # type: ignore[valid-type]
    Field(discriminator="type"),
]


class Workflow(_Strict):
    """A whole workflow file."""

    dagwright: Literal[1]
    name: str = Field(pattern=WORKFLOW_NAME.pattern)
    # An unquoted `version: 1.10` is a number to a YAML editor; the compiler keeps its text.
    version: Annotated[str | None, WithJsonSchema({"type": ["string", "number", "null"]})] = None
    description: str | None = None
    inputs: dict[str, JsonSchema] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    limits: Limits = Field(default_factory=Limits)
    nodes: dict[str, Node] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)


def node_field_names(node_type: str) -> list[str]:
    """Return the field names a node of this type accepts, as written in files."""
    model = NODE_MODELS[node_type]
    return [field.alias or name for name, field in model.model_fields.items()]


def language_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of workflow files, for editors and `dagwright schema`."""
    schema = Workflow.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://dagwright.dev/schema/dagwright-1.json"
    schema["title"] = "dagwright workflow (language version 1)"
    return schema
