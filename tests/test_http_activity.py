"""Tests of the dagwright.http activity and secret resolution against a real local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from dagwright.activities.http import (
    MAX_RETRY_AFTER,
    HttpRequest,
    close_http_clients,
    http_request,
)
from dagwright.activities.secrets import (
    REDACTED,
    SecretNameError,
    SecretsView,
    redact,
    referenced_secrets,
    resolve_secrets,
    secret_marker,
)

SECRET_VALUE = "s3cr3t/value+42"


@dataclass
class Received:
    """One request as the local server read it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Received, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LocalServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 that closes every connection after one request."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[Received] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            received = await _read_request(reader)
            self.requests.append(received)
            await self.routes[received.path](received, reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Received:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *header_lines = head.rstrip("\r\n").split("\r\n")
    method, target, _version = request_line.split(" ")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    parts = urlsplit(target)
    return Received(method, parts.path, parse_qs(parts.query), headers, body)


async def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
) -> None:
    lines = [f"HTTP/1.1 {status} Status", "Connection: close"]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(_request: Received, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await respond(writer, status, body, headers)

    return handler


def json_reply(status: int, value: object, headers: dict[str, str] | None = None) -> Handler:
    return reply(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})


@pytest.fixture(scope="module", autouse=True)
async def shared_client() -> AsyncIterator[None]:
    yield
    await close_http_clients()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    local = LocalServer()
    await local.start()
    yield local
    await local.stop()


async def run(request: HttpRequest, env: ActivityEnvironment | None = None) -> dict:
    return await (env or ActivityEnvironment()).run(http_request, request)


async def run_failing(request: HttpRequest) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(request)
    return caught.value


# Successful responses


async def test_json_response_parsed(server: LocalServer) -> None:
    server.routes["/data"] = json_reply(200, {"rows": [1, 2]}, {"X-Trace": "abc"})

    result = await run(HttpRequest(node_id="fetch", url=server.url("/data"), query={"page": 2, "tags": ["a", "b"]}))

    assert result == {
        "status": 200,
        "headers": {
            "connection": "close",
            "content-length": "16",
            "content-type": "application/json",
            "x-trace": "abc",
        },
        "json": {"rows": [1, 2]},
    }
    assert server.requests[0].method == "GET"
    assert server.requests[0].query == {"page": ["2"], "tags": ["a", "b"]}
    assert server.requests[0].headers["user-agent"].startswith("dagwright/")


async def test_url_query_kept_and_merged(server: LocalServer) -> None:
    server.routes["/data"] = json_reply(200, {})

    await run(HttpRequest(node_id="fetch", url=server.url("/data?run=1")))
    await run(HttpRequest(node_id="fetch", url=server.url("/data?run=1"), query={"page": 2}))

    assert server.requests[0].query == {"run": ["1"]}
    assert server.requests[1].query == {"run": ["1"], "page": ["2"]}


async def test_text_response_by_content_type(server: LocalServer) -> None:
    server.routes["/page"] = reply(200, b"<p>hi</p>", {"Content-Type": "text/html; charset=utf-8"})

    result = await run(HttpRequest(node_id="page", url=server.url("/page")))

    assert result["text"] == "<p>hi</p>"
    assert "json" not in result


async def test_auto_detects_problem_json(server: LocalServer) -> None:
    server.routes["/problem"] = reply(200, b'{"title": "ok"}', {"Content-Type": "application/problem+json; charset=utf-8"})

    result = await run(HttpRequest(node_id="p", url=server.url("/problem")))

    assert result["json"] == {"title": "ok"}


async def test_response_json_forced_on_text_type(server: LocalServer) -> None:
    server.routes["/plain"] = reply(200, b"[1, 2, 3]", {"Content-Type": "text/plain"})

    result = await run(HttpRequest(node_id="p", url=server.url("/plain"), response="json"))

    assert result["json"] == [1, 2, 3]


