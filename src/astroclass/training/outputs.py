"""What a finished run leaves in its folder: history.csv, predictions.npz, checkpoint.pt, result.json."""

from __future__ import annotations

import csv
import json
import platform
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astroclass import __version__
from astroclass.fileio import atomic_output, atomic_write_text, torch_save
from astroclass.training.config import RunConfig, RunResult
from astroclass.training.data import RunData
from astroclass.training.method import predict_probs

CHECKPOINT_FORMAT = "astroclass.checkpoint"
CHECKPOINT_VERSION = 1
HISTORY_FIELDS = ["phase", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


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


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_output(out_dir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(history)


def write_result(out_dir: Path, result: RunResult) -> None:
    atomic_write_text(out_dir / "result.json", json.dumps(result.to_dict(), indent=2))


UNFAMILIAR_QUANTILE = 0.95
"""Objects scoring above what this share of validation objects score are flagged unfamiliar."""


def unfamiliarity(probs: np.ndarray) -> np.ndarray:
    """How unlike the training data each object looks to the model: 1 - its largest class probability (the
    maximum-softmax baseline of Hendrycks & Gimpel 2017); NaN where the probabilities are."""
    return 1.0 - np.asarray(probs, dtype=np.float32).max(axis=1) if len(probs) else np.zeros(0, np.float32)


def evaluate(model: torch.nn.Module, data: RunData, cfg: RunConfig, device: torch.device, fast: dict,
             result: RunResult, out_dir: Path, seconds: dict[str, float] | None = None) -> None:
    """Val and test metrics of the (best-weights) model into ``result``; predictions.npz. ``seconds`` gets the
    time the model's predictions took ("final_predict") and the time of the metrics and predictions.npz
    ("final_metrics")."""
    from astroclass.metrics import classification_metrics

    t_start = time.perf_counter()
    predicting = 0.0
    preds = {}
    for split in ("val", "test"):
        x, y = data.tensors(split)
        t0 = time.perf_counter()
        probs = predict_probs(model, x, device, cfg.eval_batch_size, fast["channels_last"], fast["amp"], tta=cfg.tta)
        dt = time.perf_counter() - t0
        predicting += dt
        if split == "test":
            result.eval_images_per_s = len(x) / dt if dt > 0 else 0.0
        setattr(result, split, classification_metrics(y.numpy(), probs, data.class_names, seed=cfg.seed))
        preds[f"{split}_probs"] = probs.astype(np.float32)
        preds[f"{split}_labels"] = y.numpy()
        preds[f"{split}_index"] = data.splits[split][2]
    from astroclass.metrics import operating_points

    train_counts_all = np.bincount(data.splits["train"][1].numpy(), minlength=data.num_classes)
    if len(preds["val_labels"]) and train_counts_all.sum():
        result.operating_points = operating_points(preds["val_labels"], preds["val_probs"], preds["test_labels"],
                                                   preds["test_probs"], train_counts_all / train_counts_all.sum())
    val_score = unfamiliarity(preds["val_probs"])
    if len(val_score):
        result.unfamiliar = {"score": "1 - the largest class probability", "quantile": UNFAMILIAR_QUANTILE,
                             "threshold": float(np.quantile(val_score, UNFAMILIAR_QUANTILE))}
    if data.num_classes == 2:
        from astroclass.metrics import binary_report

        train_counts = np.bincount(data.splits["train"][1].numpy(), minlength=2)
        result.threshold = binary_report(preds["val_labels"], preds["val_probs"], preds["test_labels"],
                                         preds["test_probs"], positive=int(np.argmin(train_counts)),
                                         class_names=data.class_names)
    with atomic_output(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **preds)  # type: ignore[arg-type]
    if seconds is not None:
        seconds["final_predict"] = round(predicting, 3)
        seconds["final_metrics"] = round(time.perf_counter() - t_start - predicting, 3)


def save_checkpoint(model: torch.nn.Module, data: RunData, cfg: RunConfig, result: RunResult, out_dir: Path) -> None:
    card = {
        "model": cfg.model, "num_classes": data.num_classes, "class_names": data.class_names,
        "in_chans": data.channels, "input_size": data.size, "pooling": cfg.pooling,
        "stored_dtype": str(data.dtype), "image_spec": data.spec.to_dict(), "band_names": data.band_names,
        "dataset": str(data.path), "dataset_hash": data.content_hash, "config": cfg.to_dict(),
        "metrics": {"val": _headline(result.val), "test": _headline(result.test)},
        "best_epoch": result.best_epoch, "astroclass_version": __version__,
        "arch": getattr(model, "arch", None),  # a hub model's config.json: predicting needs no network
        "unfamiliar": result.unfamiliar,
        "operating_points": result.operating_points,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(out_dir / "checkpoint.pt") as tmp:
        torch_save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "card": card,
                    "state_dict": state}, tmp, out_dir / "checkpoint.pt")


def _headline(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "ece") if k in m}
