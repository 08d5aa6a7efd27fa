"""sql nodes inside `DagWorkflow`, on a real worker, against the session's embedded PostgreSQL.

The module creates one database, owned by a role with a password, and the worker reaches it
through a `postgresql://role:password@/db?host=<socket folder>` URL read from an environment
variable, exactly as a deployed worker reads `url_env`. Each test starts its own worker, so it
gets its own pools.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import pytest
import pytest_asyncio
from dagwright.activities.sql_connections import APPLICATION_NAME, SqlConnections
from dagwright.worker import WorkerOptions, build_worker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from workflow_helpers import (
    TOOLS,
    RunOutcome,
    compile_yaml,
    history_events,
    run_definition,
    start_run,
    wait_for_outcome,
)

URL_ENV = "DAGWRIGHT_TEST_SQL_URL"
MISSING_DB_URL_ENV = "DAGWRIGHT_TEST_SQL_MISSING_DB_URL"
POOL_SIZE = 2
# Characters that must be percent-encoded in a URL, so both spellings of the password are checked.
PASSWORD_PREFIX = "Zq9/s3cr@t:"

# Fast retries keep the tests short.
FAST_RETRY = "{max_attempts: 3, initial_interval: 100ms, backoff: 1.0, max_interval: 100ms}"

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
INSERT INTO items VALUES (1, 'pen', 1.50), (2, 'ink', 12.25), (3, 'pad', 3.00);
CREATE TABLE notes (id serial PRIMARY KEY, author text, body text);
"""


@dataclass(frozen=True)
class ModuleDatabase:
    """The module's database: its name, the role's password and the URL the worker uses."""

    name: str
    password: str
    url: str
    missing_db_url: str


def socket_folder(admin_url: str) -> str:
    """Return the Unix socket folder from the `host` query parameter of the admin URL."""
    [host] = parse_qs(urlsplit(admin_url).query)["host"]
    return host


@pytest_asyncio.fixture(scope="module")
async def database(pg_admin_url: str) -> AsyncIterator[ModuleDatabase]:
    """Create a role with a password, a database it owns, pgvector and the test tables."""
    name = f"wfsql_{uuid.uuid4().hex[:10]}"
    role = f"{name}_owner"
    password = PASSWORD_PREFIX + uuid.uuid4().hex
    host = socket_folder(pg_admin_url)
    credentials = f"{role}:{quote(password, safe='')}"
    url = f"postgresql://{credentials}@/{name}?host={host}"
    missing_db_url = f"postgresql://{credentials}@/{name}_missing?host={host}"

    admin = await asyncpg.connect(pg_admin_url)
    try:
        # CREATE ROLE and CREATE DATABASE take no parameters. The names are generated above and
        # the password contains no single quote, so formatting them in is safe.
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {role}")
        setup = await asyncpg.connect(pg_admin_url.replace("/postgres?", f"/{name}?"))
        try:
            await setup.execute("CREATE EXTENSION vector")
        finally:
            await setup.close()
        owner = await asyncpg.connect(url)
        try:
            await owner.execute(SCHEMA)
        finally:
            await owner.close()

        yield ModuleDatabase(name=name, password=password, url=url, missing_db_url=missing_db_url)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@pytest.fixture
def database_env(database: ModuleDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleDatabase]:
    """Put the database's URLs in the environment variables the worker's connections name."""
    monkeypatch.setenv(URL_ENV, database.url)
    monkeypatch.setenv(MISSING_DB_URL_ENV, database.missing_db_url)
    yield database


CONNECTIONS = {
    "main": {"url_env": URL_ENV, "pool_size": POOL_SIZE},
    "strict": {"url_env": URL_ENV, "statement_timeout": "200ms"},
    "missing_db": {"url_env": MISSING_DB_URL_ENV},
}


@asynccontextmanager
async def sql_worker(client: Client, task_queue: str, folder: Path) -> AsyncIterator[SqlConnections]:
    """Run a worker with the CONNECTIONS tables, read from the environment like a dagwright.toml."""
    sql = SqlConnections.from_settings({"connections": CONNECTIONS}, folder, state_dir=folder)
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS, sql=sql):
        yield sql


