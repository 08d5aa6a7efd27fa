"""The HTTP exchange with an LLM provider and the translation of its failures.

``ProviderClient`` sends one request and returns the parsed answer, or raises ``ProviderError``
with one of the types in ``failures.py``. This module is the only place that reads provider
error bodies. The activity adds the node id and turns ``ProviderError`` into a Temporal error.

Error bodies come in several shapes, and every one is reduced to a message:

- Mistral's documented body: ``{"object": "error", "message": "...", "type": ..., "code": ...}``;
- Mistral's 422, where ``message`` is an object (or a JSON string) holding a pydantic
  ``detail`` list, and the OpenAPI spec's plain ``{"detail": [...]}``;
- ``{"message": "Unauthorized", "request_id": ...}`` and ``{"detail": "Unauthorized"}``;
- the OpenAI style ``{"error": {"message", "type", "param", "code"}}`` of OpenAI, vLLM, Ollama
  and llama.cpp, and ``{"error": "text"}``;
- plain text, or an empty body.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from dagwright.activities.llm.config import ProviderConfig
from dagwright.activities.llm.failures import (
    LLM_AUTH_ERROR,
    LLM_CAPACITY,
    LLM_CONNECTION_ERROR,
    LLM_CONTEXT_LENGTH,
    LLM_INVALID_REQUEST,
    LLM_MODEL_NOT_FOUND,
    LLM_RATE_LIMITED,
    LLM_RESPONSE_INVALID,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
)
from dagwright.activities.secrets import redact

# A server may ask for any delay; one hour keeps a confused server from parking a node for days.
MAX_RETRY_AFTER = timedelta(hours=1)

# Characters of a server's error message quoted in ours.
ERROR_DETAIL_CHARS = 500

_CONTEXT_MARKERS = re.compile(
    r"context[ _-]?(length|window|size)|too large for model|prompt is too long|too many tokens"
    r"|maximum context|exceeds? the (model'?s? )?(max|limit)",
    re.IGNORECASE,
)
_MODEL_MARKERS = re.compile(
    r"invalid model|unknown model|no such model|model[ _-]not[ _-]found"
    r"|model\b.{0,80}\b(not found|does not exist|not exist)",
    re.IGNORECASE,
)
_CAPACITY_MARKERS = re.compile(
    r"capacity (exceeded|reached)|exceeded (the )?capacity|no capacity|overloaded", re.IGNORECASE
)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, independent of the provider's wire format."""

    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    random_seed: int | None = None
    stop: str | list[str] | None = None
    output_schema: dict[str, Any] | None = None
    # Name sent with a json_schema response format; OpenAI requires [a-zA-Z0-9_-]{1,64}.
    schema_name: str = "output"


