"""Error responses of the LLM stand-in, in Mistral's and in OpenAI's body shapes.

Each factory builds the error one real failure produces. Bodies and codes follow what Mistral
returned in public bug reports up to 2026; where Mistral's documented and observed shapes
differ, the observed one is used (for example the 422 body that wraps pydantic's `detail`
list inside `message`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError


@dataclass
class ApiError(Exception):
    """An HTTP error response that the stand-in sends instead of a completion.

    `mistral_body` is sent on the Mistral paths. On the OpenAI paths the error is sent as
    `{"error": {"message", "type", "param", "code"}}`, the envelope that OpenAI and most
    OpenAI-compatible servers use.
    """

    status: int
    mistral_body: dict[str, Any]
    message: str
    type: str
    code: str | int | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    verbatim: bool = False

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"

    def openai_body(self) -> dict[str, Any]:
        """Return the error in the OpenAI envelope, or the scripted body when `verbatim`."""
        if self.verbatim:
            return self.mistral_body
        code = self.code if self.code is not None else self.status
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": code}
        }


def _mistral_error(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    *,
    raw_status_code: bool = False,
    headers: dict[str, str] | None = None,
) -> ApiError:
    body: dict[str, Any] = {
        "object": "error",
        "message": message,
        "type": error_type,
        "param": None,
        "code": code,
    }
    # Newer Mistral errors repeat the status in the body; older ones do not.
    if raw_status_code:
        body["raw_status_code"] = status
    return ApiError(status, body, message, error_type, code, headers=dict(headers or {}))


def request_id(seed: str) -> str:
    """Return a 32-hex-digit id derived from `seed`, so ids repeat from run to run."""
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def unauthorized(seed: str = "") -> ApiError:
    """401 for a missing or wrong key, in the gateway's shape (no `object`/`type` keys)."""
    body = {"message": "Unauthorized", "request_id": request_id("401" + seed)}
    return ApiError(401, body, "Unauthorized", "authentication_error")


def validation_failed(detail: list[dict[str, Any]]) -> ApiError:
    """422 with pydantic's `detail` list wrapped in `message`, as Mistral really sends it."""
    body = {
        "object": "error",
        "message": {"detail": detail},
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)
    return ApiError(422, body, summary, "invalid_request_error")


def from_validation_error(exc: ValidationError) -> ApiError:
    """Turn a pydantic error on the request body into Mistral's 422, `loc` prefixed by "body"."""
    detail = []
    for error in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "type": error["type"],
            "loc": ["body", *error["loc"]],
            "msg": error["msg"],
            "input": error.get("input"),
        }
        if "ctx" in error:
            item["ctx"] = error["ctx"]
        detail.append(item)
    # `ctx` may hold exception objects; a JSON round trip with str() keeps the body sendable.
    return validation_failed(json.loads(json.dumps(detail, default=str)))


def invalid_json_body(error: json.JSONDecodeError) -> ApiError:
    """422 for a body that is not JSON, in the shape FastAPI gives `json_invalid`."""
    detail = [
        {
            "type": "json_invalid",
            "loc": ["body", error.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error.msg},
        }
    ]
    return validation_failed(detail)


def rate_limited(retry_after: float | None = None) -> ApiError:
    """429 rate limit, with a `Retry-After` header in seconds when `retry_after` is given."""
    headers = {"x-ratelimit-limit-req-minute": "60", "x-ratelimit-remaining-req-minute": "0"}
    if retry_after is not None:
        headers["Retry-After"] = _format_seconds(retry_after)
    return _mistral_error(
        429, "Rate limit exceeded", "rate_limited", "1300", raw_status_code=True, headers=headers
    )


def capacity_exceeded(status: int = 503, retry_after: float | None = None) -> ApiError:
    """Capacity error: Mistral's backend is full. Sent as 503 by default; also seen as 429."""
    headers = {} if retry_after is None else {"Retry-After": _format_seconds(retry_after)}
    return _mistral_error(
        status,
        "Service tier capacity exceeded for this model.",
        "invalid_request_error",
        headers=headers,
    )


def server_error(status: int = 500) -> ApiError:
    """500 (or another 5xx given as `status`) in the body Mistral sends for internal errors."""
    return _mistral_error(status, "Service unavailable.", "internal_server_error", "3000")


def invalid_model(model: str) -> ApiError:
    """400 for a model name the API does not serve."""
    return _mistral_error(
        400, f"Invalid model: {model}", "invalid_model", "1500", raw_status_code=True
    )


def context_length_exceeded(prompt_tokens: int, context_length: int) -> ApiError:
    """400 for a prompt longer than the model's context window."""
    message = (
        f"Prompt contains {prompt_tokens} tokens and 0 draft tokens, too large for model "
        f"with {context_length} maximum context length"
    )
    return _mistral_error(
        400, message, "invalid_request_invalid_args", "3051", raw_status_code=True
    )


def message_order(message: str) -> ApiError:
    """400 for a conversation whose roles are in an order Mistral does not serve."""
    return _mistral_error(400, message, "invalid_request_message_order", "3230")


def invalid_tool_call_id(tool_call_id: str) -> ApiError:
    """400 for a tool-call id that is not exactly 9 characters from [a-zA-Z0-9]."""
    message = f"Tool call id was {tool_call_id} but must be a-z, A-Z, 0-9, with a length of 9."
    return _mistral_error(400, message, "invalid_function_call", "3280")


def bad_request(message: str) -> ApiError:
    """400 for a request the stand-in cannot serve, with the reason in `message`."""
    return _mistral_error(400, message, "invalid_request_error")


def not_found() -> ApiError:
    """404 for an unknown path, in FastAPI's default body."""
    return ApiError(404, {"detail": "Not Found"}, "Not Found", "not_found_error")


def method_not_allowed() -> ApiError:
    """405 for a known path called with the wrong method, in FastAPI's default body."""
    return ApiError(
        405, {"detail": "Method Not Allowed"}, "Method Not Allowed", "invalid_request_error"
    )


def custom(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> ApiError:
    """Any status and body a script gives, sent unchanged on both API styles."""
    message = str(body.get("message", body))
    return ApiError(
        status, body, message, "scripted_error", headers=dict(headers or {}), verbatim=True
    )


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
