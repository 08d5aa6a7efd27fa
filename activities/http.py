"""The ``dagwright.http`` activity: one HTTP request per attempt, with its failures classified.

The workflow renders every template before scheduling the activity, with secrets left as
markers (see ``secrets.py``). This activity resolves the markers just before sending, so secret
values exist only in worker memory. Messages and logs show the URL as the workflow wrote it,
with markers instead of values and without userinfo or query string.

Status handling, with the error types documented in ``errors.py``:

- a status in ``expect_status`` (any 2xx when it is unset) is a success;
- 408, 429 and 5xx are retryable. A ``Retry-After`` header (seconds or an HTTP-date) sets the
  delay before the next attempt, capped at ``MAX_RETRY_AFTER``;
- any other status is permanent.

Redirects are followed (at most 20 hops, httpx's default); httpx drops the Authorization header
when a redirect leaves the original origin.

The worker's network policy (``network_policy.py``) is checked on the host of every hop and on
every address the host resolves to, before connecting. A denied host fails the node at once
with the permanent error ``NetworkPolicyDenied``.

Without ``max_response_bytes``, a body may be as large as the worker's node output cap
(``envelope.max_output_bytes``), because a larger one could not be returned anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dagwright import __version__
from dagwright.activities.errors import (
    HTTP_CLIENT_ERROR,
    HTTP_CONNECTION_ERROR,
    HTTP_RATE_LIMITED,
    HTTP_REQUEST_INVALID,
    HTTP_RESPONSE_INVALID,
    HTTP_RESPONSE_TOO_LARGE,
    HTTP_SERVER_ERROR,
    HTTP_STATUS_ERROR,
    HTTP_TIMEOUT,
    permanent,
    retryable,
)
from dagwright.activities.envelope import max_output_bytes
from dagwright.activities.heartbeat import heartbeating
from dagwright.activities.network_policy import (
    NETWORK_POLICY_DENIED,
    NetworkPolicy,
    NetworkPolicyViolation,
    client_options,
)
from dagwright.activities.secrets import SecretResolver, redact

logger = logging.getLogger(__name__)

ACTIVITY_NAME = "dagwright.http"

# A server may ask for any delay; one hour keeps a confused server from parking a node for days.
MAX_RETRY_AFTER = timedelta(hours=1)

# Characters of the response body quoted in error messages, and bytes read to get them.
ERROR_BODY_CHARS = 200
_ERROR_BODY_BYTES = 4096

_METHOD_PATTERN = re.compile(r"[A-Z]+")
_JSON_CONTENT_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")

# Body limit when the request sets none and the activity runs outside dagwright's worker.
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024

DEFAULT_NETWORK_POLICY = NetworkPolicy()

# One client per event loop and network policy: an httpx client's pooled connections belong to
# the loop that opened them, tests run several loops in one process, and a connection opened
# under one policy must not be reused under another.
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[NetworkPolicy, httpx.AsyncClient]
] = weakref.WeakKeyDictionary()


class HttpRequest(BaseModel):
    """Input of the ``dagwright.http`` activity; templates rendered, secrets still markers."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    method: str = "GET"
    url: str
    headers: dict[str, str] = {}
    query: dict[str, Any] = {}
    json_body: Any = None
    # Separate from json_body so that a JSON null body can be sent.
    has_json: bool = False
    body: str | None = None
    form: dict[str, Any] | None = None
    # None means any 2xx status.
    expect_status: list[int] | None = None
    response: Literal["auto", "json", "text"] = "auto"
    # Sent as the Idempotency-Key header. The workflow derives it so that it is the same for
    # every attempt of the node in one run.
    idempotency_key: str | None = None
    timeout_seconds: float = 60.0
    # None: the node output cap of the worker (see the module docstring).
    max_response_bytes: int | None = None


@activity.defn(name=ACTIVITY_NAME)
async def http_request(request: HttpRequest) -> dict[str, Any]:
    """Send the request and return ``{status, headers, json}`` or ``{status, headers, text}``.

    Header names in the result are lower case; repeated headers are joined with ", ".
    The default network policy applies; ``make_http_activity`` takes another one.

    Raises:
        ApplicationError: classified as described in the module docstring.
        asyncio.CancelledError: the activity was cancelled; the request is aborted.
    """
    return await _send(request, DEFAULT_NETWORK_POLICY)


