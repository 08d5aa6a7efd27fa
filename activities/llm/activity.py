"""The ``dagwright.llm`` and ``dagwright.embed`` activities.

One activity attempt sends one chat completion, plus up to ``repair_attempts`` repair turns
when the node has an ``output_schema``. The HTTP clients never retry on their own: Temporal owns
retries, so every attempt, its error and its delay show in the workflow history. Failures are
raised as ``ApplicationError`` with the types documented in ``failures.py``. A permanent one
makes the workflow move on to the node's next fallback variant.

Every HTTP call is logged as one line with node, provider, model, status, latency and tokens.
The API key and the prompt are never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import time
import weakref
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dagwright import __version__
from dagwright.activities.errors import permanent, retryable
from dagwright.activities.heartbeat import heartbeating
from dagwright.activities.llm import structured
from dagwright.activities.llm.client import (
    ChatAnswer,
    ChatRequest,
    ProviderClient,
    ProviderError,
    Usage,
)
from dagwright.activities.llm.config import (
    PriceTable,
    ProviderConfig,
    load_prices,
    load_providers,
)
from dagwright.activities.llm.failures import (
    LLM_AUTH_ERROR,
    LLM_CAPACITY,
    LLM_INVALID_REQUEST,
    LLM_OUTPUT_INVALID,
    LLM_PROVIDER_NOT_CONFIGURED,
    LLM_RATE_LIMITED,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
)
from dagwright.activities.llm.mistral import MistralClient
from dagwright.activities.llm.openai import OpenAIClient

logger = logging.getLogger(__name__)

LLM_ACTIVITY_NAME = "dagwright.llm"
EMBED_ACTIVITY_NAME = "dagwright.embed"

# Backoff for 429 and capacity errors without Retry-After when the activity has no retry policy
# (Temporal's own defaults: 1 s, doubling, capped at 100 times the initial interval).
DEFAULT_INITIAL_INTERVAL = timedelta(seconds=1)
DEFAULT_BACKOFF_COEFFICIENT = 2.0
# Each delay is stretched by a random factor of up to this fraction.
BACKOFF_JITTER = 0.5


def _text(value: Any) -> Any:
    # A template that is exactly one expression renders to a native value (a mapping or a list
    # taken from an earlier node), which goes to the model as its JSON text.
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class LlmMessage(BaseModel):
    """One chat message of an ``llm`` node."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _content_text(cls, value: Any) -> Any:
        return _text(value)


class LlmRequest(BaseModel):
    """Input of ``dagwright.llm``: the node's rendered fields, provider and model resolved."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    provider: str
    model: str
    messages: list[LlmMessage] | None = None
    prompt: str | None = None
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    random_seed: int | None = None
    stop: str | list[str] | None = None
    output_schema: dict[str, Any] | None = None
    repair_attempts: int = Field(2, ge=0, le=10)
    # Bounds the whole attempt, repair turns included; None leaves only the provider's timeout.
    timeout_seconds: float | None = None

    @field_validator("prompt", "system", mode="before")
    @classmethod
    def _prompt_text(cls, value: Any) -> Any:
        return _text(value)


class EmbedRequest(BaseModel):
    """Input of ``dagwright.embed``: one text or a list of texts to embed."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    provider: str
    model: str
    input: str | list[str]
    timeout_seconds: float | None = None


