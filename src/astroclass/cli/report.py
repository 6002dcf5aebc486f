"""``astroclass report``: the paper's tables, statistics and plots of an experiment, as one HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_cmd(experiment: Annotated[Path, typer.Argument(help="Experiment folder (with store.sqlite), as written "
                                                               "by `astroclass grid run`.")],
               output: Annotated[Path, typer.Option("--output", "-o", help="Report folder: report.html, tables/ "
                                                                           "(Markdown, CSV, LaTeX), plots/ (PNG).")]):
    """Compute the paper's Tables 2–12 (and the comparison with its published values), test-set statistics,
    significance tests and plots from the store alone; no training."""
    from astroclass.report import build_report

    path = build_report(experiment, output)
    typer.echo(f"report: {path.resolve()}")
