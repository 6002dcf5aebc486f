"""``astroclass grid ...``: run the comparison grid, see where it stands, export its results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

grid_app = typer.Typer(help="Run the comparison grid (exactly once, resumable; local processes or Ray), "
                            "show its status, export its results.", no_args_is_help=True)

SpecArg = Annotated[str, typer.Argument(help="A grid spec YAML file, or a built-in spec: paper, demo, tiny.")]
Experiment = Annotated[Path | None, typer.Option(
    "--experiment", "-e", help="Experiment folder holding store.sqlite and runs/ (default: experiments/<spec name>).")]
DataOpt = Annotated[list[str] | None, typer.Option("--data", help="Override a dataset path: NAME=FILE "
                                                                     "(repeatable), e.g. --data SG=sg.h5.")]


def _parse_data(items: list[str] | None) -> dict[str, str]:
    from astroclass.errors import AstroclassError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise AstroclassError(f"--data {item!r}: expected NAME=FILE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load(spec: str, data: list[str] | None, experiment: Path | None, check_models: bool = True):
    from astroclass.experiments.spec import GridSpec

    gs = GridSpec.load(spec, _parse_data(data), check_models)
    return gs, experiment or Path("experiments") / gs.name


@grid_app.command("run")
def run_cmd(spec: SpecArg, experiment: Experiment = None, data: DataOpt = None,
            engine: Annotated[str, typer.Option(help="local (worker processes here) or ray.")] = "local",
            workers: Annotated[int | None, typer.Option(help="Concurrent runs (default: --per-gpu per GPU; on a "
                                                                "CPU machine one per core, as far as 2 GiB each in "
                                                                "half the free memory allows; at most the runs to "
                                                                "do).")] = None,
            per_gpu: Annotated[int, typer.Option(help="Workers on each GPU, each training a run or a fused group at "
                                                      "a time; they split its memory.")] = 1,
            threads: Annotated[int | None, typer.Option(help="CPU threads per run (default: cores / workers; at most "
                                                                 "the cores, within a container's CPU quota).")] = None,
            max_attempts: Annotated[int, typer.Option(help="Tries per run before it stays failed.")] = 2,
            keep: Annotated[str, typer.Option(
                help="Checkpoints to keep: best (per dataset, model, setup), all, none.")] = "best",
            lease: Annotated[float, typer.Option(help="Seconds a claimed run stays ours without a heartbeat.")] = 120.0,
            ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local "
                                                                    "Ray instance).")] = None,
            ray_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance.")] = None,
            fuse: Annotated[str | None, typer.Option(help="Train the runs of a (dataset, model, setup) cell together "
                                                             "as one batched model: auto (on a GPU, groups as large as "
                                                             "its free memory allows; on a CPU one run per worker, "
                                                             "measured as fast there), off (one run per worker "
                                                             "at a time) or a group size. Each run's results are "
                                                             "what it gets alone. [default: the spec's fuse, else "
                                                             "auto]")] = None,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress display.")] = False):
    """Run every unfinished run of SPEC exactly once; safe to kill and start again, or to run twice at once."""
    from astroclass.experiments.runner import GridOptions, run_grid

    gs, exp = _load(spec, data, experiment)
    opts = GridOptions(engine=engine, workers=workers, per_gpu=per_gpu, threads=threads, max_attempts=max_attempts,
                       keep=keep, lease_s=lease, heartbeat_s=min(5.0, lease / 4), ray_address=ray_address,
                       ray_num_cpus=ray_cpus, fuse=fuse)
    counts = run_grid(gs, exp, opts, progress=not quiet)
    typer.echo(f"{exp}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if counts["failed"]:
        raise typer.Exit(2)


@grid_app.command("status")
def status_cmd(spec: SpecArg, experiment: Experiment = None, data: DataOpt = None,
               workers: Annotated[int | None, typer.Option(help="Concurrent runs assumed for the ETA (default: "
                                                                  "grid run's on this machine).")] = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print the status as one JSON object (counts, "
                                                                    "per dataset, ETA, failures).")] = False):
    """Counts by status, per-dataset progress, ETA from measured run times, failures with their first error line."""
    from rich.console import Console
    from rich.table import Table

    from astroclass.experiments.runner import open_experiment
    from astroclass.experiments.status import grid_status

    gs, exp = _load(spec, data, experiment, check_models=False)  # its runs were checked when they were added
    store = open_experiment(exp, create=False)
    if workers is None:
        from astroclass.experiments.engines import local_slots

        workers = len(local_slots())
    st = grid_status(gs, store, slots=workers)
    if as_json:
        import json

        typer.echo(json.dumps({"experiment": str(exp), "workers": workers, **st}, indent=2, default=str))
        return
    con = Console()
    con.print(f"{exp}: {st['total']} runs — " + ", ".join(f"{k} {v}" for k, v in st["counts"].items()))
    t = Table("dataset", "done", "total")
    for d, v in st["datasets"].items():
        t.add_row(d, str(v["done"]), str(v["total"]))
    con.print(t)
    if st["mean_run_seconds"] is not None:
        eta = st["eta_seconds"]
        con.print(f"mean run time {st['mean_run_seconds']:.1f} s; ETA {eta / 3600:.2f} h with {workers} "
                  f"concurrent run(s)")
    for f in st["failures"]:
        con.print(f"[red]failed[/red] {f['id']} {f['run']} (attempts {f['attempts']}): {f['error']}")


@grid_app.command("export")
def export_cmd(experiment: Annotated[Path, typer.Argument(help="Experiment folder (with store.sqlite).")],
               output: Annotated[Path, typer.Option("--output", "-o", help="runs.csv or runs.parquet")],
               overwrite: Annotated[bool, typer.Option("--overwrite",
                                                       help="Replace the output if it exists.")] = False):
    """Every run of an experiment as one flat table (CSV, or Parquet with pyarrow)."""
    from astroclass.experiments.runner import open_experiment
    from astroclass.experiments.status import export
    from astroclass.fileio import check_output

    store = open_experiment(experiment, create=False)
    check_output(output, overwrite, [Path(experiment) / "store.sqlite"], "export")
    typer.echo(f"wrote {export(store, output)}")


@grid_app.command("show")
def show_cmd(spec: SpecArg, data: DataOpt = None):
    """Print a spec (e.g. a built-in one, to copy and edit) and how many runs it expands to."""
    from astroclass.experiments.spec import GridSpec

    gs = GridSpec.load(spec, _parse_data(data))
    typer.echo(gs.to_yaml().rstrip())
    typer.echo(f"# {len(gs.expand())} runs")
