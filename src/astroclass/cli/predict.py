"""``astroclass predict``, ``astroclass model info`` and ``astroclass export``."""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from astroclass.cli.data import BandOption, DecCol, Edge, Frame, ImagesOption, RaCol, band_patterns

model_app = typer.Typer(help="Inspect trained checkpoints.", no_args_is_help=True)
Checkpoint = Annotated[Path, typer.Argument(help="A run's checkpoint.pt.")]


def predict_cmd(checkpoint: Checkpoint,
                inputs: Annotated[list[Path] | None, typer.Argument(
                    metavar="INPUTS",
                    help="Image or FITS files, folders, catalogues of image paths (--path-col; CSV, FITS table, "
                         "VOTable, Parquet, ECSV), or prepared .h5 files. Not with --catalog.")] = None,
                output: Annotated[Path | None, typer.Option(
                    "--output", "-o", show_default=False,
                    help="The classified catalogue: .csv, .fits, .parquet, .vot/.xml (VOTable) "
                                           "or .ecsv, by its extension. Every input catalogue column is kept, then "
                                           "predicted, p_<class> per class, unfamiliar_score and unfamiliar (an object "
                                           "unlike the training data), status and error. Required.")] = None,
                catalog: Annotated[Path | None, typer.Option(
                    help="Classify this catalogue of positions (RA/Dec or l/b) straight from survey images "
                         "(--band/--images), cut out as the model's training cut-outs were.")] = None,
                band: BandOption = None, images: ImagesOption = None, ra_col: RaCol = None, dec_col: DecCol = None,
                frame: Frame = None, edge: Edge = "pad",
                tta: Annotated[bool | None, typer.Option(
                    "--tta/--no-tta", help="Average over the 8 flips/rotations of the square (default: as the "
                                           "model's run evaluated).", show_default=False)] = None,
                overwrite: Annotated[bool, typer.Option(
                    "--overwrite", help="Replace the output if it exists.")] = False,
                path_col: Annotated[str, typer.Option(help="Image-path column of catalogue inputs.")] = "path",
                id_col: Annotated[str | None, typer.Option(help="Id column of catalogue inputs (must exist).")] = None,
                allow_outside: Annotated[bool, typer.Option("--allow-outside", help="Let catalogue paths leave "
                                                            "the catalogue's folder (absolute or ../ paths).")] = False,
                device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
                amp: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA GPUs and CPUs with AMX, as "
                                                      "training's evaluation; fp32 elsewhere), off (fp32) or bf16."
                                                 )] = "auto",
                workers: Annotated[int | None, typer.Option(
                    help="Processes that read or cut out images (default: on a CPU one thread, reading ahead while "
                         "the cores run the model; with a GPU every core but one).")] = None,
                engine: Annotated[str, typer.Option(
                    help="local, or ray: the parts over a Ray cluster (--ray-address), whose nodes are sent the "
                         "images they need.")] = "local",
                ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start or join "
                                                                      "a local one).")] = None,
                part_size: Annotated[int, typer.Option(
                    help="Objects per part: the unit of work handed to a worker or Ray actor, and of resuming.",
                    min=1)] = 512,
                quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
                as_json: Annotated[bool, typer.Option("--json", help="Print the summary (counts, objects/s, "
                                                                     "output, TTA) as one JSON object.")] = False,
                operating_point: Annotated[str, typer.Option(
                    help="How probabilities become the predicted class: model (the largest probability), "
                         "accuracy (the rule the training run chose on validation for the best plain accuracy: a "
                         "pure catalogue) or balanced (for the best balanced accuracy: every class found). "
                         "`model info` shows each rule's scores.")] = "model"):
    """Classify new objects with a trained model, exactly as its training data was prepared: image files, or a
    catalogue straight from survey images (--catalog with --band/--images). Rows that cannot be classified are
    'failed' rows with the reason and the rest continue (exit code 3 when some failed). A killed prediction
    resumes when run again with the same arguments."""
    _classify(None, **locals())