async def run_sql_yaml(client: Client, task_queue: str, folder: Path, text: str, *,
                       inputs: Mapping[str, Any] | None = None) -> RunOutcome:
    """Compile `text`, run it on a worker with the test connections and return the outcome."""
    definition = compile_yaml(folder, text.replace("FAST_RETRY", FAST_RETRY))
    async with sql_worker(client, task_queue, folder):
        return await run_definition(client, task_queue, definition, inputs)


async def retry_failures(handle: WorkflowHandle) -> list[tuple[int, str]]:
    """Return (attempt, failure type of the previous attempt) for each retried activity start."""
    found = []
    for event in await history_events(handle):
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            continue
        attributes = event.activity_task_started_event_attributes
        if attributes.HasField("last_failure"):
            found.append((attributes.attempt, attributes.last_failure.application_failure_info.type))
    return found


async def wait_for_backend(admin: asyncpg.Connection, database: str, text: str) -> int:
    """Return the pid of the worker's backend of `database` that is running a query containing `text`."""
    async with asyncio.timeout(20):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 "
                "AND state = 'active' AND position($3 in query) > 0",
                database,
                APPLICATION_NAME,
                text,
            )
            if pid is not None:
                return pid
            await asyncio.sleep(0.01)


def decoded_payloads(node: Any) -> Iterator[str]:
    """Yield the decoded `data` of every payload in a history's JSON form (stored as base64)."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and "metadata" in node:
            yield base64.b64decode(node["data"]).decode("utf-8", errors="replace")
        for value in node.values():
            yield from decoded_payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from decoded_payloads(value)


@asynccontextmanager
async def connect(database: ModuleDatabase) -> AsyncIterator[asyncpg.Connection]:
    """Open a connection of the test itself (not the worker's) to the module's database."""
    connection = await asyncpg.connect(database.url)
    try:
        yield connection
    finally:
        await connection.close()


# ---------------------------------------------------------------- modes and parameters


async def test_each_mode_through_workflow(client: Client, task_queue: str, tmp_path: Path,
                                          database_env: ModuleDatabase) -> None:
    author = f"modes-{uuid.uuid4().hex[:8]}"
    text = """
dagwright: 1
name: sql-modes
inputs:
  item: {type: integer}
  author: {type: string}
nodes:
  all_items: {type: sql, connection: main, query: "SELECT id, name FROM items ORDER BY id"}
  one_item:
    type: sql
    connection: main
    query: "SELECT name, price FROM items WHERE id = $1"
    params: ["{{ inputs.item }}"]
    mode: row
  no_item: {type: sql, connection: main, query: "SELECT name FROM items WHERE id = 99", mode: row}
  item_count: {type: sql, connection: main, query: "SELECT count(*) FROM items", mode: value}
  no_value: {type: sql, connection: main, query: "SELECT name FROM items WHERE id = 99", mode: value}
  add_notes:
    type: sql
    connection: main
    query: "INSERT INTO notes (author, body) VALUES ($1, 'one'), ($1, 'two')"
    params: ["{{ inputs.author }}"]
    mode: execute
    read_only: false
outputs:
  all_items: "{{ nodes.all_items.output }}"
  one_item: "{{ nodes.one_item.output }}"
  no_item: "{{ nodes.no_item.output }}"
  item_count: "{{ nodes.item_count.output }}"
  no_value: "{{ nodes.no_value.output }}"
  add_notes: "{{ nodes.add_notes.output }}"
"""

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text, inputs={"item": 2, "author": author})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {
        "all_items": [{"id": 1, "name": "pen"}, {"id": 2, "name": "ink"}, {"id": 3, "name": "pad"}],
        "one_item": {"name": "ink", "price": "12.25"},
        "no_item": None,
        "item_count": 3,
        "no_value": None,
        "add_notes": {"status": "INSERT 0 2", "rowcount": 2},
    }
    async with connect(database_env) as connection:
        bodies = await connection.fetch("SELECT body FROM notes WHERE author = $1 ORDER BY id", author)
    assert [row["body"] for row in bodies] == ["one", "two"]


NOTE_ROUND_TRIP = """
dagwright: 1
name: sql-params
inputs:
  author: {type: string}
  body: {type: ["string", "null"]}
nodes:
  add:
    type: sql
    connection: main
    query: "INSERT INTO notes (author, body) VALUES ($1, $2) RETURNING id"
    params: ["{{ inputs.author }}", "{{ inputs.body }}"]
    mode: value
    read_only: false
  read:
    type: sql
    connection: main
    query: "SELECT author, body, body IS NULL AS body_is_null FROM notes WHERE id = $1"
    params: ["{{ nodes.add.output }}"]
    mode: row
  count_by_author:
    type: sql
    connection: main
    needs: [add]
    query: "SELECT count(*) FROM notes WHERE author = $1"
    params: ["{{ inputs.author }}"]
    mode: value
outputs:
  id: "{{ nodes.add.output }}"
  row: "{{ nodes.read.output }}"
  count: "{{ nodes.count_by_author.output }}"
"""


async def test_params_with_quotes_unicode_and_null(client: Client, task_queue: str, tmp_path: Path,
                                                   database_env: ModuleDatabase) -> None:
    author = f"O'Brien \"the quoted\" \\ back\\slash — Zoë 日本 🎉 {uuid.uuid4().hex[:8]}"

    outcome = await run_sql_yaml(client, task_queue, tmp_path, NOTE_ROUND_TRIP,
                                 inputs={"author": author, "body": None})

    assert outcome.failure is None
    outputs = outcome.result["outputs"]
    assert outputs["row"] == {"author": author, "body": None, "body_is_null": True}
    assert outputs["count"] == 1
    async with connect(database_env) as connection:
        stored = await connection.fetchrow("SELECT author, body FROM notes WHERE id = $1", outputs["id"])
    assert (stored["author"], stored["body"]) == (author, None)


async def test_injection_attempt_stays_data(client: Client, task_queue: str, tmp_path: Path,
                                            database_env: ModuleDatabase) -> None:
    attack = f"x'); DROP TABLE items; -- ' OR '1'='1 {uuid.uuid4().hex[:8]}"

    outcome = await run_sql_yaml(client, task_queue, tmp_path, NOTE_ROUND_TRIP,
                                 inputs={"author": attack, "body": "'; DELETE FROM notes; --"})

    assert outcome.failure is None
    outputs = outcome.result["outputs"]
    assert outputs["row"] == {"author": attack, "body": "'; DELETE FROM notes; --", "body_is_null": False}
    # The OR '1'='1 part matched nothing beyond the one row with exactly this author.
    assert outputs["count"] == 1
    async with connect(database_env) as connection:
        assert await connection.fetchval("SELECT count(*) FROM items") == 3
        assert await connection.fetchval("SELECT count(*) FROM notes WHERE author = $1", attack) == 1


# ---------------------------------------------------------------- failures


async def test_write_in_read_only_node_rejected(client: Client, task_queue: str, tmp_path: Path,
                                               database_env: ModuleDatabase) -> None:
    author = f"read-only-{uuid.uuid4().hex[:8]}"
    text = """
dagwright: 1
name: sql-read-only
inputs:
  author: {type: string}
nodes:
  write:
    type: sql
    connection: main
    query: "INSERT INTO notes (author, body) VALUES ($1, 'x')"
    params: ["{{ inputs.author }}"]
    mode: execute
    retry: FAST_RETRY
"""

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text, inputs={"author": author})

    assert outcome.failure is not None
    assert outcome.error_message == (
        "node 'write' failed after 1 attempt: sql node 'write' failed: cannot execute INSERT in a "
        "read-only transaction (SQLSTATE 25006). The statement ran in a read-only transaction "
        "because the node has read_only: true (the default) or its connection sets read_only = "
        "true. Set read_only: false on the node to allow writes."
    )
    assert outcome.node("write")["attempt"] == 1
    assert await retry_failures(outcome.handle) == []
    async with connect(database_env) as connection:
        assert await connection.fetchval("SELECT count(*) FROM notes WHERE author = $1", author) == 0


async def test_statement_timeout_fires(client: Client, task_queue: str, tmp_path: Path,
                                       database_env: ModuleDatabase) -> None:
    text = """
dagwright: 1
name: sql-timeout
nodes:
  slow:
    type: sql
    connection: strict
    query: "SELECT pg_sleep(5)::text AS slept"
    retry: {max_attempts: 2, initial_interval: 100ms}
"""

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text)

    assert outcome.failure is not None
    assert outcome.error_message == (
        "node 'slow' failed after 2 attempts: sql node 'slow' failed: canceling statement due to "
        "statement timeout (SQLSTATE 57014). The statement ran longer than its statement_timeout "
        "(the node's timeout or the connection's statement_timeout, whichever is smaller)."
    )
    # SqlTimeout is retried, and each attempt was cut at 200 ms instead of sleeping 5 s.
    assert await retry_failures(outcome.handle) == [(2, "SqlTimeout")]
    assert outcome.elapsed < 4.5


async def test_syntax_error_fails_at_once(client: Client, task_queue: str, tmp_path: Path,
                                          database_env: ModuleDatabase) -> None:
    text = """
dagwright: 1
name: sql-syntax
nodes:
  broken: {type: sql, connection: main, query: "SELEC id FROM items", retry: FAST_RETRY}
"""

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text)

    assert outcome.failure is not None
    assert outcome.error_message == (
        "node 'broken' failed after 1 attempt: sql node 'broken' failed: syntax error at or near "
        "\"SELEC\" (SQLSTATE 42601)."
    )
    assert outcome.node("broken")["attempt"] == 1
    assert await retry_failures(outcome.handle) == []


async def test_dropped_connection_is_retried(client: Client, task_queue: str, tmp_path: Path,
                                             database_env: ModuleDatabase, pg_admin: asyncpg.Connection) -> None:
    marker = f"drop_{uuid.uuid4().hex[:8]}"
    definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: sql-dropped
nodes:
  slow:
    type: sql
    connection: main
    query: "SELECT '{marker}' AS marker FROM pg_sleep(1)"
    mode: value
    retry: FAST_RETRY
outputs:
  marker: "{{{{ nodes.slow.output }}}}"
""".replace("FAST_RETRY", FAST_RETRY))

    async with sql_worker(client, task_queue, tmp_path):
        handle = await start_run(client, task_queue, definition)
        pid = await wait_for_backend(pg_admin, database_env.name, marker)
        assert await pg_admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        outcome = await wait_for_outcome(handle)

    assert outcome.failure is None
    assert outcome.result["outputs"] == {"marker": marker}
    assert outcome.node("slow")["attempt"] == 2
    assert await retry_failures(outcome.handle) == [(2, "SqlConnectionError")]


