"""`dagwright validate`, `dagwright graph` and `dagwright schema`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

import typer

from dagwright.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, compile_or_exit, load_tools, settings_for
from dagwright.cli.render import render_dot, render_mermaid
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.diagnostics import CompileError
from dagwright.interpreter.models import language_json_schema

ConfigOption = typer.Option(None, "--config", help="Path to a dagwright.toml (default: searched near the file).")
ToolsOption = typer.Option(None, "--tools", help="Extra tool module to load: a dotted name or a .py path. Repeatable.")


def validate(
    files: list[Path] = typer.Argument(..., help="Workflow files (YAML or JSON).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable diagnostics as JSON."),
    config: Optional[str] = ConfigOption,
    tools: Optional[list[str]] = ToolsOption,
) -> None:
    """Check workflow files without running them.

    Exit status: 0 when every file is valid, 1 when any file has errors, 2 on a usage
    or configuration problem. Errors are printed as `file:line:column: message`.
    """
    results = []
    for path in files:
        registry = load_tools(settings_for(path, config), tools)
        try:
            definition = compile_file(str(path), tools=registry)
            results.append({"file": str(path), "valid": True, "nodes": len(definition["nodes"]),
                            "hash": definition["hash"], "diagnostics": []})
        except CompileError as exc:
            results.append({"file": str(path), "valid": False,
                            "diagnostics": [d.to_json() for d in exc.diagnostics]})
            if not as_json:
                for diagnostic in exc.diagnostics:
                    typer.echo(diagnostic.format())

    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for result in results:
            if result["valid"]:
                typer.echo(f"{result['file']}: ok ({result['nodes']} nodes, {result['hash'][:19]})")
        errors = sum(len(result["diagnostics"]) for result in results)
        invalid = sum(1 for result in results if not result["valid"])
        if errors:
            typer.echo(f"{errors} error{'s' if errors != 1 else ''} in {invalid} file{'s' if invalid != 1 else ''}",
                       err=True)
    raise typer.Exit(EXIT_OK if all(result["valid"] for result in results) else EXIT_FAILED)


def graph(
    file: Path = typer.Argument(..., help="Workflow file.", show_default=False),
    output_format: str = typer.Option("mermaid", "--format", help="Output format: mermaid or dot."),
    run_id: Optional[str] = typer.Option(None, "--run", help="Colour each node by its status in this run (workflow id)."),
    config: Optional[str] = ConfigOption,
    tools: Optional[list[str]] = ToolsOption,
) -> None:
    """Print the DAG with node types and conditions, as Mermaid or Graphviz dot."""
    if output_format not in ("mermaid", "dot"):
        typer.echo(f"error: unknown format '{output_format}'; use mermaid or dot", err=True)
        raise typer.Exit(EXIT_USAGE)
    registry = load_tools(settings_for(file, config), tools)
    definition = compile_or_exit(str(file), registry)
    statuses = asyncio.run(run_statuses(run_id, definition)) if run_id else None
    render = render_mermaid if output_format == "mermaid" else render_dot
    typer.echo(render(definition, statuses))


async def run_statuses(run_id: str, definition: dict[str, Any]) -> dict[str, str]:
    """Return node id -> status in run `run_id`, from its `state` query or its result."""
    # Imported here so that `validate` and plain `graph` do not load the Temporal client.
    from temporalio.service import RPCError

    from dagwright.cli.common import fail
    from dagwright.cli.runs import client_for_cli, rpc_message, run_state

    client = await client_for_cli()
    handle = client.get_workflow_handle(run_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        fail(rpc_message(exc, run_id))
    memo = await description.memo()
    if memo.get("definition_hash") and memo["definition_hash"] != definition["hash"]:
        typer.echo(f"warning: run {run_id} ran a different version of this file "
                   f"({str(memo['definition_hash'])[:19]}, the file is {definition['hash'][:19]})", err=True)
    state = await run_state(handle, description.status)
    if state is None:
        fail(f"no node states for run {run_id}: no worker answered its state query; start `dagwright worker`")
    # Nodes the file no longer has would show up as extra boxes in the drawing.
    return {node_id: row["status"] for node_id, row in state["nodes"].items() if node_id in definition["nodes"]}


def schema() -> None:
    """Print the JSON Schema of workflow files, for editors and CI checks."""
    typer.echo(json.dumps(language_json_schema(), indent=2))


def compile_command(
    file: Path = typer.Argument(..., help="Workflow file.", show_default=False),
    config: Optional[str] = ConfigOption,
    tools: Optional[list[str]] = ToolsOption,
) -> None:
    """Print the compiled definition as JSON, as a run receives it."""
    registry = load_tools(settings_for(file, config), tools)
    typer.echo(json.dumps(compile_or_exit(str(file), registry), indent=2, ensure_ascii=False))


def llm_standin(
    script: Optional[Path] = typer.Option(None, "--script", help="A YAML or JSON script of replies and failures."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(0, "--port", help="Port to bind (0 picks a free one)."),
) -> None:
    """Serve the stand-in LLM server (Mistral and OpenAI APIs) for testing without a key."""
    from dagwright.testing.llm_server import serve

    try:
        serve(str(script) if script else None, host=host, port=port)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
