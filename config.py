"""Project and worker configuration: `dagwright.toml`.

A configuration file says which tool modules to load and how the worker connects
and runs. It is found, in this order, at `--config`, at `$DAGWRIGHT_CONFIG`, next
to the workflow file or in one of its parent folders, then in the current folder
or one of its parents. Every setting also has an environment variable, which wins
over the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

CONFIG_NAME = "dagwright.toml"
STATE_DIR_ENV = "DAGWRIGHT_STATE_DIR"
DEFAULT_TASK_QUEUE = "dagwright"


class ConfigError(Exception):
    """Raised when the configuration file cannot be read; the message names the file."""


@dataclass
class Settings:
    """Settings for the CLI and the worker."""

    path: Path | None = None
    tool_modules: list[str] = field(default_factory=list)
    task_queue: str = DEFAULT_TASK_QUEUE
    max_concurrent_activities: int = 100
    max_concurrent_workflow_tasks: int = 100
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return $DAGWRIGHT_STATE_DIR, else $XDG_STATE_HOME/dagwright or ~/.local/state/dagwright."""
    environ = os.environ if environ is None else environ
    # Absolute, because the database path in the dev server's command line identifies it.
    if environ.get(STATE_DIR_ENV):
        return Path(environ[STATE_DIR_ENV]).expanduser().absolute()
    xdg_state = environ.get("XDG_STATE_HOME")
    base = Path(xdg_state).expanduser() if xdg_state else Path.home() / ".local" / "state"
    return (base / "dagwright").absolute()


def find_config(explicit: str | os.PathLike | None = None, *, near: str | os.PathLike | None = None) -> Path | None:
    """Return the configuration file to use, or None when there is none."""
    if explicit:
        return Path(explicit)
    if os.environ.get("DAGWRIGHT_CONFIG"):
        return Path(os.environ["DAGWRIGHT_CONFIG"])
    starts = [Path(near).resolve().parent] if near else []
    starts.append(Path.cwd())
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / CONFIG_NAME
            if candidate.is_file():
                return candidate
    return None


def load_settings(explicit: str | os.PathLike | None = None, *, near: str | os.PathLike | None = None) -> Settings:
    """Read the configuration file (if any) and apply environment overrides."""
    path = find_config(explicit, near=near)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    settings = Settings(path=path, raw=raw)
    tools = raw.get("tools", {})
    worker = raw.get("worker", {})
    settings.tool_modules = [_resolve_module(spec, settings.base_dir) for spec in tools.get("modules", [])]
    settings.task_queue = worker.get("task_queue", settings.task_queue)
    settings.max_concurrent_activities = int(worker.get("max_concurrent_activities", settings.max_concurrent_activities))
    settings.max_concurrent_workflow_tasks = int(
        worker.get("max_concurrent_workflow_tasks", settings.max_concurrent_workflow_tasks)
    )

    env_modules = os.environ.get("DAGWRIGHT_TOOL_MODULES", "")
    settings.tool_modules += [_resolve_module(spec.strip(), Path.cwd()) for spec in env_modules.split(",") if spec.strip()]
    settings.task_queue = os.environ.get("DAGWRIGHT_TASK_QUEUE", settings.task_queue)
    if os.environ.get("DAGWRIGHT_MAX_CONCURRENT_ACTIVITIES"):
        settings.max_concurrent_activities = int(os.environ["DAGWRIGHT_MAX_CONCURRENT_ACTIVITIES"])
    return settings


def _resolve_module(spec: str, base_dir: Path) -> str:
    """Turn a file path relative to the configuration file into an absolute one; keep dotted names."""
    if spec.endswith(".py") or "/" in spec or os.sep in spec:
        return str((base_dir / spec).resolve())
    return spec
