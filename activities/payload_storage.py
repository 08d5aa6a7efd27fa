"""Keep large payloads out of workflow history: storage drivers and dagwright's data converter.

Temporal stores every workflow input, activity input and activity result in the run's history,
and the server rejects a payload above 2 MiB by default. dagwright's data converter adds the
SDK's external storage (``temporalio.converter.ExternalStorage``): a payload at or above
``threshold`` is written to a store, and history holds only a small reference to it (a claim
check). Workflows and activities still see the real values.

Configured in the ``[payloads]`` table of dagwright.toml::

    [payloads]
    store = "local"         # "local" (default), "postgres", "s3" or "none"
    threshold = "256KiB"    # payloads of this size or more go to the store
    hard_cap = "50MiB"      # a node output above this fails the node (see envelope.py)
    path = "/var/lib/dagwright/payloads"      # local; default $DAGWRIGHT_STATE_DIR/payloads
    url = "postgresql://user@db/dagwright"    # postgres
    table = "dagwright_payloads"              # postgres
    bucket = "my-payloads"                    # s3; also endpoint_url and region

Every process that reads or writes runs (workers and the CLI) must use the same store. A
local directory works only when they share a file system.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.contrib.aws.s3driver import S3StorageDriver, S3StorageDriverClient
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from dagwright.config import ConfigError, Settings

logger = logging.getLogger(__name__)

STORES = ("local", "postgres", "s3", "none")
DEFAULT_THRESHOLD = 256 * 1024
DEFAULT_HARD_CAP = 50 * 1024 * 1024
DEFAULT_TABLE = "dagwright_payloads"

# Just under the server's default per-payload limit (`limit.blobSize.error`, 2 MiB), leaving
# room for the result envelope. It caps node outputs when no store is configured.
INLINE_PAYLOAD_LIMIT = 2_000_000

_SIZE_PATTERN = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}
_TABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
_KEYS = {"store", "threshold", "hard_cap", "path", "url", "table", "bucket", "endpoint_url", "region"}


class PayloadNotFoundError(Exception):
    """Raised when a stored payload that history refers to is missing from the store."""


@dataclass(frozen=True)
class PayloadSettings:
    """The ``[payloads]`` table: which store, the thresholds in bytes, and where the store is."""

    store: str = "local"
    threshold: int = DEFAULT_THRESHOLD
    hard_cap: int = DEFAULT_HARD_CAP
    path: Path | None = None
    url: str | None = None
    table: str = DEFAULT_TABLE
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None


def parse_size(value: Any, *, setting: str) -> int:
    """Parse a byte size: an integer, or text such as "256KiB", "50MiB" or "1MB".

    Raises:
        ConfigError: the value is not a non-negative size.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_PATTERN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"[payloads] {setting} = {value!r} is not a size; write a byte count or a number with "
            "B, KB, KiB, MB, MiB, GB or GiB, e.g. \"256KiB\""
        )
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[(unit or "b").lower()]


