"""The run config (see :mod:`astroclass.runconfig`, re-exported here) and the run result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.runconfig import (
    AMP_MODES,
    COMPILE_MODES,
    FROZEN_BN,
    LEGACY,
    MONITORS,
    OPTIMIZERS,
    SAMPLERS,
    SECTIONS,
    SETUPS,
    RunConfig,
    option,
    upgrade_legacy,
)

__all__ = ["AMP_MODES", "COMPILE_MODES", "FROZEN_BN", "LEGACY", "MONITORS", "OPTIMIZERS", "SAMPLERS", "SECTIONS",
           "SETUPS", "RunConfig", "RunResult", "TrainingFailed", "option", "upgrade_legacy"]


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
    operating_points: dict[str, Any] = field(default_factory=dict)
    """Two decision rules from the one model, chosen on val: the best plain accuracy and the best balanced
    accuracy (``metrics.operating_points``), each with its val and test scores."""
    unfamiliar: dict[str, Any] = field(default_factory=dict)
    """How unlike its training data an object is (1 - its largest class probability), and the threshold above
    which an object counts as unfamiliar: the score that 95% of validation objects stay at or below."""
    dataset_hash: str = ""
    storage: str = ""
    """Where the run's images were while it trained: memory, device (on the GPU) or stream (read from the
    dataset file in shuffled blocks: the dataset exceeded max_memory)."""
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingFailed(AstroclassError):
    """A run that could not finish (e.g. the loss became NaN); its history is kept."""
