"""The ``astroclass`` command line: a thin layer over the Python API of the same shape."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

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


_METAVARS = {Path: "PATH", int: "N", float: "NUMBER", str: "TEXT"}


def _plain_help(command: Any) -> Any:
    """``command`` and its subcommands with help in plain words: an argument by its name (CATALOG, INPUTS...),
    an option by what it takes (PATH, N, NUMBER, TEXT, or its choices), a flag by nothing, instead of typer's
    type placeholders (<path>, <list[Path]>, <bool>, {catalog})."""
    for param in command.params:
        if param.metavar is not None and param.param_type_name != "argument":
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        kind = param.type_descriptor.annotation
        while typing.get_args(kind):  # list[Path], Path | None → Path
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        takes = _METAVARS.get(kind, getattr(kind, "__name__", str(kind)).upper())
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            param.metavar = name
            more = "..." if param.nargs != 1 else ""
            param._usage_display_name = (lambda n=name, r=param.required, m=more: (n if r else f"[{n}]") + m)
            param.display_type_rich = (lambda ctx, t=takes + more: t)
        else:
            param.metavar = takes
    help_option = command.get_help_option

    def plain_help_option(ctx: Any, made: Any = help_option) -> Any:
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = plain_help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line on stderr and exit 1, never a traceback."""
    from astroclass.progress import show_messages

    show_messages()
    try:
        _plain_help(typer.main.get_command(app)).main(args=argv, prog_name="astroclass", standalone_mode=True)
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
