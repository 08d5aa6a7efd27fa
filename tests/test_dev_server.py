"""The embedded dev server launcher and the choice of Temporal server, against real servers."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from dagwright.cli.connect import (
    SOURCE_EMBEDDED,
    SOURCE_ENV,
    TemporalSetupError,
    configured_target,
    connect,
    ensure_server,
    server_answers,
    split_address,
)
from dagwright.cli.server import (
    EXIT_NOT_RUNNING,
    PORT_ENV,
    SEARCH_ATTRIBUTES,
    UI_PORT_ENV,
    DevServerError,
    dev_server_status,
    load_settings,
    search_attribute_keys,
    server_app,
    start_dev_server,
    state_paths,
    stop_dev_server,
    target_for,
)

CLIENT_ENV_VARS = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_PROFILE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
)


@pytest.fixture
def no_client_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's TEMPORAL_* variables and Temporal config file from the test."""
    for name in CLIENT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "temporal.toml"
    config_file.write_text("")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config_file))


@pytest.fixture
def dev_ports(monkeypatch: pytest.MonkeyPatch, unused_tcp_port_factory) -> tuple[int, int]:
    """Free gRPC and Web UI ports for the embedded server, set through the environment."""
    port = unused_tcp_port_factory()
    ui_port = unused_tcp_port_factory()
    monkeypatch.setenv(PORT_ENV, str(port))
    monkeypatch.setenv(UI_PORT_ENV, str(ui_port))
    return port, ui_port


@pytest.fixture
def embedded(state_dir: Path, dev_ports: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """Ports for an embedded server that is stopped after the test, even when the test fails."""
    yield dev_ports
    stop_dev_server()


def temporal_type_name(kind: str) -> str:
    """Map a settings type such as "KeywordList" to INDEXED_VALUE_TYPE_KEYWORD_LIST."""
    return "INDEXED_VALUE_TYPE_" + re.sub(r"(?<!^)(?=[A-Z])", "_", kind).upper()


async def list_workflow_ids(client: Client, query: str, expected: str) -> list[str]:
    """List workflow ids for the query, polling up to 10 s because visibility lags behind."""
    deadline = time.monotonic() + 10
    while True:
        ids = [execution.id async for execution in client.list_workflows(query)]
        if expected in ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.2)


# --- embedded server lifecycle -------------------------------------------------------------


async def test_embedded_server_restart_keeps_runs(
    embedded: tuple[int, int], task_queue: str
) -> None:
    port, ui_port = embedded

    started = await start_dev_server()
    assert started.running
    assert started.address == f"127.0.0.1:{port}"
    assert started.ui_url == f"http://127.0.0.1:{ui_port}"
    assert state_paths().pid.read_text().strip() == str(started.pid)

    status = dev_server_status()
    assert status.running
    assert status.pid == started.pid

    # The project search attributes exist, with their types from the settings file.
    client = await connect(target_for(started, "default"))
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    registered = {
        name: IndexedValueType.Name(value) for name, value in response.custom_attributes.items()
    }
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert registered.get(name) == temporal_type_name(kind), name

    # A run started with no worker stays open, so it must still be there after a restart.
    workflow_id = f"persist-{uuid.uuid4()}"
    marker = str(uuid.uuid4())
    status_key = search_attribute_keys()["DagwrightStatus"]
    await client.start_workflow(
        "DagWorkflow",
        {"nodes": []},
        id=workflow_id,
        task_queue=task_queue,
        search_attributes=TypedSearchAttributes([SearchAttributePair(status_key, marker)]),
    )

    assert stop_dev_server() == started.pid
    stopped = dev_server_status()
    assert not stopped.running
    assert stopped.pid is None
    assert not state_paths().pid.exists()
    assert not server_answers(started.address)
    assert state_paths().database.is_file()

    # The restart also brings a search attribute that the database lacks. The dev server only
    # registers attributes when it creates a namespace, so the launcher must add this one.
    extended = {**SEARCH_ATTRIBUTES, "DagwrightExtra": "Int"}
    settings = replace(load_settings(), search_attributes=extended)
    restarted = await start_dev_server(settings)
    assert restarted.running
    assert restarted.pid != started.pid

    client = await connect(target_for(restarted, "default"))
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    assert response.custom_attributes["DagwrightExtra"] == IndexedValueType.INDEXED_VALUE_TYPE_INT

    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    ids = await list_workflow_ids(client, f'DagwrightStatus = "{marker}"', workflow_id)
    assert ids == [workflow_id]


