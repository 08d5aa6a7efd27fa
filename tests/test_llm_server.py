"""Tests of the LLM stand-in over real HTTP: validation, scripting, failures and recording."""

from __future__ import annotations

import base64
import json
import math
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from dagwright.testing.llm_script import Failure, Reply, Rule, Script, load_script
from dagwright.testing.llm_server import LlmStandIn

MODEL = "mistral-small-latest"


def chat_body(text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


@pytest_asyncio.fixture
async def http(llm_stand_in: LlmStandIn) -> AsyncIterator[httpx.AsyncClient]:
    """An async client with the stand-in's key, used from inside the test's event loop."""
    async with httpx.AsyncClient(
        base_url=llm_stand_in.url, headers=llm_stand_in.headers, timeout=10
    ) as client:
        yield client


async def post_chat(
    http: httpx.AsyncClient, body: dict[str, Any], api: str = "/v1"
) -> httpx.Response:
    return await http.post(f"{api}/chat/completions", json=body)


def detail_of(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["object"] == "error"
    return body["message"]["detail"]


# --- Mistral chat: shape and validation -----------------------------------------------------


async def test_chat_response_shape(http: httpx.AsyncClient) -> None:
    response = await post_chat(
        http, chat_body("Say hi", temperature=0.2, max_tokens=100, random_seed=7)
    )

    assert response.status_code == 200
    body = response.json()
    assert len(body["id"]) == 32
    assert body == {
        "id": body["id"],
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "This is a reply from the dagwright LLM stand-in.",
                    "tool_calls": None,
                    "prefix": False,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 12, "total_tokens": 14},
    }


async def test_chat_accepts_full_mistral_request(http: httpx.AsyncClient) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "D681PevKs",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "name": "weather", "content": "sunny", "tool_call_id": "D681PevKs"},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "stream": False,
        "stop": ["\n\n"],
        "random_seed": 1,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "tools": [
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "any",
        "parallel_tool_calls": False,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "n": 1,
        "safe_prompt": True,
    }

    response = await post_chat(http, body)

    assert response.status_code == 200, response.text


async def test_chat_unknown_field_gives_422(http: httpx.AsyncClient) -> None:
    response = await post_chat(http, chat_body(max_completion_tokens=500))

    assert response.status_code == 422
    assert response.json() == {
        "object": "error",
        "message": {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "max_completion_tokens"],
                    "msg": "Extra inputs are not permitted",
                    "input": 500,
                }
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_chat_seed_rejected_on_mistral(http: httpx.AsyncClient) -> None:
    response = await post_chat(http, chat_body(seed=42))

    assert response.status_code == 422
    [error] = detail_of(response)
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ["body", "seed"]


@pytest.mark.parametrize(
    ("body", "error_type", "loc"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "missing", ["body", "model"]),
        ({"model": MODEL}, "missing", ["body", "messages"]),
        (chat_body(temperature="0.2"), "float_type", ["body", "temperature"]),
        (chat_body(temperature=2.0), "less_than_equal", ["body", "temperature"]),
        (chat_body(max_tokens=1.5), "int_type", ["body", "max_tokens"]),
        (chat_body(safe_prompt="yes"), "bool_type", ["body", "safe_prompt"]),
        (
            chat_body(response_format={"type": "xml"}),
            "literal_error",
            ["body", "response_format", "type"],
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x", "name": "bob"}]},
            "extra_forbidden",
            ["body", "messages", 0, "user", "name"],
        ),
        (
            {"model": MODEL, "messages": [{"role": "developer", "content": "x"}]},
            "union_tag_invalid",
            ["body", "messages", 0],
        ),
    ],
)
async def test_chat_invalid_body_gives_422(
    http: httpx.AsyncClient, body: dict[str, Any], error_type: str, loc: list[Any]
) -> None:
    response = await post_chat(http, body)

    assert response.status_code == 422
    errors = detail_of(response)
    assert errors[0]["type"] == error_type
    assert errors[0]["loc"] == loc