# ---------------------------------------------------------------- values, pools, secrets


async def test_type_conversion_in_outputs(client: Client, task_queue: str, tmp_path: Path,
                                          database_env: ModuleDatabase) -> None:
    text = r"""
dagwright: 1
name: sql-types
inputs:
  sample: {type: object}
nodes:
  literals:
    type: sql
    connection: main
    mode: row
    query: |
      SELECT 12345678901234567890.123456789::numeric AS amount,
             '2024-05-01 12:30:00+02'::timestamptz AS filed_at,
             '{"k": [1, 2.5, null], "s": "é"}'::jsonb AS doc,
             ARRAY[[1, 2], [3, 4]] AS grid,
             ARRAY['a', NULL, 'c'] AS tags,
             '\x00ff10'::bytea AS blob,
             '[1.5, 2, -3]'::vector AS embedding
  params:
    type: sql
    connection: main
    mode: row
    query: |
      SELECT $1::numeric AS amount, $2::timestamptz AS filed_at, $3::jsonb AS doc,
             $4::int4[] AS grid, $5::bytea AS blob, $6::vector AS embedding
    params:
      - "{{ inputs.sample.amount }}"
      - "{{ inputs.sample.filed_at }}"
      - "{{ inputs.sample.doc }}"
      - "{{ inputs.sample.grid }}"
      - "{{ inputs.sample.blob }}"
      - "{{ inputs.sample.embedding }}"
outputs:
  literals: "{{ nodes.literals.output }}"
  params: "{{ nodes.params.output }}"
"""
    values = {
        "amount": "0.30000000000000000001",
        "filed_at": "2024-05-01T12:30:00+02:00",
        "doc": {"k": [1, 2.5, None], "nested": {"ok": True}},
        "grid": [[1, 2], [3, 4]],
        "blob": "AP8Q",
        "embedding": [0.25, -1.0, 3.5],
    }

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text, inputs={"sample": values})

    assert outcome.failure is None
    assert outcome.result["outputs"] == {
        "literals": {
            "amount": "12345678901234567890.123456789",
            "filed_at": "2024-05-01T10:30:00+00:00",
            "doc": {"k": [1, 2.5, None], "s": "é"},
            "grid": [[1, 2], [3, 4]],
            "tags": ["a", None, "c"],
            "blob": "AP8Q",
            "embedding": [1.5, 2.0, -3.0],
        },
        "params": {
            "amount": "0.30000000000000000001",
            "filed_at": "2024-05-01T10:30:00+00:00",
            "doc": {"k": [1, 2.5, None], "nested": {"ok": True}},
            "grid": [[1, 2], [3, 4]],
            "blob": "AP8Q",
            "embedding": [0.25, -1.0, 3.5],
        },
    }


