"""Hostile input: each case ends in one clear error (or in literal data), never in a stuck run.

Every run here must end within HOSTILE_TIMEOUT seconds, and the same worker must then finish
a second, ordinary run, which shows that the hostile one did not break it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpcore._backends.auto import AutoBackend
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from dagwright.interpreter.diagnostics import CompileError
from dagwright.interpreter.inputs import validate_inputs
from dagwright.interpreter.run_types import WORKFLOW_TYPE, RunRequest
from http_stub import HttpStub, Reply
from workflow_helpers import (
    RunOutcome,
    compile_yaml,
    dag_worker,
    history_events,
    run_definition,
)

HOSTILE_TIMEOUT = 30.0

PING_WORKFLOW = """
dagwright: 1
name: ping
nodes:
  pong:
    type: transform
    value: pong
outputs:
  answer: "{{ nodes.pong.output }}"
"""


async def run_hostile(client: Client, task_queue: str, folder: Path, definition: dict[str, Any],
                      inputs: dict[str, Any] | None = None) -> RunOutcome:
    """Run `definition`, then an ordinary run on the same worker; return the first outcome."""
    ping_folder = folder / "ping"
    ping_folder.mkdir(exist_ok=True)
    ping = compile_yaml(ping_folder, PING_WORKFLOW)
    async with dag_worker(client, task_queue):
        outcome = await run_definition(client, task_queue, definition, inputs, timeout=HOSTILE_TIMEOUT)
        follow_up = await run_definition(client, task_queue, ping, timeout=HOSTILE_TIMEOUT)
    assert follow_up.result is not None, follow_up.error_message
    assert follow_up.result["outputs"] == {"answer": "pong"}
    return outcome


async def activity_failure_types(handle: WorkflowHandle) -> list[str]:
    """Return the error type of each failed activity attempt that history records."""
    return [
        event.activity_task_failed_event_attributes.failure.application_failure_info.type
        for event in await history_events(handle)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]


# ---------------------------------------------------------------- template injection through data

BRACES = "{{ secrets.TOKEN }} {% for x in range(3) %}loop{% endfor %} {{ ''.__class__ }} {# c #}"

INJECTION_WORKFLOW = """
dagwright: 1
name: injection
inputs:
  note: {{type: string}}
nodes:
  fetch:
    type: http
    url: "{url}/page"
    response: text
  answer:
    type: python
    function: echo
    args: {{value: {{text: "{{{{ inputs.note }}}}", model: fake-llm}}}}
  combine:
    type: transform
    value:
      from_input: "Note: {{{{ inputs.note }}}}"
      from_http: "Page: {{{{ nodes.fetch.output.text }}}}"
      from_tool: "Answer: {{{{ nodes.answer.output.text }}}}"
  post:
    type: http
    method: POST
    url: "{url}/echo"
    json: {{said: "{{{{ nodes.answer.output.text }}}}"}}
outputs:
  combined: "{{{{ nodes.combine.output }}}}"
"""


async def test_braces_in_data_stay_literal(client: Client, task_queue: str, tmp_path: Path) -> None:
    async with HttpStub() as stub:
        stub.script("/page", Reply(text=BRACES))
        stub.script("/echo", Reply(json={"ok": True}))
        definition = compile_yaml(tmp_path, INJECTION_WORKFLOW.format(url=stub.url))
        outcome = await run_hostile(client, task_queue, tmp_path, definition, {"note": BRACES})
        [posted] = stub.requests("/echo")

    assert outcome.result is not None, outcome.error_message
    assert outcome.result["outputs"]["combined"] == {
        "from_input": f"Note: {BRACES}",
        "from_http": f"Page: {BRACES}",
        "from_tool": f"Answer: {BRACES}",
    }
    assert posted.json() == {"said": BRACES}


# ---------------------------------------------------------------- sandbox escapes

ESCAPE_WORKFLOW = """
dagwright: 1
name: escape
inputs:
  text: {{type: string, default: abc}}
nodes:
  probe:
    type: transform
    value: "{{{{ {expression} }}}}"
"""


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cycler.__init__.__globals__", "'cycler' is not available"),
        ("lipsum.__globals__", "'lipsum' is not available"),
        ("namespace()", "'namespace' is not available"),
        ("inputs.__class__", "unknown input '__class__'"),
        ("nodes.__class__.__base__.__subclasses__()", "unknown node '__class__'"),
    ],
)
def test_sandbox_escape_rejected_at_compile_time(expression: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(CompileError) as caught:
        compile_yaml(tmp_path, ESCAPE_WORKFLOW.format(expression=expression))

    assert message in caught.value.diagnostics[0].format()


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "inputs.text.__class__.__mro__[1].__subclasses__()",
        "self.__init__.__globals__",
        "range.__globals__",
        "inputs.text | attr('__class__')",
    ],
)
async def test_sandbox_escape_fails_node(expression: str, client: Client, task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, ESCAPE_WORKFLOW.format(expression=expression))

    outcome = await run_hostile(client, task_queue, tmp_path, definition)

    assert outcome.failure is not None
    assert "node 'probe'" in outcome.error_message
    assert "not allowed" in outcome.error_message
    assert outcome.statuses() == {"probe": "failed"}


# ---------------------------------------------------------------- tool registry

TOOL_WORKFLOW = """
dagwright: 1
name: tools
nodes:
  call:
    type: python
    function: {function}
    args: {{value: 1}}
