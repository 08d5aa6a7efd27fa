"""Named database connections of a worker: their configuration, their pools and the embedded server.

A ``sql`` node names a connection, and the worker's ``dagwright.toml`` defines it::

    [connections.analytics]
    url_env = "ANALYTICS_DATABASE_URL"   # or url_secret = "NAME" (DAGWRIGHT_SECRET_NAME)
    pool_size = 5
    statement_timeout = "30s"
    read_only = true
    embedded = true
    seed = ["earnings/schema.sql"]

The URL is read from the environment when the connection is first used, never from the file,
so that no password is stored in configuration. A connection without a URL uses the embedded
PostgreSQL server when it sets ``embedded = true`` or the worker runs with
``DAGWRIGHT_EMBEDDED_POSTGRES=1``. That server is started from the ``pgserver`` package in
``<state dir>/postgres``. It has one database per connection name, and the ``seed`` files run
on it once per file content.

Each connection gets one asyncpg pool per worker process, opened on first use and closed by
``SqlConnections.close``. This module raises its own exceptions (and lets asyncpg's and the OS's
propagate); the ``dagwright.sql`` activity turns them into classified Temporal errors.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from temporalio.exceptions import ApplicationError

from dagwright.activities.errors import SECRET_NOT_FOUND
from dagwright.activities.secrets import SecretResolver
from dagwright.config import ConfigError
from dagwright.interpreter.durations import DurationError, parse_duration

logger = logging.getLogger(__name__)

EMBEDDED_ENV = "DAGWRIGHT_EMBEDDED_POSTGRES"
EMBEDDED_SUBDIR = "postgres"
SEEDS_TABLE = "dagwright_seeds"

# A connection attempt that takes longer than this is reported as a retryable connection error
# instead of holding the node until its own timeout.
CONNECT_TIMEOUT_SECONDS = 10.0
# Pooled connections idle for longer than this are closed, so an idle worker keeps no sessions open.
IDLE_CONNECTION_SECONDS = 300.0
APPLICATION_NAME = "dagwright"

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_KNOWN_KEYS = ("url_env", "url_secret", "pool_size", "statement_timeout", "read_only", "embedded", "seed")
_TRUE_WORDS = {"1", "true", "yes", "on"}


class ConnectionNotConfigured(Exception):
    """A node names a connection that this worker cannot open as configured (no secret inside)."""


class SeedFailed(Exception):
    """A seed file failed on the embedded database; the message names the file and the cause."""


class EmbeddedServerError(Exception):
    """The embedded PostgreSQL server did not start; the message names its data folder."""


@dataclass(frozen=True)
class ConnectionConfig:
    """One ``[connections.<name>]`` table of ``dagwright.toml``, validated."""

    name: str
    url_env: str | None = None
    url_secret: str | None = None
    pool_size: int = 5
    # Seconds; None leaves the server's own setting in place.
    statement_timeout: float | None = None
    # True makes every statement on this connection read-only, whatever the node sets.
    read_only: bool = False
    embedded: bool = False
    seed: tuple[Path, ...] = ()


class SqlConnections:
    """The worker's named connections, each with a lazily opened asyncpg pool."""

    def __init__(
        self,
        configs: Mapping[str, ConnectionConfig] | None = None,
        *,
        environ: Mapping[str, str] = os.environ,
        state_dir: Path,
        embedded_default: bool = False,
    ) -> None:
        self._configs = dict(configs or {})
        self._environ = environ
        self._embedded_default = embedded_default
        self._embedded = EmbeddedPostgres(state_dir / EMBEDDED_SUBDIR)
        self._pools: dict[str, asyncpg.Pool] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._redactions: dict[str, list[str]] = {}

    @classmethod
    def from_settings(
        cls,
        raw: Mapping[str, Any],
        base_dir: Path,
        environ: Mapping[str, str] = os.environ,
        *,
        state_dir: Path,
    ) -> SqlConnections:
        """Build the registry from the parsed ``dagwright.toml``; no connection is opened yet.

        Raises:
            ConfigError: a connection table is invalid; the message names the table and the key.
        """
        embedded_default = environ.get(EMBEDDED_ENV, "").strip().lower() in _TRUE_WORDS
        tables = raw.get("connections", {})
        if not isinstance(tables, Mapping):
            raise ConfigError("'connections' in dagwright.toml must be a table of [connections.<name>] tables")
        configs = {
            name: _parse_connection(name, table, base_dir, embedded_default)
            for name, table in tables.items()
        }
        return cls(configs, environ=environ, state_dir=state_dir, embedded_default=embedded_default)

    @property
    def names(self) -> list[str]:
        """Names of the configured connections, sorted."""
        return sorted(self._configs)

    def config(self, name: str) -> ConnectionConfig:
        """Return the configuration of connection ``name``.

        Raises:
            ConnectionNotConfigured: no connection of that name is configured.
        """
        config = self._configs.get(name)
        if config is None:
            configured = ", ".join(repr(known) for known in self.names) or "none"
            raise ConnectionNotConfigured(
                f"connection {name!r} is not configured on this worker (configured: {configured}). "
                f"Add a [connections.{name}] table to dagwright.toml with url_env = \"ENV_VAR\", "
                "url_secret = \"NAME\" or embedded = true, then restart the worker."
            )
        return config

    def redactions(self, name: str) -> list[str]:
        """Return the URL and password of connection ``name``, to scrub from messages."""
        return list(self._redactions.get(name, ()))

    async def pool(self, name: str) -> asyncpg.Pool:
        """Return the pool of connection ``name``, opening it (and the embedded server) on first use.

        Raises:
            ConnectionNotConfigured: unknown name, unset URL variable or invalid URL.
            EmbeddedServerError, SeedFailed: the embedded database could not be prepared.
            asyncpg.PostgresError, OSError, TimeoutError: the server rejected the connection or did not respond.
        """
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        config = self.config(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            # Another task may have opened the pool while this one waited for the lock.
            pool = self._pools.get(name)
            if pool is None:
                pool = await self._open_pool(config)
                self._pools[name] = pool
        return pool

    async def close(self) -> None:
        """Close every open pool; call it once when the worker stops."""
        pools, self._pools = self._pools, {}
        for name, pool in pools.items():
            try:
                await pool.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("sql pool close failed connection=%s error=%s", name, type(exc).__name__)
        logger.info("sql pools closed count=%d", len(pools))
        await self._embedded.close()

    async def _open_pool(self, config: ConnectionConfig) -> asyncpg.Pool:
        url = self._configured_url(config)
        embedded = url is None
        if url is None:
            url = await self._embedded.database_url(config.name, config.seed)
        else:
            self._redactions[config.name] = _secret_parts(url)

        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=config.pool_size,
                timeout=CONNECT_TIMEOUT_SECONDS,
                max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except (asyncpg.ClientConfigurationError, ValueError) as exc:
            # The URL did not parse; asyncpg's text can quote it, so only the class is shown.
            raise ConnectionNotConfigured(
                f"the URL of connection {config.name!r} is invalid ({type(exc).__name__}). "
                f"Fix {_url_source(config)}; it must look like postgresql://user:password@host:port/database."
            ) from None
        logger.info(
            "sql pool opened connection=%s embedded=%s max_size=%d",
            config.name,
            embedded,
            config.pool_size,
        )
        return pool

    def _configured_url(self, config: ConnectionConfig) -> str | None:
        """Return the URL from the environment or a secret; None means use the embedded server."""
        url: str | None = None
        if config.url_env:
            url = self._environ.get(config.url_env) or None
        elif config.url_secret:
            resolver = SecretResolver(self._environ)
            if config.embedded or self._embedded_default:
                # A missing secret is allowed here: the embedded server takes its place.
                url = _lookup_optional_secret(resolver, config.url_secret)
            else:
                url = resolver.lookup(config.url_secret)
        if url is not None or config.embedded or self._embedded_default:
            return url
        raise ConnectionNotConfigured(
            f"connection {config.name!r} has no URL on this worker: {_url_source(config)} is not set. "
            f"Set it, or set embedded = true in [connections.{config.name}] or {EMBEDDED_ENV}=1 "
            "to use the embedded PostgreSQL server."
        )


class EmbeddedPostgres:
    """A PostgreSQL server from the ``pgserver`` package, started on first use in ``pgdata``.

    The server listens only on a Unix socket inside its data folder. `close()` releases this
    process's handle, and pgserver stops the server once no live process holds one.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None
        self._lock = asyncio.Lock()

    async def database_url(self, database: str, seeds: tuple[Path, ...] = ()) -> str:
        """Return the URL of ``database``, creating it and applying ``seeds`` if needed."""
        server = await self._started()
        admin_url = server.get_uri("postgres")
        await _create_database(admin_url, database)
        url = server.get_uri(database)
        if seeds:
            await apply_seeds(url, seeds)
        return url

    async def close(self) -> None:
        """Release the server; called when the worker stops.

        pgserver would release it at interpreter exit, but the CLI exits with `os._exit`,
        which skips exit hooks, so the worker releases it explicitly.
        """
        async with self._lock:
            server, self._server = self._server, None
        if server is not None:
            # Leaving the handle's context drops this user. pgserver stops the server only
            # when no other user in this process and no other live process uses it.
            await asyncio.to_thread(server.__exit__, None, None, None)

    async def _started(self) -> Any:
        async with self._lock:
            if self._server is None:
                self._server = await asyncio.to_thread(self._start)
        return self._server

    def _start(self) -> Any:
        import pgserver  # imported here because it is only needed when the embedded server is used

        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
            server.__enter__()
        except Exception as exc:  # pgserver raises subprocess, OS and assertion errors alike
            raise EmbeddedServerError(
                f"the embedded PostgreSQL server in {self.pgdata} did not start "
                f"({type(exc).__name__}: {exc}). Its log is {self.pgdata / 'log'}."
            ) from exc
        logger.info("embedded postgres ready data_dir=%s", self.pgdata)
        return server


async def apply_seeds(url: str, seeds: tuple[Path, ...]) -> list[Path]:
    """Run each seed file not yet applied to the database at ``url``; return the files run.

    A file counts as applied when its SHA-256 is in the ``dagwright_seeds`` table, so an edited
    file runs again. Each file runs in its own transaction together with its record, under an
    advisory lock, so workers that start together apply it once.

    Raises:
        SeedFailed: a file cannot be read or the server rejected one of its statements.
    """
    applied: list[Path] = []
    connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {SEEDS_TABLE} ("
            "sha256 text PRIMARY KEY, file text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in seeds:
            if await _apply_seed(connection, path):
                applied.append(path)
    finally:
        await connection.close()
    return applied


async def _apply_seed(connection: asyncpg.Connection, path: Path) -> bool:
    try:
        script = path.read_bytes()
    except OSError as exc:
        raise SeedFailed(f"cannot read seed file {path} ({exc.strerror or type(exc).__name__})") from None
    digest = hashlib.sha256(script).hexdigest()

    async with connection.transaction():
        # Any constant works as the lock key; it only has to be the same in every worker.
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", SEEDS_TABLE)
        if await connection.fetchval(f"SELECT 1 FROM {SEEDS_TABLE} WHERE sha256 = $1", digest):
            return False
        try:
            # Without arguments asyncpg uses the simple query protocol, so a file may hold many
            # statements.
            await connection.execute(script.decode("utf-8"))
        except UnicodeDecodeError:
            raise SeedFailed(f"seed file {path} is not valid UTF-8") from None
        except asyncpg.PostgresError as exc:
            raise SeedFailed(
                f"seed file {path} failed: {exc} (SQLSTATE {exc.sqlstate}). Fix the file; the "
                "database keeps no part of it."
            ) from None
        await connection.execute(f"INSERT INTO {SEEDS_TABLE} (sha256, file) VALUES ($1, $2)", digest, str(path))
    logger.info("sql seed applied file=%s sha256=%s", path, digest[:12])
    return True


async def _create_database(admin_url: str, database: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return
        # CREATE DATABASE takes no parameters; the name is quoted as an identifier, and
        # connection names are restricted to [A-Za-z0-9_-] anyway.
        quoted = '"' + database.replace('"', '""') + '"'
        try:
            await connection.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return  # another worker created it first
        logger.info("embedded postgres database created name=%s", database)
    finally:
        await connection.close()


def _parse_connection(name: str, table: Any, base_dir: Path, embedded_default: bool) -> ConnectionConfig:
    where = f"[connections.{name}] in dagwright.toml"
    if not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: the connection name must match [A-Za-z0-9_][A-Za-z0-9_-]*")
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    _check_keys(where, table)

    url_env = _optional_str(where, table, "url_env")
    url_secret = _optional_str(where, table, "url_secret")
    if url_env and url_secret:
        raise ConfigError(f"{where} sets both url_env and url_secret; keep one of them")
    embedded = _bool(where, table, "embedded", False)
    if not (url_env or url_secret or embedded or embedded_default):
        raise ConfigError(
            f"{where} has no URL source: set url_env = \"ENV_VAR\" or url_secret = \"NAME\", "
            "or embedded = true to use the embedded PostgreSQL server"
        )

    return ConnectionConfig(
        name=name,
        url_env=url_env,
        url_secret=url_secret,
        pool_size=_pool_size(where, table),
        statement_timeout=_statement_timeout(where, table),
        read_only=_bool(where, table, "read_only", False),
        embedded=embedded,
        seed=_seed_paths(where, table, base_dir),
    )


def _check_keys(where: str, table: Mapping[str, Any]) -> None:
    for key in table:
        if key in _KNOWN_KEYS:
            continue
        if key in ("url", "dsn", "password"):
            raise ConfigError(
                f"{where}: {key!r} is not accepted because credentials must not be written in the "
                "file; put the URL in an environment variable and set url_env, or use url_secret"
            )
        close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(_KNOWN_KEYS)}"
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _optional_str(where: str, table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def _bool(where: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _pool_size(where: str, table: Mapping[str, Any]) -> int:
    value = table.get("pool_size", 5)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: pool_size must be an integer of at least 1, got {value!r}")
    return value


def _statement_timeout(where: str, table: Mapping[str, Any]) -> float | None:
    value = table.get("statement_timeout")
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except DurationError as exc:
        raise ConfigError(f"{where}: statement_timeout: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}: statement_timeout must be longer than zero, got {value!r}")
    return seconds


def _seed_paths(where: str, table: Mapping[str, Any], base_dir: Path) -> tuple[Path, ...]:
    value = table.get("seed", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: seed must be a list of file paths, got {value!r}")
    paths = tuple((base_dir / item).resolve() for item in value)
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{where}: seed file {path} does not exist")
    return paths


def _lookup_optional_secret(resolver: SecretResolver, name: str) -> str | None:
    try:
        return resolver.lookup(name)
    except ApplicationError as exc:
        if exc.type == SECRET_NOT_FOUND:
            return None
        raise


def _url_source(config: ConnectionConfig) -> str:
    if config.url_env:
        return f"the environment variable {config.url_env}"
    if config.url_secret:
        return f"the secret {config.url_secret}"
    return "the connection's URL"


def _secret_parts(url: str) -> list[str]:
    """Return the strings of ``url`` that must not appear in messages: the URL and its password."""
    parts = [url]
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        parts += [password, unquote(password)]
    # libpq-style "password=..." query or key/value parameters.
    parts += [match for match in re.findall(r"password=([^&\s]+)", url) if match]
    return parts