class LlmActivities:
    """The LLM activities of one worker, bound to its providers and price table.

    Register both bound methods on the worker: ``activities=[llm.llm, llm.embed]``, and await
    ``aclose()`` at shutdown.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        prices: PriceTable,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._prices = prices
        # Read at each call, so that a key set after the worker started is picked up.
        self._environ = os.environ if environ is None else environ
        # One client per provider per event loop: pooled connections belong to the loop that
        # opened them, and tests run several loops in one process.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def from_config(
        cls, raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> LlmActivities:
        """Build the activities from a parsed dagwright.toml (``Settings.raw``).

        Raises:
            ConfigError: a ``[providers]`` or ``[prices]`` entry is invalid.
        """
        environ = os.environ if environ is None else environ
        return cls(load_providers(raw, environ), load_prices(raw), environ=environ)

    @activity.defn(name=LLM_ACTIVITY_NAME)
    async def llm(self, request: LlmRequest) -> dict[str, Any]:
        """Run one chat completion, with repair turns when the node has an output schema.

        Returns ``{text, json, model, provider, finish_reason, usage, cost_usd, price, repairs}``.
        ``usage`` and ``cost_usd`` cover every turn, ``model`` produced the last answer, and
        ``price`` is that model's ``{input_per_million, output_per_million}`` or None.

        Raises:
            ApplicationError: classified as described in ``failures.py``.
        """
        provider = self._provider(request.node_id, "llm", request.provider)
        messages = _initial_messages(request)
        conversation = _Conversation(request, provider, self._prices)
        async with heartbeating():
            try:
                return await self._converse(conversation, messages)
            except ProviderError as exc:
                raise _application_error(
                    "llm", request.node_id, exc, conversation.spent()
                ) from None

    @activity.defn(name=EMBED_ACTIVITY_NAME)
    async def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """Embed one text or a list of texts.

        Returns ``{vectors, model, provider, usage: {prompt_tokens, total_tokens}, cost_usd,
        price}`` with one vector per input text, in input order. An empty list is answered without a call.

        Raises:
            ApplicationError: classified as described in ``failures.py``.
        """
        provider = self._provider(request.node_id, "embed", request.provider)
        inputs = [request.input] if isinstance(request.input, str) else list(request.input)
        if not inputs:
            return self._embed_result(provider, [], request.model, Usage(), 0.0)

        client = self._client(provider)
        api_key = self._api_key(request.node_id, "embed", provider)
        started = time.monotonic()
        async with heartbeating():
            try:
                timeout = _call_timeout(provider, request.timeout_seconds, started)
                embeddings = await client.embed(
                    request.model, inputs, api_key=api_key, timeout=timeout
                )
            except ProviderError as exc:
                _log_call(
                    "embed", request.node_id, provider, request.model, exc.type, started, None
                )
                raise _application_error("embed", request.node_id, exc, None) from None
            except asyncio.CancelledError:
                _log_call(
                    "embed", request.node_id, provider, request.model, "Cancelled", started, None
                )
                raise

        _log_call(
            "embed", request.node_id, provider, embeddings.model, "ok", started, embeddings.usage
        )
        cost = self._prices.cost(embeddings.model, provider.kind, embeddings.usage.prompt_tokens, 0)
        if not embeddings.usage.reported:
            cost = None
        return self._embed_result(
            provider, embeddings.vectors, embeddings.model, embeddings.usage, cost
        )

    def _embed_result(
        self,
        provider: ProviderConfig,
        vectors: list[list[float]],
        model: str,
        usage: Usage,
        cost: float | None,
    ) -> dict[str, Any]:
        return {
            "vectors": vectors,
            "model": model,
            "provider": provider.name,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
            "cost_usd": cost,
            "price": _price_dict(self._prices, model, provider.kind),
        }

    async def aclose(self) -> None:
        """Close the HTTP clients of the running event loop."""
        clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.aclose()

    async def _converse(
        self, conversation: _Conversation, messages: list[dict[str, str]]
    ) -> dict[str, Any]:
        request, provider = conversation.request, conversation.provider
        client = self._client(provider)
        api_key = self._api_key(request.node_id, "llm", provider)
        deadline = (
            None if request.timeout_seconds is None else time.monotonic() + request.timeout_seconds
        )

        while True:
            answer = await self._chat_turn(conversation, client, api_key, messages, deadline)
            if answer.finish_reason == "error":
                raise ProviderError(
                    f"model {answer.model!r} on provider {provider.name!r} stopped with "
                    "finish_reason 'error'.",
                    type=LLM_SERVER_ERROR,
                    retryable=True,
                )
            if request.output_schema is None:
                return conversation.result(answer, None)

            checked = structured.check_answer(
                answer.text, answer.finish_reason, request.output_schema
            )
            if checked.valid:
                return conversation.result(answer, checked.value)
            if conversation.repairs >= request.repair_attempts:
                raise _output_invalid(conversation, checked.error or "")

            # Without a json_schema response format the model has not seen the schema.
            schema = None if provider.structured_output == "json_schema" else request.output_schema
            messages = messages + structured.repair_messages(
                answer.text, checked.error or "", schema
            )
            conversation.repairs += 1

    async def _chat_turn(
        self,
        conversation: _Conversation,
        client: ProviderClient,
        api_key: str | None,
        messages: list[dict[str, str]],
        deadline: float | None,
    ) -> ChatAnswer:
        request, provider = conversation.request, conversation.provider
        started = time.monotonic()
        try:
            timeout = _call_timeout(provider, request.timeout_seconds, started, deadline)
            answer = await client.chat(
                conversation.chat_request(messages), api_key=api_key, timeout=timeout
            )
        except ProviderError as exc:
            _log_call("llm", request.node_id, provider, request.model, exc.type, started, None)
            raise
        except asyncio.CancelledError:
            _log_call("llm", request.node_id, provider, request.model, "Cancelled", started, None)
            raise
        _log_call("llm", request.node_id, provider, answer.model, "ok", started, answer.usage)
        conversation.add(answer)
        return answer

    def _provider(self, node_id: str, node_type: str, name: str) -> ProviderConfig:
        provider = self._providers.get(name)
        if provider is None:
            known = ", ".join(sorted(self._providers)) or "none"
            raise permanent(
                f"{node_type} node {node_id!r}: provider {name!r} is not configured on this worker "
                f"(configured: {known}). Add [providers.{name}] with kind and base_url to the "
                "worker's dagwright.toml, or use a configured provider.",
                type=LLM_PROVIDER_NOT_CONFIGURED,
            )
        return provider

    def _api_key(self, node_id: str, node_type: str, provider: ProviderConfig) -> str | None:
        key = provider.api_key(self._environ)
        if key is None and provider.key_required:
            raise permanent(
                f"{node_type} node {node_id!r}: provider {provider.name!r} has no API key; "
                f"set {provider.key_setting()} on the worker.",
                type=LLM_AUTH_ERROR,
            )
        return key

    def _client(self, provider: ProviderConfig) -> ProviderClient:
        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        http = clients.get(provider.name)
        if http is None or http.is_closed:
            http = httpx.AsyncClient(
                base_url=provider.base_url,
                headers={"User-Agent": f"dagwright/{__version__}", **provider.headers},
                timeout=provider.timeout_seconds,
                # No retries inside the activity, not even of connection attempts: Temporal owns
                # retries, so every attempt and its error are recorded in the workflow history.
                transport=httpx.AsyncHTTPTransport(retries=0),
            )
            clients[provider.name] = http
        client_class = MistralClient if provider.kind == "mistral" else OpenAIClient
        return client_class(provider, http)


class _Conversation:
    """The turns of one ``llm`` attempt: usage and cost summed over the repair turns."""

    def __init__(self, request: LlmRequest, provider: ProviderConfig, prices: PriceTable) -> None:
        self.request = request
        self.provider = provider
        self.repairs = 0
        self._prices = prices
        self._answers: list[ChatAnswer] = []

    def chat_request(self, messages: list[dict[str, str]]) -> ChatRequest:
        request = self.request
        return ChatRequest(
            model=request.model,
            messages=messages,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            random_seed=request.random_seed,
            stop=request.stop,
            output_schema=request.output_schema,
            schema_name=_schema_name(request.node_id),
        )

    def add(self, answer: ChatAnswer) -> None:
        self._answers.append(answer)

    def usage(self) -> dict[str, int]:
        prompt = sum(answer.usage.prompt_tokens for answer in self._answers)
        completion = sum(answer.usage.completion_tokens for answer in self._answers)
        total = sum(answer.usage.total_tokens for answer in self._answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}

    def cost_usd(self) -> float | None:
        """Sum the cost of each turn at the price of the model that answered it; None if any
        turn has no price or no usage."""
        total = 0.0
        for answer in self._answers:
            cost = self._prices.cost(
                answer.model,
                self.provider.kind,
                answer.usage.prompt_tokens,
                answer.usage.completion_tokens,
            )
            if cost is None or not answer.usage.reported:
                return None
            total += cost
        return round(total, 12)

    def spent(self) -> dict[str, Any] | None:
        """Usage so far, for the details of a failure; None before the first answer."""
        if not self._answers:
            return None
        return {"usage": self.usage(), "cost_usd": self.cost_usd(), "repairs": self.repairs}

    def result(self, answer: ChatAnswer, value: Any) -> dict[str, Any]:
        return {
            "text": answer.text,
            "json": value,
            "model": answer.model,
            "provider": self.provider.name,
            "finish_reason": answer.finish_reason,
            "usage": self.usage(),
            "cost_usd": self.cost_usd(),
            "price": _price_dict(self._prices, answer.model, self.provider.kind),
            "repairs": self.repairs,
        }


def _price_dict(prices: PriceTable, model: str, kind: str) -> dict[str, float] | None:
    # The workflow's budget check uses the price to estimate the cost of the next call.
    price = prices.price(model, kind)
    return None if price is None else dataclasses.asdict(price)


def _initial_messages(request: LlmRequest) -> list[dict[str, str]]:
    if (request.messages is None) == (request.prompt is None):
        raise permanent(
            f"llm node {request.node_id!r}: set exactly one of 'prompt' and 'messages'.",
            type=LLM_INVALID_REQUEST,
        )
    if request.messages is not None:
        if request.system is not None:
            raise permanent(
                f"llm node {request.node_id!r}: 'system' goes with 'prompt'; with 'messages', "
                "add a system message instead.",
                type=LLM_INVALID_REQUEST,
            )
        return [{"role": message.role, "content": message.content} for message in request.messages]

    messages = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt or ""})
    return messages


def _schema_name(node_id: str) -> str:
    # Node ids match [a-z0-9_]+, which also fits OpenAI's rule for schema names.
    return node_id[:64] or "output"


def _call_timeout(
    provider: ProviderConfig,
    node_timeout: float | None,
    now: float,
    deadline: float | None = None,
) -> float:
    """Return the timeout of the next HTTP call: the provider's, cut to the node's time left."""
    if deadline is None and node_timeout is not None:
        deadline = now + node_timeout
    if deadline is None:
        return provider.timeout_seconds
    remaining = deadline - now
    if remaining <= 0:
        raise ProviderError(
            f"the node's timeout of {node_timeout:g} s ran out before the next call to provider "
            f"{provider.name!r}. Raise the node's timeout or lower repair_attempts.",
            type=LLM_TIMEOUT,
            retryable=True,
        )
    return min(provider.timeout_seconds, remaining)


def _output_invalid(conversation: _Conversation, error: str) -> ProviderError:
    request = conversation.request
    hint = (
        "Raise max_tokens, since the answer was cut off."
        if "cut off" in error
        else "Make the prompt describe the expected JSON, raise repair_attempts, or fall back to "
        "a stronger model."
    )
    return ProviderError(
        f"the output of model {request.model!r} did not match output_schema after "
        f"{conversation.repairs} repair turn(s): {error}. {hint}",
        type=LLM_OUTPUT_INVALID,
        retryable=False,
    )


def _application_error(
    node_type: str, node_id: str, exc: ProviderError, spent: dict[str, Any] | None
) -> ApplicationError:
    """Translate a provider failure into the Temporal error that the workflow receives."""
    message = f"{node_type} node {node_id!r}: {exc.message}"
    if not exc.retryable:
        return permanent(message, type=exc.type, details=spent)

    delay = exc.retry_after
    if delay is None and exc.type in (LLM_RATE_LIMITED, LLM_CAPACITY):
        delay = _backoff_delay()
    if spent is None:
        return retryable(message, type=exc.type, retry_after=delay)
    return ApplicationError(message, spent, type=exc.type, next_retry_delay=delay)


def _backoff_delay() -> timedelta:
    """Return an exponential backoff with jitter for the attempt that follows this one.

    Many runs, or the items of one for_each, often hit the same rate limit at the same moment.
    The jitter spreads their retries, so that they are not all limited again at once.
    """
    info = activity.info()
    policy = info.retry_policy
    initial = policy.initial_interval if policy else DEFAULT_INITIAL_INTERVAL
    coefficient = policy.backoff_coefficient if policy else DEFAULT_BACKOFF_COEFFICIENT
    maximum = (policy.maximum_interval if policy else None) or initial * 100

    base = min(initial.total_seconds() * coefficient ** (info.attempt - 1), maximum.total_seconds())
    return timedelta(seconds=base * (1 + random.uniform(0, BACKOFF_JITTER)))


def _log_call(
    node_type: str,
    node_id: str,
    provider: ProviderConfig,
    model: str,
    status: str,
    started: float,
    usage: Usage | None,
) -> None:
    latency_ms = round((time.monotonic() - started) * 1000)
    attempt = activity.info().attempt
    prompt_tokens = usage.prompt_tokens if usage else None
    completion_tokens = usage.completion_tokens if usage else None
    logger.info(
        "%s call node=%s provider=%s model=%s status=%s latency_ms=%d prompt_tokens=%s "
        "completion_tokens=%s attempt=%d",
        node_type,
        node_id,
        provider.name,
        model,
        status,
        latency_ms,
        prompt_tokens,
        completion_tokens,
        attempt,
        extra={
            "node_id": node_id,
            "node_type": node_type,
            "provider": provider.name,
            "model": model,
            "status": status,
            "latency_ms": latency_ms,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "attempt": attempt,
        },
    )


__all__ = [
    "EMBED_ACTIVITY_NAME",
    "LLM_ACTIVITY_NAME",
    "EmbedRequest",
    "LlmActivities",
    "LlmMessage",
    "LlmRequest",
]