async def test_response_text_forced_on_json_type(server: LocalServer) -> None:
    server.routes["/data"] = json_reply(200, {"a": 1})

    result = await run(HttpRequest(node_id="p", url=server.url("/data"), response="text"))

    assert result["text"] == '{"a": 1}'


async def test_empty_json_body_is_null(server: LocalServer) -> None:
    server.routes["/empty"] = reply(204)

    result = await run(HttpRequest(node_id="p", url=server.url("/empty"), response="json"))

    assert result["status"] == 204
    assert result["json"] is None


async def test_invalid_json_is_permanent(server: LocalServer) -> None:
    server.routes["/bad"] = reply(200, b"<html>oops</html>", {"Content-Type": "application/json"})

    error = await run_failing(HttpRequest(node_id="parse_me", url=server.url("/bad")))

    assert error.type == "HttpResponseInvalid"
    assert error.non_retryable
    assert "'parse_me'" in error.message
    assert "<html>oops</html>" in error.message


async def test_invalid_utf8_text_replaced(server: LocalServer) -> None:
    server.routes["/bytes"] = reply(200, b"ok \xff\xfe end", {"Content-Type": "text/plain"})

    result = await run(HttpRequest(node_id="p", url=server.url("/bytes")))

    assert result["text"] == "ok \ufffd\ufffd end"


async def test_text_uses_declared_charset(server: LocalServer) -> None:
    server.routes["/latin"] = reply(200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=iso-8859-1"})

    result = await run(HttpRequest(node_id="p", url=server.url("/latin")))

    assert result["text"] == "café"


async def test_expect_status_accepts_listed(server: LocalServer) -> None:
    server.routes["/missing"] = json_reply(404, {"found": False})

    result = await run(HttpRequest(node_id="p", url=server.url("/missing"), expect_status=[200, 404]))

    assert result["status"] == 404
    assert result["json"] == {"found": False}


async def test_expect_status_rejects_unlisted_2xx(server: LocalServer) -> None:
    server.routes["/ok"] = reply(200, b"fine")

    error = await run_failing(HttpRequest(node_id="create", url=server.url("/ok"), expect_status=[201]))

    assert error.type == "HttpStatusError"
    assert error.non_retryable
    assert "returned status 200, expected one of [201]" in error.message


async def test_post_json_with_idempotency_key(server: LocalServer) -> None:
    server.routes["/orders"] = json_reply(201, {"id": 7})

    result = await run(
        HttpRequest(
            node_id="order",
            method="post",
            url=server.url("/orders"),
            json_body={"qty": 3},
            has_json=True,
            idempotency_key="run-1:order",
        )
    )

    assert result["json"] == {"id": 7}
    sent = server.requests[0]
    assert sent.method == "POST"
    assert sent.headers["idempotency-key"] == "run-1:order"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.body) == {"qty": 3}


async def test_json_null_body_sent(server: LocalServer) -> None:
    server.routes["/null"] = reply(200)

    await run(HttpRequest(node_id="p", method="PUT", url=server.url("/null"), json_body=None, has_json=True))

    assert server.requests[0].body == b"null"


async def test_form_body_sent(server: LocalServer) -> None:
    server.routes["/form"] = reply(200)

    await run(HttpRequest(node_id="p", method="POST", url=server.url("/form"), form={"a": "1", "b": ["x", "y"]}))

    sent = server.requests[0]
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(sent.body.decode()) == {"a": ["1"], "b": ["x", "y"]}


async def test_two_bodies_rejected(server: LocalServer) -> None:
    error = await run_failing(
        HttpRequest(node_id="p", method="POST", url=server.url("/x"), body="raw", form={"a": "1"})
    )

    assert error.type == "HttpRequestInvalid"
    assert error.non_retryable
    assert "body and form" in error.message
    assert server.requests == []


# Status classification