POOL_WORKFLOW = """
dagwright: 1
name: sql-pool
nodes:
  p1: {type: sql, connection: main, mode: value, query: "SELECT pg_backend_pid() FROM pg_sleep(0.3)"}
  p2: {type: sql, connection: main, mode: value, query: "SELECT pg_backend_pid() FROM pg_sleep(0.3)"}
  p3: {type: sql, connection: main, mode: value, query: "SELECT pg_backend_pid() FROM pg_sleep(0.3)"}
  p4: {type: sql, connection: main, mode: value, query: "SELECT pg_backend_pid() FROM pg_sleep(0.3)"}
  after: {type: sql, connection: main, mode: value, query: "SELECT pg_backend_pid()", needs: [p1, p2, p3, p4]}
outputs:
  pids:
    - "{{ nodes.p1.output }}"
    - "{{ nodes.p2.output }}"
    - "{{ nodes.p3.output }}"
    - "{{ nodes.p4.output }}"
    - "{{ nodes.after.output }}"
"""


async def test_pool_reused_across_nodes_and_runs(client: Client, task_queue: str, tmp_path: Path,
                                                 database_env: ModuleDatabase, pg_admin: asyncpg.Connection) -> None:
    definition = compile_yaml(tmp_path, POOL_WORKFLOW)

    async with sql_worker(client, task_queue, tmp_path):
        first = await run_definition(client, task_queue, definition)
        second = await run_definition(client, task_queue, definition)
        rows = await pg_admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database_env.name,
            APPLICATION_NAME,
        )

    assert first.failure is None
    assert second.failure is None
    first_pids = set(first.result["outputs"]["pids"])
    second_pids = set(second.result["outputs"]["pids"])
    server_pids = {row["pid"] for row in rows}
    # Four overlapping nodes needed both pooled connections, and nothing opened a third.
    assert len(first_pids) == POOL_SIZE
    assert second_pids == first_pids
    assert server_pids == first_pids