def make_http_activity(policy: NetworkPolicy) -> Callable[[HttpRequest], Awaitable[dict[str, Any]]]:
    """Return a ``dagwright.http`` activity that enforces ``policy``."""

    @activity.defn(name=ACTIVITY_NAME)
    async def http_request_with_policy(request: HttpRequest) -> dict[str, Any]:
        return await _send(request, policy)

    return http_request_with_policy


async def _send(request: HttpRequest, policy: NetworkPolicy) -> dict[str, Any]:
    display_url = _display_url(request.url)
    started = time.monotonic()
    status: int | None = None
    error_type: str | None = None
    resolver = SecretResolver()
    try:
        async with heartbeating():
            response, content = await _exchange(request, display_url, resolver, policy)
        status = response.status_code
        return _result(request, display_url, response, content, resolver.used_values)
    except ApplicationError as exc:
        error_type = exc.type
        raise
    except asyncio.CancelledError:
        error_type = "Cancelled"
        raise
    finally:
        _log_call(request, display_url, status, error_type, started)


async def close_http_clients() -> None:
    """Close the HTTP clients of the running event loop and forget clients of closed loops."""
    loop = asyncio.get_running_loop()
    clients = _clients.pop(loop, {})
    for client in clients.values():
        await client.aclose()
    for other_loop in [other for other in _clients if other.is_closed()]:
        _clients.pop(other_loop, None)


def _client(policy: NetworkPolicy = DEFAULT_NETWORK_POLICY) -> httpx.AsyncClient:
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(policy)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            follow_redirects=True,
            headers={"User-Agent": f"dagwright/{__version__}"},
            **client_options(policy),
        )
        clients[policy] = client
    return client


async def _exchange(
    request: HttpRequest, display_url: str, resolver: SecretResolver, policy: NetworkPolicy
) -> tuple[httpx.Response, bytes]:
    """Send one request and read its body, within ``timeout_seconds`` for the whole exchange."""
    outgoing = _build_request(request, display_url, resolver)
    try:
        async with asyncio.timeout(request.timeout_seconds):
            response = await _client(policy).send(outgoing, stream=True)
            try:
                content = await _read_body(request, display_url, response)
            finally:
                await response.aclose()
    except TimeoutError:
        raise retryable(
            f"HTTP node {request.node_id!r}: {request.method.upper()} {display_url} timed out after "
            f"{request.timeout_seconds:g} s. Raise the node's timeout if the server is slow.",
            type=HTTP_TIMEOUT,
        ) from None
    except httpx.HTTPError as exc:
        raise _transport_error(request, display_url, exc, resolver.used_values) from None
    except NetworkPolicyViolation as exc:
        raise permanent(
            f"HTTP node {request.node_id!r}: {request.method.upper()} {display_url} was not sent "
            f"because {exc.denial.describe()}. Change [network] allow or deny in the worker's "
            "dagwright.toml if this host must be reachable.",
            type=NETWORK_POLICY_DENIED,
            details={"host": exc.denial.host, "address": exc.denial.address, "rule": exc.denial.rule},
        ) from None
    return response, content


def _build_request(
    request: HttpRequest, display_url: str, resolver: SecretResolver
) -> httpx.Request:
    method = request.method.upper()
    bodies = [name for name, present in _body_fields(request) if present]
    if not _METHOD_PATTERN.fullmatch(method):
        raise _invalid_request(request, display_url, f"the method {request.method!r} is not valid")
    if len(bodies) > 1:
        raise _invalid_request(
            request, display_url, f"it sets {' and '.join(bodies)}, but at most one body is allowed"
        )
    for key, value in request.query.items():
        if isinstance(value, dict):
            raise _invalid_request(
                request,
                display_url,
                f"the query parameter {key!r} is a mapping, not a value or list",
            )

    headers = resolver.resolve(request.headers)
    if request.idempotency_key is not None:
        headers["Idempotency-Key"] = request.idempotency_key
    content: bytes | None = None
    if request.has_json:
        content = json.dumps(resolver.resolve(request.json_body)).encode("utf-8")
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    elif request.body is not None:
        content = resolver.resolve(request.body).encode("utf-8")

    try:
        # httpx replaces a URL's own query string with `params`, so the node's `query` is
        # merged into the URL instead: `url: https://x/y?a=1` keeps `a=1`.
        url = httpx.URL(resolver.resolve(request.url))
        query = resolver.resolve(request.query)
        if query:
            url = url.copy_merge_params(query)
        return _client().build_request(
            method,
            url,
            headers=headers,
            content=content,
            data=resolver.resolve(request.form),
            timeout=request.timeout_seconds,
        )
    except (httpx.InvalidURL, httpx.LocalProtocolError, TypeError, ValueError) as exc:
        detail = redact(f"{type(exc).__name__}: {exc}", resolver.used_values)
        raise _invalid_request(request, display_url, detail) from None


