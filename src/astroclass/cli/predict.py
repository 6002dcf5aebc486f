"""``astroclass predict``, ``astroclass model info`` and ``astroclass export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Inspect trained checkpoints.", no_args_is_help=True)
Checkpoint = Annotated[Path, typer.Argument(help="A run's checkpoint.pt.")]


def predict_cmd(checkpoint: Checkpoint,
                inputs: Annotated[list[Path], typer.Argument(help="Image or FITS files, folders, catalogue CSVs "
                                                                  "(--path-col), or prepared .h5 files.")],
                output: Annotated[Path, typer.Option("--output", "-o", help="Predictions CSV (one row per object).")],
                tta: Annotated[bool, typer.Option(
                    "--tta", help="Average over the 8 flips/rotations of the square.")] = False,
                overwrite: Annotated[bool, typer.Option(
                    "--overwrite", help="Replace the output if it exists.")] = False,
                path_col: Annotated[str, typer.Option(help="Image-path column of catalogue CSV inputs.")] = "path",
                id_col: Annotated[str | None, typer.Option(help="Id column of catalogue CSV inputs.")] = None,
                allow_outside: Annotated[bool, typer.Option("--allow-outside", help="Let catalogue CSV paths leave "
                                                            "the catalogue's folder (absolute or ../ paths).")] = False,
                device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
                amp: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA GPUs and CPUs with AMX, as "
                                                      "training's evaluation; fp32 elsewhere), off (fp32) or bf16."
                                                 )] = "auto",
                workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")] = None,
                quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False):
    """Classify new images with a trained model, using exactly its training preprocessing. Unreadable images
    are reported as failed rows and the rest continue; the exit code is 3 when some rows failed."""
    from astroclass.predict import load, predict_to_csv

    res = predict_to_csv(load(checkpoint, device, amp), inputs, output, tta=tta, overwrite=overwrite, path_col=path_col,
                         id_col=id_col, workers=workers, progress=not quiet, allow_outside=allow_outside)
    typer.echo(f"wrote {res['output']}: {res['ok']} predicted, {res['failed']} failed, "
               f"{res['images_per_s']:.0f} images/s{' (8-fold TTA)' if tta else ''}")
    if res["failed"]:
        raise typer.Exit(3)


@model_app.command("info")
def info_cmd(checkpoint: Checkpoint,
             as_json: Annotated[bool, typer.Option("--json", help="Print the whole model card as JSON.")] = False):
    """Print a checkpoint's model card: classes, preprocessing, training data and config, metrics."""
    from astroclass.predict import read_checkpoint

    card = read_checkpoint(checkpoint)["card"]
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    m = card.get("metrics", {})
    typer.echo(f"model:        {card['model']} ({card.get('pooling', 'avg')} pooling), {card['in_chans']} channels, "
               f"{card['input_size']} px, stored as {card.get('stored_dtype')}")
    typer.echo(f"classes:      {', '.join(card['class_names'])}")
    typer.echo(f"bands:        {card.get('band_names') or '(8-bit image channels)'}")
    typer.echo(f"preprocessing: {card['image_spec']}")
    typer.echo(f"trained on:   {card.get('dataset', '(not recorded)')} (content hash "
               f"{str(card.get('dataset_hash') or '(not recorded)')[:12]})")
    cfg = card.get("config") or {}
    if cfg:
        typer.echo(f"config:       setup {cfg.get('setup')}, optimizer {cfg.get('optimizer')}, l2 {cfg.get('l2')}, "
                   f"maxnorm {cfg.get('maxnorm')}, seed {cfg.get('seed')}, best epoch {card.get('best_epoch')}")
    for split in ("val", "test"):
        x = m.get(split) or {}
        if {"accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "ece", "n"} <= set(x):
            typer.echo(f"{split + ':':13s} accuracy {x['accuracy']:.4f} [{x['accuracy_ci95'][0]:.4f}, "
                       f"{x['accuracy_ci95'][1]:.4f}], balanced {x['balanced_accuracy']:.4f}, macro-F1 "
                       f"{x['macro_f1']:.4f}, ECE {x['ece']:.4f} (n={x['n']})")
    typer.echo(f"astroclass:   {card.get('astroclass_version')}")


def export_cmd(checkpoint: Checkpoint,
               onnx: Annotated[Path | None, typer.Option(help="Write an ONNX model here.")] = None,
               torchscript: Annotated[Path | None, typer.Option(help="Write a TorchScript model here.")] = None):
    """Export a trained model to ONNX and/or TorchScript (input float32 (N, C, H, W) in [0, 1], output
    class probabilities)."""
    from astroclass.predict import export, load

    for path in export(load(checkpoint, "cpu"), onnx, torchscript):
        typer.echo(f"wrote {path}")
