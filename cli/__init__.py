"""The `dagwright` command line."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the dagwright version."""
    from dagwright import __version__

    typer.echo(__version__)


def main() -> None:
    app()