async def test_chat_json_schema_format_needs_schema(http: httpx.AsyncClient) -> None:
    response = await post_chat(http, chat_body(response_format={"type": "json_schema"}))

    assert response.status_code == 422
    [error] = detail_of(response)
    assert error["loc"] == ["body", "response_format"]
    assert "json_schema" in error["msg"]


async def test_chat_body_not_json_gives_422(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    [error] = detail_of(response)
    assert error["type"] == "json_invalid"


async def test_chat_stream_true_gives_400(http: httpx.AsyncClient) -> None:
    response = await post_chat(http, chat_body(stream=True))

    assert response.status_code == 400
    assert "does not stream" in response.json()["message"]


async def test_chat_unknown_model_gives_400(http: httpx.AsyncClient) -> None:
    response = await post_chat(http, {**chat_body(), "model": "open-mistral-nemo"})

    assert response.status_code == 400
    assert response.json() == {
        "object": "error",
        "message": "Invalid model: open-mistral-nemo",
        "type": "invalid_model",
        "param": None,
        "code": "1500",
        "raw_status_code": 400,
    }


async def test_chat_added_model_is_accepted(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_model("my-fine-tune")

    response = await post_chat(http, {**chat_body(), "model": "my-fine-tune"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("messages", "code", "message"),
    [
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "abcDEF123", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "content": "r", "tool_call_id": "abcDEF123"},
                {"role": "user", "content": "next"},
            ],
            "3230",
            "Unexpected role 'user' after role 'tool'",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
            "3230",
            "Unexpected role 'tool' after role 'user'",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "3230",
            "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_123456", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "content": "r", "tool_call_id": "call_123456"},
            ],
            "3280",
            "Tool call id was call_123456 but must be a-z, A-Z, 0-9, with a length of 9.",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "abcDEF123", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "abcDEF124", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "content": "r", "tool_call_id": "abcDEF123"},
            ],
            "3230",
            "Not the same number of function calls and responses",
        ),
    ],
)
async def test_chat_conversation_rules_give_400(
    http: httpx.AsyncClient, messages: list[dict[str, Any]], code: str, message: str
) -> None:
    response = await post_chat(http, {"model": MODEL, "messages": messages})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code
    assert body["message"] == message


async def test_chat_assistant_prefix_last_is_accepted(http: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Sure:", "prefix": True},
    ]

    response = await post_chat(http, {"model": MODEL, "messages": messages})

    assert response.status_code == 200


async def test_chat_prompt_over_context_gives_400(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_model("tiny-model", context_length=10)

    response = await post_chat(
        http, {"model": "tiny-model", "messages": [{"role": "user", "content": "x" * 44}]}
    )

    assert response.status_code == 400
    body = response.json()
    assert body["message"] == (
        "Prompt contains 11 tokens and 0 draft tokens, too large for model with 10 maximum context length"
    )
    assert body["code"] == "3051"


# --- authentication ------------------------------------------------------------------------


async def test_missing_key_gives_401(llm_stand_in: LlmStandIn) -> None:
    async with httpx.AsyncClient(base_url=llm_stand_in.url) as client:
        response = await post_chat(client, chat_body())

    assert response.status_code == 401
    body = response.json()
    assert body == {"message": "Unauthorized", "request_id": body["request_id"]}
    [recorded] = llm_stand_in.requests
    assert recorded.auth_present is False
    assert recorded.auth_valid is False


async def test_wrong_key_gives_401(llm_stand_in: LlmStandIn) -> None:
    async with httpx.AsyncClient(
        base_url=llm_stand_in.url, headers={"Authorization": "Bearer nope"}
    ) as client:
        response = await post_chat(client, chat_body())

    assert response.status_code == 401
    [recorded] = llm_stand_in.requests
    assert recorded.auth_present is True
    assert recorded.auth_valid is False
    assert recorded.headers["authorization"] == "<redacted>"


# --- scripted replies -----------------------------------------------------------------------


async def test_scripted_json_reply(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(contains="classify", reply={"json": {"label": "spam", "score": 0.9}})

    response = await post_chat(http, chat_body("Please classify this"))

    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"label": "spam", "score": 0.9}


async def test_scripted_fenced_json_reply(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply=Reply(json=[1, 2], fenced=True))

    response = await post_chat(http, chat_body())

    assert response.json()["choices"][0]["message"]["content"] == "```json\n[1, 2]\n```"


async def test_scripted_chunk_list_content(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply=Reply(text="42", thinking="Let me add."), times=1)
    llm_stand_in.add_rule(reply=Reply(text="plain", chunks=True))

    first = await post_chat(http, chat_body())
    second = await post_chat(http, chat_body())

    assert first.json()["choices"][0]["message"]["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Let me add."}]},
        {"type": "text", "text": "42"},
    ]
    assert first.json()["usage"]["completion_tokens"] == math.ceil(len("Let me add.42") / 4)
    assert second.json()["choices"][0]["message"]["content"] == [{"type": "text", "text": "plain"}]


