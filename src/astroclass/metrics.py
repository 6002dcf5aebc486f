"""Evaluation metrics: the paper's accuracy and the statistics it did not report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (n_b / n) |accuracy_b − confidence_b|."""
    if len(y) == 0:
        return float("nan")
    rb = reliability_bins(probs, y, bins)
    return float(sum(n / len(y) * abs(a - c) for c, a, n in zip(rb["confidence"], rb["accuracy"], rb["count"]) if n))


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count, for reliability diagrams."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        sel = which == b
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else float("nan"))
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else float("nan"))
        out["count"].append(int(sel.sum()))
    return out


def bootstrap_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. 0/1 correctness per image)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_boot: int = 1000,
                           seed: int = 0) -> dict:
    """Accuracy (the paper's metric), balanced accuracy, macro-F1, per-class P/R/F1, confusion
    matrix (rows = true class), ECE, and a bootstrap 95% interval for accuracy."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y = np.asarray(y)
    pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    correct = (pred == y).astype(np.float64)
    lo, hi = bootstrap_interval(correct, n_boot, seed)
    return {
        "n": int(len(y)),
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "accuracy_ci95": [lo, hi],
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, y),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def best_threshold(y: np.ndarray, p_pos: np.ndarray, positive: int) -> float:
    """The threshold on P(positive) that maximises balanced accuracy (ties: the one nearest 0.5)."""
    from sklearn.metrics import balanced_accuracy_score

    candidates = np.unique(np.concatenate([p_pos, [0.5]]))
    scores = [(balanced_accuracy_score(y, np.where(p_pos >= t, positive, 1 - positive)), -abs(t - 0.5), t)
              for t in candidates]
    return float(max(scores)[2])


def binary_report(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray, positive: int,
                  class_names: Sequence[str]) -> dict:
    """Binary tasks: ROC-AUC and PR-AUC (positive = the rarer class in training), and the metrics at
    the decision threshold chosen on the validation split alone, applied unchanged to the test split."""
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, f1_score, recall_score,
                                 roc_auc_score)

    t = best_threshold(y_val, p_val[:, positive], positive)

    def at(y, p):
        pred = np.where(p[:, positive] >= t, positive, 1 - positive)
        rec = recall_score(y, pred, labels=[0, 1], average=None, zero_division=0)
        return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
                "recall": {class_names[i]: float(rec[i]) for i in (0, 1)}}

    def aucs(y, p):
        pos = (y == positive).astype(int)
        if pos.min() == pos.max():
            return float("nan"), float("nan")
        return float(roc_auc_score(pos, p[:, positive])), float(average_precision_score(pos, p[:, positive]))

    out = {"positive_class": class_names[positive], "value": t, "val": at(y_val, p_val), "test": at(y_test, p_test)}
    out["val_roc_auc"], out["val_pr_auc"] = aucs(y_val, p_val)
    out["test_roc_auc"], out["test_pr_auc"] = aucs(y_test, p_test)
    return out
