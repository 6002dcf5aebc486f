"""Evaluation metrics: the paper's accuracy and the statistics it did not report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """The K×K confusion matrix of labels ``y`` and predictions ``pred`` (rows = true class)."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each class's precision, recall, F1 and support from a confusion matrix (rows = true class); 0 where a value
    is undefined (scikit-learn's ``zero_division=0``)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=support + predicted > 0)
    return precision, recall, f1, support


def balanced_accuracy_and_macro_f1(cm: np.ndarray) -> tuple[float, float]:
    """From a confusion matrix (rows = true class): balanced accuracy, the mean recall over the classes present
    (scikit-learn's definition), and macro-F1 over all K classes, 0 for a class whose F1 is undefined (no image of
    it, none predicted as it: scikit-learn's ``zero_division=0`` with every label). One definition for the
    report's metrics, their bootstrap intervals, the metrics at a binary task's threshold and early stopping's
    monitor, also where a split lacks a class; nan without images."""
    _, recall, f1, support = per_class(cm)
    if not support.any():
        return float("nan"), float("nan")
    return float(recall[support > 0].mean()), float(f1.mean())


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


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (accuracy over n test images; SciPy's): close to its nominal
    coverage even for small n or accuracies near 0 or 1, unlike the normal approximation."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def student_t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-seed values (n − 1 degrees of freedom); nan for fewer than two."""
    from scipy.stats import sem, t

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float("nan"), float("nan")
    if v.std() == 0:
        return float(v.mean()), float(v.mean())
    lo, hi = t.interval(level, len(v) - 1, loc=v.mean(), scale=sem(v))
    return float(lo), float(hi)


SEEDS_INTERVAL = ("a bootstrap over the seeds and the test images together (both sampled with replacement, "
                  "2000 times), widened where needed to the Wilson interval over the test images, so that it "
                  "holds both sources of error and is never narrower than one seed's")
"""How a mean accuracy over several seeds gets its 95% interval (:func:`seeds_and_images_interval`), in words."""


def seeds_and_images_interval(correct: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean accuracy of k runs (seeds) on the same n test images, from ``correct`` (k, n):
    each bootstrap replicate draws k seeds and n images with replacement (the same images for every seed drawn)
    and takes the mean accuracy; the percentile interval, joined with the Wilson interval of the mean accuracy
    over the n images (never zero width: tied seeds still carry the images' sampling error)."""
    c = np.asarray(correct, dtype=np.float64)
    k, n = c.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        weights = np.bincount(rng.integers(0, n, n), minlength=n)  # the images drawn, as counts
        per_seed = c @ weights / n
        reps[b] = per_seed[rng.integers(0, k, k)].mean()
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    w_lo, w_hi = wilson_interval(int(round(c.mean() * n)), n, level)
    return float(min(lo, w_lo)), float(max(hi, w_hi))


def seeds_interval(accuracies, n: int, level: float = 0.95) -> tuple[float, float]:
    """95% interval of a mean accuracy over seeds when the runs' predictions are not at hand: Student-t over the
    seeds' accuracies joined with the Wilson interval of the mean over the n test images (never zero width)."""
    v = np.asarray(accuracies, dtype=np.float64)
    lo, hi = student_t_interval(v, level)
    w_lo, w_hi = wilson_interval(int(round(v.mean() * n)), n, level) if n else (float("nan"), float("nan"))
    if np.isnan(lo):
        return w_lo, w_hi
    return (float(min(lo, w_lo)), float(max(hi, w_hi))) if n else (lo, hi)


def confusion_bootstrap(cm: np.ndarray, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of balanced accuracy and macro-F1 over test images, from the confusion
    matrix alone: resampling n images with replacement is a multinomial draw over its K×K cells, so memory
    is O(n_boot · K²), whatever the number of images (1M images cost what 100 do)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    if n == 0:
        return {"balanced_accuracy": [float("nan")] * 2, "macro_f1": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    k = cm.shape[0]
    draws = rng.multinomial(n, cm.ravel() / n, size=n_boot).reshape(n_boot, k, k).astype(np.float64)
    tp = np.diagonal(draws, axis1=1, axis2=2)
    support, predicted = draws.sum(2), draws.sum(1)
    present = cm.sum(1) > 0  # balanced accuracy averages over the classes present in the test split
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
    bal = np.nanmean(recall[:, present], axis=1)
    macro = f1.mean(axis=1)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    return {"balanced_accuracy": [float(x) for x in np.nanquantile(bal, q)],
            "macro_f1": [float(x) for x in np.quantile(macro, q)]}


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_boot: int = 1000,
                           seed: int = 0) -> dict:
    """Accuracy (the paper's metric), balanced accuracy, macro-F1, per-class P/R/F1, confusion
    matrix (rows = true class), ECE, and 95% intervals over the images: Wilson for accuracy, a
    confusion-matrix bootstrap (:func:`confusion_bootstrap`) for balanced accuracy and macro-F1."""
    y = np.asarray(y)
    pred = probs.argmax(axis=1)
    correct = int((pred == y).sum())
    cm = confusion(y, pred, len(class_names))
    p, r, f, s = per_class(cm)
    boot = confusion_bootstrap(cm, n_boot, seed)
    balanced, macro = balanced_accuracy_and_macro_f1(cm)
    return {
        "n": int(len(y)),
        "accuracy": correct / len(y) if len(y) else float("nan"),
        "accuracy_ci95": list(wilson_interval(correct, len(y))),
        "balanced_accuracy": balanced,
        "balanced_accuracy_ci95": boot["balanced_accuracy"],
        "macro_f1": macro,
        "macro_f1_ci95": boot["macro_f1"],
        "ece": expected_calibration_error(probs, y),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
    }


def best_threshold(y: np.ndarray, p_pos: np.ndarray, positive: int) -> float:
    """The threshold on P(positive) that maximises balanced accuracy (ties: the one nearest 0.5).

    Balanced accuracy at a threshold is (TPR + 1 − FPR) / 2, so its maximum is that of Youden's J = TPR − FPR
    over the ROC curve: one sort, O(N log N) (scikit-learn's ``roc_curve``, every distinct score kept)."""
    from sklearn.metrics import roc_curve

    pos = (np.asarray(y) == positive).astype(int)
    if pos.min() == pos.max():  # one class only: every threshold scores the same; keep the argmax rule
        return 0.5
    fpr, tpr, thresholds = roc_curve(pos, p_pos, drop_intermediate=False)
    j = tpr - fpr
    keep = np.isfinite(thresholds)
    cand, score = thresholds[keep], j[keep]
    above = p_pos >= 0.5
    at_half = float((above & (pos == 1)).sum() / pos.sum() - (above & (pos == 0)).sum() / (1 - pos).sum())
    cand, score = np.append(cand, 0.5), np.append(score, at_half)
    best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    return float(cand[best[np.argmin(np.abs(cand[best] - 0.5))]])


def binary_report(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray, positive: int,
                  class_names: Sequence[str]) -> dict:
    """Binary tasks: ROC-AUC and PR-AUC (positive = the rarer class in training), and the metrics at
    the decision threshold chosen on the validation split alone, applied unchanged to the test split."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    t = best_threshold(y_val, p_val[:, positive], positive)

    def at(y, p):
        pred = np.where(p[:, positive] >= t, positive, 1 - positive)
        cm = confusion(y, pred, 2)
        balanced, macro = balanced_accuracy_and_macro_f1(cm)
        rec = per_class(cm)[1]
        return {"accuracy": float((pred == y).mean()), "balanced_accuracy": balanced, "macro_f1": macro,
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


OPERATING_TAUS = tuple(round(t, 2) for t in np.linspace(-2.0, 2.0, 41))
"""The prior exponents τ an operating point is chosen among (see :func:`operating_points`)."""


def prior_adjusted(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """The class of each object at exponent ``tau``: argmax over classes of log p + τ log π, ``prior`` π the
    training split's class shares. τ = 0 is the model's own argmax; τ < 0 favours rare classes (every class found:
    logit adjustment, Menon et al. 2021), τ > 0 common ones (plain accuracy)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    return (logp + tau * np.log(np.clip(np.asarray(prior, dtype=np.float64), 1e-12, 1.0))).argmax(axis=1)


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                     prior: np.ndarray) -> dict:
    """Two decision rules from one model, each chosen on the validation split alone and applied unchanged to the
    test split: ``accuracy`` (the τ of :func:`prior_adjusted` with the best validation accuracy: a pure catalogue)
    and ``balanced_accuracy`` (the best validation balanced accuracy: every class found). Ties go to the τ
    nearest 0. Each with its val and test accuracy and balanced accuracy."""
    k = p_val.shape[1]

    def scores(y: np.ndarray, pred: np.ndarray) -> dict:
        balanced, _ = balanced_accuracy_and_macro_f1(confusion(y, pred, k))
        return {"accuracy": float((pred == y).mean()) if len(y) else float("nan"), "balanced_accuracy": balanced}

    val = {t: scores(y_val, prior_adjusted(p_val, prior, t)) for t in OPERATING_TAUS}
    out: dict = {"prior": [float(x) for x in prior]}
    for target in ("accuracy", "balanced_accuracy"):
        tau = max(OPERATING_TAUS, key=lambda t: (val[t][target], -abs(t)))
        out[target] = {"tau": float(tau), "val": val[tau], "test": scores(y_test, prior_adjusted(p_test, prior, tau))}
    return out
