"""Large payloads: storage drivers, the `[payloads]` settings, and runs whose history stays small.

The run tests use their own client on the session's dev server, with dagwright's data
converter, because the shared `client` fixture has the plain pydantic converter.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import StorageDriverClaim, StorageDriverRetrieveContext, StorageDriverStoreContext
from temporalio.testing import WorkflowEnvironment

from dagwright.activities.payload_storage import (
    DEFAULT_HARD_CAP,
    DEFAULT_THRESHOLD,
    INLINE_PAYLOAD_LIMIT,
    LocalDirectoryDriver,
    PayloadNotFoundError,
    PostgresDriver,
    dagwright_data_converter,
    default_payload_dir,
    max_node_output_bytes,
    parse_size,
    payload_settings,
)
from dagwright.activities.tools import Tool, ToolRegistry
from dagwright.config import ConfigError, Settings
from dagwright.interpreter.compiler import compile_file
from dagwright.worker import WorkerOptions, build_worker
from http_stub import HttpStub, Reply
from workflow_helpers import TOOLS, RunOutcome, compile_yaml, start_run, wait_for_outcome

BODY_BYTES = 20_000_000
MAX_HISTORY_BYTES = 1_000_000
STORE = StorageDriverStoreContext()
RETRIEVE = StorageDriverRetrieveContext()


def payload(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"binary/plain"}, data=data)


def storage_settings(directory: Path, **payloads: Any) -> Settings:
    return Settings(raw={"payloads": {"store": "local", "path": str(directory), **payloads}})


# ---------------------------------------------------------------- settings


def test_parse_size_units() -> None:
    assert parse_size("256KiB", setting="threshold") == 256 * 1024
    assert parse_size("50MiB", setting="hard_cap") == 50 * 1024 * 1024
    assert parse_size("1MB", setting="hard_cap") == 1_000_000
    assert parse_size("2 GiB", setting="hard_cap") == 2 * 1024**3
    assert parse_size(4096, setting="threshold") == 4096
    assert parse_size("10", setting="threshold") == 10


@pytest.mark.parametrize("value", ["ten MiB", "5 parsecs", -1, True, "1.5MiB"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        parse_size(value, setting="threshold")


def test_payload_settings_defaults(state_dir: Path) -> None:
    settings = payload_settings({})

    assert settings.store == "local"
    assert settings.threshold == DEFAULT_THRESHOLD == 256 * 1024
    assert settings.hard_cap == DEFAULT_HARD_CAP == 50 * 1024 * 1024
    assert default_payload_dir() == state_dir / "payloads"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"store": "redis"}, "store = 'redis' is not one of"),
        ({"bucket_name": "x"}, "unknown keys \\['bucket_name'\\]"),
        ({"store": "postgres"}, "needs url"),
        ({"store": "s3"}, "needs bucket"),
        ({"threshold": "1MiB", "hard_cap": "512KiB"}, "hard_cap .* is below threshold"),
        ({"table": "payloads; DROP TABLE x"}, "not a plain"),
    ],
)
def test_payload_settings_rejects(section: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGWRIGHT_PAYLOADS_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        payload_settings({"payloads": section})


def test_s3_store_without_aioboto3() -> None:
    pytest.importorskip("temporalio.contrib.aws.s3driver")
    try:
        import aioboto3  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("aioboto3 is installed, so the S3 store can be built")
    with pytest.raises(ConfigError, match="pip install 'temporalio\\[aioboto3\\]'"):
        dagwright_data_converter(Settings(raw={"payloads": {"store": "s3", "bucket": "b"}}))


def test_converter_store_none_is_plain_pydantic() -> None:
    converter = dagwright_data_converter(Settings(raw={"payloads": {"store": "none"}}))

    assert converter is pydantic_data_converter
    assert max_node_output_bytes(converter) == INLINE_PAYLOAD_LIMIT


def test_converter_local_store(tmp_path: Path) -> None:
    settings = storage_settings(tmp_path, threshold="1KiB", hard_cap="3MiB")
    converter = dagwright_data_converter(settings)

    assert converter.external_storage is not None
    assert converter.external_storage.payload_size_threshold == 1024
    assert [driver.name() for driver in converter.external_storage.drivers] == ["dagwright-local"]
    assert max_node_output_bytes(converter, settings) == 3 * 1024 * 1024


# ---------------------------------------------------------------- local directory driver


async def test_local_driver_round_trip(tmp_path: Path) -> None:
    driver = LocalDirectoryDriver(tmp_path)
    originals = [payload(b"a" * 1000), payload(b"b" * 2000)]

    claims = await driver.store(STORE, originals)
    restored = await driver.retrieve(RETRIEVE, claims)

    assert restored == originals


async def test_local_driver_deduplicates_retries(tmp_path: Path) -> None:
    driver = LocalDirectoryDriver(tmp_path)

    first = await driver.store(STORE, [payload(b"same")])
    second = await driver.store(STORE, [payload(b"same")])

    assert first == second
    assert len([path for path in tmp_path.rglob("*") if path.is_file()]) == 1


async def test_local_driver_missing_payload(tmp_path: Path) -> None:
    driver = LocalDirectoryDriver(tmp_path)
    claim = StorageDriverClaim(claim_data={"sha256": "0" * 64})

    with pytest.raises(PayloadNotFoundError, match="must share the payload store"):
        await driver.retrieve(RETRIEVE, [claim])


async def test_local_driver_detects_corruption(tmp_path: Path) -> None:
    driver = LocalDirectoryDriver(tmp_path)
    [claim] = await driver.store(STORE, [payload(b"original")])
    driver.path_for(claim.claim_data["sha256"]).write_bytes(payload(b"changed").SerializeToString())

    with pytest.raises(ValueError, match="corrupt"):
        await driver.retrieve(RETRIEVE, [claim])


async def test_local_driver_rejects_path_in_claim(tmp_path: Path) -> None:
    driver = LocalDirectoryDriver(tmp_path)
    claim = StorageDriverClaim(claim_data={"sha256": "../../etc/passwd"})

    with pytest.raises(ValueError, match="no valid sha256"):
        await driver.retrieve(RETRIEVE, [claim])


# ---------------------------------------------------------------- PostgreSQL driver


@pytest_asyncio.fixture
async def pg_payload_driver(pg_admin_url: str) -> AsyncIterator[PostgresDriver]:
    table = f"payloads_{uuid.uuid4().hex[:12]}"
    driver = PostgresDriver(pg_admin_url, table=table)
    try:
        yield driver
    finally:
        await driver.close()
        connection = await asyncpg.connect(pg_admin_url)
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await connection.close()


async def test_postgres_driver_round_trip(pg_payload_driver: PostgresDriver, pg_admin: asyncpg.Connection) -> None:
    originals = [payload(b"x" * 300_000), payload(b"y" * 10)]

    claims = await pg_payload_driver.store(STORE, originals)
    again = await pg_payload_driver.store(STORE, originals[:1])
    restored = await pg_payload_driver.retrieve(RETRIEVE, list(reversed(claims)))

    assert restored == list(reversed(originals))
    assert again == claims[:1]
    assert await pg_admin.fetchval(f"SELECT count(*) FROM {pg_payload_driver.table}") == 2


async def test_postgres_driver_missing_payload(pg_payload_driver: PostgresDriver) -> None:
    await pg_payload_driver.store(STORE, [payload(b"creates the table")])
    claim = StorageDriverClaim(claim_data={"sha256": "f" * 64})

    with pytest.raises(PayloadNotFoundError, match=pg_payload_driver.table):
        await pg_payload_driver.retrieve(RETRIEVE, [claim])


# ---------------------------------------------------------------- runs


def converter_client(temporal_env: WorkflowEnvironment, settings: Settings) -> Client:
    """A client of the session's server with dagwright's converter for `settings`."""
    base = temporal_env.client
    return Client(base.service_client, namespace=base.namespace, data_converter=dagwright_data_converter(settings))


async def history_bytes(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(event.ByteSize() for event in history.events)


async def run_with_storage(client: Client, task_queue: str, folder: Path, settings: Settings, text: str,
                           *, registry: ToolRegistry = TOOLS, inputs: dict[str, Any] | None = None,
                           timeout: float = 60.0) -> RunOutcome:
    definition = compile_yaml(folder, text)
    worker = build_worker(client, WorkerOptions(task_queue=task_queue), registry=registry, settings=settings)
    async with worker:
        handle = await start_run(client, task_queue, definition, inputs)
        return await wait_for_outcome(handle, timeout=timeout)


LENGTH_WORKFLOW = """
dagwright: 1
name: big-body
nodes:
  fetch:
    type: http
    url: "{url}/big"
    response: text
  measure:
    type: transform
    value: "{{{{ nodes.fetch.output.text | length }}}}"
