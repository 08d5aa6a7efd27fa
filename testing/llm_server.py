"""A local stand-in for the Mistral API and OpenAI-compatible servers, for tests without a key.

`LlmStandIn` runs a real HTTP server on 127.0.0.1 in a background thread, so it works from
plain code, from inside a running asyncio event loop and from the command line (`serve`).
Replies and failures are scripted with rules (see `llm_script`); every request is recorded.

Usage::

    with LlmStandIn() as llm:
        llm.add_rule(fail="rate_limit", times=2)
        llm.add_rule(contains="summarise", reply={"json": {"summary": "ok"}})
        ...  # point the workflow at llm.base_url with llm.api_key
        assert llm.requests[-1].status == 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dagwright.testing.llm_endpoints import (
    MISTRAL_PREFIX,
    OPENAI_PREFIX,
    Outcome,
    StandInState,
    api_style,
    handle,
)
from dagwright.testing.llm_models import ModelCatalogue
from dagwright.testing.llm_recording import REDACTED, RecordedRequest
from dagwright.testing.llm_script import Reply, Rule, RuleBook, Script, load_script

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "test-key"
# Every response reports this `created` time, so recorded responses compare equal across runs.
DEFAULT_CREATED = 1_700_000_000

ScriptSource = Script | str | Path | list[Rule | dict[str, Any]]


class LlmStandIn:
    """A scripted, recording Mistral/OpenAI server on a local port.

    Use it as a context manager (sync or async) or call `start` and `stop`. Rules added with
    `add_rule` or loaded with `script` decide each reply; `requests` lists what arrived.
    """

    def __init__(
        self,
        script: ScriptSource | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        created: int = DEFAULT_CREATED,
        openai_requires_key: bool = True,
    ) -> None:
        self.api_key = api_key
        self._host = host
        self._requested_port = port
        self._initial_script = _to_script(script)
        self._state = StandInState(
            api_key=api_key,
            catalogue=ModelCatalogue(self._initial_script.models),
            rules=RuleBook(self._initial_script),
            created=created,
            openai_requires_key=openai_requires_key,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the port and serve requests in a daemon thread; return self."""
        if self._server is not None:
            raise RuntimeError(f"LLM stand-in is already running at {self.url}; call stop() first")
        self._state.stopping.clear()
        self._server = _Server((self._host, self._requested_port), self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"llm-stand-in-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("LLM stand-in started at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, end held connections and close open ones. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._state.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None
        logger.info("LLM stand-in stopped after %d requests", len(self.requests))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # stop() waits for the serving thread, so it runs off the event loop.
        await asyncio.to_thread(self.stop)

    # --- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (raises if the stand-in is not running)."""
        if self._server is None:
            raise RuntimeError(
                "LLM stand-in is not running; call start() or use it as a context manager"
            )
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The server root, e.g. http://127.0.0.1:PORT."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The Mistral base URL, e.g. http://127.0.0.1:PORT/v1."""
        return self.url + MISTRAL_PREFIX

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/openai/v1."""
        return self.url + OPENAI_PREFIX

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header the stand-in accepts."""
        return {"Authorization": f"Bearer {self.api_key}"}

    # --- scripting ------------------------------------------------------------------------

    def script(self, source: ScriptSource) -> None:
        """Replace all rules and the default reply with `source` and accept its extra models.

        `source` is a `Script`, a path to a YAML/JSON script file, or a list of rules.
        """
        script = _to_script(source)
        self._state.rules = RuleBook(script)
        for name in script.models:
            self._state.catalogue.add_chat_model(name)

    def add_rule(self, rule: Rule | None = None, **fields: Any) -> Rule:
        """Append a rule, given as a `Rule` or as its fields (`add_rule(fail="rate_limit", times=2)`)."""
        if rule is None:
            rule = Rule.model_validate(fields)
        elif fields:
            raise TypeError("add_rule takes a Rule or keyword fields, not both")
        self._state.rules.add(rule)
        return rule

    def set_default_reply(self, reply: Reply | str) -> None:
        """Set the reply sent when no rule matches."""
        self._state.rules.default_reply = Reply(text=reply) if isinstance(reply, str) else reply

    def add_model(self, name: str, context_length: int = 32_768) -> None:
        """Accept `name` as a chat model on the Mistral paths (unknown names get 400)."""
        self._state.catalogue.add_chat_model(name, context_length)

    def rule_count(self) -> int:
        """Return the number of rules, used up or not."""
        return len(self._state.rules)

    def rule_uses(self) -> dict[str, int]:
        """Return how many times each rule has applied, by rule name or `rule[i]`."""
        return self._state.rules.uses()

    # --- recording ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        return self._state.recorder.snapshot()

    def model_counts(self) -> dict[str, int]:
        """Return how many requests named each model, whatever their outcome."""
        return self._state.recorder.model_counts()

    def usage_total(self, model: str | None = None) -> dict[str, int]:
        """Sum the `usage` of every successful response, or of those for `model`."""
        return self._state.recorder.usage_total(model)

    def reset(self) -> None:
        """Forget recorded requests and restore the rules this stand-in was created with."""
        self._state.recorder.clear()
        self._state.rules = RuleBook(self._initial_script)


def _to_script(source: ScriptSource | None) -> Script:
    if source is None:
        return Script()
    if isinstance(source, Script):
        return source
    if isinstance(source, (str, Path)):
        return load_script(source)
    return Script(rules=[r if isinstance(r, Rule) else Rule.model_validate(r) for r in source])


class _Server(ThreadingHTTPServer):
    """A threading HTTP server with the stand-in's state and the set of its open connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: StandInState) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Add or remove one client connection from the set closed by `close_connections`."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection, so idle keep-alive readers exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client already closed it


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        # The stand-in logs one line per request itself; keep http.server off stderr.
        pass

    def _serve(self) -> None:
        state = self.server.state
        request = self._record(state)
        try:
            outcome = handle(state, request)
        except Exception:
            # A bug in the stand-in must reach the test as a clear 500, not a dropped connection.
            logger.exception(
                "LLM stand-in failed on request %d (%s %s)",
                request.index,
                request.method,
                request.path,
            )
            outcome = Outcome(
                500,
                {
                    "object": "error",
                    "message": "dagwright LLM stand-in internal error; see its log",
                    "type": "stand_in_error",
                    "param": None,
                    "code": None,
                },
            )

        if outcome.wait > 0:
            state.stopping.wait(outcome.wait)
        if outcome.drop or state.stopping.is_set():
            self.close_connection = True
            logger.info(
                "%s %s model=%s rule=%s: connection dropped",
                request.method,
                request.path,
                request.model,
                request.rule,
            )
            return

        request.status = outcome.status
        self._send(outcome)
        logger.info(
            "%s %s model=%s rule=%s status=%d",
            request.method,
            request.path,
            request.model,
            request.rule,
            outcome.status,
        )

    def _record(self, state: StandInState) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        authorization = self.headers.get("Authorization")
        headers = {key.lower(): value for key, value in self.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = REDACTED
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None

        request = RecordedRequest(
            method=self.command,
            path=self.path,
            api=api_style(self.path),
            headers=headers,
            auth_present=authorization is not None,
            auth_valid=_is_valid_key(authorization, state.api_key),
            body=body,
            raw_body=raw,
        )
        state.recorder.add(request)
        return request

    def _send(self, outcome: Outcome) -> None:
        payload = outcome.raw if outcome.raw is not None else json.dumps(outcome.body).encode()
        self.send_response(outcome.status)
        headers = {"Content-Type": "application/json", **outcome.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _is_valid_key(authorization: str | None, api_key: str) -> bool:
    if authorization is None:
        return False
    scheme, _, key = authorization.partition(" ")
    return scheme.lower() == "bearer" and key.strip() == api_key


# --- command line -----------------------------------------------------------------------------


def serve(script_path: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the stand-in in the foreground until SIGINT or SIGTERM, printing its URLs and key.

    Raises:
        ValueError: the script file is invalid (the message names the file and field).
        OSError: the address cannot be bound.
    """
    stand_in = LlmStandIn(script_path, host=host, port=port)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())

    stand_in.start()
    rules = stand_in.rule_count()
    print(f"dagwright LLM stand-in running with {rules} scripted rule(s)", flush=True)
    print(f"  Mistral base URL: {stand_in.base_url}", flush=True)
    print(f"  OpenAI base URL:  {stand_in.openai_base_url}", flush=True)
    print(f"  API key:          {stand_in.api_key}", flush=True)
    print("Press Ctrl+C to stop.", flush=True)
    try:
        # A timed wait keeps the main thread responsive to Ctrl+C on every platform.
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stand_in.stop()
        print(f"Stopped after {len(stand_in.requests)} request(s).", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for `python -m dagwright.testing.llm_server`."""
    parser = argparse.ArgumentParser(
        description="Run the dagwright LLM stand-in (Mistral and OpenAI APIs)."
    )
    parser.add_argument("--script", help="YAML or JSON script file with rules and a default reply")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind; 0 picks a free port (default 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(args.script, args.host, args.port)


if __name__ == "__main__":
    main()
