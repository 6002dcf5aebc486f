"""One training run, as the paper does it: ``RunConfig`` + prepared dataset → checkpoint and metrics.

Setups (paper, section 3.2; Keras semantics where PyTorch's defaults differ):

* ``scratch``: every layer trains with the run's optimiser for up to ``epochs`` (200) epochs;
  early stopping on validation loss with ``patience`` (10) and the best weights restored
  (Keras ``EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)``).
* ``pretrained``: ImageNet weights; phase ``head`` trains only the head for ``head_epochs`` (10)
  epochs with the backbone frozen, using the run's optimiser; phase ``finetune`` unfreezes the
  last ``unfreeze_layers`` (7) backbone layers (see :mod:`astroclass.models` for what a layer
  is) and trains with SGD (lr 1e-3, momentum 0.9) for up to ``epochs`` epochs with the same
  early stopping.

Regularisation on the 2048-unit hidden layer only: L2 adds λ·ΣW² to the loss (Keras
``kernel_regularizer``; it is part of the validation loss too, as in Keras), and max-norm
rescales each unit's incoming weights to norm ≤ γ after every optimiser step (γ = 0: off).

Optimisers with Keras' defaults: ``rmsprop`` (lr 1e-3, rho 0.9, ε 1e-7), ``adam`` (lr 1e-3,
β 0.9/0.999, ε 1e-7), ``radam`` (lr 1e-3, β 0.9/0.999, ε 1e-7; rectification threshold 5 as in
TF-Addons' RectifiedAdam), ``sgd`` (lr 0.01, no momentum). PyTorch's Adam adds ε after the
bias correction of √v while Keras adds it before; the two differ only while √v is near 1e-7.

Batches: the split is held in memory as a uint8 (or float16) tensor, shuffled each epoch with
a generator seeded by the run's seed; a last batch of a single image is dropped (batch-norm
cannot train on it). The seed fixes initialisation, shuffling, augmentation and dropout, so
the same config on the same CPU gives identical results.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import platform
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from astroclass import __version__
from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_output, atomic_write_text
from astroclass.progress import Bar

SETUPS = ("scratch", "pretrained")
SAMPLERS = ("none", "balanced")
MONITORS = ("val_loss", "balanced_accuracy", "macro_f1")
AMP_MODES = ("auto", "bf16", "off")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
CHECKPOINT_FORMAT = "astroclass.checkpoint"
CHECKPOINT_VERSION = 1
OPTIMIZERS = ("rmsprop", "adam", "radam", "sgd")
KERAS_DEFAULTS = {
    "rmsprop": {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7, "momentum": 0.0, "centered": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7, "amsgrad": False},
    "radam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7},
    "sgd": {"lr": 1e-2, "momentum": 0.0, "nesterov": False},
}


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
    unfreeze_layers: int = 7
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
    """torch.compile: "auto" (reduce-overhead, i.e. CUDA graphs, on CUDA; off on CPU), "off", "default",
    "reduce-overhead" or "max-autotune"."""

    def speed(self, device: torch.device) -> dict[str, Any]:
        """The speed options in force on ``device``: channels_last, autocast dtype (or None), compile mode,
        1x1 convolutions as matrix products, fused optimiser kernels (Adam and SGD)."""
        if self.paper_exact:
            return {"channels_last": False, "amp": None, "compile": None, "matmul_1x1": False, "fused_optimizer": False}
        amp = {"auto": auto_amp(device), "bf16": torch.bfloat16, "off": None}[self.amp]
        comp = {"auto": "reduce-overhead" if device.type == "cuda" else None, "off": None}.get(self.compile, self.compile)
        return {"channels_last": self.channels_last, "amp": amp, "compile": comp,
                "matmul_1x1": self.channels_last and device.type == "cpu", "fused_optimizer": True}

    def validate(self) -> "RunConfig":
        if self.setup not in SETUPS:
            raise AstroclassError(f"setup must be one of {SETUPS}, got {self.setup!r}")
        if self.optimizer not in OPTIMIZERS:
            raise AstroclassError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise AstroclassError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("l2", "maxnorm", "patience", "head_epochs", "unfreeze_layers"):
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
        if self.amp not in AMP_MODES:
            raise AstroclassError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.compile not in COMPILE_MODES:
            raise AstroclassError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if not 0 < self.train_fraction <= 1:
            raise AstroclassError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        return self

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def defaults() -> Mapping[str, Any]:
        """Every option's default value, read-only (run ids and table variants count only options that
        differ from these)."""
        return MappingProxyType(RunConfig(dataset="").to_dict())

    def resolved_weights(self) -> str | None:
        if self.setup == "scratch":
            return None
        if self.weights is not None:
            return self.weights
        return "package" if self.model == "efficientnet_lite0" else "hub"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run config") -> "RunConfig":
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
    def from_yaml(cls, path: str | Path) -> "RunConfig":
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AstroclassError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AstroclassError(f"device {name!r} asked for, but no CUDA GPU is available")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX-BF16 tile units (Linux: the amx_bf16 flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and " amx_bf16" in line for line in fh)
    except OSError:
        return False


def auto_amp(device: torch.device) -> torch.dtype | None:
    """``amp="auto"``: bf16 autocast on CUDA GPUs with bf16 support and on CPUs with AMX, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else None


