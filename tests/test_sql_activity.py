"""The ``dagwright.sql`` activity against a real embedded PostgreSQL 16 server (pgserver).

One server serves the session (see ``pg_fixtures.py``). Each test reaches it through
``SqlConnections`` exactly as a worker does, mostly through the embedded-server path, and runs
the activity in Temporal's ``ActivityEnvironment``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment


from dagwright.activities.sql import SqlActivities, SqlRequest
from dagwright.activities.sql_connections import SEEDS_TABLE, SqlConnections
from dagwright.config import ConfigError

MAIN = "sqltest_main"

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TYPE pair AS (a int, b text);
CREATE TABLE people (id serial PRIMARY KEY, name text, note text);
INSERT INTO people (name, note) VALUES ('ada', 'first'), ('grace', 'second');
"""


def registry(state_dir: Path, tables: dict[str, Any], environ: dict[str, str] | None = None) -> SqlConnections:
    """Return connections configured as ``[connections.*]`` tables of dagwright.toml would."""
    return SqlConnections.from_settings(
        {"connections": tables}, state_dir, environ or {}, state_dir=state_dir
    )


async def run_sql(connections: SqlConnections, query: str, *params: Any, **fields: Any) -> Any:
    fields.setdefault("node_id", "query")
    fields.setdefault("connection", MAIN)
    request = SqlRequest(query=query, params=list(params), **fields)
    return await ActivityEnvironment().run(SqlActivities(connections).sql, request)


async def sql_error(connections: SqlConnections, query: str, *params: Any, **fields: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run_sql(connections, query, *params, **fields)
    return caught.value


async def wait_for_backend(admin: asyncpg.Connection, database: str, text: str) -> int:
    """Return the pid of the backend of ``database`` running a query that contains ``text``."""
    for _ in range(500):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
            "AND query LIKE '%' || $2 || '%' AND pid <> pg_backend_pid()",
            database,
            text,
        )
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"no backend of {database} started running {text!r}")


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "schema.sql"
    path.write_text(SCHEMA, encoding="utf-8")
    return path


@pytest_asyncio.fixture(scope="module")
async def main_db(pg_state_dir: Path, seed_file: Path) -> AsyncIterator[SqlConnections]:
    """An embedded connection shared by the module, seeded with the people table."""
    connections = registry(pg_state_dir, {MAIN: {"embedded": True, "seed": [str(seed_file)]}})
    try:
        yield connections
    finally:
        await connections.close()


# --- modes ---------------------------------------------------------------------------------


async def test_rows_mode_returns_mappings(main_db: SqlConnections) -> None:
    rows = await run_sql(main_db, "SELECT id, name FROM people ORDER BY id")

    assert rows == [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]


async def test_rows_mode_empty_result(main_db: SqlConnections) -> None:
    assert await run_sql(main_db, "SELECT id FROM people WHERE false") == []


async def test_row_mode(main_db: SqlConnections) -> None:
    row = await run_sql(main_db, "SELECT name, note FROM people WHERE id = $1", 2, mode="row")
    missing = await run_sql(main_db, "SELECT name FROM people WHERE id = $1", 99, mode="row")

    assert row == {"name": "grace", "note": "second"}
    assert missing is None


