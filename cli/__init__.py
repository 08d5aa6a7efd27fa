"""The `dagwright` command line; each command lives in its own module."""

from __future__ import annotations

import typer

from dagwright.cli import validate as _validate

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run declarative AI workflows durably on Temporal.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(_validate.validate)
app.command()(_validate.graph)
app.command()(_validate.schema)


@app.command()
def version() -> None:
    """Print the dagwright version."""
    from dagwright import __version__

    typer.echo(__version__)


def main() -> None:
    app()
