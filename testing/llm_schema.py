"""Mistral's request schemas for chat completions and embeddings, as pydantic models.

Mistral validates request bodies with pydantic and `additionalProperties: false` at every
level, so these models forbid extra keys and report errors with pydantic's own error types
(`extra_forbidden`, `missing`, `int_type`, ...). Types are checked in strict mode so that a
client that sends `"0.2"` for `temperature` learns about it here.

Field lists follow Mistral's published OpenAPI spec (platform-docs-public, synced 2026-08-13).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Lenient(BaseModel):
    # NOTE: the stand-in checks only the discriminating `type` of media chunks; their inner
    # fields (image_url detail, document names, audio) are accepted without checks.
    model_config = ConfigDict(extra="allow", strict=True)


# --- content chunks -------------------------------------------------------------------------


class TextChunk(_Strict):
    type: Literal["text"]
    text: str


class ReferenceChunk(_Strict):
    type: Literal["reference"]
    reference_ids: list[int]


class ThinkChunk(_Strict):
    type: Literal["thinking"]
    thinking: list[Annotated[TextChunk | ReferenceChunk, Field(discriminator="type")]]
    closed: bool | None = None


class ImageUrlChunk(_Lenient):
    type: Literal["image_url"]
    image_url: str | dict[str, Any]


class DocumentUrlChunk(_Lenient):
    type: Literal["document_url"]
    document_url: str


class FileChunk(_Lenient):
    type: Literal["file"]
    file_id: str


class InputAudioChunk(_Lenient):
    type: Literal["input_audio"]
    input_audio: str | dict[str, Any]


ContentChunk = Annotated[
    TextChunk
    | ImageUrlChunk
    | DocumentUrlChunk
    | ReferenceChunk
    | FileChunk
    | ThinkChunk
    | InputAudioChunk,
    Field(discriminator="type"),
]
SystemChunk = Annotated[TextChunk | ThinkChunk, Field(discriminator="type")]


# --- messages -------------------------------------------------------------------------------


class FunctionCall(_Strict):
    name: str
    arguments: dict[str, Any] | str


class ToolCall(_Strict):
    id: str = "null"
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int = 0


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | list[SystemChunk]


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[ContentChunk] | None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[ContentChunk] | None = None
    tool_calls: list[ToolCall] | None = None
    prefix: bool = False


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: str | list[ContentChunk] | None
    tool_call_id: str | None = None
    name: str | None = None


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


# --- tools and response format --------------------------------------------------------------


class Function(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any]
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: Function


class FunctionName(_Strict):
    name: str


class ToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: FunctionName


class JsonSchema(_Strict):
    name: str
    description: str | None = None
    # `schema` is a BaseModel attribute name, so the field is stored under another name.
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError(
                "response_format type 'json_schema' requires a `json_schema` object with "
                "`name` and `schema`"
            )
        return self


class Prediction(_Strict):
    type: Literal["content"] = "content"
    content: str = ""


# --- requests -------------------------------------------------------------------------------

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ChatCompletionRequest(_Strict):
    """The body of `POST /v1/chat/completions`."""

    model: str
    messages: list[Message]
    temperature: Annotated[float, Field(ge=0, le=1.5)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    random_seed: Annotated[int, Field(ge=0)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "any", "required"] | ToolChoice = "auto"
    parallel_tool_calls: bool = True
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    prediction: Prediction | None = None
    reasoning_effort: ReasoningEffort | None = None
    prompt_mode: Literal["reasoning"] | None = None
    safe_prompt: bool = False
    metadata: dict[str, Any] | None = None
    # NOTE: the spec snapshot lists `guardrails` without a shape the stand-in checks.
    guardrails: Any = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


class EmbeddingRequest(_Strict):
    """The body of `POST /v1/embeddings`."""

    model: str
    input: str | list[str]
    output_dimension: Annotated[int, Field(gt=0)] | None = None
    output_dtype: Literal["float", "int8", "uint8", "binary", "ubinary"] = "float"
    encoding_format: Literal["float", "base64"] = "float"
    metadata: dict[str, Any] | None = None
