"""The run config (everything that defines one training run) and the run result."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml

from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_write_text
from astroclass.training.speed import auto_amp

SETUPS = ("scratch", "pretrained")
SAMPLERS = ("none", "balanced")
MONITORS = ("val_loss", "balanced_accuracy", "macro_f1")
AMP_MODES = ("auto", "bf16", "off")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
OPTIMIZERS = ("rmsprop", "adam", "radam", "sgd")
FROZEN_BN = ("auto", "batch", "moving")
LEGACY = {"unfreeze_layers": ("unfreeze", lambda n: f"params:{int(n)}")}
"""Options of earlier versions, read as today's: unfreeze_layers: N counted parameterised modules."""


def upgrade_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with options of earlier versions rewritten as today's (see :data:`LEGACY`)."""
    out = dict(d)
    for old, (new, convert) in LEGACY.items():
        if old in out:
            value = out.pop(old)
            if new not in out:
                out[new] = convert(value)
    return out


@dataclass
class RunConfig:
    """Everything that defines one training run. Saved as YAML beside its outputs."""

    dataset: str
    model: str = "vgg16"
    setup: str = "scratch"
    l2: float = 0.0
    maxnorm: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    epochs: int = 200
    patience: int = 10
    batch_size: int = 32
    eval_batch_size: int = 256
    device: str = "auto"
    augment: bool = False
    lr: float | None = None
    """Learning rate of the run's optimiser; None = its Keras default."""
    head_epochs: int = 10
    unfreeze: str = "7"
    """Pretrained setup, phase 2: which backbone layers train. "keras:N": the last N layers as Keras counted
    them for the paper (every layer object: activations, pooling, concatenations too), mapped to the timm
    parameters that hold their weights (shipped for the five paper backbones); "params:N": the last N leaf
    modules with parameters of their own; "N": keras:N where a Keras layer list is shipped, else params:N."""
    frozen_bn: str = "auto"
    """Pretrained setup: how frozen batch-norm layers normalise while training. "moving": their stored
    running statistics (TF 2 Keras, PyTorch practice); "batch": the mini-batch's statistics, running
    statistics left unchanged (Keras 2.2, which the paper used); "auto": batch with paper_exact, else moving."""
    finetune_lr: float = 1e-3
    finetune_momentum: float = 0.9
    weights: str | None = None
    """Pretrained setup: "hub" (timm download), "package" (efficientnet_lite0), or a weights file;
    None picks "package" for efficientnet_lite0 and "hub" otherwise."""
    pooling: str = "avg"
    class_weights: str = "none"
    """Loss weights per class: "none", "balanced" (n / (K n_c) over the training split) or "w1,w2,..."."""
    sampler: str = "none"
    """"balanced": each epoch draws training images with probability ∝ 1 / (size of their class)."""
    monitor: str = "val_loss"
    """Early stopping (and best weights) on val_loss (the paper), balanced_accuracy or macro_f1."""
    train_fraction: float = 1.0
    """Stratified, nested part of the training split to train on (see astroclass.data.subsets)."""
    classes: str | None = None
    """Select or group classes, e.g. "merger,rest=*" (see astroclass.data.subsets)."""
    subset_seed: int = 0
    paper_exact: bool = False
    """fp32, NCHW, eager, PyTorch's default optimiser kernels: the reference numerics (overrides the
    speed options below)."""
    channels_last: bool = True
    """Channels-last memory format for model and batches (same maths, faster convolutions); on CPU it
    also computes 1x1 convolutions as matrix products (``models.matmul_1x1``, same maths)."""
    amp: str = "auto"
    """Mixed precision: "auto" (bf16 where the hardware computes it natively: CUDA GPUs and CPUs with
    AMX; fp32 elsewhere), "bf16" or "off"."""
    compile: str = "auto"
    """torch.compile: "auto" (reduce-overhead, i.e. CUDA graphs, for a single run on CUDA; off on CPU and for
    fused groups, whose kernels already serve all their runs at once), "off", "default", "reduce-overhead" or
    "max-autotune"."""
    fuse: str = "auto"
    """Grid runs only: train runs of one (dataset, model, setup) cell together as one batched model
    (:mod:`astroclass.training.fusion`): "auto" (group size from the device's free memory), "off" (one run
    per process) or a number N (groups of at most N). Each run's numbers are what it would get alone."""

    def speed(self, device: torch.device) -> dict[str, Any]:
        """The speed options in force on ``device``: channels_last, autocast dtype (or None), compile mode,
        1x1 convolutions as matrix products, fused optimiser kernels (Adam and SGD), and for fused runs
        grouped kernels (one launch for all runs: GPUs) or per-run kernels (bit for bit each run alone: CPUs)."""
        if self.paper_exact:
            return {"channels_last": False, "amp": None, "compile": None, "matmul_1x1": False, "fused_optimizer": False,
                    "grouped_kernels": False}
        amp = {"auto": auto_amp(device), "bf16": torch.bfloat16, "off": None}[self.amp]
        auto_compile = "reduce-overhead" if device.type == "cuda" else None
        comp = {"auto": auto_compile, "off": None}.get(self.compile, self.compile)
        return {"channels_last": self.channels_last, "amp": amp, "compile": comp,
                "matmul_1x1": self.channels_last and device.type == "cpu", "fused_optimizer": True,
                "grouped_kernels": device.type == "cuda"}

    def validate(self) -> RunConfig:
        if self.setup not in SETUPS:
            raise AstroclassError(f"setup must be one of {SETUPS}, got {self.setup!r}")
        if self.optimizer not in OPTIMIZERS:
            raise AstroclassError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise AstroclassError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("l2", "maxnorm", "patience", "head_epochs"):
            if getattr(self, name) < 0:
                raise AstroclassError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pooling not in ("avg", "flatten"):
            raise AstroclassError(f"pooling must be 'avg' or 'flatten', got {self.pooling!r}")
        if self.sampler not in SAMPLERS:
            raise AstroclassError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.monitor not in MONITORS:
            raise AstroclassError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.class_weights not in ("none", "balanced"):
            try:
                w = [float(v) for v in str(self.class_weights).split(",")]
            except ValueError:
                raise AstroclassError(f"class_weights must be none, balanced or numbers like 1,10; got "
                                      f"{self.class_weights!r}") from None
            if any(v < 0 for v in w):
                raise AstroclassError(f"class_weights must be non-negative, got {self.class_weights!r}")
        self.unfreeze = str(self.unfreeze)
        kind, _, count = self.unfreeze.rpartition(":")
        if kind not in ("", "keras", "params") or not count.isdigit():
            raise AstroclassError(f"unfreeze must be N, keras:N or params:N (N >= 0 layers), got {self.unfreeze!r}")
        if self.frozen_bn not in FROZEN_BN:
            raise AstroclassError(f"frozen_bn must be one of {FROZEN_BN}, got {self.frozen_bn!r}")
        if self.amp not in AMP_MODES:
            raise AstroclassError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.compile not in COMPILE_MODES:
            raise AstroclassError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        self.fuse = str(self.fuse)
        if self.fuse not in ("auto", "off") and not (self.fuse.isdigit() and int(self.fuse) >= 1):
            raise AstroclassError(f"fuse must be auto, off or a group size >= 1, got {self.fuse!r}")
        if self.lr is not None and not self.lr > 0:
            raise AstroclassError(f"lr must be a positive number, got {self.lr}")
        if not self.finetune_lr > 0:
            raise AstroclassError(f"finetune_lr must be a positive number, got {self.finetune_lr}")
        if not 0 < self.train_fraction <= 1:
            raise AstroclassError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        return self

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def defaults() -> Mapping[str, Any]:
        """Every option's default value, read-only (run ids and table variants count only options that
        differ from these)."""
        return MappingProxyType(RunConfig(dataset="").to_dict())

    def resolved_frozen_bn(self) -> str:
        return ("batch" if self.paper_exact else "moving") if self.frozen_bn == "auto" else self.frozen_bn

    def resolved_weights(self) -> str | None:
        if self.setup == "scratch":
            return None
        if self.weights is not None:
            return self.weights
        return "package" if self.model == "efficientnet_lite0" else "hub"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run config") -> RunConfig:
        d = upgrade_legacy(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AstroclassError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        if "dataset" not in d:
            raise AstroclassError(f"{where}: 'dataset' is required")
        return cls(**d).validate()

    def to_yaml(self, path: str | Path) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AstroclassError(f"{path}: not a readable YAML file ({exc})") from None
        if not isinstance(d, dict):
            raise AstroclassError(f"{path}: expected a mapping of run options")
        return cls.from_dict(d, str(path))


@dataclass
class RunResult:
    """The outcome of a run: metrics on val and test, convergence, timing, provenance."""

    status: str  # "done" or "failed"
    config: dict[str, Any]
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0
    """Epoch of the best validation loss in the early-stopped phase (the paper's epochs to convergence)."""
    epochs_run: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_images_per_s: float = 0.0
    eval_images_per_s: float = 0.0
    error: str = ""
    train_counts: dict[str, int] = field(default_factory=dict)
    """Training images per class actually used (after class grouping and train_fraction)."""
    threshold: dict[str, Any] = field(default_factory=dict)
    """Binary tasks: the decision threshold chosen on val (max balanced accuracy) and test metrics at it."""
    dataset_hash: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingFailed(AstroclassError):
    """A run that could not finish (e.g. the loss became NaN); its history is kept."""