async def test_scripted_finish_reason_length(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply=Reply(text="cut", finish_reason="length"))

    response = await post_chat(http, chat_body())

    assert response.json()["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_truncates_reply(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply="abcdefghijklmnopqrstuvwxyz")

    response = await post_chat(http, chat_body(max_tokens=2))

    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "abcdefgh"
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 2


async def test_scripted_tool_call_reply(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(reply={"tool_calls": [{"name": "lookup", "arguments": {"id": 7}}]})

    response = await post_chat(http, chat_body())

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == ""
    [call] = choice["message"]["tool_calls"]
    assert len(call["id"]) == 9
    assert call["id"].isalnum()
    assert call["function"] == {"name": "lookup", "arguments": '{"id": 7}'}


async def test_scripted_invalid_json_content(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply='{"label": "spam",')

    response = await post_chat(http, chat_body())

    content = response.json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


async def test_rules_match_model_regex_and_any_message(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(model="mistral-large-latest", reply="large")
    llm_stand_in.add_rule(regex=r"invoice #\d+", reply="invoice")
    llm_stand_in.add_rule(contains="SYSTEM-MARK", search="any", reply="system seen")

    large = await post_chat(http, {**chat_body(), "model": "mistral-large-latest"})
    invoice = await post_chat(http, chat_body("about invoice #12"))
    system = await post_chat(
        http,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "SYSTEM-MARK"},
                {"role": "user", "content": "hi"},
            ],
        },
    )
    fallback = await post_chat(http, chat_body("nothing special"))

    def content(response: httpx.Response) -> str:
        return response.json()["choices"][0]["message"]["content"]

    assert content(large) == "large"
    assert content(invoice) == "invoice"
    assert content(system) == "system seen"
    assert content(fallback) == "This is a reply from the dagwright LLM stand-in."
    assert [r.rule for r in llm_stand_in.requests] == ["rule[0]", "rule[1]", "rule[2]", "default"]


