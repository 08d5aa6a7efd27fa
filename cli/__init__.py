"""The `dagwright` command line; each command lives in its own module."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from dagwright.cli import control as _control
from dagwright.cli import run as _run
from dagwright.cli import runs as _runs
from dagwright.cli import trace as _trace
from dagwright.cli import validate as _validate
from dagwright.cli.server import server_app
from dagwright.cli.telemetry_setup import install_default_runtime

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run declarative AI workflows durably on Temporal.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.command()(_validate.validate)
app.command()(_validate.graph)
app.command()(_validate.schema)
app.command("compile")(_validate.compile_command)
app.command("llm-standin")(_validate.llm_standin)
app.command()(_run.run)
app.command()(_run.worker)
app.command()(_runs.status)
app.command()(_runs.result)
app.command("list")(_runs.list_runs)
app.command()(_trace.trace)
app.command()(_runs.cancel)
app.command()(_control.approvals)
app.command()(_control.approve)
app.command()(_control.reject)
app.command()(_control.pause)
app.command()(_control.resume)
app.command()(_control.rerun)
app.command("raise-budget")(_control.raise_budget)
app.add_typer(server_app, name="server")


@app.command()
def version() -> None:
    """Print the dagwright version."""
    from dagwright import __version__

    typer.echo(__version__)


def main() -> None:
    """Run the CLI and exit without interpreter finalization.

    The Temporal client's native runtime threads can still call back into Python
    while the interpreter finalizes after an RPC error, which aborts the process
    (seen with temporalio 1.35). Output is flushed first, then the process exits.
    """
    # pgserver requests a runtime folder from platformdirs and never uses it. Without
    # XDG_RUNTIME_DIR, that request prints a warning on every run.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    install_default_runtime()
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        code = 1
    os._exit(code)
