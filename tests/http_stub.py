"""A scripted HTTP/1.1 server on 127.0.0.1 that records every request it receives.

Tests script replies per path (status, headers, body, a server-side delay, a dropped
connection, or "reply only after another path was requested") and then assert on what the
server saw: methods, headers, bodies, arrival times and how many requests overlapped.
Every response closes its connection, so each request arrives on a connection of its own.

Usage::

    async with HttpStub() as stub:
        stub.script("/flaky", Reply(status=500), Reply(json={"ok": True}))
        ...  # run a workflow whose http node calls stub.url + "/flaky"
        assert len(stub.requests("/flaky")) == 2
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

# Upper bound on any wait inside the stub (a delay or an `after` condition), so a test that
# scripts a wait which never ends still gets a reply instead of hanging.
MAX_WAIT_SECONDS = 60.0

# Status of the reply sent when an `after` condition is not met within its timeout.
AFTER_TIMEOUT_STATUS = 599


@dataclass(frozen=True)
class Reply:
    """One scripted response.

    `json` is sent as application/json, otherwise `text` as text/plain. `delay` is waited on
    the server after the request arrives. `drop` closes the connection without any response.
    `after` delays the reply until the named path has received at least one request (or
    `after_timeout` seconds pass, which gives status 599).
    """

    status: int = 200
    json: Any = None
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    after: str | None = None
    after_timeout: float = 10.0


@dataclass
class RecordedRequest:
    """One request as the stub read it; times are `time.monotonic()` seconds."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    finished_at: float | None = None
    client_disconnected: bool = False

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


class HttpStub:
    """A local HTTP server whose replies are scripted per path."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self._requests: list[RecordedRequest] = []
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._total_in_flight = 0
        self._max_total_in_flight = 0
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a port the OS picks."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and abort every request still being handled."""
        self.release()
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> HttpStub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Base URL of the stub, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ scripting and inspection

    def script(self, path: str, *replies: Reply) -> None:
        """Reply to requests for `path` with `replies` in order, repeating the last one."""
        if not replies:
            raise ValueError(f"script({path!r}) needs at least one Reply")
        self._scripts[path] = list(replies)

    def release(self) -> None:
        """End every pending and future delay now, so a test can shut its worker down at once."""
        self._released.set()

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Return the requests received so far, for one path or for all, in arrival order."""
        return [request for request in self._requests if path is None or request.path == path]

    def max_concurrent(self, path: str | None = None) -> int:
        """Return the max number of requests that were being handled at the same time."""
        if path is None:
            return self._max_total_in_flight
        return self._max_in_flight.get(path, 0)

    async def wait_for_requests(self, path: str, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until `path` has received `count` requests and return them.

        Raises:
            TimeoutError: fewer requests arrived within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests(path)) >= count)
        return self.requests(path)

    # ------------------------------------------------------------ serving

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            await self._record_arrival(request)
            try:
                await self._answer(request, reader, writer)
            finally:
                await self._record_finish(request)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.info("stub connection ended early: %s", exc)
        finally:
            writer.close()

    async def _answer(self, request: RecordedRequest, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        reply = self._next_reply(request.path)
        if reply.after is not None and not await self._wait_for_path(reply.after, reply.after_timeout):
            reply = Reply(status=AFTER_TIMEOUT_STATUS, text=f"stub: no request to {reply.after} arrived")
        if reply.delay and not await self._delay(reply.delay, reader):
            request.client_disconnected = True
            return
        if reply.drop:
            return
        writer.write(_encode_response(reply))
        await writer.drain()

    def _next_reply(self, path: str) -> Reply:
        replies = self._scripts.get(path)
        if replies is None:
            return Reply(status=404, text=f"stub: no script for {path}")
        return replies.pop(0) if len(replies) > 1 else replies[0]

    async def _wait_for_path(self, path: str, timeout: float) -> bool:
        try:
            async with asyncio.timeout(min(timeout, MAX_WAIT_SECONDS)):
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(self.requests(path)))
        except TimeoutError:
            return False
        return True

    async def _delay(self, seconds: float, reader: asyncio.StreamReader) -> bool:
        """Wait `seconds` (or until released); return False if the client closed the connection."""
        # The client sends nothing after its request, so a completed read means it hung up.
        hang_up = asyncio.ensure_future(reader.read(1))
        released = asyncio.ensure_future(self._released.wait())
        try:
            done, _ = await asyncio.wait(
                [hang_up, released], timeout=min(seconds, MAX_WAIT_SECONDS),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hang_up.cancel()
            released.cancel()
        return hang_up not in done

    async def _record_arrival(self, request: RecordedRequest) -> None:
        async with self._changed:
            self._requests.append(request)
            count = self._in_flight.get(request.path, 0) + 1
            self._in_flight[request.path] = count
            self._max_in_flight[request.path] = max(self._max_in_flight.get(request.path, 0), count)
            self._total_in_flight += 1
            self._max_total_in_flight = max(self._max_total_in_flight, self._total_in_flight)
            self._changed.notify_all()

    async def _record_finish(self, request: RecordedRequest) -> None:
        async with self._changed:
            request.finished_at = time.monotonic()
            self._in_flight[request.path] -= 1
            self._total_in_flight -= 1
            self._changed.notify_all()


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    """Read one request with a Content-Length body; return None if the client sent nothing."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    received_at = time.monotonic()
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    # NOTE: chunked request bodies are not supported; httpx sends Content-Length for the
    # bodies that dagwright's http activity builds.
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return RecordedRequest(method=method, path=parts.path, query=parts.query, headers=headers,
                           body=body, received_at=received_at)


def _encode_response(reply: Reply) -> bytes:
    if reply.json is not None:
        body = json.dumps(reply.json).encode("utf-8")
        content_type = "application/json"
    else:
        body = reply.text.encode("utf-8")
        content_type = "text/plain; charset=utf-8"
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Stub Status"
    headers = {"Content-Type": content_type, **reply.headers,
               "Content-Length": str(len(body)), "Connection": "close"}
    lines = [f"HTTP/1.1 {reply.status} {reason}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
