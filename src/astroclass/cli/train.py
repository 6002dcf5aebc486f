"""``astroclass train``: one training run. Its run options are made from :class:`RunConfig`'s fields (type,
default, help text, section), so the CLI and the config cannot drift apart."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from astroclass.runconfig import SECTIONS, RunConfig

RUN_OPTIONS = sorted((f for f in dataclasses.fields(RunConfig) if f.name != "dataset" and f.metadata.get("cli", True)),
                     key=lambda f: list(SECTIONS).index(f.metadata["section"]))  # --help shows one panel a section


def _run_option(f: dataclasses.Field, kind: Any) -> inspect.Parameter:
    """The CLI parameter of one run option of type ``kind``: None by default, so a --config file's value stays
    unless given."""
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # float | None -> float
    default = RunConfig.defaults()[f.name]
    shown = f" (default: {default})" if default is not None else ""
    decls = [f.metadata["flag"]] if f.metadata.get("flag") else []
    opt = typer.Option(*decls, help=f.metadata["help"] + shown, show_default=False,
                       rich_help_panel=SECTIONS[f.metadata["section"]])
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[typing.Optional[base], opt])  # noqa: UP045 (a runtime type)


def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset (.h5) made by `astroclass data import`.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Run folder (default: runs/<dataset>-<model>-<setup>-<optimizer>-l2<λ>-mn<γ>-s<seed>).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="A run config YAML (as saved beside every run); options given on the command line override it.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Reuse a run folder that already holds a result.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's result (result.json: metrics, "
                                                         "epochs, timing) instead of the summary lines.")] = False,
    **options: Any,
):
    """Train one model on one prepared dataset, as the paper does; writes config.yaml, history.csv,
    checkpoint.pt, predictions.npz and result.json to the run folder."""
    from astroclass.errors import AstroclassError
    from astroclass.progress import say
    from astroclass.training import train
    from astroclass.training.pick import with_picked_backbone

    base = RunConfig.from_yaml(config).to_dict() if config else {}
    base["dataset"] = str(dataset)
    base.update({k: v for k, v in options.items() if v is not None})
    base = with_picked_backbone(base, say)
    cfg = RunConfig.from_dict(base)
    if output is None:
        model = cfg.model.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]  # hf_hub:owner/name → name
        output = Path("runs") / (f"{dataset.stem}-{model}-{cfg.setup}-{cfg.optimizer}-l2{cfg.l2:g}-"
                                 f"mn{cfg.maxnorm:g}-s{cfg.seed}")
    if (output / "result.json").exists() and not overwrite and _status(output / "result.json") != "failed":
        raise AstroclassError(f"{output}: holds a finished run already (pass --overwrite, or choose -o)")
    result = train(cfg, output, progress=not quiet)
    if as_json:
        typer.echo((output / "result.json").read_text())
        return
    v, t = result.val, result.test
    phases = [line.split(",", 1)[0] for line in (output / "history.csv").read_text().splitlines()[1:]]
    head = phases.count("head")
    epochs = f"best epoch {result.best_epoch} of {result.epochs_run - head} fine-tuning epochs (after {head} " \
             f"head-only)" if head else f"best epoch {result.best_epoch} of {result.epochs_run}"
    typer.echo(f"{cfg.model} {cfg.setup}: val accuracy {v['accuracy']:.4f}, test accuracy {t['accuracy']:.4f} "
               f"[{t['accuracy_ci95'][0]:.3f}, {t['accuracy_ci95'][1]:.3f}], balanced {t['balanced_accuracy']:.4f}, "
               f"macro-F1 {t['macro_f1']:.4f}; {epochs}; {result.train_images_per_s:.0f} train images/s")
    if result.threshold:
        th = result.threshold
        typer.echo(f"threshold on P({th['positive_class']}) chosen on val: {th['value']:.3f}; test balanced accuracy "
                   f"there {th['test']['balanced_accuracy']:.4f}; test ROC-AUC {th['test_roc_auc']:.3f}, PR-AUC "
                   f"{th['test_pr_auc']:.3f}")
    budget = result.environment.get("budget")
    if budget and budget.get("seconds_used", 0) > budget["seconds"]:
        typer.echo(f"note: the budget ({cfg.budget}) was shorter than the least this run could do: its first "
                   f"epoch took {budget['first_epoch_seconds']:.0f} s, and it ended after "
                   f"{budget['seconds_used']:.0f} s; a smaller model, fewer images or a longer budget fit it")
    typer.echo(f"outputs in {output}")


def _status(result: Path) -> str | None:
    """A run folder's status ("done", "failed"), None when its result cannot be read (kept, as finished)."""
    import json

    try:
        return json.loads(result.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


# typer reads the parameters from the signature: the hand-written ones above, then one per run option
_hints = typing.get_type_hints(train_cmd, include_extras=True)
_fixed = [p.replace(annotation=_hints[p.name]) for p in inspect.signature(train_cmd).parameters.values()
          if p.kind is not inspect.Parameter.VAR_KEYWORD]
_kinds = typing.get_type_hints(RunConfig)
train_cmd.__signature__ = inspect.Signature(_fixed + [_run_option(f, _kinds[f.name]) for f in RUN_OPTIONS])  # type: ignore[attr-defined]
train_cmd.__annotations__ = {}  # the signature says it all