def _body_fields(request: HttpRequest) -> list[tuple[str, bool]]:
    return [
        ("json", request.has_json),
        ("body", request.body is not None),
        ("form", request.form is not None),
    ]


async def _read_body(request: HttpRequest, display_url: str, response: httpx.Response) -> bytes:
    if not _is_expected(request, response.status_code):
        # An error page only feeds the message, so the rest of it is not downloaded.
        return await _read_prefix(response, _ERROR_BODY_BYTES)

    limit = _response_limit(request)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(request, display_url, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(request, display_url, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _response_limit(request: HttpRequest) -> int:
    if request.max_response_bytes is not None:
        return request.max_response_bytes
    return max_output_bytes() or DEFAULT_MAX_RESPONSE_BYTES


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    prefix = b""
    async for chunk in response.aiter_bytes():
        prefix += chunk
        if len(prefix) >= limit:
            break
    return prefix[:limit]


def _result(
    request: HttpRequest,
    display_url: str,
    response: httpx.Response,
    content: bytes,
    secret_values: list[str],
) -> dict[str, Any]:
    status = response.status_code
    # Servers may echo credentials back, so quoted body text is scrubbed of secret values.
    snippet = redact(_snippet(content), secret_values)
    if not _is_expected(request, status):
        raise _status_error(request, display_url, response, snippet)

    headers = {name.lower(): value for name, value in response.headers.items()}
    result: dict[str, Any] = {"status": status, "headers": headers}
    if _wants_json(request, response):
        result["json"] = _parse_json(request, display_url, content, snippet)
    else:
        result["text"] = _decode_text(response, content)
    return result


def _is_expected(request: HttpRequest, status: int) -> bool:
    if request.expect_status is None:
        return 200 <= status < 300
    return status in request.expect_status


def _wants_json(request: HttpRequest, response: httpx.Response) -> bool:
    if request.response != "auto":
        return request.response == "json"
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return bool(_JSON_CONTENT_TYPE.match(media_type))


def _parse_json(request: HttpRequest, display_url: str, content: bytes, snippet: str) -> Any:
    # An empty body (204, or a JSON API acknowledging with no content) is JSON null.
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except RecursionError:
        raise permanent(
            f"HTTP node {request.node_id!r}: the JSON response of {request.method.upper()} {display_url} "
            "is nested too deeply to parse. Use 'response: text' to receive the body as text.",
            type=HTTP_RESPONSE_INVALID,
        ) from None
    except ValueError as exc:
        raise permanent(
            f"HTTP node {request.node_id!r}: the response of {request.method.upper()} {display_url} is "
            f"not valid JSON ({exc}). It starts with {snippet!r}. Use 'response: text' "
            "to receive the body as text.",
            type=HTTP_RESPONSE_INVALID,
        ) from None


def _decode_text(response: httpx.Response, content: bytes) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        return content.decode(encoding, errors="replace")
    except LookupError:
        # The server named a charset Python does not know.
        return content.decode("utf-8", errors="replace")


def _status_error(
    request: HttpRequest, display_url: str, response: httpx.Response, snippet: str
) -> ApplicationError:
    status = response.status_code
    expected = (
        "a 2xx status"
        if request.expect_status is None
        else f"one of {sorted(request.expect_status)}"
    )
    message = (
        f"HTTP node {request.node_id!r}: {request.method.upper()} {display_url} returned status "
        f"{status}, expected {expected}. Response body starts with {snippet!r}."
    )
    if status in (408, 429) or status >= 500:
        error_type = {408: HTTP_TIMEOUT, 429: HTTP_RATE_LIMITED}.get(status, HTTP_SERVER_ERROR)
        return retryable(message, type=error_type, retry_after=_retry_after(response))
    if 400 <= status < 500:
        return permanent(
            message + " This status is not retried; check the URL, headers and body.",
            type=HTTP_CLIENT_ERROR,
            details={"status": status},
        )
    return permanent(
        message + " Add the status to 'expect_status' if it is a success.",
        type=HTTP_STATUS_ERROR,
        details={"status": status},
    )


def _retry_after(response: httpx.Response) -> timedelta | None:
    """Return the delay that ``Retry-After`` requests, capped; None if absent or unusable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        delay = when - datetime.now(timezone.utc)
    if delay <= timedelta(0):
        return None
    return min(delay, MAX_RETRY_AFTER)


def _transport_error(
    request: HttpRequest, display_url: str, exc: httpx.HTTPError, secret_values: list[str]
) -> ApplicationError:
    # httpx messages can contain the resolved URL, so they are scrubbed of secret values.
    cause = redact(f"{type(exc).__name__}: {exc}", secret_values)
    where = f"HTTP node {request.node_id!r}: {request.method.upper()} {display_url}"
    if isinstance(exc, httpx.TimeoutException):
        return retryable(f"{where} timed out ({cause}).", type=HTTP_TIMEOUT)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return _invalid_request(request, display_url, cause)
    if isinstance(exc, httpx.TooManyRedirects):
        return permanent(f"{where} failed: {cause}.", type=HTTP_STATUS_ERROR)
    if isinstance(exc, httpx.DecodingError):
        return permanent(
            f"{where}: the response body cannot be decoded ({cause}).", type=HTTP_RESPONSE_INVALID
        )
    if isinstance(exc, httpx.LocalProtocolError):
        return _invalid_request(request, display_url, cause)
    # Refused, reset or dropped connections, failed name lookups and proxy errors can all pass.
    return retryable(f"{where} failed: {cause}.", type=HTTP_CONNECTION_ERROR)


def _invalid_request(request: HttpRequest, display_url: str, reason: str) -> ApplicationError:
    return permanent(
        f"HTTP node {request.node_id!r}: cannot send {request.method.upper()} {display_url} because "
        f"{reason}. Fix the node definition.",
        type=HTTP_REQUEST_INVALID,
    )


def _too_large(request: HttpRequest, display_url: str, limit: int) -> ApplicationError:
    if request.max_response_bytes is not None:
        source = f"max_response_bytes ({limit} bytes)"
    else:
        source = f"the worker's node output cap ({limit} bytes, set by [payloads] hard_cap)"
    return permanent(
        f"HTTP node {request.node_id!r}: the response of {request.method.upper()} {display_url} "
        f"is larger than {source}.",
        type=HTTP_RESPONSE_TOO_LARGE,
        details={"max_response_bytes": limit},
    )


def _snippet(content: bytes) -> str:
    return content[: ERROR_BODY_CHARS * 4].decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]


def _display_url(url: str) -> str:
    """Return ``url`` without userinfo, query string and fragment, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _host(display_url: str) -> str:
    return urlsplit(display_url).netloc


def _log_call(
    request: HttpRequest,
    display_url: str,
    status: int | None,
    error_type: str | None,
    started: float,
) -> None:
    latency_ms = round((time.monotonic() - started) * 1000)
    attempt = activity.info().attempt
    logger.info(
        "http call node=%s %s %s status=%s error=%s latency_ms=%d attempt=%d",
        request.node_id,
        request.method.upper(),
        display_url,
        status,
        error_type,
        latency_ms,
        attempt,
        extra={
            "node_id": request.node_id,
            "method": request.method.upper(),
            "host": _host(display_url),
            "status": status,
            "error_type": error_type,
            "latency_ms": latency_ms,
            "attempt": attempt,
        },
    )
