"""``astroclass demo``: the main job on built-in data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_cmd(output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the data, the experiment and "
                                                                         "the report.")] = Path("demo-output"),
             n: Annotated[int, typer.Option("-n", "--n", help="Synthetic objects to render.")] = 1000,
             epochs: Annotated[int, typer.Option(help="Most epochs per run.")] = 5,
             models: Annotated[str | None, typer.Option(
                 help="Comma-separated models trained from scratch (default: efficientnet_lite0; the paper's "
                      "backbones take a minute or more per run on a laptop CPU).")] = None,
             pretrained: Annotated[str, typer.Option(help="Comma-separated models fine-tuned from packaged ImageNet "
                                                          "weights ('' for none).")] = "efficientnet_lite0",
             recipes: Annotated[str, typer.Option(help="Comma-separated recipes each model trains with: paper, "
                                                       "modern.")] = "paper,modern",
             workers: Annotated[int | None, typer.Option(help="Concurrent runs.")] = None,
             seed: Annotated[int, typer.Option(help="Seed of the data and the runs.")] = 0,
             quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False):
    """Render a synthetic star/galaxy set (GalSim), train efficientnet_lite0 from scratch and fine-tuned from
    ImageNet weights, each with the paper's method and with the modern recipe, and write the HTML report, whose
    first screen compares them. About 3 minutes on 2 cores (measured 2.6 minutes on a 2-vCPU AMD EPYC, which
    trains in fp32)."""
    from astroclass.demo import run_demo
    from astroclass.modelnames import display_name

    res = run_demo(output, n=n, epochs=epochs, models=[m.strip() for m in models.split(",")] if models else None,
                   pretrained=[m.strip() for m in pretrained.split(",") if m.strip()], seed=seed, workers=workers,
                   progress=not quiet, recipes=[r.strip() for r in recipes.split(",") if r.strip()])
    best = res["best"]
    if best is not None:
        m = best["metrics"]
        recipe = best["config"].get("recipe", "paper")
        typer.echo(f"best: {display_name(best['model'])} ({best['setup']}, {recipe} recipe): val accuracy "
                   f"{m['val']['accuracy']:.3f}, "
                   f"test accuracy {m['test']['accuracy']:.3f} [{m['test']['accuracy_ci95'][0]:.3f}, "
                   f"{m['test']['accuracy_ci95'][1]:.3f}], balanced {m['test']['balanced_accuracy']:.3f}")
    typer.echo("runs: " + ", ".join(f"{k} {v}" for k, v in res["counts"].items()) +
               f"; {res['seconds'] / 60:.1f} min (data {res['data_seconds']:.0f} s, training "
               f"{res['grid_seconds']:.0f} s)")
    typer.echo(f"report: {Path(res['report']).resolve()}")
