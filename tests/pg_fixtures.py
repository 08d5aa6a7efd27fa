"""PostgreSQL fixtures: one embedded server (from the pgserver package) for the whole test session.

The server lives in ``<tmp>/postgres``, which is exactly where ``SqlConnections`` looks for
the embedded server when its state directory is ``<tmp>``. pgserver keeps one handle per
data folder, so connections built over ``pg_state_dir`` reuse this server instead of starting
another. The server listens only on a Unix socket in its data folder.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pgserver
import pytest
import pytest_asyncio

from dagwright.activities.sql_connections import EMBEDDED_SUBDIR


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[Any]:
    """The session's PostgreSQL 16 server (with pgvector), deleted when the session ends."""
    # The folder is outside pytest's tmp_path because pytest keeps its base folder private (mode
    # 0700). Under root, pgserver runs the server as the user "pgserver", which must traverse
    # every parent folder, and pg_ctl then failed to stop the server at the end of the session.
    state = Path(tempfile.mkdtemp(prefix="dagwright-pg-"))
    server = pgserver.get_server(state / EMBEDDED_SUBDIR, cleanup_mode="delete")
    # Hold a counted handle, so a worker in this process that releases its own handle
    # (SqlConnections.close) does not stop the session's server.
    server.__enter__()
    # The data is thrown away after the session, so durability only costs time: every test
    # database copies its template, and the final checkpoint would flush all of it to disk.
    server.psql(
        "ALTER SYSTEM SET fsync = off;\n"
        "ALTER SYSTEM SET synchronous_commit = off;\n"
        "ALTER SYSTEM SET full_page_writes = off;\n"
        "SELECT pg_reload_conf();\n"
    )
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_state_dir(embedded_postgres: Any) -> Path:
    """The DAGWRIGHT_STATE_DIR whose ``postgres`` folder contains the session's server."""
    return Path(embedded_postgres.pgdata).parent


@pytest.fixture(scope="session")
def pg_admin_url(embedded_postgres: Any) -> str:
    """URL of the server's ``postgres`` database, as the superuser, for setup and inspection."""
    return embedded_postgres.get_uri("postgres")


@pytest_asyncio.fixture
async def pg_admin(pg_admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the ``postgres`` database, closed after the test."""
    connection = await asyncpg.connect(pg_admin_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def pg_database_name() -> str:
    """A database (and connection) name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"