async def test_no_password_in_history(client: Client, task_queue: str, tmp_path: Path,
                                      database_env: ModuleDatabase) -> None:
    marker = f"history-{uuid.uuid4().hex[:8]}"
    text = f"""
dagwright: 1
name: sql-secrets
nodes:
  ok: {{type: sql, connection: main, mode: value, query: "SELECT '{marker}'::text AS marker"}}
  broken:
    type: sql
    connection: main
    query: "SELEC 1"
    on_error: continue
  missing_db:
    type: sql
    connection: missing_db
    query: "SELECT 1 AS one"
    on_error: continue
    retry: FAST_RETRY
outputs:
  marker: "{{{{ nodes.ok.output }}}}"
"""

    outcome = await run_sql_yaml(client, task_queue, tmp_path, text)

    assert outcome.failure is None
    statuses = outcome.statuses()
    assert statuses == {"ok": "succeeded", "broken": "failed", "missing_db": "failed"}
    assert f"{database_env.name}_missing" in outcome.node("missing_db")["error"]
    history = await outcome.handle.fetch_history()
    history_json = history.to_json()
    payloads = list(decoded_payloads(json.loads(history_json)))
    # The payloads were decoded: the node's output is found in them.
    assert any(marker in payload for payload in payloads)
    texts = [history_json, *payloads]
    for secret in (database_env.password, quote(database_env.password, safe=""), database_env.url,
                   database_env.missing_db_url):
        assert not any(secret in text for text in texts), "the history contains the password or a URL"