def _classify(layer: str | None, checkpoint: Path, inputs: list[Path] | None, output: Path | None,
              catalog: Path | None, band: list[str] | None, images: list[str] | None, ra_col: str | None,
              dec_col: str | None, frame: str | None, edge: str, tta: bool | None, overwrite: bool, path_col: str,
              id_col: str | None, allow_outside: bool, device: str, amp: str, workers: int | None, engine: str,
              ray_address: str | None, part_size: int, quiet: bool, as_json: bool = False,
              operating_point: str = "model") -> None:
    """predict (``layer`` None) and embed (``layer``: the representation to write)."""
    from astroclass.classify import files_job, run_job, sky_job
    from astroclass.errors import AstroclassError
    from astroclass.predict import load

    if output is None:
        raise AstroclassError("missing option --output / -o: the " + ("table of representations" if layer else
                                                                     "classified catalogue") + " to write")
    from astroclass.catalogs import output_format

    output_format(output)  # an unknown format is refused before the model is loaded
    if catalog is not None and inputs:
        raise AstroclassError("give either inputs (files, folders, catalogues of image paths) or --catalog with "
                              "survey images, not both")
    if catalog is None and (band or images):
        raise AstroclassError("--band/--images are the survey images of --catalog: give --catalog too")
    clf = load(checkpoint, device, amp)
    if layer is not None:
        clf.embedding_size(layer)  # an unknown layer is refused before any work
        tta = bool(tta)  # a representation is of the image as given unless asked
    if catalog is not None:
        if not band and not images:
            raise AstroclassError("--catalog classifies from survey images: give them with --band NAME=FILES or "
                                  "--images FILES (to classify cut-out files listed in a catalogue, pass it as an "
                                  "input instead)")
        job = sky_job(clf, catalog, band_patterns(band), images or [], ra_col, dec_col, frame, edge, part_size)
    else:
        job = files_job(clf, inputs or [], path_col, id_col, allow_outside, part_size)
    res = run_job(clf, job, output, tta=tta, overwrite=overwrite, workers=workers, progress=not quiet,
                  engine=engine, ray_address=ray_address, log=lambda m: typer.echo(m, err=True), embed=layer,
                  operating_point=operating_point)
    done = f"embedded ({layer}, {clf.embedding_size(layer)} values each)" if layer else "predicted"
    if as_json:
        summary = {k: (str(v) if k == "output" else v) for k, v in res.items() if k != "table"}
        typer.echo(json.dumps({**summary, **({"layer": layer, "values": clf.embedding_size(layer)} if layer else {})},
                              indent=2))
    else:
        typer.echo(f"wrote {res['output']}: {res['ok']} {done}, {res['failed']} failed, "
                   f"{res['images_per_s']:.0f} objects/s{' (8-fold TTA)' if res['tta'] else ''}")
    if res["failed"]:
        raise typer.Exit(3)


def embed_cmd(**params: Any) -> None:
    """Each object's representation in a trained model, for similarity search, clustering and anomaly hunting:
    the pooled backbone features the model's head reads (--layer backbone) or its head's hidden layer (--layer
    hidden), from the same inputs as predict (image files, catalogues of them, or a catalogue straight from
    survey images), every input column kept. Resumes like predict."""
    _classify(params.pop("layer"), **params)


# embed takes predict's parameters (the output's help says what it holds) and --layer
_hints = typing.get_type_hints(predict_cmd, include_extras=True)
_params = []
for _p in inspect.signature(predict_cmd).parameters.values():
    if _p.name == "operating_point":  # a representation has no class to decide
        continue
    _kind = _hints[_p.name]
    if _p.name == "output":
        _kind = Annotated[Path | None, typer.Option(
            "--output", "-o", show_default=False,
            help="The table to write: .parquet, .fits, .vot/.xml or .ecsv hold an 'embedding' vector column, .csv "
                 "one embedding_<i> column per value; every input catalogue column is kept, then status and "
                 "error. Required.")]
    if _p.name == "tta":
        _kind = Annotated[bool | None, typer.Option(
            "--tta/--no-tta", help="Average the representation over the 8 flips/rotations of the square (one "
                                   "blind to orientation).", show_default=False)]
    _params.append(_p.replace(annotation=_kind))
_params.append(inspect.Parameter("layer", inspect.Parameter.KEYWORD_ONLY, default="backbone", annotation=Annotated[
    str, typer.Option(help="backbone (the pooled features the head reads) or hidden (the head's 2048-value "
                           "hidden layer).")]))
embed_cmd.__signature__ = inspect.Signature(_params)  # type: ignore[attr-defined]
embed_cmd.__annotations__ = {}


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
    points = card.get("operating_points") or {}
    for name, key in (("accuracy", "accuracy"), ("balanced", "balanced_accuracy")):
        if key in points:
            r = points[key]
            typer.echo(f"{'rule ' + name + ':':13s} prior exponent {r['tau']:+.2f}; val accuracy "
                       f"{r['val']['accuracy']:.4f}, balanced {r['val']['balanced_accuracy']:.4f}; test accuracy "
                       f"{r['test']['accuracy']:.4f}, balanced {r['test']['balanced_accuracy']:.4f} "
                       f"(predict --operating-point {name})")
    typer.echo(f"astroclass:   {card.get('astroclass_version')}")


def export_cmd(checkpoint: Checkpoint,
               onnx: Annotated[Path | None, typer.Option(help="Write an ONNX model here.")] = None,
               torchscript: Annotated[Path | None, typer.Option(help="Write a TorchScript model here.")] = None,
               overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the outputs if they exist "
                                                                           "(never the checkpoint).")] = False):
    """Export a trained model to ONNX and/or TorchScript (input float32 (N, C, H, W) in [0, 1], output
    class probabilities)."""
    from astroclass.predict import export, load

    for path in export(load(checkpoint, "cpu"), onnx, torchscript, overwrite=overwrite):
        typer.echo(f"wrote {path}")