outputs:
  length: "{{{{ nodes.measure.output }}}}"
"""


async def test_twenty_megabyte_body_stays_out_of_history(
    temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    store = tmp_path / "payloads"
    settings = storage_settings(store)
    client = converter_client(temporal_env, settings)

    async with HttpStub() as stub:
        stub.script("/big", Reply(text="x" * BODY_BYTES))
        outcome = await run_with_storage(client, task_queue, tmp_path, settings,
                                         LENGTH_WORKFLOW.format(url=stub.url))

    assert outcome.failure is None, outcome.error_message
    assert outcome.result is not None
    assert outcome.result["outputs"] == {"length": BODY_BYTES}
    assert await history_bytes(outcome.handle) < MAX_HISTORY_BYTES
    stored = [path.stat().st_size for path in store.rglob("*") if path.is_file()]
    assert len(stored) == 1
    assert stored[0] > BODY_BYTES


HARD_CAP_WORKFLOW = """
dagwright: 1
name: too-big
nodes:
  fetch:
    type: http
    url: "{url}/big"
    response: text
    retry: {{max_attempts: 5, initial_interval: 100ms}}
"""


async def test_body_above_hard_cap_fails_once(
    temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    settings = storage_settings(tmp_path / "payloads", hard_cap="1MiB")
    client = converter_client(temporal_env, settings)

    async with HttpStub() as stub:
        stub.script("/big", Reply(text="x" * 1_500_000))
        outcome = await run_with_storage(client, task_queue, tmp_path, settings,
                                         HARD_CAP_WORKFLOW.format(url=stub.url), timeout=30.0)
        requests = stub.requests("/big")

    assert outcome.failure is not None
    assert "'fetch'" in outcome.error_message
    assert "1048576 bytes" in outcome.error_message
    assert "[payloads] hard_cap" in outcome.error_message
    assert len(requests) == 1
    assert outcome.node("fetch")["attempt"] == 1


def blob_registry(calls: list[int]) -> ToolRegistry:
    """Return a registry with the tool `blob(size)`, which records each call in `calls`."""

    def blob(size: int) -> str:
        calls.append(size)
        return "y" * size

    registry = ToolRegistry()
    registry.register(Tool(name="blob", function=blob))
    return registry


def compile_with(folder: Path, text: str, registry: ToolRegistry) -> dict[str, Any]:
    (folder / "workflow.yaml").write_text(text, encoding="utf-8")
    return compile_file(folder / "workflow.yaml", tools=registry)


async def test_tool_output_above_hard_cap_fails_once(
    temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    calls: list[int] = []
    registry = blob_registry(calls)
    settings = storage_settings(tmp_path / "payloads", threshold="64KiB", hard_cap="512KiB")
    client = converter_client(temporal_env, settings)
    text = """