async def test_row_mode_rejects_two_rows(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT name FROM people", mode="row", node_id="one")

    assert error.type == "SqlTooManyRows"
    assert error.non_retryable
    assert "sql node 'one' expected at most one row" in error.message


async def test_value_mode(main_db: SqlConnections) -> None:
    count = await run_sql(main_db, "SELECT count(*) FROM people", mode="value")
    missing = await run_sql(main_db, "SELECT name FROM people WHERE id = 99", mode="value")

    assert count == 2
    assert missing is None


async def test_execute_mode_returns_status(main_db: SqlConnections) -> None:
    created = await run_sql(
        main_db, "CREATE TABLE exec_demo (n int)", mode="execute", read_only=False
    )
    inserted = await run_sql(
        main_db,
        "INSERT INTO exec_demo SELECT generate_series(1, $1)",
        3,
        mode="execute",
        read_only=False,
    )
    count = await run_sql(main_db, "SELECT count(*) FROM exec_demo", mode="value")

    assert created == {"status": "CREATE TABLE", "rowcount": None}
    assert inserted == {"status": "INSERT 0 3", "rowcount": 3}
    assert count == 3


# --- parameters --------------------------------------------------------------------------


async def test_params_keep_quotes_unicode_and_null(main_db: SqlConnections) -> None:
    values = ["O'Reilly said \"hi\" \\ $1", "Zürich ✓ 東京 🚀", None]

    row = await run_sql(main_db, "SELECT $1::text AS a, $2::text AS b, $3::text AS c", *values, mode="row")

    assert row == {"a": values[0], "b": values[1], "c": None}


async def test_injection_in_param_stays_data(main_db: SqlConnections) -> None:
    attack = "'; DROP TABLE people; --"

    matches = await run_sql(
        main_db,
        "INSERT INTO people (name) VALUES ($1) RETURNING name",
        attack,
        read_only=False,
    )
    stored = await run_sql(main_db, "SELECT count(*) FROM people WHERE name = $1", attack, mode="value")
    await run_sql(main_db, "DELETE FROM people WHERE name = $1", attack, mode="execute", read_only=False)

    assert matches == [{"name": attack}]
    assert stored == 1
    assert await run_sql(main_db, "SELECT count(*) FROM people", mode="value") == 2


async def test_params_converted_to_server_types(main_db: SqlConnections) -> None:
    row = await run_sql(
        main_db,
        "SELECT $1::timestamptz AS at, $2::numeric AS amount, $3::numeric AS price, "
        "$4::jsonb AS doc, $5::vector AS embedding, $6::bytea AS raw, $7::int4[] AS ids, "
        "$8::interval AS wait, $9::date AS day, $10::uuid AS id, $11::int8 AS big",
        "2024-05-01T12:30:00+02:00",
        "12.50",
        0.1,
        {"a": [1, "x"], "b": None},
        [1, 2.5, 3],
        "aGVsbG8=",
        [1, 2, None],
        "90s",
        "2024-02-29",
        "6f1b7a52-3c1e-4d8e-9a57-6e0f3f1f2b10",
        "9007199254740993",
        mode="row",
    )

    assert row == {
        "at": "2024-05-01T10:30:00+00:00",
        "amount": "12.50",
        "price": "0.1",
        "doc": {"a": [1, "x"], "b": None},
        "embedding": [1.0, 2.5, 3.0],
        "raw": "aGVsbG8=",
        "ids": [1, 2, None],
        "wait": 90,
        "day": "2024-02-29",
        "id": "6f1b7a52-3c1e-4d8e-9a57-6e0f3f1f2b10",
        "big": 9007199254740993,
    }


async def test_naive_timestamp_param_is_utc(main_db: SqlConnections) -> None:
    value = await run_sql(main_db, "SELECT $1::timestamptz", "2024-05-01T12:00:00", mode="value")

    assert value == "2024-05-01T12:00:00+00:00"


async def test_invalid_param_is_permanent(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT $1::timestamptz", "yesterday", node_id="when")

    assert error.type == "SqlParamInvalid"
    assert error.non_retryable
    assert "sql node 'when': parameter $1 has type timestamptz" in error.message
    assert '"yesterday"' in error.message


# --- results -----------------------------------------------------------------------------


async def test_result_conversion_table(main_db: SqlConnections) -> None:
    row = await run_sql(
        main_db,
        """
        SELECT 12345678901234567890.123456789::numeric AS big_numeric,
               0.0000001::numeric AS small_numeric,
               'NaN'::numeric AS nan_numeric,
               42::int2 AS small, 7::int8 AS big, 1.5::float8 AS ratio,
               'NaN'::float8 AS nan_float, 'Infinity'::float4 AS inf_float,
               true AS flag, 'text' AS label, NULL::text AS nothing,
               '2024-05-01 12:30:00+02'::timestamptz AS at,
               '2024-05-01 12:30:00'::timestamp AS local_at,
               '2024-05-01'::date AS day, '13:45:10.5'::time AS clock,
               '1 day 2 hours 0.5 seconds'::interval AS span,
               '1 month'::interval AS month,
               '6f1b7a52-3c1e-4d8e-9a57-6e0f3f1f2b10'::uuid AS id,
               '{"k": [1, 2.5, null], "s": "v"}'::jsonb AS doc,
               '[1, 2]'::json AS plain_json,
               ARRAY['{"a": 1}'::jsonb, '[2]'::jsonb] AS docs,
               '\\x00ff10'::bytea AS raw,
               ARRAY[[1, 2], [3, 4]] AS matrix,
               ARRAY['a', NULL]::text[] AS tags,
               '[1.5, 2, -3]'::vector AS embedding,
               '192.168.0.1/24'::inet AS address,
               int4range(1, 5) AS span_range,
               ROW(1, 'x') AS pair,
               ROW(2, 'y')::pair AS named_pair
        """,
        mode="row",
    )

    assert row == {
        "big_numeric": "12345678901234567890.123456789",
        "small_numeric": "0.0000001",
        "nan_numeric": "NaN",
        "small": 42,
        "big": 7,
        "ratio": 1.5,
        "nan_float": "NaN",
        "inf_float": "Infinity",
        "flag": True,
        "label": "text",
        "nothing": None,
        "at": "2024-05-01T10:30:00+00:00",
        "local_at": "2024-05-01T12:30:00",
        "day": "2024-05-01",
        "clock": "13:45:10.500000",
        "span": 93600.5,
        "month": 2592000,
        "id": "6f1b7a52-3c1e-4d8e-9a57-6e0f3f1f2b10",
        "doc": {"k": [1, 2.5, None], "s": "v"},
        "plain_json": [1, 2],
        "docs": [{"a": 1}, [2]],
        "raw": "AP8Q",
        "matrix": [[1, 2], [3, 4]],
        "tags": ["a", None],
        "embedding": [1.5, 2.0, -3.0],
        "address": "192.168.0.1/24",
        "span_range": {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False, "empty": False},
        "pair": [1, "x"],
        "named_pair": {"a": 2, "b": "y"},
    }


async def test_duplicate_column_names_rejected(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT 1 AS id, 2 AS id")

    assert error.type == "SqlResultInvalid"
    assert "'id'" in error.message


async def test_max_rows_cap(main_db: SqlConnections) -> None:
    exactly = await run_sql(main_db, "SELECT generate_series(1, 10) AS n", max_rows=10)
    error = await sql_error(
        main_db, "SELECT generate_series(1, 1000000) AS n", max_rows=10, node_id="history"
    )

    assert len(exactly) == 10
    assert error.type == "SqlTooManyRows"
    assert error.non_retryable
    assert "sql node 'history' returned more than max_rows (10) rows" in error.message


# --- failures ----------------------------------------------------------------------------


async def test_write_in_read_only_node_refused(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "INSERT INTO people (name) VALUES ($1)", "eve", mode="execute")

    assert error.type == "SqlError"
    assert error.non_retryable
    assert "SQLSTATE 25006" in error.message
    assert await run_sql(main_db, "SELECT count(*) FROM people", mode="value") == 2


async def test_read_only_connection_overrides_node(pg_state_dir: Path, seed_file: Path) -> None:
    connections = registry(
        pg_state_dir, {MAIN: {"embedded": True, "seed": [str(seed_file)], "read_only": True}}
    )
    try:
        error = await sql_error(
            connections, "DELETE FROM people", mode="execute", read_only=False
        )
    finally:
        await connections.close()

    assert "SQLSTATE 25006" in error.message


async def test_syntax_error_fails_at_once(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELEC name FROM people", node_id="history")

    assert error.type == "SqlError"
    assert error.non_retryable
    assert "sql node 'history' failed: syntax error at or near \"SELEC\" (SQLSTATE 42601)" in error.message


async def test_undefined_table_message(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT * FROM quartely", node_id="history")

    assert error.message.startswith(
        "sql node 'history' failed: relation \"quartely\" does not exist (SQLSTATE 42P01)"
    )
    assert error.details == ({"connection": MAIN, "sqlstate": "42P01"},)


async def test_node_timeout_cancels_statement(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT pg_sleep(10)", timeout_seconds=0.2)

    assert error.type == "SqlTimeout"
    assert not error.non_retryable
    assert "SQLSTATE 57014" in error.message


async def test_connection_statement_timeout_is_smaller(pg_state_dir: Path, seed_file: Path) -> None:
    connections = registry(
        pg_state_dir,
        {MAIN: {"embedded": True, "seed": [str(seed_file)], "statement_timeout": "200ms"}},
    )
    try:
        error = await sql_error(connections, "SELECT pg_sleep(10)", timeout_seconds=60)
    finally:
        await connections.close()

    assert error.type == "SqlTimeout"


async def test_dropped_connection_is_retryable(
    pg_state_dir: Path, pg_admin: asyncpg.Connection, pg_database_name: str
) -> None:
    connections = registry(pg_state_dir, {pg_database_name: {"embedded": True, "pool_size": 1}})
    fields = {"connection": pg_database_name}
    try:
        running = asyncio.create_task(run_sql(connections, "SELECT pg_sleep(30)", **fields))
        pid = await wait_for_backend(pg_admin, pg_database_name, "pg_sleep(30)")
        await pg_admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(ApplicationError) as caught:
            await running
        retried = await run_sql(connections, "SELECT 1", mode="value", **fields)
    finally:
        await connections.close()

    assert caught.value.type == "SqlConnectionError"
    assert not caught.value.non_retryable
    assert retried == 1


async def test_cancel_stops_server_query(
    pg_state_dir: Path, pg_admin: asyncpg.Connection, pg_database_name: str
) -> None:
    connections = registry(pg_state_dir, {pg_database_name: {"embedded": True}})
    environment = ActivityEnvironment()
    request = SqlRequest(node_id="slow", connection=pg_database_name, query="SELECT pg_sleep(30)")
    try:
        running = asyncio.ensure_future(environment.run(SqlActivities(connections).sql, request))
        await wait_for_backend(pg_admin, pg_database_name, "pg_sleep(30)")
        environment.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        still_running = await pg_admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'",
            pg_database_name,
        )
    finally:
        await connections.close()

    assert still_running == 0


async def test_activity_heartbeats(main_db: SqlConnections) -> None:
    environment = ActivityEnvironment()
    beats: list[Any] = []
    environment.on_heartbeat = lambda *details: beats.append(details)
    request = SqlRequest(node_id="beat", connection=MAIN, query="SELECT 1")

    await environment.run(SqlActivities(main_db).sql, request)

    assert beats


async def test_unknown_connection_is_permanent(main_db: SqlConnections) -> None:
    error = await sql_error(main_db, "SELECT 1", connection="warehouse")

    assert error.type == "SqlConnectionNotConfigured"
    assert error.non_retryable
    assert "connection 'warehouse' is not configured" in error.message
    assert "[connections.warehouse]" in error.message


async def test_password_not_in_connection_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The socket is closed, so nothing listens on the port and the connection is refused.
    url = f"postgresql://analyst:Sup3r%2FSecret@127.0.0.1:{port}/warehouse"
    connections = registry(tmp_path, {MAIN: {"url_env": "WAREHOUSE_URL"}}, {"WAREHOUSE_URL": url})

    error = await sql_error(connections, "SELECT 1")

    assert error.type == "SqlConnectionError"
    assert not error.non_retryable
    assert "Sup3r" not in error.message
    assert url not in error.message


async def test_password_not_in_invalid_url_error(tmp_path: Path) -> None:
    url = "postgresql://analyst:Sup3rSecret@127.0.0.1:notaport/warehouse"
    connections = registry(tmp_path, {MAIN: {"url_env": "WAREHOUSE_URL"}}, {"WAREHOUSE_URL": url})

    error = await sql_error(connections, "SELECT 1")

    assert error.type == "SqlConnectionNotConfigured"
    assert "Sup3rSecret" not in error.message
    assert "WAREHOUSE_URL" in error.message


async def test_unset_url_variable_is_permanent(tmp_path: Path) -> None:
    connections = registry(tmp_path, {MAIN: {"url_env": "WAREHOUSE_URL"}})

    error = await sql_error(connections, "SELECT 1")

    assert error.type == "SqlConnectionNotConfigured"
    assert "WAREHOUSE_URL is not set" in error.message


# --- connections, pools and seeds --------------------------------------------------------


async def test_url_from_environment(
    embedded_postgres: Any, pg_state_dir: Path, pg_admin: asyncpg.Connection, pg_database_name: str
) -> None:
    await pg_admin.execute(f'CREATE DATABASE "{pg_database_name}"')
    environ = {"REPORTS_URL": embedded_postgres.get_uri(pg_database_name)}
    connections = registry(pg_state_dir, {"reports": {"url_env": "REPORTS_URL"}}, environ)
    try:
        database = await run_sql(connections, "SELECT current_database()", mode="value", connection="reports")
    finally:
        await connections.close()

    assert database == pg_database_name


async def test_global_embedded_switch(pg_state_dir: Path, pg_database_name: str) -> None:
    environ = {"DAGWRIGHT_EMBEDDED_POSTGRES": "1"}
    connections = registry(pg_state_dir, {pg_database_name: {"url_env": "UNSET_URL"}}, environ)
    try:
        database = await run_sql(
            connections, "SELECT current_database()", mode="value", connection=pg_database_name
        )
    finally:
        await connections.close()

    assert database == pg_database_name


async def test_pool_reused_across_calls(
    pg_state_dir: Path, pg_admin: asyncpg.Connection, pg_database_name: str
) -> None:
    connections = registry(pg_state_dir, {pg_database_name: {"embedded": True, "pool_size": 5}})
    try:
        for number in range(5):
            await run_sql(connections, "SELECT $1::int", number, connection=pg_database_name)
        sessions = await pg_admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", pg_database_name
        )
    finally:
        await connections.close()
    after_close = await pg_admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", pg_database_name
    )

    assert sessions == 1
    assert after_close == 0


async def test_seeds_applied_once(pg_state_dir: Path, tmp_path: Path, pg_database_name: str) -> None:
    seed = tmp_path / "seed.sql"
    seed.write_text("CREATE TABLE visits (n int); INSERT INTO visits VALUES (1);", encoding="utf-8")
    tables = {pg_database_name: {"embedded": True, "seed": ["seed.sql"]}}
    fields = {"connection": pg_database_name, "mode": "value"}

    for _ in range(2):
        # A new registry stands for a worker restart: it opens its pool and checks the seeds again.
        connections = SqlConnections.from_settings(
            {"connections": tables}, tmp_path, {}, state_dir=pg_state_dir
        )
        try:
            visits = await run_sql(connections, "SELECT count(*) FROM visits", **fields)
            applied = await run_sql(connections, f"SELECT count(*) FROM {SEEDS_TABLE}", **fields)
        finally:
            await connections.close()

        assert visits == 1
        assert applied == 1


async def test_failing_seed_is_permanent(
    embedded_postgres: Any, pg_state_dir: Path, tmp_path: Path, pg_database_name: str
) -> None:
    seed = tmp_path / "broken.sql"
    seed.write_text("CREATE TABLE ok (n int); CREATE TABLE broken (;", encoding="utf-8")
    tables = {pg_database_name: {"embedded": True, "seed": [str(seed)]}}
    connections = registry(pg_state_dir, tables)
    try:
        error = await sql_error(connections, "SELECT 1", connection=pg_database_name)
    finally:
        await connections.close()
    database = await asyncpg.connect(embedded_postgres.get_uri(pg_database_name))
    try:
        created = await database.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'ok'")
    finally:
        await database.close()

    assert error.type == "SqlSeedFailed"
    assert error.non_retryable
    assert "broken.sql" in error.message
    assert "SQLSTATE 42601" in error.message
    assert created == 0


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"url_env": "X", "pool_sise": 3}, "unknown key 'pool_sise'; did you mean 'pool_size'?"),
        ({"url": "postgresql://u:p@h/d"}, "'url' is not accepted"),
        ({"pool_size": 3}, "has no URL source"),
        ({"url_env": "X", "url_secret": "Y"}, "sets both url_env and url_secret"),
        ({"url_env": "X", "statement_timeout": 30}, "statement_timeout: duration 30 has no unit"),
        ({"url_env": "X", "pool_size": 0}, "pool_size must be an integer of at least 1"),
        ({"embedded": True, "seed": ["missing.sql"]}, "missing.sql does not exist"),
    ],
)
def test_invalid_connection_config(tmp_path: Path, table: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        registry(tmp_path, {"analytics": table})

    assert "[connections.analytics]" in str(caught.value)
    assert expected in str(caught.value)


def test_connection_config_parsed(tmp_path: Path) -> None:
    (tmp_path / "schema.sql").write_text("SELECT 1;", encoding="utf-8")
    table = {
        "url_secret": "ANALYTICS_URL",
        "pool_size": 2,
        "statement_timeout": "30s",
        "read_only": True,
        "embedded": True,
        "seed": ["schema.sql"],
    }

    config = registry(tmp_path, {"analytics": table}).config("analytics")

    assert config.url_secret == "ANALYTICS_URL"
    assert config.pool_size == 2
    assert config.statement_timeout == 30.0
    assert config.read_only is True
    assert config.seed == ((tmp_path / "schema.sql").resolve(),)


async def test_url_from_secret(
    embedded_postgres: Any, pg_state_dir: Path, pg_admin: asyncpg.Connection, pg_database_name: str
) -> None:
    await pg_admin.execute(f'CREATE DATABASE "{pg_database_name}"')
    environ = {"DAGWRIGHT_SECRET_REPORTS_URL": embedded_postgres.get_uri(pg_database_name)}
    connections = registry(pg_state_dir, {"reports": {"url_secret": "REPORTS_URL"}}, environ)
    try:
        database = await run_sql(connections, "SELECT current_database()", mode="value", connection="reports")
    finally:
        await connections.close()

    assert database == pg_database_name


def test_request_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        SqlRequest(node_id="n", connection="c", query="SELECT 1", querry="x")  # type: ignore[call-arg]