@dataclass(frozen=True)
class Usage:
    """Token counts of one call; ``reported`` is False when the server sent no usage."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reported: bool = True


@dataclass(frozen=True)
class ChatAnswer:
    """The first choice of a chat completion, with its content reduced to text."""

    text: str
    finish_reason: str | None
    # The model that produced the answer, as the server reports it, else the requested name.
    model: str
    usage: Usage


@dataclass(frozen=True)
class Embeddings:
    """Vectors in input order, with the resolved model and usage."""

    vectors: list[list[float]]
    model: str
    usage: Usage


class ProviderError(Exception):
    """A failed call, classified; ``message`` already names the provider and what to fix."""

    def __init__(
        self,
        message: str,
        *,
        type: str,
        retryable: bool,
        retry_after: timedelta | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class ProviderClient:
    """Calls one provider's chat completions and embeddings endpoints.

    Subclasses build the request bodies, because each API accepts a different set of fields.
    """

    def __init__(self, config: ProviderConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _common_chat_body(self, request: ChatRequest, *, seed_field: str) -> dict[str, Any]:
        """Build the fields both APIs share; the APIs name the sampling seed differently."""
        body: dict[str, Any] = {
            "model": request.model,
            # Only role and content: Mistral rejects "name" on user and assistant messages.
            "messages": [
                {"role": message["role"], "content": message["content"]}
                for message in request.messages
            ],
        }
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            seed_field: request.random_seed,
            "stop": request.stop,
            "response_format": self._response_format(request),
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def embed_body(self, model: str, inputs: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    async def chat(
        self, request: ChatRequest, *, api_key: str | None, timeout: float
    ) -> ChatAnswer:
        """Send one chat completion request and return its first choice.

        Raises:
            ProviderError: the call failed; see ``failures.py`` for the types.
        """
        data = await self._post(
            "/chat/completions", self.chat_body(request), request.model, api_key, timeout
        )
        return self._parse_chat(data, request.model)

    async def embed(
        self, model: str, inputs: list[str], *, api_key: str | None, timeout: float
    ) -> Embeddings:
        """Send one embeddings request and return one vector per input.

        Raises:
            ProviderError: the call failed; see ``failures.py`` for the types.
        """
        data = await self._post(
            "/embeddings", self.embed_body(model, inputs), model, api_key, timeout
        )
        return self._parse_embeddings(data, model, len(inputs))

    def _response_format(self, request: ChatRequest) -> dict[str, Any] | None:
        if request.output_schema is None or self.config.structured_output == "none":
            return None
        if self.config.structured_output == "json_object":
            return {"type": "json_object"}
        return {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": request.output_schema,
                "strict": self.config.strict_schema,
            },
        }

    async def _post(
        self, path: str, body: dict[str, Any], model: str, api_key: str | None, timeout: float
    ) -> Any:
        headers = {"Accept": "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        secrets = [api_key] if api_key else []

        try:
            # httpx's timeout bounds each read, so a server trickling bytes could outlast it;
            # asyncio.timeout bounds the whole exchange.
            async with asyncio.timeout(timeout):
                response = await self._http.post(path, json=body, headers=headers, timeout=timeout)
        except TimeoutError:
            raise self._error(
                f"provider {self.config.name!r} did not answer within {timeout:g} s "
                f"(model {model!r}). Raise the node's timeout or the provider's timeout setting "
                "if the model is slow.",
                LLM_TIMEOUT,
            ) from None
        except httpx.TimeoutException as exc:
            raise self._error(
                f"provider {self.config.name!r} timed out ({type(exc).__name__}) after at most "
                f"{timeout:g} s (model {model!r}).",
                LLM_TIMEOUT,
            ) from None
        except httpx.HTTPError as exc:
            cause = redact(f"{type(exc).__name__}: {exc}", secrets)
            raise self._error(
                f"cannot reach provider {self.config.name!r} at {self.config.base_url} ({cause}). "
                "Check that the server is running and that base_url is right.",
                LLM_CONNECTION_ERROR,
            ) from None

        if not 200 <= response.status_code < 300:
            raise self._status_error(response, model, secrets)
        try:
            return response.json()
        except ValueError:
            raise self._error(
                f"provider {self.config.name!r} returned status {response.status_code} with a "
                f"body that is not JSON: {_snippet(response.text)!r}",
                LLM_RESPONSE_INVALID,
            ) from None

    def _error(self, message: str, type: str, status: int | None = None) -> ProviderError:
        retryable = type in (LLM_TIMEOUT, LLM_CONNECTION_ERROR, LLM_RESPONSE_INVALID)
        return ProviderError(message, type=type, retryable=retryable, status=status)

    def _status_error(
        self, response: httpx.Response, model: str, secrets: list[str]
    ) -> ProviderError:
        status = response.status_code
        # Servers may echo part of the key back, so quoted text is scrubbed of it.
        detail = redact(error_detail(response.content), secrets)
        error_type, retryable = classify(status, detail)
        message = self._status_message(error_type, status, detail, model)
        retry_after = retry_after_delay(response.headers.get("retry-after")) if retryable else None
        return ProviderError(
            message, type=error_type, retryable=retryable, retry_after=retry_after, status=status
        )

    def _status_message(self, error_type: str, status: int, detail: str, model: str) -> str:
        name = self.config.name
        fix = self.config.key_setting()
        cause = f"({status}: {detail})"
        if error_type == LLM_AUTH_ERROR and status == 401:
            return (
                f"provider {name!r} rejected the API key {cause}; "
                f"set {fix} on the worker to a valid key."
            )
        if error_type == LLM_AUTH_ERROR:
            return (
                f"provider {name!r} refused access to model {model!r} {cause}. "
                f"The key in {fix} may not have access to this model on its plan."
            )
        if error_type == LLM_MODEL_NOT_FOUND:
            return (
                f"provider {name!r} does not know model {model!r} {cause}. Check the model name; "
                f"if it is right, check the provider's base_url ({self.config.base_url})."
            )
        if error_type == LLM_CONTEXT_LENGTH:
            return (
                f"the prompt does not fit the context window of model {model!r} on provider "
                f"{name!r} {cause}. Shorten the prompt, lower max_tokens, or fall back to a model "
                "with a larger context window."
            )
        if error_type == LLM_INVALID_REQUEST:
            return f"provider {name!r} rejected the request for model {model!r} as invalid {cause}."
        if error_type == LLM_RATE_LIMITED:
            return f"provider {name!r} rate-limited the request for model {model!r} {cause}."
        if error_type == LLM_CAPACITY:
            return f"provider {name!r} has no capacity for model {model!r} right now {cause}."
        return f"provider {name!r} failed on model {model!r} {cause}."

    def _parse_chat(self, data: Any, requested_model: str) -> ChatAnswer:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._invalid_response("chat completion", "no 'choices' list", data)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._invalid_response(
                "chat completion", "no 'message' in the first choice", data
            )
        return ChatAnswer(
            text=content_text(message.get("content")),
            finish_reason=choice.get("finish_reason"),
            model=_model_name(data, requested_model),
            usage=_usage(data),
        )

    def _parse_embeddings(self, data: Any, requested_model: str, count: int) -> Embeddings:
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != count:
            raise self._invalid_response(
                "embeddings", f"expected a 'data' list of {count} embeddings", data
            )
        ordered = sorted(
            items, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0
        )
        vectors = [item.get("embedding") if isinstance(item, dict) else None for item in ordered]
        if not all(isinstance(vector, list) for vector in vectors):
            raise self._invalid_response(
                "embeddings", "an embedding is not a list of numbers", data
            )
        return Embeddings(
            vectors=vectors, model=_model_name(data, requested_model), usage=_usage(data)
        )

    def _invalid_response(self, what: str, problem: str, data: Any) -> ProviderError:
        return self._error(
            f"provider {self.config.name!r} returned an invalid {what} response ({problem}): "
            f"{_snippet(json.dumps(data))!r}",
            LLM_RESPONSE_INVALID,
        )


def classify(status: int, detail: str) -> tuple[str, bool]:
    """Return the failure type of an error status and message, and whether it is retryable."""
    if status in (401, 403):
        return LLM_AUTH_ERROR, False
    # Mistral has reported "Service tier capacity exceeded" with 400, 429 and 503.
    if status == 503 or _CAPACITY_MARKERS.search(detail):
        return LLM_CAPACITY, True
    if status == 429:
        return LLM_RATE_LIMITED, True
    if status == 408:
        return LLM_TIMEOUT, True
    if status >= 500:
        return LLM_SERVER_ERROR, True
    if _CONTEXT_MARKERS.search(detail):
        return LLM_CONTEXT_LENGTH, False
    if status == 404 or _MODEL_MARKERS.search(detail):
        return LLM_MODEL_NOT_FOUND, False
    return LLM_INVALID_REQUEST, False


def error_detail(content: bytes) -> str:
    """Reduce an error body of any known shape to one line of text."""
    text = content.decode("utf-8", errors="replace").strip()
    if not text:
        return "empty response body"
    try:
        data = json.loads(text)
    except ValueError:
        return _snippet(" ".join(text.split()))
    return _snippet(_describe(data) or " ".join(text.split()))


def _describe(data: Any) -> str:
    if isinstance(data, str):
        # Mistral once sent the pydantic detail as a JSON string inside "message".
        stripped = data.strip()
        if stripped[:1] in ("{", "["):
            try:
                return _describe(json.loads(stripped)) or stripped
            except ValueError:
                return stripped
        return stripped
    if isinstance(data, list):
        return "; ".join(_describe_item(item) for item in data)
    if not isinstance(data, dict):
        return json.dumps(data)

    for key in ("error", "message", "detail"):
        if key in data and data[key] not in (None, "", [], {}):
            described = _describe(data[key])
            labels = [str(data[label]) for label in ("type", "code") if data.get(label)]
            return f"{described} [{', '.join(labels)}]" if labels else described
    return json.dumps(data)


def _describe_item(item: Any) -> str:
    """Describe one pydantic validation detail: ``max_completion_tokens: Extra inputs ...``."""
    if not isinstance(item, dict):
        return _describe(item)
    location = [str(part) for part in item.get("loc", []) if part != "body"]
    message = str(item.get("msg", item.get("message", json.dumps(item))))
    kind = f" ({item['type']})" if item.get("type") else ""
    return f"{'.'.join(location)}: {message}{kind}" if location else f"{message}{kind}"


def content_text(content: Any) -> str:
    """Return the text of a message content: a string, null, or a list of chunks.

    Reasoning models answer with ``thinking`` and ``text`` chunks; only the text chunks are the
    answer, and they are joined in order.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for chunk in content:
            if isinstance(chunk, str):
                parts.append(chunk)
            elif isinstance(chunk, dict) and chunk.get("type") == "text":
                parts.append(str(chunk.get("text", "")))
        return "".join(parts)
    return str(content)


def retry_after_delay(value: str | None) -> timedelta | None:
    """Return the delay a ``Retry-After`` header requests (seconds or HTTP-date), capped."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        delay = timedelta(seconds=float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - datetime.now(UTC)
    if delay <= timedelta(0):
        return None
    return min(delay, MAX_RETRY_AFTER)


def _usage(data: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return Usage(reported=False)
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(total) if total is not None else prompt + completion,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _model_name(data: dict[str, Any], requested: str) -> str:
    model = data.get("model")
    return model if isinstance(model, str) and model else requested


def _snippet(text: str) -> str:
    return text if len(text) <= ERROR_DETAIL_CHARS else text[:ERROR_DETAIL_CHARS] + "..."
