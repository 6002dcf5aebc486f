"""Training: one run as the paper does it, or the runs of one grid cell fused into one batched model.

| module | holds |
|---|---|
| :mod:`~astroclass.training.config` | ``RunConfig`` (everything that defines a run), ``RunResult`` |
| :mod:`~astroclass.training.method` | the paper's method once: optimisers, losses, stopping, augmentation |
| :mod:`~astroclass.training.loop` | the training loop for one run or a fused group, the worker's caches |
| :mod:`~astroclass.training.fusion` | G models of one architecture as one batched model, and each run's share of it |
| :mod:`~astroclass.training.data` | a run's dataset in memory (class grouping, train fraction) |
| :mod:`~astroclass.training.speed` | device, precision and compile choices |
| :mod:`~astroclass.training.outputs` | history, predictions, checkpoint and result of a run |
| :mod:`~astroclass.training.pick` | the modern recipe's backbone for a wall-clock budget |
"""

from astroclass.training.config import (
                                        AMP_MODES,
                                        COMPILE_MODES,
                                        MONITORS,
                                        OPTIMIZERS,
                                        SAMPLERS,
                                        SETUPS,
                                        RunConfig,
                                        RunResult,
                                        TrainingFailed,
)
from astroclass.training.data import DataCache, RunData, load_run_data
from astroclass.training.loop import (
                                        PER_RUN_OPTIONS,
                                        GroupTrainer,
                                        ModelCache,
                                        WorkerCache,
                                        fuse_key,
                                        fused_group_size,
                                        train,
                                        train_group,
)
from astroclass.training.method import (
                                        KERAS_DEFAULTS,
                                        EarlyStopping,
                                        augment_batch,
                                        class_weight_tensor,
                                        dihedral,
                                        epoch_order,
                                        make_optimizer,
                                        predict_probs,
                                        to_float,
)
from astroclass.training.outputs import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, environment
from astroclass.training.speed import (
    auto_amp,
    compiled,
    cpu_has_amx,
    keep_freed_memory,
    resolve_device,
    threads_within_cores,
)

__all__ = [
    "AMP_MODES", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "COMPILE_MODES", "KERAS_DEFAULTS", "MONITORS", "OPTIMIZERS",
    "PER_RUN_OPTIONS", "SAMPLERS", "SETUPS", "DataCache", "EarlyStopping", "GroupTrainer", "ModelCache", "RunConfig",
    "RunData", "RunResult", "TrainingFailed", "WorkerCache", "augment_batch", "auto_amp", "class_weight_tensor",
    "compiled", "cpu_has_amx", "dihedral", "environment", "epoch_order", "fuse_key", "fused_group_size",
    "keep_freed_memory", "load_run_data",
    "make_optimizer", "predict_probs", "resolve_device", "threads_within_cores", "to_float", "train", "train_group",
]