def make_optimizer(name: str, params, lr: float | None = None, fused: bool = False) -> torch.optim.Optimizer:
    """One of the paper's optimisers with Keras' default hyperparameters (lr overridable).

    ``fused``: Adam and SGD use PyTorch's fused single-kernel update (same update rule; Adam's step is
    2-4x faster on CPU, benchmarks/bench_kernels.py); RMSprop and RAdam have no fused kernel and keep
    the multi-tensor one."""
    if name not in KERAS_DEFAULTS:
        raise AstroclassError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    kw = dict(KERAS_DEFAULTS[name])
    if lr is not None:
        kw["lr"] = lr
    if fused and name in ("adam", "sgd"):
        kw["fused"] = True
    cls = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "radam": torch.optim.RAdam,
           "sgd": torch.optim.SGD}[name]
    return cls(params, **kw)


def environment(device: torch.device) -> dict[str, Any]:
    import timm

    env = {"astroclass": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "numpy": np.__version__, "python": platform.python_version(), "host": socket.gethostname(),
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry k (0..7) of the square: rotation by k·90° (k mod 4), flipped left-right for k ≥ 4."""
    if k == 0:
        return x
    y = torch.rot90(x, k % 4, dims=(2, 3))
    return y.flip(3) if k >= 4 else y


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image gets one of the 8 symmetries of the square (rotations by 90°, with or without a flip)."""
    k = torch.randint(0, 8, (x.shape[0],), generator=generator, device="cpu").to(x.device)
    out = x.clone()
    for t in range(1, 8):
        sel = k == t
        if sel.any():
            out[sel] = dihedral(x[sel], t)
    return out


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Stored images → float32 in [0, 1] (uint8 is divided by 255; float16 is already scaled)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class EarlyStopping:
    """Keras EarlyStopping on a monitored value to minimise (min_delta 0), restoring the best weights."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.wait = 0

    def step(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record an epoch; True when training should stop."""
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.wait += 1
        return self.wait >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256,
                  channels_last: bool = False, amp: torch.dtype | None = None, tta: bool = False) -> np.ndarray:
    """Softmax probabilities for stored images x (N, C, H, W), in eval mode (softmax in fp32); with
    ``tta``, averaged over the 8 symmetries of the square (galaxies have no preferred orientation)."""
    model.eval()
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = range(8) if tta else range(1)
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size].to(device, non_blocking=True))
        p = 0
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            for k in views:
                p = p + torch.softmax(model(dihedral(xb, k).contiguous(memory_format=fmt)).float(), dim=1)
        out.append((p / len(views)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class RunData:
    """What a run trains and evaluates on: a prepared dataset after class grouping and train_fraction."""

    path: Path
    content_hash: str
    class_names: list[str]
    channels: int
    size: int
    dtype: np.dtype
    spec: Any
    band_names: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]  # split → (images, labels, dataset rows)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[split][0], self.splits[split][1]


def load_run_data(cfg: RunConfig) -> RunData:
    """Read the run's dataset into memory, apply ``classes`` and ``train_fraction``, check every split."""
    from astroclass.data.prepared import PreparedDataset
    from astroclass.data.subsets import nested_subset, parse_classes

    with PreparedDataset(cfg.dataset, in_memory=True) as ds:
        labels = ds.labels.copy()
        names = list(ds.class_names)
        if cfg.classes:
            names, mapping = parse_classes(cfg.classes, ds.class_names)
            labels = np.array([mapping.get(int(v), -1) for v in labels], dtype=np.int64)
        splits = {}
        for split in ("train", "val", "test"):
            rows = ds.indices(split)
            rows = rows[labels[rows] >= 0]
            if split == "train" and cfg.train_fraction < 1:
                rows = rows[nested_subset(labels[rows], cfg.train_fraction, cfg.subset_seed)]
            present = np.bincount(labels[rows], minlength=len(names))
            missing = [c for c, n in zip(names, present) if n == 0]
            if missing:
                hint = "; re-import with other split fractions" if split == "test" else ""
                raise AstroclassError(f"{ds.path}: the {split} split has no examples of class(es) {missing}{hint}")
            splits[split] = (torch.from_numpy(ds.images(rows)), torch.from_numpy(labels[rows]), rows)
        return RunData(ds.path, ds.content_hash, names, ds.channels, ds.image_shape[-1], ds.dtype, ds.spec,
                       list(ds.band_names), splits)


def class_weight_tensor(cfg: RunConfig, y: torch.Tensor, k: int) -> torch.Tensor | None:
    """Loss weights: None, balanced n / (K n_c) (scikit-learn's formula), or the given numbers."""
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "balanced":
        counts = torch.bincount(y, minlength=k).double()
        return (len(y) / (k * counts)).float()
    w = [float(v) for v in cfg.class_weights.split(",")]
    if len(w) != k:
        raise AstroclassError(f"class_weights {cfg.class_weights!r} gives {len(w)} weights for {k} classes")
    return torch.tensor(w, dtype=torch.float32)


def compiled(model: torch.nn.Module, mode: str | None):
    """``torch.compile(model, mode=mode)`` (None: the eager model). Compiled graphs are cached on disk
    (TorchInductor's FX-graph cache, under $TORCHINDUCTOR_CACHE_DIR), so an architecture compiles
    once per machine, not once per run."""
    if mode is None:
        return model
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                                          / "astroclass" / "inductor"))
    return torch.compile(model, mode=mode, dynamic=False)


