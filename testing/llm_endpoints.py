"""Request handling of the LLM stand-in, independent of the HTTP transport.

`handle` takes one recorded request and returns an `Outcome`: the response to send, or an
instruction to hold or drop the connection. Mistral paths (`/v1/...`) validate as strictly as
Mistral does. OpenAI paths (`/openai/v1/...`) are lenient like most OpenAI-compatible servers:
they need only `model` and `messages` (or `input`) and record every other field they do not
define in `RecordedRequest.unknown_fields`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dagwright.testing import llm_errors
from dagwright.testing.llm_conversation import check_conversation
from dagwright.testing.llm_embeddings import embed, encode_base64
from dagwright.testing.llm_errors import ApiError
from dagwright.testing.llm_models import (
    DEFAULT_CONTEXT_LENGTH,
    ModelCatalogue,
    model_entry,
)
from dagwright.testing.llm_recording import ApiStyle, RecordedRequest, Recorder
from dagwright.testing.llm_responses import (
    assistant_message,
    chat_completion,
    content_text,
    count_tokens,
    embedding_list,
    message_text,
    prompt_tokens,
    usage,
)
from dagwright.testing.llm_schema import ChatCompletionRequest, EmbeddingRequest
from dagwright.testing.llm_script import Failure, Reply, RuleBook
from pydantic import ValidationError

MISTRAL_PREFIX = "/v1"
OPENAI_PREFIX = "/openai/v1"

STREAM_MESSAGE = (
    "The dagwright LLM stand-in does not stream; send `stream: false` (or leave it out) "
    "when testing against it."
)

# NOTE: Mistral's per-request token limit for embeddings was reported as 16384 in 2024; the
# current limit is not documented.
EMBEDDING_BATCH_TOKENS = 16_384
OPENAI_DEFAULT_EMBEDDING_DIMENSION = 1024

OPENAI_CHAT_FIELDS = frozenset(
    [
        "model",
        "messages",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ]
)
OPENAI_EMBEDDING_FIELDS = frozenset(["model", "input", "dimensions", "encoding_format", "user"])

# A body cut off mid-string, for the `malformed_body` failure.
MALFORMED_BODY = b'{"id": "0", "object": "chat.completion", "choices": [{"message": {"content": "'


@dataclass
class StandInState:
    """Everything a request handler reads: the key, models, rules, clock and record."""

    api_key: str
    catalogue: ModelCatalogue
    rules: RuleBook
    created: int
    openai_requires_key: bool
    recorder: Recorder = field(default_factory=Recorder)
    stopping: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    """The response to send for one request, or an instruction to drop the connection.

    `wait` seconds pass before anything is sent. Then either `drop` closes the connection
    without a response, or the status, headers and `body` (JSON) or `raw` bytes are sent.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    wait: float = 0.0
    drop: bool = False


def handle(state: StandInState, request: RecordedRequest) -> Outcome:
    """Return the outcome for one request; errors become error responses of its API style."""
    try:
        return _route(state, request)
    except ApiError as error:
        body = error.mistral_body if request.api == "mistral" else error.openai_body()
        return Outcome(error.status, body, dict(error.headers))


def api_style(path: str) -> ApiStyle:
    """Return which API a path belongs to; anything outside `/openai/` counts as Mistral."""
    return "openai" if urlsplit(path).path.startswith(OPENAI_PREFIX + "/") else "mistral"


def _route(state: StandInState, request: RecordedRequest) -> Outcome:
    path = urlsplit(request.path).path.rstrip("/")
    prefix = OPENAI_PREFIX if request.api == "openai" else MISTRAL_PREFIX
    if not path.startswith(prefix + "/"):
        raise llm_errors.not_found()
    route = path[len(prefix) :]

    if route in ("/chat/completions", "/embeddings"):
        expected_method = "POST"
    elif route == "/models" or route.startswith("/models/"):
        expected_method = "GET"
    else:
        raise llm_errors.not_found()
    if request.method != expected_method:
        raise llm_errors.method_not_allowed()

    needs_key = request.api == "mistral" or state.openai_requires_key
    if needs_key and not request.auth_valid:
        raise llm_errors.unauthorized(str(request.index))

    if route == "/chat/completions":
        return _chat(state, request)
    if route == "/embeddings":
        return _embeddings(state, request)
    return _models(state, route)