"""


@pytest.mark.parametrize("function", ["os.system", "_private_helper", "__import__", "subprocess.run"])
def test_unregistered_tool_rejected_at_compile_time(function: str, tmp_path: Path) -> None:
    with pytest.raises(CompileError) as caught:
        compile_yaml(tmp_path, TOOL_WORKFLOW.format(function=json.dumps(function)))

    assert f"unknown tool '{function}'" in caught.value.diagnostics[0].format()


@pytest.mark.parametrize("function", ["os.system", "_private_helper", "builtins.eval"])
async def test_unregistered_tool_fails_at_run_time(function: str, client: Client, task_queue: str,
                                                  tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, TOOL_WORKFLOW.format(function="echo"))
    # A definition sent straight to Temporal skips the compiler's check.
    definition["nodes"]["call"]["variants"][0]["params"]["function"] = function

    outcome = await run_hostile(client, task_queue, tmp_path, definition)

    assert outcome.failure is not None
    assert "node 'call' failed after 1 attempt" in outcome.error_message
    assert function in outcome.error_message
    assert await activity_failure_types(outcome.handle) == ["ToolNotFound"]


# ---------------------------------------------------------------- oversized run input

BIG_INPUT_WORKFLOW = """
dagwright: 1
name: big-input
inputs:
  document: {type: string}
nodes:
  measure:
    type: transform
    value: "{{ inputs.document | length }}"
"""


async def test_oversized_input_rejected_at_start(client: Client, task_queue: str, tmp_path: Path) -> None:
    """Without a payload store, the server rejects the start and no run exists."""
    definition = compile_yaml(tmp_path, BIG_INPUT_WORKFLOW)
    document = "z" * (3 * 1024 * 1024)
    request = RunRequest(definition=definition,
                         inputs=validate_inputs(definition["inputs"], {"document": document}))
    workflow_id = f"big-input-{task_queue}"

    async with dag_worker(client, task_queue):
        with pytest.raises(RPCError) as caught:
            async with asyncio.timeout(HOSTILE_TIMEOUT):
                await client.start_workflow(WORKFLOW_TYPE, request, id=workflow_id, task_queue=task_queue)

    assert "size" in caught.value.message.lower()
    with pytest.raises(RPCError, match="not found"):
        await client.get_workflow_handle(workflow_id).describe()


# ---------------------------------------------------------------- hostile HTTP responses

HTTP_WORKFLOW = """
dagwright: 1
name: hostile-http
nodes:
  fetch:
    type: http
    url: "{url}"
    response: {response}
    retry: {{max_attempts: 3, initial_interval: 100ms}}
"""


async def test_deeply_nested_json_response(client: Client, task_queue: str, tmp_path: Path) -> None:
    nested = "[" * 10_000 + "]" * 10_000
    async with HttpStub() as stub:
        stub.script("/deep", Reply(text=nested, headers={"Content-Type": "application/json"}))
        definition = compile_yaml(tmp_path, HTTP_WORKFLOW.format(url=f"{stub.url}/deep", response="json"))
        outcome = await run_hostile(client, task_queue, tmp_path, definition)
        requests = stub.requests("/deep")

    assert outcome.failure is not None
    assert "node 'fetch' failed after 1 attempt" in outcome.error_message
    assert "nested too deeply" in outcome.error_message
    assert len(requests) == 1
    assert await activity_failure_types(outcome.handle) == ["HttpResponseInvalid"]


class RawServer:
    """A server on 127.0.0.1 that replies to every request with one fixed byte string and closes."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self._response)
            await writer.drain()
        finally:
            writer.close()


def raw_response(body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


async def test_invalid_utf8_text_response(client: Client, task_queue: str, tmp_path: Path) -> None:
    body = b"caf\xc3 \xff\xfe ok \xed\xa0\x80"
    async with RawServer(raw_response(body, "text/plain; charset=utf-8")) as server:
        url = f"http://127.0.0.1:{server.port}/text"
        definition = compile_yaml(tmp_path, HTTP_WORKFLOW.format(url=url, response="text"))
        outcome = await run_hostile(client, task_queue, tmp_path, definition)

    assert outcome.failure is None, outcome.error_message
    text = outcome.node("fetch")["output_preview"]
    assert text is not None
    assert "\ufffd" in json.dumps(text, ensure_ascii=False)
    assert "ok" in json.dumps(text)


# ---------------------------------------------------------------- network policy

@pytest.fixture
def no_outside_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if httpx opens a connection to any host but 127.0.0.1."""
    opened: list[str] = []
    real_connect = AutoBackend.connect_tcp

    async def guarded_connect(self: AutoBackend, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        opened.append(host)
        if host != "127.0.0.1":
            raise AssertionError(f"the test tried to connect to {host}:{port}")
        return await real_connect(self, host, port, *args, **kwargs)

    monkeypatch.setattr(AutoBackend, "connect_tcp", guarded_connect)
    yield opened


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "169.254.0.0/16"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal"),
        ("http://[fe80::1]/", "fe80::/10"),
    ],
)
async def test_metadata_address_denied(url: str, rule: str, no_outside_connections: list[str], client: Client,
                                       task_queue: str, tmp_path: Path) -> None:
    definition = compile_yaml(tmp_path, HTTP_WORKFLOW.format(url=url, response="json"))

    outcome = await run_hostile(client, task_queue, tmp_path, definition)

    assert outcome.failure is not None
    assert "node 'fetch' failed after 1 attempt" in outcome.error_message
    assert f"rule '{rule}'" in outcome.error_message
    assert await activity_failure_types(outcome.handle) == ["NetworkPolicyDenied"]
    assert no_outside_connections == []