def epoch_order(y: torch.Tensor, sampler: str, gen: torch.Generator) -> torch.Tensor:
    """The training images of one epoch, in order: a permutation, or for the balanced sampler len(y)
    draws with replacement, each image with probability ∝ 1 / (size of its class)."""
    if sampler == "balanced":
        per_class = torch.bincount(y.cpu(), minlength=int(y.max()) + 1).double()
        return torch.multinomial((1.0 / per_class)[y.cpu()], len(y), replacement=True, generator=gen)
    return torch.randperm(len(y), generator=gen)


class Trainer:
    """Runs one ``RunConfig`` and writes its outputs to ``out_dir``."""

    def __init__(self, config: RunConfig, out_dir: str | Path, progress: bool = True,
                 on_epoch: Callable[[dict], None] | None = None):
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.on_epoch = on_epoch
        self.history: list[dict[str, Any]] = []
        self.weights: torch.Tensor | None = None

    # -- data ----------------------------------------------------------------------------
    def _load(self) -> "RunData":
        return load_run_data(self.config)

    # -- one epoch ------------------------------------------------------------------------
    def _train_epoch(self, model, opt, x, y, gen, phase: str, epoch: int) -> tuple[float, float, int]:
        from astroclass.models import train_mode

        cfg = self.config
        train_mode(model)
        n = len(x)
        perm = epoch_order(y, cfg.sampler, gen)
        starts = [s for s in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - s) > 1]
        # sums stay on the device: one synchronisation per epoch, not per step (GPU runs are launch-bound)
        total_loss = torch.zeros((), device=self.device)
        total_correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = Bar(self.progress, len(starts), f"{phase} epoch {epoch}")
        for s in starts:
            idx = perm[s:s + cfg.batch_size]
            xb = to_float(x[idx.to(x.device)].to(self.device, non_blocking=True))
            if cfg.augment:
                xb = augment_batch(xb, gen)
            if self.fast["channels_last"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[idx.to(y.device)].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.fast["amp"] or torch.bfloat16,
                                enabled=self.fast["amp"] is not None):
                logits = self.forward(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=self.weights)
            if cfg.l2 > 0:
                loss = loss + cfg.l2 * model.l2_penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.apply_max_norm(cfg.maxnorm)
            total_loss += loss.detach() * len(idx)
            total_correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
            bar.advance()
        bar.close()
        mean_loss = float(total_loss) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise TrainingFailed(f"loss became {mean_loss} in {phase} epoch {epoch}")
        return mean_loss, int(total_correct) / max(seen, 1), seen

    @torch.no_grad()
    def _val(self, model, x, y) -> tuple[float, float, float]:
        """(val loss as Keras reports it, val accuracy, the value early stopping minimises)."""
        from sklearn.metrics import balanced_accuracy_score, f1_score

        probs = predict_probs(model, x, self.device, self.config.eval_batch_size, self.fast["channels_last"],
                              self.fast["amp"])
        yt = y.cpu().numpy()
        ce = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), y.cpu()).item()) if len(yt) else float("nan")
        if self.config.l2 > 0:
            ce += self.config.l2 * float(model.l2_penalty())
        pred = probs.argmax(1)
        monitor = {"val_loss": lambda: ce, "balanced_accuracy": lambda: -balanced_accuracy_score(yt, pred),
                   "macro_f1": lambda: -f1_score(yt, pred, average="macro", zero_division=0)}[self.config.monitor]()
        return ce, float((pred == yt).mean()), float(monitor)

    def _phase(self, model, opt, data, phase: str, max_epochs: int, early_stop: bool) -> tuple[int, bool]:
        """Train one phase; returns (best epoch, stopped early)."""
        cfg = self.config
        (xt, yt), (xv, yv) = data
        stopper = EarlyStopping(cfg.patience) if early_stop else None
        stopped = False
        for epoch in range(1, max_epochs + 1):
            t0 = time.perf_counter()
            try:
                tl, ta, seen = self._train_epoch(model, opt, xt, yt, self.gen, phase, epoch)
            except TrainingFailed:
                self._record(phase, epoch, math.nan, math.nan, math.nan, math.nan, opt, time.perf_counter() - t0)
                raise
            train_time = time.perf_counter() - t0
            self.train_images += seen
            self.train_time += train_time
            vl, va, monitored = self._val(model, xv, yv)
            self._record(phase, epoch, tl, ta, vl, va, opt, time.perf_counter() - t0)
            if not math.isfinite(vl):
                raise TrainingFailed(f"validation loss became {vl} in {phase} epoch {epoch}")
            if stopper is not None and stopper.step(monitored, epoch, model):
                stopped = True
                break
        if stopper is not None:
            stopper.restore(model)
            return stopper.best_epoch, stopped
        return max_epochs, False

    def _record(self, phase, epoch, tl, ta, vl, va, opt, seconds) -> None:
        row = {"phase": phase, "epoch": epoch, "train_loss": tl, "train_accuracy": ta, "val_loss": vl,
               "val_accuracy": va, "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        self.history.append(row)
        self._write_history()
        if self.progress:
            print(f"[{self.config.model} {phase} {epoch:3d}] loss {tl:.4f} acc {ta:.4f} | "
                  f"val loss {vl:.4f} acc {va:.4f} | {seconds:.1f}s", flush=True)
        if self.on_epoch:
            self.on_epoch(row)

    def _write_history(self) -> None:
        with atomic_output(self.out_dir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            w.writeheader()
            w.writerows(self.history)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> RunResult:
        from astroclass.models import build_model, matmul_1x1, set_trainable

        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(self.out_dir / "config.yaml")
        self.device = resolve_device(cfg.device)
        self.fast = cfg.speed(self.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train_images, self.train_time = 0, 0.0
        ds = self._load()
        result = RunResult(status="failed", config=cfg.to_dict(), dataset_hash=ds.content_hash,
                           environment=environment(self.device))
        result.environment["speed"] = {**self.fast, "amp": str(self.fast["amp"]).replace("torch.", "")
                                       if self.fast["amp"] else None}
        try:
            model = build_model(cfg.model, ds.num_classes, in_chans=ds.channels, input_size=ds.size,
                                pooling=cfg.pooling, weights=cfg.resolved_weights()).to(self.device)
            if self.fast["channels_last"]:
                model = model.to(memory_format=torch.channels_last)
            if self.fast["matmul_1x1"]:
                matmul_1x1(model)
            self.forward = compiled(model, self.fast["compile"])
            data = (ds.tensors("train"), ds.tensors("val"))
            self.weights = class_weight_tensor(cfg, data[0][1], ds.num_classes)
            if self.weights is not None:
                self.weights = self.weights.to(self.device)
            result.train_counts = {c: int(n) for c, n in zip(ds.class_names, np.bincount(data[0][1].numpy(),
                                                                                         minlength=ds.num_classes))}
            if self.device.type == "cuda":
                data = tuple((x.to(self.device), y.to(self.device)) for x, y in data)
            if cfg.setup == "scratch":
                set_trainable(model, "all")
                opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, self.fast["fused_optimizer"])
                best, stopped = self._phase(model, opt, data, "train", cfg.epochs, early_stop=True)
            else:
                set_trainable(model, 0)
                opt = make_optimizer(cfg.optimizer, model.head_parameters(), cfg.lr, self.fast["fused_optimizer"])
                self._phase(model, opt, data, "head", cfg.head_epochs, early_stop=False)
                set_trainable(model, cfg.unfreeze_layers)
                opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.finetune_lr,
                                      momentum=cfg.finetune_momentum, fused=self.fast["fused_optimizer"] or None)
                best, stopped = self._phase(model, opt, data, "finetune", cfg.epochs, early_stop=True)
        except TrainingFailed as exc:
            result.error = str(exc)
            result.epochs_run = len(self.history)
            atomic_write_text(self.out_dir / "result.json", json.dumps(result.to_dict(), indent=2))
            raise
        result.best_epoch, result.stopped_early = best, stopped
        result.epochs_run = len(self.history)
        result.train_seconds = round(self.train_time, 3)
        result.train_images_per_s = self.train_images / self.train_time if self.train_time > 0 else 0.0
        self._evaluate(model, ds, result)
        result.status = "done"
        self._save_checkpoint(model, ds, result)
        atomic_write_text(self.out_dir / "result.json", json.dumps(result.to_dict(), indent=2))
        return result

    def _evaluate(self, model, ds, result: RunResult) -> None:
        from astroclass.metrics import classification_metrics

        preds = {}
        for split in ("val", "test"):
            x, y = ds.tensors(split)
            t0 = time.perf_counter()
            probs = predict_probs(model, x, self.device, self.config.eval_batch_size, self.fast["channels_last"],
                                  self.fast["amp"])
            dt = time.perf_counter() - t0
            if split == "test":
                result.eval_images_per_s = len(x) / dt if dt > 0 else 0.0
            setattr(result, split, classification_metrics(y.numpy(), probs, ds.class_names, seed=self.config.seed))
            preds[f"{split}_probs"] = probs.astype(np.float32)
            preds[f"{split}_labels"] = y.numpy()
            preds[f"{split}_index"] = ds.splits[split][2]
        if ds.num_classes == 2:
            from astroclass.metrics import binary_report

            train_counts = np.bincount(ds.splits["train"][1].numpy(), minlength=2)
            result.threshold = binary_report(preds["val_labels"], preds["val_probs"], preds["test_labels"],
                                             preds["test_probs"], positive=int(np.argmin(train_counts)),
                                             class_names=ds.class_names)
        with atomic_output(self.out_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **preds)

    def _save_checkpoint(self, model, ds, result: RunResult) -> None:
        card = {
            "model": self.config.model, "num_classes": ds.num_classes, "class_names": ds.class_names,
            "in_chans": ds.channels, "input_size": ds.size, "pooling": self.config.pooling,
            "stored_dtype": str(ds.dtype), "image_spec": ds.spec.to_dict(), "band_names": ds.band_names,
            "dataset": str(ds.path), "dataset_hash": ds.content_hash, "config": self.config.to_dict(),
            "metrics": {"val": _headline(result.val), "test": _headline(result.test)},
            "best_epoch": result.best_epoch, "astroclass_version": __version__,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_output(self.out_dir / "checkpoint.pt") as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "card": card,
                        "state_dict": state}, tmp)


def _headline(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "ece") if k in m}


def train(config: RunConfig, out_dir: str | Path, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Run one training run; outputs: config.yaml, history.csv, checkpoint.pt, predictions.npz, result.json."""
    return Trainer(config, out_dir, progress, on_epoch).run()