def payload_settings(raw: Mapping[str, Any]) -> PayloadSettings:
    """Read the ``[payloads]`` table of a parsed dagwright.toml; defaults when it is absent.

    Raises:
        ConfigError: an unknown key, store or table name, an invalid size, or a missing setting.
    """
    section = raw.get("payloads", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[payloads] must be a table")
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise ConfigError(f"[payloads] has unknown keys {unknown}; known keys: {sorted(_KEYS)}")

    store = section.get("store", "local")
    if store not in STORES:
        raise ConfigError(f"[payloads] store = {store!r} is not one of {', '.join(STORES)}")
    settings = PayloadSettings(
        store=store,
        threshold=parse_size(section.get("threshold", DEFAULT_THRESHOLD), setting="threshold"),
        hard_cap=parse_size(section.get("hard_cap", DEFAULT_HARD_CAP), setting="hard_cap"),
        path=Path(section["path"]).expanduser() if section.get("path") else None,
        url=section.get("url") or os.environ.get("DAGWRIGHT_PAYLOADS_URL"),
        table=section.get("table", DEFAULT_TABLE),
        bucket=section.get("bucket"),
        endpoint_url=section.get("endpoint_url"),
        region=section.get("region"),
    )
    _check_settings(settings)
    return settings


def _check_settings(settings: PayloadSettings) -> None:
    if settings.hard_cap < settings.threshold:
        raise ConfigError(
            f"[payloads] hard_cap ({settings.hard_cap} bytes) is below threshold ({settings.threshold} bytes); "
            "raise hard_cap or lower threshold"
        )
    if settings.store == "none" and settings.hard_cap != DEFAULT_HARD_CAP:
        logger.warning("[payloads] hard_cap is ignored with store = 'none'; node outputs are capped at %d bytes",
                       INLINE_PAYLOAD_LIMIT)
    if settings.store == "postgres" and not settings.url:
        raise ConfigError("[payloads] store = 'postgres' needs url (or $DAGWRIGHT_PAYLOADS_URL)")
    if not _TABLE_PATTERN.fullmatch(settings.table):
        raise ConfigError(f"[payloads] table = {settings.table!r} is not a plain (schema.)table name")
    if settings.store == "s3" and not settings.bucket:
        raise ConfigError("[payloads] store = 's3' needs bucket")


def default_payload_dir() -> Path:
    """Return ``$DAGWRIGHT_STATE_DIR/payloads`` (the state directory's default applies)."""
    # Imported here because the CLI package imports this module through cli.connect.
    from dagwright.cli.server import state_dir

    return state_dir() / "payloads"


def dagwright_data_converter(settings: Settings | None = None) -> DataConverter:
    """Return the pydantic data converter with external storage as ``[payloads]`` configures it.

    Without settings, the defaults apply: a local directory under the state directory.
    With ``store = "none"`` it is the plain pydantic converter.

    Raises:
        ConfigError: the ``[payloads]`` table is invalid, or the S3 store lacks ``aioboto3``.
    """
    config = payload_settings(settings.raw if settings is not None else {})
    if config.store == "none":
        return pydantic_data_converter
    storage = ExternalStorage(drivers=[build_driver(config)], payload_size_threshold=config.threshold)
    return dataclasses.replace(pydantic_data_converter, external_storage=storage)


def max_node_output_bytes(converter: DataConverter, settings: Settings | None = None) -> int:
    """Return the largest encoded node output a worker with this converter accepts.

    With external storage it is ``[payloads] hard_cap``. Without it, a larger output could never
    be recorded, so the cap is ``INLINE_PAYLOAD_LIMIT``.
    """
    if converter.external_storage is None:
        return INLINE_PAYLOAD_LIMIT
    return payload_settings(settings.raw if settings is not None else {}).hard_cap


def build_driver(config: PayloadSettings) -> StorageDriver:
    """Create the storage driver that ``config.store`` names.

    Raises:
        ConfigError: ``store`` is "none", or the S3 store lacks ``aioboto3``.
    """
    if config.store == "local":
        return LocalDirectoryDriver(config.path or default_payload_dir())
    if config.store == "postgres":
        assert config.url is not None
        return PostgresDriver(config.url, table=config.table)
    if config.store == "s3":
        return _s3_driver(config)
    raise ConfigError(f"[payloads] store = {config.store!r} has no driver")


# ---------------------------------------------------------------- content addressing


def payload_digest(data: bytes) -> str:
    """Return the SHA-256 hex digest that names a stored payload; equal payloads share it."""
    return hashlib.sha256(data).hexdigest()


def _claim_digest(claim: StorageDriverClaim, driver: str) -> str:
    digest = claim.claim_data.get("sha256", "")
    if not _DIGEST_PATTERN.fullmatch(digest):
        raise ValueError(f"{driver}: claim {dict(claim.claim_data)!r} has no valid sha256 digest")
    return digest


def _decode(data: bytes, digest: str, where: str) -> Payload:
    if payload_digest(data) != digest:
        raise ValueError(f"stored payload {digest} in {where} is corrupt: its content has another SHA-256")
    return Payload.FromString(data)


# ---------------------------------------------------------------- local directory


class LocalDirectoryDriver(StorageDriver):
    """Store each payload as a file named by its SHA-256, so a retried store writes nothing new."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def name(self) -> str:
        # Stored in every reference: renaming it makes existing references unreadable.
        return "dagwright-local"

    def type(self) -> str:
        return "dagwright.local-directory"

    def path_for(self, digest: str) -> Path:
        """Return the file of a payload; a two-character fan-out keeps directories small."""
        return self.directory / digest[:2] / digest

    async def store(self, context: StorageDriverStoreContext, payloads: Sequence[Payload]) -> list[StorageDriverClaim]:
        return await asyncio.to_thread(self._store_all, payloads)

    async def retrieve(self, context: StorageDriverRetrieveContext,
                       claims: Sequence[StorageDriverClaim]) -> list[Payload]:
        return await asyncio.to_thread(self._retrieve_all, claims)

    def _store_all(self, payloads: Sequence[Payload]) -> list[StorageDriverClaim]:
        claims = []
        for payload in payloads:
            data = payload.SerializeToString(deterministic=True)
            digest = payload_digest(data)
            self._write(digest, data)
            claims.append(StorageDriverClaim(claim_data={"sha256": digest}))
        return claims

    def _write(self, digest: str, data: bytes) -> None:
        target = self.path_for(digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file and renamed, so a reader never sees a partial payload.
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.debug("stored payload %s (%d bytes) in %s", digest, len(data), self.directory)

    def _retrieve_all(self, claims: Sequence[StorageDriverClaim]) -> list[Payload]:
        payloads = []
        for claim in claims:
            digest = _claim_digest(claim, self.name())
            path = self.path_for(digest)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise PayloadNotFoundError(
                    f"stored payload {digest} not found at {path}. Workers and clients must share the "
                    "payload store: use [payloads] store = 'postgres' or 's3' across machines."
                ) from None
            payloads.append(_decode(data, digest, str(self.directory)))
        return payloads


# ---------------------------------------------------------------- PostgreSQL


class PostgresDriver(StorageDriver):
    """Store payloads in a PostgreSQL table keyed by SHA-256; the table is created if missing."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE) -> None:
        if not _TABLE_PATTERN.fullmatch(table):
            raise ValueError(f"table name {table!r} is not a plain (schema.)table name")
        self._url = url
        self.table = table
        self._pools: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock: asyncio.Lock | None = None

    def name(self) -> str:
        # Stored in every reference: renaming it makes existing references unreadable.
        return "dagwright-postgres"

    def type(self) -> str:
        return "dagwright.postgres-table"

    async def store(self, context: StorageDriverStoreContext, payloads: Sequence[Payload]) -> list[StorageDriverClaim]:
        rows = []
        for payload in payloads:
            data = payload.SerializeToString(deterministic=True)
            rows.append((payload_digest(data), data))
        pool = await self._pool()
        await pool.executemany(
            f"INSERT INTO {self.table} (digest, data, size) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING",
            [(digest, data, len(data)) for digest, data in rows],
        )
        return [StorageDriverClaim(claim_data={"sha256": digest}) for digest, _ in rows]

    async def retrieve(self, context: StorageDriverRetrieveContext,
                       claims: Sequence[StorageDriverClaim]) -> list[Payload]:
        digests = [_claim_digest(claim, self.name()) for claim in claims]
        pool = await self._pool()
        records = await pool.fetch(f"SELECT digest, data FROM {self.table} WHERE digest = ANY($1::text[])", digests)
        found = {record["digest"]: bytes(record["data"]) for record in records}
        missing = [digest for digest in digests if digest not in found]
        if missing:
            raise PayloadNotFoundError(f"stored payloads {missing} not found in table {self.table}")
        return [_decode(found[digest], digest, f"table {self.table}") for digest in digests]

    async def close(self) -> None:
        """Close the connection pool of the running event loop."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

    async def _pool(self) -> Any:
        # A pool's connections belong to the event loop that opened them.
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if loop not in self._pools:
                self._pools[loop] = await self._open_pool()
        return self._pools[loop]

    async def _open_pool(self) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(self._url, min_size=0, max_size=4)
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "digest text PRIMARY KEY, data bytea NOT NULL, size bigint NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
        return pool


# ---------------------------------------------------------------- S3


def _s3_driver(config: PayloadSettings) -> StorageDriver:
    try:
        import aioboto3
    except ImportError as exc:
        raise ConfigError(
            f"[payloads] store = 's3' needs the optional aioboto3 package ({exc}). "
            "Install it with: pip install 'temporalio[aioboto3]'"
        ) from None
    assert config.bucket is not None
    client = LazyS3Client(aioboto3.Session(), endpoint_url=config.endpoint_url, region=config.region)
    return S3StorageDriver(client=client, bucket=config.bucket)


class LazyS3Client(S3StorageDriverClient):
    """An aioboto3 S3 client that opens on first use, because opening needs a running event loop."""

    def __init__(self, session: Any, *, endpoint_url: str | None, region: str | None) -> None:
        self._session = session
        self._endpoint_url = endpoint_url
        self._region = region
        self._client: S3StorageDriverClient | None = None

    async def put_object(self, *, bucket: str, key: str, data: bytes) -> None:
        await (await self._open()).put_object(bucket=bucket, key=key, data=data)

    async def object_exists(self, *, bucket: str, key: str) -> bool:
        return await (await self._open()).object_exists(bucket=bucket, key=key)

    async def get_object(self, *, bucket: str, key: str) -> bytes:
        return await (await self._open()).get_object(bucket=bucket, key=key)

    async def _open(self) -> S3StorageDriverClient:
        # NOTE: the client stays open for the life of the process and is never closed
        # explicitly; its connections end when the process exits.
        if self._client is None:
            from temporalio.contrib.aws.s3driver.aioboto3 import new_aioboto3_client

            context = self._session.client("s3", endpoint_url=self._endpoint_url, region_name=self._region)
            self._client = new_aioboto3_client(await context.__aenter__())
        return self._client
