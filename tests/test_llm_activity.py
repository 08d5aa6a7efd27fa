"""Tests of the dagwright.llm and dagwright.embed activities against the LLM stand-in over HTTP."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from dagwright.activities.llm import structured
from dagwright.activities.llm.activity import EmbedRequest, LlmActivities, LlmRequest
from dagwright.activities.llm.client import error_detail, retry_after_delay
from dagwright.activities.llm.config import (
    MISTRAL_BASE_URL,
    ModelPrice,
    load_prices,
    load_providers,
)
from dagwright.config import ConfigError
from dagwright.testing.llm_server import LlmStandIn

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "urgent": {"type": "boolean"}},
    "required": ["label", "urgent"],
    "additionalProperties": False,
}
SMALL = "mistral-small-latest"
# Mistral list prices of mistral-small-latest and mistral-embed in prices.toml, USD per 1M tokens.
SMALL_PRICE = (0.15, 0.60)
EMBED_PRICE = 0.10

MakeActivities = Callable[..., LlmActivities]


@pytest_asyncio.fixture
async def make_activities(llm_stand_in: LlmStandIn) -> AsyncIterator[MakeActivities]:
    """Build LlmActivities pointed at the stand-in; their HTTP clients are closed afterwards."""
    created: list[LlmActivities] = []

    def make(raw: dict[str, Any] | None = None, **environ: str) -> LlmActivities:
        raw = raw or {}
        env = {
            "DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": llm_stand_in.base_url,
            "MISTRAL_API_KEY": llm_stand_in.api_key,
            "LOCAL_KEY": llm_stand_in.api_key,
            **environ,
        }
        raw.setdefault("providers", {}).setdefault(
            "local",
            {
                "kind": "openai",
                "base_url": llm_stand_in.openai_base_url,
                "api_key_env": "LOCAL_KEY",
            },
        )
        activities = LlmActivities.from_config(raw, env)
        created.append(activities)
        return activities

    yield make
    for activities in created:
        await activities.aclose()


def llm_request(**fields: Any) -> LlmRequest:
    values: dict[str, Any] = {
        "node_id": "classify",
        "provider": "mistral",
        "model": SMALL,
        "prompt": "Label this ticket: the invoice total is wrong.",
    }
    values.update(fields)
    return LlmRequest(**values)


async def run_llm(activities: LlmActivities, request: LlmRequest, **info: Any) -> dict[str, Any]:
    env = ActivityEnvironment()
    if info:
        env.info = dataclasses.replace(env.info, **info)
    return await env.run(activities.llm, request)


async def llm_error(
    activities: LlmActivities, request: LlmRequest, **info: Any
) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run_llm(activities, request, **info)
    return caught.value


def small_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return round((prompt_tokens * SMALL_PRICE[0] + completion_tokens * SMALL_PRICE[1]) / 1e6, 12)


# --- structured output ----------------------------------------------------------------------


async def test_schema_output_valid_first_try(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": "billing", "urgent": False}})

    result = await run_llm(make_activities(), llm_request(output_schema=SCHEMA))

    usage = llm_stand_in.requests[0].usage
    assert result == {
        "text": '{"label": "billing", "urgent": false}',
        "json": {"label": "billing", "urgent": False},
        "model": SMALL,
        "provider": "mistral",
        "finish_reason": "stop",
        "usage": usage,
        "cost_usd": small_cost(usage["prompt_tokens"], usage["completion_tokens"]),
        "price": {"input_per_million": 0.15, "output_per_million": 0.60},
        "repairs": 0,
    }
    assert len(llm_stand_in.requests) == 1


async def test_schema_output_fenced_json_accepted(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": "bug", "urgent": True}, "fenced": True})

    result = await run_llm(make_activities(), llm_request(output_schema=SCHEMA))

    assert result["json"] == {"label": "bug", "urgent": True}
    assert result["text"].startswith("```json\n")
    assert result["repairs"] == 0


async def test_invalid_json_repaired_on_second_turn(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply="Sure! The label is billing.", times=1)
    llm_stand_in.add_rule(reply={"json": {"label": "billing", "urgent": True}})

    result = await run_llm(make_activities(), llm_request(output_schema=SCHEMA))

    assert result["json"] == {"label": "billing", "urgent": True}
    assert result["repairs"] == 1
    first, second = llm_stand_in.requests
    assert [first.status, second.status] == [200, 200]
    assert result["usage"] == {
        key: first.usage[key] + second.usage[key]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    assert second.body["messages"] == [
        {"role": "user", "content": "Label this ticket: the invoice total is wrong."},
        {"role": "assistant", "content": "Sure! The label is billing."},
        {
            "role": "user",
            "content": "Your previous answer cannot be used: the answer is not valid JSON "
            "(Expecting value: line 1 column 1 (char 0)). Reply with only the corrected JSON "
            "value, without explanations or code fences.",
        },
    ]


async def test_schema_mismatch_repair_quotes_error(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": 7, "urgent": True}}, times=1)
    llm_stand_in.add_rule(reply={"json": {"label": "other", "urgent": True}})

    result = await run_llm(make_activities(), llm_request(output_schema=SCHEMA))

    assert result["json"] == {"label": "other", "urgent": True}
    repair = llm_stand_in.requests[1].body["messages"][-1]["content"]
    assert "the JSON does not match the schema: at $.label: 7 is not of type 'string'" in repair


async def test_three_invalid_answers_exhaust_repairs(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": "billing"}})

    error = await llm_error(make_activities(), llm_request(output_schema=SCHEMA, repair_attempts=2))

    assert error.type == "LlmOutputInvalid"
    assert error.non_retryable
    assert "after 2 repair turn(s)" in error.message
    assert "at $: 'urgent' is a required property" in error.message
    assert len(llm_stand_in.requests) == 3
    spent = error.details[0]
    assert spent["repairs"] == 2
    assert spent["usage"] == llm_stand_in.usage_total()


async def test_finish_reason_length_with_schema_fails(llm_stand_in, make_activities):
    llm_stand_in.add_rule(
        reply={"json": {"label": "billing", "urgent": False}, "finish_reason": "length"}
    )

    error = await llm_error(make_activities(), llm_request(output_schema=SCHEMA, repair_attempts=1))

    assert error.type == "LlmOutputInvalid"
    assert error.non_retryable
    assert "cut off by the token limit (finish_reason 'length')" in error.message
    assert "Raise max_tokens" in error.message
    assert len(llm_stand_in.requests) == 2


async def test_finish_reason_length_without_schema_succeeds(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply="A long answer that does not fit in two tokens.")

    result = await run_llm(make_activities(), llm_request(max_tokens=2))

    assert result["finish_reason"] == "length"
    assert result["text"] == "A long a"  # the stand-in keeps 4 characters per token
    assert result["json"] is None


async def test_content_chunk_list_joined(llm_stand_in, make_activities):
    llm_stand_in.add_rule(
        reply={"text": "Billing.", "thinking": "The total is wrong.", "chunks": True}
    )

    result = await run_llm(make_activities(), llm_request())

    assert result["text"] == "Billing."
    assert result["json"] is None


async def test_text_output_without_schema(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply="billing")

    result = await run_llm(make_activities(), llm_request())

    assert (result["text"], result["json"], result["repairs"]) == ("billing", None, 0)


# --- request bodies -------------------------------------------------------------------------


async def test_mistral_body_has_only_mistral_fields(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": "billing", "urgent": False}})
    request = llm_request(
        system="You label tickets.",
        temperature=0.2,
        top_p=0.9,
        max_tokens=100,
        random_seed=7,
        stop=["\n\n"],
        output_schema=SCHEMA,
    )

    await run_llm(make_activities(), request)

    (received,) = llm_stand_in.requests
    assert received.status == 200
    assert received.path == "/v1/chat/completions"
    assert received.body == {
        "model": SMALL,
        "messages": [
            {"role": "system", "content": "You label tickets."},
            {"role": "user", "content": "Label this ticket: the invoice total is wrong."},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 100,
        "random_seed": 7,
        "stop": ["\n\n"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "classify", "schema": SCHEMA, "strict": True},
        },
    }


async def test_mistral_body_minimal_request(llm_stand_in, make_activities):
    messages = [{"role": "user", "content": {"ticket": 42}}]

    await run_llm(make_activities(), llm_request(prompt=None, messages=messages))

    (received,) = llm_stand_in.requests
    assert received.status == 200
    assert received.body == {
        "model": SMALL,
        "messages": [{"role": "user", "content": '{"ticket": 42}'}],
    }


async def test_openai_body_sends_seed(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply={"json": {"label": "billing", "urgent": False}})
    request = llm_request(provider="local", random_seed=7, temperature=0.0, output_schema=SCHEMA)

    result = await run_llm(make_activities(), request)

    (received,) = llm_stand_in.requests
    assert received.path == "/openai/v1/chat/completions"
    assert received.unknown_fields == []
    assert received.body == {
        "model": SMALL,
        "messages": [{"role": "user", "content": "Label this ticket: the invoice total is wrong."}],
        "temperature": 0.0,
        "seed": 7,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "classify", "schema": SCHEMA, "strict": False},
        },
    }
    assert result["provider"] == "local"


async def test_json_object_mode_repair_includes_schema(llm_stand_in, make_activities):
    raw = {
        "providers": {
            "local": {
                "kind": "openai",
                "base_url": llm_stand_in.openai_base_url,
                "api_key_env": "LOCAL_KEY",
                "structured_output": "json_object",
            }
        }
    }
    llm_stand_in.add_rule(reply="no", times=1)
    llm_stand_in.add_rule(reply={"json": {"label": "billing", "urgent": False}})

    await run_llm(make_activities(raw), llm_request(provider="local", output_schema=SCHEMA))

    first, second = llm_stand_in.requests
    assert first.body["response_format"] == {"type": "json_object"}
    assert second.body["messages"][-1]["content"].endswith(
        "It must match this JSON Schema:\n" + json.dumps(SCHEMA)
    )


# --- failures -------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail={"kind": "rate_limit", "retry_after": 1})

    error = await llm_error(make_activities(), llm_request())

    assert error.type == "LlmRateLimited"
    assert not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=1)
    assert "rate-limited" in error.message


async def test_rate_limit_without_retry_after_backs_off(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail="rate_limit")
    policy = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0)

    error = await llm_error(make_activities(), llm_request(), attempt=3, retry_policy=policy)

    assert error.type == "LlmRateLimited"
    assert not error.non_retryable
    # Attempt 3: 2 s * 2^2 = 8 s, stretched by up to 50 % of jitter.
    assert timedelta(seconds=8) <= error.next_retry_delay <= timedelta(seconds=12)


async def test_rate_limit_backoff_capped_by_max_interval(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail="rate_limit")
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5)
    )

    error = await llm_error(make_activities(), llm_request(), attempt=10, retry_policy=policy)

    assert timedelta(seconds=5) <= error.next_retry_delay <= timedelta(seconds=7.5)


@pytest.mark.parametrize("status", [503, 429])
async def test_capacity_error_retryable(llm_stand_in, make_activities, status):
    llm_stand_in.add_rule(fail={"kind": "capacity", "status": status})

    error = await llm_error(make_activities(), llm_request())

    assert error.type == "LlmCapacity"
    assert not error.non_retryable
    assert error.next_retry_delay is not None
    assert "Service tier capacity exceeded for this model." in error.message


async def test_server_error_retryable(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail="server_error")

    error = await llm_error(make_activities(), llm_request())

    assert error.type == "LlmServerError"
    assert not error.non_retryable
    assert error.next_retry_delay is None
    assert "(500: Service unavailable. [internal_server_error, 3000])" in error.message


async def test_wrong_key_is_permanent_auth_error(llm_stand_in, make_activities):
    activities = make_activities(MISTRAL_API_KEY="sk-wrong-0123456789")

    error = await llm_error(activities, llm_request())

    assert error.type == "LlmAuthError"
    assert error.non_retryable
    assert error.message == (
        "llm node 'classify': provider 'mistral' rejected the API key (401: Unauthorized); "
        "set MISTRAL_API_KEY on the worker to a valid key."
    )
    assert "sk-wrong" not in error.message
    assert llm_stand_in.requests[0].auth_present


async def test_missing_key_fails_before_sending(llm_stand_in, make_activities):
    activities = make_activities(MISTRAL_API_KEY="")

    error = await llm_error(activities, llm_request())

    assert error.type == "LlmAuthError"
    assert error.non_retryable
    assert "provider 'mistral' has no API key; set MISTRAL_API_KEY on the worker" in error.message
    assert llm_stand_in.requests == []


async def test_unknown_model_not_found(llm_stand_in, make_activities):
    error = await llm_error(make_activities(), llm_request(model="mistral-huge-latest"))

    assert error.type == "LlmModelNotFound"
    assert error.non_retryable
    assert "does not know model 'mistral-huge-latest'" in error.message


async def test_context_length_exceeded(llm_stand_in, make_activities):
    llm_stand_in.add_model("tiny-context", context_length=8)

    error = await llm_error(
        make_activities(), llm_request(model="tiny-context", prompt="word " * 40)
    )

    assert error.type == "LlmContextLength"
    assert error.non_retryable
    assert "too large for model with 8 maximum context length" in error.message


async def test_validation_422_invalid_request(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail={"kind": "validation", "message": "Value error, bad stop"})

    error = await llm_error(make_activities(), llm_request())

    assert error.type == "LlmInvalidRequest"
    assert error.non_retryable
    assert "(422: Value error, bad stop (value_error) [invalid_request_error])" in error.message


async def test_timeout_is_retryable(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail={"kind": "timeout", "seconds": 30})

    error = await llm_error(make_activities(), llm_request(timeout_seconds=0.3))

    assert error.type == "LlmTimeout"
    assert not error.non_retryable


async def test_connection_refused_is_retryable(make_activities):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    activities = make_activities(DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL=f"http://127.0.0.1:{port}/v1")

    error = await llm_error(activities, llm_request())

    assert error.type == "LlmConnectionError"
    assert not error.non_retryable
    assert f"http://127.0.0.1:{port}/v1" in error.message


async def test_malformed_body_is_retryable(llm_stand_in, make_activities):
    llm_stand_in.add_rule(fail="malformed_body")

    error = await llm_error(make_activities(), llm_request())

    assert error.type == "LlmResponseInvalid"
    assert not error.non_retryable


async def test_unknown_provider_is_permanent(make_activities):
    error = await llm_error(make_activities(), llm_request(provider="anthropic"))

    assert error.type == "LlmProviderNotConfigured"
    assert error.non_retryable
    assert "(configured: local, mistral)" in error.message


async def test_repair_turn_failure_carries_spent_usage(llm_stand_in, make_activities):
    llm_stand_in.add_rule(reply="not json", times=1)
    llm_stand_in.add_rule(fail={"kind": "rate_limit", "retry_after": 2})

    error = await llm_error(make_activities(), llm_request(output_schema=SCHEMA))

    assert error.type == "LlmRateLimited"
    assert error.next_retry_delay == timedelta(seconds=2)
    first = llm_stand_in.requests[0]
    assert error.details[0] == {
        "usage": first.usage,
        "cost_usd": small_cost(first.usage["prompt_tokens"], first.usage["completion_tokens"]),
        "repairs": 1,
    }


# --- cost -----------------------------------------------------------------------------------


async def test_unknown_model_price_is_null(llm_stand_in, make_activities):
    llm_stand_in.add_model("my-finetune")

    result = await run_llm(make_activities(), llm_request(model="my-finetune"))

    assert result["cost_usd"] is None
    assert result["price"] is None
    assert result["usage"]["prompt_tokens"] > 0


async def test_price_override_from_worker_config(llm_stand_in, make_activities):
    raw = {"prices": {"my-finetune": {"input_per_million": 1.0, "output_per_million": 2.0}}}
    llm_stand_in.add_model("my-finetune")

    result = await run_llm(make_activities(raw), llm_request(model="my-finetune"))

    usage = llm_stand_in.requests[0].usage
    expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert result["cost_usd"] == pytest.approx(expected, abs=1e-12)


async def test_shipped_prices_not_applied_to_openai_provider(llm_stand_in, make_activities):
    result = await run_llm(make_activities(), llm_request(provider="local"))

    assert result["model"] == SMALL
    assert result["cost_usd"] is None


# --- embeddings -----------------------------------------------------------------------------


async def test_embeddings_shape_and_cost(llm_stand_in, make_activities):
    request = EmbedRequest(
        node_id="embed_docs",
        provider="mistral",
        model="mistral-embed",
        input=["first text", "a second, longer text"],
    )

    result = await ActivityEnvironment().run(make_activities().embed, request)

    (received,) = llm_stand_in.requests
    assert received.body == {
        "model": "mistral-embed",
        "input": ["first text", "a second, longer text"],
    }
    prompt_tokens = received.usage["prompt_tokens"]
    assert [len(vector) for vector in result["vectors"]] == [1024, 1024]
    assert result["vectors"][0] != result["vectors"][1]
    assert {key: value for key, value in result.items() if key != "vectors"} == {
        "model": "mistral-embed",
        "provider": "mistral",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "cost_usd": round(prompt_tokens * EMBED_PRICE / 1e6, 12),
        "price": {"input_per_million": EMBED_PRICE, "output_per_million": 0.0},
    }


async def test_embeddings_single_string(llm_stand_in, make_activities):
    request = EmbedRequest(
        node_id="embed_one", provider="local", model="mistral-embed", input="one"
    )

    result = await ActivityEnvironment().run(make_activities().embed, request)

    assert [len(vector) for vector in result["vectors"]] == [1024]
    assert llm_stand_in.requests[0].body == {
        "model": "mistral-embed",
        "input": ["one"],
        "encoding_format": "float",
    }


async def test_embeddings_empty_list_sends_nothing(llm_stand_in, make_activities):
    request = EmbedRequest(
        node_id="embed_none", provider="mistral", model="mistral-embed", input=[]
    )

    result = await ActivityEnvironment().run(make_activities().embed, request)

    assert result["vectors"] == []
    assert llm_stand_in.requests == []


async def test_embeddings_unknown_model(llm_stand_in, make_activities):
    request = EmbedRequest(node_id="embed_docs", provider="mistral", model="nope-embed", input="x")

    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(make_activities().embed, request)

    assert caught.value.type == "LlmModelNotFound"
    assert caught.value.message.startswith("embed node 'embed_docs': ")


# --- on a real worker ----------------------------------------------------------------------


@workflow.defn(name="LlmRetryProbe", sandboxed=False)
class LlmRetryProbe:
    """Runs one dagwright.llm activity from a plain dict input, as the DAG workflow does."""

    @workflow.run
    async def run(self, request: dict) -> dict:
        return await workflow.execute_activity(
            "dagwright.llm",
            request,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=10), maximum_attempts=3
            ),
            result_type=dict,
        )


def probe_input(**fields: Any) -> dict[str, Any]:
    request = llm_request(**fields).model_dump()
    request["messages"] = None
    return request


async def test_worker_honours_retry_after(
    llm_stand_in, make_activities, client: Client, task_queue
):
    llm_stand_in.add_rule(fail={"kind": "rate_limit", "retry_after": 1}, times=1)
    llm_stand_in.add_rule(reply="billing")
    activities = make_activities()

    started = time.monotonic()
    async with Worker(
        client, task_queue=task_queue, workflows=[LlmRetryProbe], activities=[activities.llm]
    ):
        result = await client.execute_workflow(
            LlmRetryProbe.run, probe_input(), id=f"llm-probe-{uuid.uuid4()}", task_queue=task_queue
        )

    assert result["text"] == "billing"
    assert [request.status for request in llm_stand_in.requests] == [429, 200]
    # The retry policy alone would retry after 10 ms; Retry-After requests 1 s.
    assert time.monotonic() - started >= 0.9


async def test_worker_output_invalid_not_retried(
    llm_stand_in, make_activities, client: Client, task_queue
):
    llm_stand_in.add_rule(reply="never JSON")
    activities = make_activities()

    async with Worker(
        client, task_queue=task_queue, workflows=[LlmRetryProbe], activities=[activities.llm]
    ):
        with pytest.raises(WorkflowFailureError) as caught:
            await client.execute_workflow(
                LlmRetryProbe.run,
                probe_input(output_schema=SCHEMA, repair_attempts=1),
                id=f"llm-probe-{uuid.uuid4()}",
                task_queue=task_queue,
            )

    activity_error = caught.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, ApplicationError)
    assert activity_error.cause.type == "LlmOutputInvalid"
    assert len(llm_stand_in.requests) == 2


# --- logging --------------------------------------------------------------------------------


async def test_call_logged_without_key_or_prompt(llm_stand_in, make_activities, caplog):
    caplog.set_level(logging.INFO, logger="dagwright.activities.llm.activity")

    await run_llm(make_activities(), llm_request(prompt="secret plans"))

    (record,) = [r for r in caplog.records if r.name == "dagwright.activities.llm.activity"]
    assert (record.node_id, record.provider, record.model, record.status) == (
        "classify",
        "mistral",
        SMALL,
        "ok",
    )
    assert record.prompt_tokens == llm_stand_in.requests[0].usage["prompt_tokens"]
    text = record.getMessage() + json.dumps(record.__dict__, default=str)
    assert llm_stand_in.api_key not in text
    assert "secret plans" not in text


# --- configuration --------------------------------------------------------------------------


def test_builtin_mistral_provider_without_config():
    providers = load_providers({}, {})

    mistral = providers["mistral"]
    assert (mistral.kind, mistral.base_url, mistral.api_key_env) == (
        "mistral",
        MISTRAL_BASE_URL,
        "MISTRAL_API_KEY",
    )
    assert mistral.key_required


def test_provider_settings_parsed():
    raw = {
        "providers": {
            "vllm-local": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:8000/v1/",
                "timeout": "5m",
                "headers": {"X-Team": "research"},
                "structured_output": "none",
            }
        }
    }

    provider = load_providers(raw, {})["vllm-local"]

    assert provider.base_url == "http://127.0.0.1:8000/v1"
    assert provider.timeout_seconds == 300.0
    assert provider.headers == {"X-Team": "research"}
    assert provider.structured_output == "none"
    assert (provider.api_key_env, provider.key_required, provider.strict_schema) == (
        "OPENAI_API_KEY",
        False,
        False,
    )


def test_base_url_env_override():
    environ = {"DAGWRIGHT_PROVIDER_VLLM_LOCAL_BASE_URL": "http://127.0.0.1:9000/v1"}
    raw = {"providers": {"vllm-local": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}}}

    assert load_providers(raw, environ)["vllm-local"].base_url == "http://127.0.0.1:9000/v1"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"kind": "openai", "base_url": "http://x/v1", "apikey": "k"},
            r"unknown setting\(s\) apikey",
        ),
        ({"kind": "anthropic"}, "kind must be"),
        ({"kind": "openai"}, "base_url is required"),
        ({"kind": "openai", "base_url": "127.0.0.1:8000"}, "must be an http:// or https:// URL"),
        ({"kind": "openai", "base_url": "http://x", "timeout": 30}, "has no unit"),
        (
            {"kind": "openai", "base_url": "http://x", "headers": {"Authorization": "Bearer k"}},
            "not an Authorization header",
        ),
        (
            {"kind": "openai", "base_url": "http://x", "api_key_env": "A", "api_key_secret": "B"},
            "not both",
        ),
    ],
)
def test_invalid_provider_rejected(table, message):
    with pytest.raises(ConfigError, match=message):
        load_providers({"providers": {"other": table}}, {})


def test_api_key_from_secret():
    raw = {"providers": {"mistral": {"api_key_secret": "MISTRAL_KEY"}}}
    provider = load_providers(raw, {})["mistral"]

    assert provider.api_key({"DAGWRIGHT_SECRET_MISTRAL_KEY": "k-1"}) == "k-1"
    assert provider.key_setting() == "the secret 'MISTRAL_KEY' (api_key_secret)"


def test_shipped_prices_loaded():
    prices = load_prices({})

    assert prices.price("mistral-small-latest", "mistral") == ModelPrice(0.15, 0.60)
    assert prices.price("mistral-large-2512", "mistral") == ModelPrice(0.50, 1.50)
    assert prices.price("mistral-small-latest", "openai") is None
    assert prices.cost("no-such-model", "mistral", 10, 10) is None


def test_invalid_price_override_rejected():
    with pytest.raises(
        ConfigError, match="must set exactly input_per_million and output_per_million"
    ):
        load_prices({"prices": {"m": {"input_per_million": 1.0}}})


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {
                "object": "error",
                "message": "Rate limit exceeded",
                "type": "rate_limited",
                "code": "1300",
            },
            "Rate limit exceeded [rate_limited, 1300]",
        ),
        (
            {
                "object": "error",
                "message": {
                    "detail": [
                        {
                            "type": "extra_forbidden",
                            "loc": ["body", "max_completion_tokens"],
                            "msg": "Extra inputs are not permitted",
                            "input": 32000,
                        }
                    ]
                },
                "type": "invalid_request_error",
            },
            "max_completion_tokens: Extra inputs are not permitted (extra_forbidden) [invalid_request_error]",
        ),
        (
            {
                "detail": [
                    {
                        "loc": ["body", "seed"],
                        "msg": "Extra inputs are not permitted",
                        "type": "extra_forbidden",
                    }
                ]
            },
            "seed: Extra inputs are not permitted (extra_forbidden)",
        ),
        (
            {
                "message": '{"detail": [{"loc": ["body", "n"], "msg": "bad"}]}',
                "type": "internal_error_proxy",
            },
            "n: bad [internal_error_proxy]",
        ),
        ({"message": "Unauthorized", "request_id": "c61f"}, "Unauthorized"),
        ({"detail": "Unauthorized"}, "Unauthorized"),
        (
            {
                "error": {
                    "message": "model 'x' not found",
                    "type": "not_found_error",
                    "param": None,
                    "code": None,
                }
            },
            "model 'x' not found [not_found_error]",
        ),
        ({"error": "upstream unavailable"}, "upstream unavailable"),
    ],
)
def test_error_detail_shapes(body, detail):
    assert error_detail(json.dumps(body).encode()) == detail


def test_error_detail_plain_text_and_empty():
    assert error_detail(b"<html>\n Bad   Gateway </html>") == "<html> Bad Gateway </html>"
    assert error_detail(b"") == "empty response body"


def test_retry_after_http_date_in_past_ignored():
    assert retry_after_delay("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_delay("2.5") == timedelta(seconds=2.5)
    assert retry_after_delay("7200") == timedelta(hours=1)
    assert retry_after_delay("soon") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ("```\n[1, 2]\n```\n", [1, 2]),
        ('Here it is:\n```json\n{"a": 1}\n```\nDone.', {"a": 1}),
    ],
)
def test_parse_json_answer_strips_fences(text, value):
    assert structured.parse_json_answer(text) == value