dagwright: 1
name: big-tool
nodes:
  make:
    type: python
    function: blob
    args: {size: 600000}
    retry: {max_attempts: 5, initial_interval: 100ms}
"""
    definition = compile_with(tmp_path, text, registry)
    worker = build_worker(client, WorkerOptions(task_queue=task_queue), registry=registry, settings=settings)
    async with worker:
        outcome = await wait_for_outcome(await start_run(client, task_queue, definition), timeout=30.0)

    assert outcome.failure is not None
    assert "Node 'make'" in outcome.error_message
    assert f"{512 * 1024:,} bytes" in outcome.error_message
    assert calls == [600000]


async def test_output_cap_without_store(client: Client, task_queue: str, tmp_path: Path) -> None:
    """Without a store, an output that history cannot hold fails once instead of retrying."""
    calls: list[int] = []
    registry = blob_registry(calls)
    text = """
dagwright: 1
name: big-inline
nodes:
  make:
    type: python
    function: blob
    args: {size: 2100000}
    retry: {max_attempts: 5, initial_interval: 100ms}
"""
    definition = compile_with(tmp_path, text, registry)
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=registry):
        outcome = await wait_for_outcome(await start_run(client, task_queue, definition), timeout=30.0)

    assert outcome.failure is not None
    assert "Node 'make'" in outcome.error_message
    assert f"{INLINE_PAYLOAD_LIMIT:,} bytes" in outcome.error_message
    assert calls == [2100000]


INPUT_WORKFLOW = """
dagwright: 1
name: big-input
inputs:
  document: {type: string}
nodes:
  measure:
    type: transform
    value: "{{ inputs.document | length }}"
outputs:
  length: "{{ nodes.measure.output }}"
"""


async def test_large_run_input_stored_externally(
    temporal_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    settings = storage_settings(tmp_path / "payloads")
    client = converter_client(temporal_env, settings)
    document = "z" * (3 * 1024 * 1024)

    outcome = await run_with_storage(client, task_queue, tmp_path, settings, INPUT_WORKFLOW,
                                     inputs={"document": document})

    assert outcome.failure is None, outcome.error_message
    assert outcome.result is not None
    assert outcome.result["outputs"] == {"length": len(document)}
    assert await history_bytes(outcome.handle) < MAX_HISTORY_BYTES