async def test_times_limited_rule_falls_through(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(name="flaky", fail="server_error", times=2)
    llm_stand_in.add_rule(name="ok", reply="recovered")

    statuses = [(await post_chat(http, chat_body())).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert llm_stand_in.rule_uses() == {"flaky": 2, "ok": 1}


# --- scripted failures ----------------------------------------------------------------------


async def test_rate_limit_with_retry_after(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(fail=Failure(kind="rate_limit", retry_after=3))

    response = await post_chat(http, chat_body())

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json() == {
        "object": "error",
        "message": "Rate limit exceeded",
        "type": "rate_limited",
        "param": None,
        "code": "1300",
        "raw_status_code": 429,
    }


async def test_rate_limit_without_retry_after(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(fail="rate_limit")

    response = await post_chat(http, chat_body())

    assert response.status_code == 429
    assert "Retry-After" not in response.headers


async def test_capacity_error_is_503(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(fail="capacity")

    response = await post_chat(http, chat_body())

    assert response.status_code == 503
    assert response.json() == {
        "object": "error",
        "message": "Service tier capacity exceeded for this model.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    ("failure", "status", "field", "expected"),
    [
        (Failure(kind="server_error"), 500, "code", "3000"),
        (Failure(kind="server_error", status=502), 502, "type", "internal_server_error"),
        (Failure(kind="invalid_model"), 400, "message", f"Invalid model: {MODEL}"),
        (Failure(kind="context_length"), 400, "code", "3051"),
        (Failure(kind="bad_request", message="nope"), 400, "message", "nope"),
        (Failure(kind="unauthorized"), 401, "message", "Unauthorized"),
        (Failure(kind="http", status=418, body={"teapot": True}), 418, "teapot", True),
    ],
)
async def test_scripted_error_responses(
    llm_stand_in: LlmStandIn,
    http: httpx.AsyncClient,
    failure: Failure,
    status: int,
    field: str,
    expected: Any,
) -> None:
    llm_stand_in.add_rule(fail=failure)

    response = await post_chat(http, chat_body())

    assert response.status_code == status
    assert response.json()[field] == expected


async def test_scripted_validation_error(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(fail={"kind": "validation", "message": "bad field"})

    response = await post_chat(http, chat_body())

    assert response.status_code == 422
    assert detail_of(response)[0]["msg"] == "bad field"


async def test_scripted_timeout_holds_connection(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(fail={"kind": "timeout", "seconds": 30})

    with pytest.raises(httpx.ReadTimeout):
        await http.post("/v1/chat/completions", json=chat_body(), timeout=0.3)

    assert llm_stand_in.requests[0].status is None


async def test_scripted_disconnect(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(fail="disconnect")

    with pytest.raises(httpx.RemoteProtocolError):
        await post_chat(http, chat_body())


async def test_scripted_malformed_body(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(fail="malformed_body")

    response = await post_chat(http, chat_body())

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


# --- embeddings and models ------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeddings_deterministic_1024(http: httpx.AsyncClient) -> None:
    texts = ["The cat sat on the mat.", "The cat sat on a mat.", "Quarterly revenue grew 4%."]
    body = {"model": "mistral-embed", "input": texts}

    first = (await http.post("/v1/embeddings", json=body)).json()
    second = (await http.post("/v1/embeddings", json=body)).json()

    vectors = [item["embedding"] for item in first["data"]]
    assert [item["index"] for item in first["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in first["data"])
    assert all(len(vector) == 1024 for vector in vectors)
    assert vectors == [item["embedding"] for item in second["data"]]
    assert math.isclose(cosine(vectors[0], vectors[0]), 1.0, abs_tol=1e-4)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    expected_tokens = sum(math.ceil(len(text) / 4) for text in texts)
    assert first["usage"] == {
        "prompt_tokens": expected_tokens,
        "completion_tokens": 0,
        "total_tokens": expected_tokens,
    }
    assert first["object"] == "list"


async def test_embeddings_base64_and_dimension(http: httpx.AsyncClient) -> None:
    body = {
        "model": "codestral-embed",
        "input": "x",
        "encoding_format": "base64",
        "output_dimension": 256,
    }

    response = await http.post("/v1/embeddings", json=body)

    encoded = response.json()["data"][0]["embedding"]
    assert len(struct.unpack("<256f", base64.b64decode(encoded))) == 256


async def test_embeddings_openai_dimensions_rejected(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/embeddings", json={"model": "mistral-embed", "input": "x", "dimensions": 8}
    )

    assert response.status_code == 422
    assert detail_of(response)[0]["loc"] == ["body", "dimensions"]


async def test_embeddings_chat_model_is_invalid(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/embeddings", json={"model": MODEL, "input": "x"})

    assert response.status_code == 400
    assert response.json()["type"] == "invalid_model"


async def test_embeddings_scripted_failure(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(endpoint="embeddings", fail="rate_limit", times=1)

    first = await http.post("/v1/embeddings", json={"model": "mistral-embed", "input": "x"})
    second = await http.post("/v1/embeddings", json={"model": "mistral-embed", "input": "x"})

    assert [first.status_code, second.status_code] == [429, 200]


async def test_models_list_and_get(http: httpx.AsyncClient) -> None:
    listing = (await http.get("/v1/models")).json()
    card = await http.get("/v1/models/mistral-small-latest")
    missing = await http.get("/v1/models/nope")

    ids = {entry["id"] for entry in listing["data"]}
    assert listing["object"] == "list"
    assert {"mistral-small-2603", "mistral-embed-2312"} <= ids
    assert card.json()["aliases"] == ["mistral-small-latest"]
    assert missing.status_code == 404


async def test_unknown_path_and_method(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/fim")).status_code == 404
    assert (await http.get("/v1/chat/completions")).status_code == 405


# --- OpenAI-compatible paths ----------------------------------------------------------------


async def test_openai_path_is_lenient_and_records(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(reply="abcdefghijkl")
    body = {
        **chat_body(seed=3, max_completion_tokens=1, logprobs=False),
        "model": "llama-3-8b",
        "x_custom": 1,
    }

    response = await post_chat(http, body, api="/openai/v1")

    assert response.status_code == 200
    assert response.json()["id"].startswith("chatcmpl-")
    assert response.json()["choices"][0]["message"]["content"] == "abcd"
    [recorded] = llm_stand_in.requests
    assert recorded.api == "openai"
    assert recorded.unknown_fields == ["x_custom"]


async def test_openai_errors_use_error_envelope(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(fail=Failure(kind="rate_limit", retry_after=1.5))

    limited = await post_chat(http, chat_body(), api="/openai/v1")
    async with httpx.AsyncClient(base_url=llm_stand_in.url) as anonymous:
        unauthorized = await post_chat(anonymous, chat_body(), api="/openai/v1")

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1.5"
    assert limited.json() == {
        "error": {
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
        }
    }
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["message"] == "Unauthorized"


async def test_openai_embeddings(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/openai/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x", "dimensions": 64},
    )

    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 64


# --- recording and usage --------------------------------------------------------------------


async def test_requests_are_recorded_in_order(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    await post_chat(http, chat_body("one"))
    await post_chat(http, {**chat_body("two"), "model": "mistral-large-latest"})
    await post_chat(http, chat_body("three", seed=1))

    requests = llm_stand_in.requests
    assert [r.index for r in requests] == [0, 1, 2]
    assert [r.body["messages"][0]["content"] for r in requests] == ["one", "two", "three"]
    assert [r.status for r in requests] == [200, 200, 422]
    assert all(r.path == "/v1/chat/completions" for r in requests)
    assert all(r.headers["authorization"] == "<redacted>" for r in requests)
    assert all(r.auth_valid for r in requests)
    assert llm_stand_in.model_counts() == {MODEL: 2, "mistral-large-latest": 1}


async def test_usage_arithmetic(llm_stand_in: LlmStandIn, http: httpx.AsyncClient) -> None:
    llm_stand_in.add_rule(reply="12345")  # 5 characters -> 2 tokens
    messages = [{"role": "system", "content": "abcde"}, {"role": "user", "content": "abcdefghi"}]

    first = await post_chat(http, {"model": MODEL, "messages": messages})
    await post_chat(http, {"model": "mistral-large-latest", "messages": messages})

    # system: ceil(5/4) = 2, user: ceil(9/4) = 3
    assert first.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert llm_stand_in.usage_total() == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
    }
    assert llm_stand_in.usage_total(MODEL) == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
    }


async def test_reset_clears_rules_and_requests(
    llm_stand_in: LlmStandIn, http: httpx.AsyncClient
) -> None:
    llm_stand_in.add_rule(fail="server_error")
    await post_chat(http, chat_body())

    llm_stand_in.reset()
    response = await post_chat(http, chat_body())

    assert response.status_code == 200
    assert len(llm_stand_in.requests) == 1


# --- lifecycle, script files and CLI ---------------------------------------------------------


async def test_async_context_manager() -> None:
    async with (
        LlmStandIn(api_key="k2") as stand_in,
        httpx.AsyncClient(headers={"Authorization": "Bearer k2"}) as client,
    ):
        response = await client.post(stand_in.base_url + "/chat/completions", json=chat_body())

    assert response.status_code == 200
    with pytest.raises(RuntimeError, match="not running"):
        _ = stand_in.base_url


def test_sync_context_manager_urls() -> None:
    with LlmStandIn() as stand_in:
        assert stand_in.base_url == f"http://127.0.0.1:{stand_in.port}/v1"
        assert stand_in.openai_base_url == f"http://127.0.0.1:{stand_in.port}/openai/v1"
        response = httpx.get(stand_in.base_url + "/models", headers=stand_in.headers)
    assert response.status_code == 200
    assert stand_in.api_key == "test-key"


SCRIPT_YAML = """\
default_reply: "fallback"
models: [my-local-model]
rules:
  - name: limited
    fail: {kind: rate_limit, retry_after: 2}
    times: 1
  - contains: extract
    reply: {json: {"total": 12.5}, fenced: true}
  - model: my-local-model
    reply: {text: "local", chunks: true, finish_reason: length}
"""


def test_script_file_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(SCRIPT_YAML)

    script = load_script(path)

    assert script.default_reply == Reply(text="fallback")
    assert script.models == ["my-local-model"]
    assert script.rules[0] == Rule(
        name="limited", fail=Failure(kind="rate_limit", retry_after=2), times=1
    )
    assert script.rules[1].reply == Reply(json={"total": 12.5}, fenced=True)
    assert script.rules[2].model == "my-local-model"


def test_script_file_json_loads(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"rules": [{"regex": "^hi", "reply": "hello"}]}))

    assert load_script(path) == Script(rules=[Rule(regex="^hi", reply=Reply(text="hello"))])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{reply: x, fail: rate_limit}]", "exactly one of `reply` or `fail`"),
        ("rules: [{fail: explode}]", "kind"),
        ("rules: [{regex: '(', reply: x}]", "does not compile"),
        ("rules: [{endpoint: embeddings, reply: x}]", "embedding rules can only `fail`"),
        ("rules: [{reply: x, colour: red}]", "colour"),
        ("- just a list", "must be a mapping"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_script_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(ValueError, match="bad.yaml") as excinfo:
        load_script(path)
    assert message in str(excinfo.value)


def test_stand_in_runs_script_file(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(SCRIPT_YAML)

    with LlmStandIn(path) as stand_in:
        url = stand_in.base_url + "/chat/completions"
        limited = httpx.post(url, headers=stand_in.headers, json=chat_body("extract it"))
        fenced = httpx.post(url, headers=stand_in.headers, json=chat_body("extract it"))
        local = httpx.post(
            url, headers=stand_in.headers, json={**chat_body(), "model": "my-local-model"}
        )
        fallback = httpx.post(url, headers=stand_in.headers, json=chat_body())

    assert limited.status_code == 429
    assert fenced.json()["choices"][0]["message"]["content"] == '```json\n{"total": 12.5}\n```'
    assert local.json()["choices"][0]["message"]["content"] == [{"type": "text", "text": "local"}]
    assert local.json()["choices"][0]["finish_reason"] == "length"
    assert fallback.json()["choices"][0]["message"]["content"] == "fallback"


def test_cli_serve_until_sigint(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(SCRIPT_YAML)
    command = [sys.executable, "-m", "dagwright.testing.llm_server", "--script", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(4)]
        base_url = banner[1].split(": ", 1)[1].strip()
        key = banner[3].split(": ", 1)[1].strip()

        response = httpx.post(
            base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=chat_body(),
        )

        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert banner[0].startswith("dagwright LLM stand-in running with 3 scripted rule(s)")
    assert base_url.startswith("http://127.0.0.1:")
    assert key == "test-key"
    assert response.status_code == 429
    assert process.returncode == 0, stderr
    assert "Stopped after 1 request(s)." in stdout


def test_cli_rejects_invalid_script(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules: [{fail: explode}]")
    command = [sys.executable, "-m", "dagwright.testing.llm_server", "--script", str(path)]

    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert "bad.yaml" in result.stderr
