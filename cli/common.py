"""Helpers shared by CLI commands: tool loading, compiling with messages, exits."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer

from dagwright.activities.tools import ToolDefinitionError, ToolLoadError, ToolRegistry, default_registry
from dagwright.config import ConfigError, Settings, load_settings
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.diagnostics import CompileError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print `error: message` to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_for(workflow_file: str | os.PathLike | None, config: str | None) -> Settings:
    try:
        return load_settings(config, near=workflow_file)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def load_tools(settings: Settings, extra_modules: list[str] | None = None) -> ToolRegistry:
    """Load tools from entry points, the configuration and `--tools` into the default registry."""
    try:
        default_registry.load_entry_points()
        for spec in [*settings.tool_modules, *(extra_modules or [])]:
            default_registry.load_module(spec, base_dir=settings.base_dir)
    except (ToolLoadError, ToolDefinitionError) as exc:
        fail(str(exc), EXIT_USAGE)
    return default_registry


def compile_or_exit(path: str, registry: ToolRegistry) -> dict[str, Any]:
    """Compile a workflow file, or print its diagnostics and exit 1."""
    try:
        return compile_file(path, tools=registry)
    except CompileError as exc:
        for diagnostic in exc.diagnostics:
            typer.echo(diagnostic.format(), err=True)
        count = len(exc.diagnostics)
        typer.echo(f"{path}: {count} error{'s' if count != 1 else ''}; nothing was started", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