async def test_404_is_permanent(server: LocalServer) -> None:
    server.routes["/gone"] = reply(404, b"no such filing " + b"x" * 500, {"Content-Type": "text/plain"})

    error = await run_failing(HttpRequest(node_id="fetch_filing", url=server.url("/gone") + "?ticker=ACME"))

    assert error.type == "HttpClientError"
    assert error.non_retryable
    assert error.details == ({"status": 404},)
    assert f"'fetch_filing': GET {server.url('/gone')} returned status 404" in error.message
    assert "ticker" not in error.message
    assert "no such filing " + "x" * 185 in error.message
    assert "x" * 186 not in error.message


async def test_500_is_retryable(server: LocalServer) -> None:
    server.routes["/boom"] = reply(500, b"internal")

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/boom")))

    assert error.type == "HttpServerError"
    assert not error.non_retryable
    assert error.next_retry_delay is None


async def test_408_is_retryable_timeout(server: LocalServer) -> None:
    server.routes["/slowpoke"] = reply(408)

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/slowpoke")))

    assert error.type == "HttpTimeout"
    assert not error.non_retryable


async def test_429_retry_after_seconds(server: LocalServer) -> None:
    server.routes["/limited"] = reply(429, b"slow down", {"Retry-After": "2"})

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/limited")))

    assert error.type == "HttpRateLimited"
    assert not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=2)


async def test_429_without_retry_after(server: LocalServer) -> None:
    server.routes["/limited"] = reply(429)

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/limited")))

    assert error.type == "HttpRateLimited"
    assert error.next_retry_delay is None


async def test_503_retry_after_http_date(server: LocalServer) -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    server.routes["/maintenance"] = reply(503, headers={"Retry-After": format_datetime(later, usegmt=True)})

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/maintenance")))

    assert error.type == "HttpServerError"
    assert error.next_retry_delay is not None
    # The HTTP-date has whole seconds, and some time passes before the activity reads it.
    assert timedelta(seconds=100) < error.next_retry_delay <= timedelta(seconds=120)


async def test_retry_after_capped(server: LocalServer) -> None:
    server.routes["/limited"] = reply(429, headers={"Retry-After": "999999"})

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/limited")))

    assert error.next_retry_delay == MAX_RETRY_AFTER


async def test_retry_after_garbage_ignored(server: LocalServer) -> None:
    server.routes["/limited"] = reply(503, headers={"Retry-After": "soon"})

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/limited")))

    assert error.type == "HttpServerError"
    assert error.next_retry_delay is None


# Transport failures and limits


async def test_connection_refused_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now, so the connection is refused.

    error = await run_failing(HttpRequest(node_id="p", url=f"http://127.0.0.1:{port}/x"))

    assert error.type == "HttpConnectionError"
    assert not error.non_retryable
    assert f"'p': GET http://127.0.0.1:{port}/x failed" in error.message