def _parse_body(request: RecordedRequest) -> Any:
    try:
        data = json.loads(request.raw_body)
    except json.JSONDecodeError as exc:
        if request.api == "openai":
            raise llm_errors.bad_request(f"request body is not valid JSON: {exc}") from exc
        raise llm_errors.invalid_json_body(exc) from exc
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        request.model = data["model"]
    return data


# --- chat completions -------------------------------------------------------------------------


def _chat(state: StandInState, request: RecordedRequest) -> Outcome:
    data = _parse_body(request)
    if request.api == "openai":
        messages, max_tokens = _openai_chat_fields(data, request)
        return _complete(state, request, messages, max_tokens, context_length=None)

    try:
        chat = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise llm_errors.from_validation_error(exc) from exc
    if chat.stream:
        raise llm_errors.bad_request(STREAM_MESSAGE)

    card = state.catalogue.get(chat.model)
    if card is None or card.kind != "chat":
        # NOTE: the real API's reply to an embedding model on the chat path is not documented.
        raise llm_errors.invalid_model(chat.model)
    check_conversation(chat)

    messages = data["messages"]
    prompt = prompt_tokens(messages)
    if prompt > card.context_length:
        raise llm_errors.context_length_exceeded(prompt, card.context_length)
    return _complete(state, request, messages, chat.max_tokens, card.context_length)


def _openai_chat_fields(
    data: Any, request: RecordedRequest
) -> tuple[list[dict[str, Any]], int | None]:
    if not isinstance(data, dict):
        raise llm_errors.bad_request("request body must be a JSON object")
    request.unknown_fields = sorted(set(data) - OPENAI_CHAT_FIELDS)
    if not isinstance(data.get("model"), str):
        raise llm_errors.bad_request("`model` is required and must be a string")

    messages = data.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise llm_errors.bad_request(
            "`messages` is required and must be a list of objects with a `role`"
        )
    if data.get("stream"):
        raise llm_errors.bad_request(STREAM_MESSAGE)

    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    return messages, max_tokens if isinstance(max_tokens, int) else None


