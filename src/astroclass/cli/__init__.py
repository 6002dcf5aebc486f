"""The ``astroclass`` command line: a thin layer over the Python API of the same shape."""

from __future__ import annotations

import sys

import typer

from astroclass import __version__
from astroclass.cli.data import data_app
from astroclass.cli.demo import demo_cmd
from astroclass.cli.grid import grid_app
from astroclass.cli.predict import embed_cmd, export_cmd, model_app, predict_cmd
from astroclass.cli.report import report_cmd
from astroclass.cli.train import train_cmd
from astroclass.errors import AstroclassError, os_error_text

app = typer.Typer(
    name="astroclass",
    help="Classify astronomical objects in survey images with deep ConvNets: prepare labelled cutouts, "
         "train and compare the paper's models, report, and classify new images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.command("train")(train_cmd)
app.add_typer(grid_app, name="grid")
app.command("report")(report_cmd)
app.command("demo")(demo_cmd)
app.command("predict")(predict_cmd)
app.command("embed")(embed_cmd)
app.command("export")(export_cmd)
app.add_typer(model_app, name="model")


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"astroclass {__version__}")
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line on stderr and exit 1, never a traceback."""
    from astroclass.progress import show_messages

    show_messages()
    try:
        app(args=argv, standalone_mode=True)
    except AstroclassError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except Exception as exc:  # the machine's errors (full disk, read-only folder, damaged files): one line
        text = os_error_text(exc)
        if text is None:
            raise
        typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
        sys.exit(1)