async def test_dropped_connection_retryable(server: LocalServer) -> None:
    async def hang_up(_request: Received, _reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        return None

    server.routes["/drop"] = hang_up

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/drop")))

    assert error.type == "HttpConnectionError"
    assert not error.non_retryable


async def test_truncated_body_retryable(server: LocalServer) -> None:
    async def truncate(_request: Received, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    server.routes["/short"] = truncate

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/short")))

    assert error.type == "HttpConnectionError"
    assert not error.non_retryable


async def test_client_timeout_retryable(server: LocalServer) -> None:
    async def never_answer(_request: Received, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server.routes["/slow"] = never_answer

    error = await run_failing(HttpRequest(node_id="p", url=server.url("/slow"), timeout_seconds=0.2))

    assert error.type == "HttpTimeout"
    assert not error.non_retryable


async def test_declared_length_too_large(server: LocalServer) -> None:
    server.routes["/big"] = reply(200, b"x" * 1000)

    error = await run_failing(HttpRequest(node_id="dl", url=server.url("/big"), max_response_bytes=100))

    assert error.type == "HttpResponseTooLarge"
    assert error.non_retryable
    assert "'dl'" in error.message
    assert "max_response_bytes (100 bytes)" in error.message


async def test_streamed_body_too_large(server: LocalServer) -> None:
    async def unsized(_request: Received, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await respond(writer, 200, b"y" * 5000, content_length=False)

    server.routes["/stream"] = unsized

    error = await run_failing(HttpRequest(node_id="dl", url=server.url("/stream"), max_response_bytes=100))

    assert error.type == "HttpResponseTooLarge"
    assert error.non_retryable


async def test_unsupported_scheme_permanent() -> None:
    error = await run_failing(HttpRequest(node_id="p", url="ftp://127.0.0.1/file"))

    assert error.type == "HttpRequestInvalid"
    assert error.non_retryable


async def test_cancellation_aborts_request(server: LocalServer) -> None:
    arrived = asyncio.Event()
    disconnected = asyncio.Event()

    async def wait_for_hang_up(_request: Received, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await reader.read()
        disconnected.set()

    server.routes["/slow"] = wait_for_hang_up
    env = ActivityEnvironment()
    heartbeats: list[tuple] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)

    call = asyncio.create_task(run(HttpRequest(node_id="p", url=server.url("/slow")), env))
    await arrived.wait()
    env.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(disconnected.wait(), timeout=10)
    assert heartbeats


# Secrets


async def test_secret_marker_resolved_in_header(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWRIGHT_SECRET_API_TOKEN", SECRET_VALUE)
    server.routes["/me"] = json_reply(200, {"ok": True})

    result = await run(
        HttpRequest(
            node_id="p",
            url=server.url("/me"),
            headers={"Authorization": f"Bearer {secret_marker('API_TOKEN')}"},
            query={"key": secret_marker("API_TOKEN")},
        )
    )

    assert result["json"] == {"ok": True}
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET_VALUE}"
    assert server.requests[0].query == {"key": [SECRET_VALUE]}


async def test_secret_absent_from_errors(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWRIGHT_SECRET_API_TOKEN", SECRET_VALUE)

    async def echo_auth(request: Received, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await respond(writer, 401, f"bad token {request.headers['authorization']}".encode())

    server.routes["/me"] = echo_auth
    marker = secret_marker("API_TOKEN")

    error = await run_failing(
        HttpRequest(
            node_id="p",
            url=server.url("/me") + f"?key={marker}",
            headers={"Authorization": f"Bearer {marker}"},
        )
    )

    assert error.type == "HttpClientError"
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET_VALUE}"
    assert SECRET_VALUE not in error.message
    assert f"bad token Bearer {REDACTED}" in error.message


async def test_missing_secret_permanent(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGWRIGHT_SECRET_NOT_SET", raising=False)
    monkeypatch.delenv("DAGWRIGHT_SECRETS_FILE", raising=False)

    error = await run_failing(
        HttpRequest(node_id="p", url=server.url("/x"), headers={"X-Key": secret_marker("NOT_SET")})
    )

    assert error.type == "SecretNotFound"
    assert error.non_retryable
    assert "'NOT_SET'" in error.message
    assert "DAGWRIGHT_SECRET_NOT_SET" in error.message
    assert server.requests == []


async def test_log_line_has_fields(server: LocalServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DAGWRIGHT_SECRET_API_TOKEN", SECRET_VALUE)
    server.routes["/logged"] = reply(200)

    with caplog.at_level(logging.INFO, logger="dagwright.activities.http"):
        await run(HttpRequest(node_id="log_me", url=server.url("/logged") + f"?k={secret_marker('API_TOKEN')}"))

    records = [record for record in caplog.records if record.name == "dagwright.activities.http"]
    assert len(records) == 1
    record = records[0]
    assert record.node_id == "log_me"
    assert record.method == "GET"
    assert record.host == f"127.0.0.1:{server.port}"
    assert record.status == 200
    assert record.attempt == 1
    assert record.latency_ms >= 0
    assert SECRET_VALUE not in record.getMessage()


def test_resolve_secrets_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWRIGHT_SECRET_A", "alpha")
    value = {"k": [f"x{secret_marker('A')}y", 3, None], secret_marker("A"): True}

    resolved = resolve_secrets(value)

    assert resolved == {"k": ["xalphay", 3, None], "alpha": True}
    assert referenced_secrets(value) == {"A"}


def test_secrets_file_used_after_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"FROM_FILE": "file-value", "BOTH": "file"}))
    environ = {"DAGWRIGHT_SECRETS_FILE": str(secrets_file), "DAGWRIGHT_SECRET_BOTH": "env"}

    resolved = resolve_secrets([secret_marker("FROM_FILE"), secret_marker("BOTH")], environ=environ)

    assert resolved == ["file-value", "env"]


def test_secrets_file_invalid(tmp_path) -> None:
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text('{"A": 1}')

    with pytest.raises(ApplicationError) as caught:
        resolve_secrets(secret_marker("A"), environ={"DAGWRIGHT_SECRETS_FILE": str(secrets_file)})

    assert caught.value.type == "SecretsFileInvalid"
    assert caught.value.non_retryable


def test_secrets_view_returns_markers() -> None:
    secrets = SecretsView()

    assert secrets.API_KEY == secret_marker("API_KEY")
    assert secrets["API_KEY"] == secret_marker("API_KEY")
    assert not hasattr(secrets, "__html__")
    with pytest.raises(SecretNameError, match="api_key"):
        secrets.api_key


def test_redact_plain_and_url_encoded() -> None:
    text = f"token {SECRET_VALUE} in https://h/?k=s3cr3t%2Fvalue%2B42"

    assert redact(text, [SECRET_VALUE]) == f"token {REDACTED} in https://h/?k={REDACTED}"


# Through a real Temporal worker


@workflow.defn(name="HttpRetryProbe", sandboxed=False)
class HttpRetryProbe:
    """Runs one dagwright.http activity with a fast retry policy, as the DAG workflow would."""

    @workflow.run
    async def run(self, request: HttpRequest) -> dict:
        return await workflow.execute_activity(
            "dagwright.http",
            request,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=3),
            result_type=dict,
        )


async def test_worker_honours_retry_after(server: LocalServer, client: Client, task_queue: str) -> None:
    arrivals: list[float] = []

    async def limited_once(_request: Received, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            await respond(writer, 429, headers={"Retry-After": "1"})
        else:
            await respond(writer, 200, b'{"ok": true}', {"Content-Type": "application/json"})

    server.routes["/limited"] = limited_once

    async with Worker(client, task_queue=task_queue, workflows=[HttpRetryProbe], activities=[http_request]):
        result = await client.execute_workflow(
            HttpRetryProbe.run,
            HttpRequest(node_id="probe", url=server.url("/limited")),
            id=f"http-probe-{uuid.uuid4()}",
            task_queue=task_queue,
        )

    assert result["json"] == {"ok": True}
    assert len(arrivals) == 2
    # The retry policy alone would retry after 10 ms; Retry-After asks for 1 s.
    assert arrivals[1] - arrivals[0] >= 0.9


async def test_worker_404_not_retried(server: LocalServer, client: Client, task_queue: str) -> None:
    server.routes["/gone"] = reply(404, b"gone")

    async with Worker(client, task_queue=task_queue, workflows=[HttpRetryProbe], activities=[http_request]):
        with pytest.raises(WorkflowFailureError) as caught:
            await client.execute_workflow(
                HttpRetryProbe.run,
                HttpRequest(node_id="probe", url=server.url("/gone")),
                id=f"http-probe-{uuid.uuid4()}",
                task_queue=task_queue,
            )

    activity_error = caught.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, ApplicationError)
    assert activity_error.cause.type == "HttpClientError"
    assert len(server.requests) == 1