async def test_start_returns_running_server(embedded: tuple[int, int]) -> None:
    first = await start_dev_server()
    second = await start_dev_server()
    assert second.pid == first.pid
    assert second.running


async def test_start_rejects_port_of_other_program(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def close_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    monkeypatch.setenv(PORT_ENV, str(port))
    try:
        with pytest.raises(DevServerError, match="not a Temporal server"):
            await start_dev_server()
    finally:
        listener.close()
        await listener.wait_closed()
    assert not state_paths().pid.exists()


async def test_start_rejects_port_of_other_temporal(
    temporal_env: WorkflowEnvironment, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = split_address(temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv(PORT_ENV, str(port))
    with pytest.raises(DevServerError, match="dagwright did not start already listens"):
        await start_dev_server()


async def test_start_reports_server_exit(embedded: tuple[int, int]) -> None:
    state_paths().database.write_text("not a SQLite database")
    with pytest.raises(DevServerError, match="exited with code 1 during startup") as caught:
        await start_dev_server()
    assert str(state_paths().log) in str(caught.value)
    assert not state_paths().pid.exists()


def test_stale_pid_file_is_not_signalled(state_dir: Path) -> None:
    # The pid of this test process is alive but is no dev server, so it must be left alone.
    state_paths().pid.write_text(f"{os.getpid()}\n")
    assert not dev_server_status().running
    assert dev_server_status().pid is None
    assert stop_dev_server() is None
    assert not state_paths().pid.exists()


def test_cli_start_status_stop(embedded: tuple[int, int]) -> None:
    port, _ = embedded
    runner = CliRunner()

    stopped = runner.invoke(server_app, ["status"])
    assert stopped.exit_code == EXIT_NOT_RUNNING
    assert "not running" in stopped.stdout

    started = runner.invoke(server_app, ["start"])
    assert started.exit_code == 0, started.output
    assert f"127.0.0.1:{port}" in started.stdout
    assert "dagwright server stop" in started.stdout

    running = runner.invoke(server_app, ["status"])
    assert running.exit_code == 0
    assert "is running" in running.stdout

    stop = runner.invoke(server_app, ["stop"])
    assert stop.exit_code == 0
    assert "Stopped" in stop.stdout

    after = runner.invoke(server_app, ["status"])
    assert after.exit_code == EXIT_NOT_RUNNING


def test_cli_start_failure_is_one_line(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_ENV, "not-a-port")
    result = CliRunner().invoke(server_app, ["start"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Invalid DAGWRIGHT_DEV_SERVER_PORT 'not-a-port'")
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


# --- choosing the server -------------------------------------------------------------------


async def test_ensure_server_uses_temporal_address(
    temporal_env: WorkflowEnvironment,
    state_dir: Path,
    no_client_config: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)

    target = await ensure_server()
    assert target.address == address
    assert target.source == SOURCE_ENV
    assert target.namespace == "default"
    assert not state_paths().pid.exists()

    client = await connect(target)
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    assert described.namespace_info.name == "default"


async def test_ensure_server_starts_embedded_once(
    embedded: tuple[int, int], no_client_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = embedded

    first = await ensure_server()
    assert first.source == SOURCE_EMBEDDED
    assert first.address == f"127.0.0.1:{port}"
    assert "dagwright server stop" in capsys.readouterr().err
    pid = dev_server_status().pid

    second = await ensure_server()
    assert second.source == SOURCE_EMBEDDED
    assert dev_server_status().pid == pid
    assert capsys.readouterr().err == ""


async def test_ensure_server_without_auto_start(
    state_dir: Path, dev_ports: tuple[int, int], no_client_config: None
) -> None:
    port, _ = dev_ports
    with pytest.raises(TemporalSetupError, match=f"none listens on 127.0.0.1:{port}"):
        await ensure_server(auto_start=False)


def test_configured_target_from_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLIENT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "temporal.toml"
    config_file.write_text(
        '[profile.staging]\naddress = "127.0.0.1:7999"\nnamespace = "orders"\n'
        '[profile.staging.grpc_meta]\nx-team = "ops"\n'
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config_file))
    assert configured_target() is None

    monkeypatch.setenv("TEMPORAL_PROFILE", "staging")
    target = configured_target()
    assert target is not None
    assert target.address == "127.0.0.1:7999"
    assert target.namespace == "orders"
    assert target.source == "profile staging"
    assert target.rpc_metadata == {"x-team": "ops"}
    assert target.tls is False

    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:7444")
    monkeypatch.setenv("TEMPORAL_API_KEY", "secret-key")
    overridden = configured_target()
    assert overridden is not None
    assert overridden.address == "127.0.0.1:7444"
    assert overridden.source == SOURCE_ENV
    assert overridden.tls is True
    assert "secret-key" not in overridden.describe()
    assert "secret-key" not in repr(overridden)


def test_configured_target_rejects_unknown_profile(
    tmp_path: Path, no_client_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_PROFILE", "missing")
    with pytest.raises(TemporalSetupError, match="missing"):
        configured_target()


# --- small units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7233", ("127.0.0.1", 7233)),
        ("localhost", ("localhost", 7233)),
        ("[::1]:7000", ("::1", 7000)),
        ("temporal.example:443", ("temporal.example", 443)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


def test_split_address_rejects_bad_port() -> None:
    with pytest.raises(TemporalSetupError, match="not a number"):
        split_address("127.0.0.1:http")


async def test_server_answers_open_and_closed_port(unused_tcp_port: int) -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    open_port = listener.sockets[0].getsockname()[1]
    try:
        assert server_answers(f"127.0.0.1:{open_port}")
    finally:
        listener.close()
        await listener.wait_closed()
    assert not server_answers(f"127.0.0.1:{unused_tcp_port}")


def test_settings_port_overrides() -> None:
    settings = load_settings(environ={PORT_ENV: "7300", UI_PORT_ENV: "8300"})
    assert settings.port == 7300
    assert settings.ui_port == 8300
    assert load_settings(environ={}).port == 7233

    with pytest.raises(DevServerError, match="expected a TCP port"):
        load_settings(environ={PORT_ENV: "70000"})


def test_settings_search_attributes() -> None:
    assert SEARCH_ATTRIBUTES == {
        "DagwrightWorkflow": "Keyword",
        "DagwrightVersion": "Keyword",
        "DagwrightDefinitionHash": "Keyword",
        "DagwrightStatus": "Keyword",
        "DagwrightParentRun": "Keyword",
    }
    keys = search_attribute_keys()
    assert sorted(keys) == sorted(SEARCH_ATTRIBUTES)
    assert all(key.name == name for name, key in keys.items())


def test_stop_while_starting_process_runs(embedded: tuple[int, int]) -> None:
    # The server is a child of the process that started it. Once stopped, it stays a zombie
    # until that process reaps it, and stop must not mistake the zombie for a live server.
    starter_code = (
        "import asyncio, sys\n"
        "from dagwright.cli.server import start_dev_server\n"
        "status = asyncio.run(start_dev_server())\n"
        "print(status.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", starter_code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert starter.stdout is not None
        server_pid = int(starter.stdout.readline())

        began = time.monotonic()
        assert stop_dev_server() == server_pid
        assert time.monotonic() - began < load_settings().stop_timeout
        assert not dev_server_status().running
    finally:
        starter.communicate(input="", timeout=30)