def _complete(
    state: StandInState,
    request: RecordedRequest,
    messages: list[dict[str, Any]],
    max_tokens: int | None,
    context_length: int | None,
) -> Outcome:
    model = request.model or ""
    prompt = prompt_tokens(messages)
    last_user = next(
        (content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    everything = "\n".join(message_text(m) for m in messages)

    reply: Reply = state.rules.default_reply
    request.rule = "default"
    matched = state.rules.take("chat", model, last_user, everything)
    if matched is not None:
        request.rule, rule = matched
        if rule.fail is not None:
            return _failure(rule.fail, request, prompt, context_length)
        assert rule.reply is not None  # a rule has exactly one of reply and fail
        reply = rule.reply

    message, finish_reason, completion = assistant_message(reply, max_tokens)
    request.usage = usage(prompt, completion)
    completion_id = llm_errors.request_id(f"{request.index}:{request.raw_body}")
    if request.api == "openai":
        completion_id = "chatcmpl-" + completion_id
    body = chat_completion(
        completion_id, state.created, model, message, finish_reason, request.usage
    )
    return Outcome(200, body, wait=reply.delay)


def _failure(
    failure: Failure, request: RecordedRequest, prompt: int, context_length: int | None
) -> Outcome:
    if failure.kind == "timeout":
        return Outcome(wait=failure.seconds, drop=True)
    if failure.kind == "disconnect":
        return Outcome(drop=True)
    if failure.kind == "malformed_body":
        return Outcome(200, raw=MALFORMED_BODY, headers={"Content-Type": "application/json"})

    error = _failure_error(failure, request, prompt, context_length)
    error.headers.update(failure.headers)
    raise error


def _failure_error(
    failure: Failure, request: RecordedRequest, prompt: int, context_length: int | None
) -> ApiError:
    kind = failure.kind
    if kind == "rate_limit":
        return llm_errors.rate_limited(failure.retry_after)
    if kind == "capacity":
        return llm_errors.capacity_exceeded(failure.status or 503, failure.retry_after)
    if kind == "server_error":
        return llm_errors.server_error(failure.status or 500)
    if kind == "unauthorized":
        return llm_errors.unauthorized(str(request.index))
    if kind == "invalid_model":
        return llm_errors.invalid_model(request.model or "")
    if kind == "context_length":
        limit = context_length or DEFAULT_CONTEXT_LENGTH
        return llm_errors.context_length_exceeded(max(prompt, limit + 1), limit)
    if kind == "validation":
        message = failure.message or "Value error, scripted validation failure"
        return llm_errors.validation_failed(
            [{"type": "value_error", "loc": ["body"], "msg": message, "input": None}]
        )
    if kind == "bad_request":
        return llm_errors.bad_request(failure.message or "Scripted bad request.")
    # kind == "http": the Failure validator guarantees status and body.
    assert failure.status is not None and failure.body is not None
    return llm_errors.custom(failure.status, failure.body)


# --- embeddings and models ------------------------------------------------------------------


def _embeddings(state: StandInState, request: RecordedRequest) -> Outcome:
    data = _parse_body(request)
    if request.api == "openai":
        inputs, dimension, encoding = _openai_embedding_fields(data, request, state.catalogue)
    else:
        inputs, dimension, encoding = _mistral_embedding_fields(data, state.catalogue)

    model = request.model or ""
    prompt = sum(count_tokens(text) for text in inputs)
    if request.api == "mistral" and prompt > EMBEDDING_BATCH_TOKENS:
        raise llm_errors.bad_request(
            f"Too many tokens in batch. Max is {EMBEDDING_BATCH_TOKENS} got {prompt}"
        )

    joined = "\n".join(inputs)
    matched = state.rules.take("embeddings", model, joined, joined)
    if matched is not None:
        request.rule, rule = matched
        assert rule.fail is not None  # embedding rules can only fail
        return _failure(rule.fail, request, prompt, None)

    vectors: list[Any] = [embed(text, dimension) for text in inputs]
    if encoding == "base64":
        vectors = [encode_base64(vector) for vector in vectors]
    request.usage = usage(prompt, 0)
    response_id = llm_errors.request_id(f"{request.index}:{request.raw_body}")
    return Outcome(200, embedding_list(response_id, model, vectors, request.usage))


def _mistral_embedding_fields(data: Any, catalogue: ModelCatalogue) -> tuple[list[str], int, str]:
    try:
        parsed = EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        raise llm_errors.from_validation_error(exc) from exc

    card = catalogue.get(parsed.model)
    if card is None or card.kind != "embedding":
        raise llm_errors.invalid_model(parsed.model)
    if parsed.output_dtype != "float":
        raise llm_errors.bad_request(
            f"The dagwright LLM stand-in returns only float embeddings, got output_dtype "
            f"{parsed.output_dtype!r}; leave output_dtype out or set it to 'float'."
        )
    inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
    # NOTE: output_dimension is honoured for every embedding model; Mistral documents it
    # only for codestral-embed (at most 3072).
    return inputs, parsed.output_dimension or card.embedding_dimension, parsed.encoding_format


def _openai_embedding_fields(
    data: Any, request: RecordedRequest, catalogue: ModelCatalogue
) -> tuple[list[str], int, str]:
    if not isinstance(data, dict):
        raise llm_errors.bad_request("request body must be a JSON object")
    request.unknown_fields = sorted(set(data) - OPENAI_EMBEDDING_FIELDS)
    if not isinstance(data.get("model"), str):
        raise llm_errors.bad_request("`model` is required and must be a string")

    raw_input = data.get("input")
    inputs = [raw_input] if isinstance(raw_input, str) else raw_input
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise llm_errors.bad_request(
            "`input` is required and must be a string or a list of strings"
        )

    card = catalogue.get(data["model"])
    default_dimension = card.embedding_dimension if card else OPENAI_DEFAULT_EMBEDDING_DIMENSION
    dimension = data.get("dimensions")
    if not isinstance(dimension, int) or dimension <= 0:
        dimension = default_dimension or OPENAI_DEFAULT_EMBEDDING_DIMENSION
    encoding = "base64" if data.get("encoding_format") == "base64" else "float"
    return inputs, dimension, encoding


def _models(state: StandInState, route: str) -> Outcome:
    if route == "/models":
        data = [model_entry(card) for card in state.catalogue.cards()]
        return Outcome(200, {"object": "list", "data": data})

    card = state.catalogue.get(route[len("/models/") :])
    if card is None:
        # NOTE: the body of Mistral's 404 for an unknown model id is not documented.
        raise llm_errors.not_found()
    return Outcome(200, model_entry(card))
