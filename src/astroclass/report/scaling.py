"""Data-scaling curves: test accuracy against training images per class, from a train_fraction axis."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from astroclass.modelnames import display_name
from astroclass.report.tables import RunRow, without_fraction


def scaling_curves(runs: Sequence[RunRow], base: tuple) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{dataset: {model label: points}} for runs that differ from the base variant only in train_fraction.

    A point pools the seeds of one (dataset, model, setup, setting, fraction): x is the mean number of
    training images per class actually used, and accuracy / balanced accuracy (test) are given as
    mean and standard deviation over seeds. Only curves with at least two fractions are returned.
    """
    base_rest = without_fraction(base)
    groups: dict[tuple, list[RunRow]] = defaultdict(list)
    for r in runs:
        if without_fraction(r.variant) != base_rest:
            continue
        frac = float(dict(r.variant).get("train_fraction", 1.0))
        groups[(r.dataset, r.model, r.setup, r.setting, frac)].append(r)
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    by_curve: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for (d, m, s, setting, frac), rs in groups.items():
        per_class = [np.mean(list(r.metrics.get("train_counts", {}).values()) or [np.nan]) for r in rs]
        acc = [r.metrics["test"]["accuracy"] for r in rs]
        bal = [r.metrics["test"]["balanced_accuracy"] for r in rs]
        by_curve[(d, m, s, setting)].append({
            "fraction": frac, "per_class": float(np.mean(per_class)), "n_seeds": len(rs),
            "accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc, ddof=1)) if len(rs) > 1 else 0.0,
            "balanced_accuracy": float(np.mean(bal)),
            "balanced_accuracy_std": float(np.std(bal, ddof=1)) if len(rs) > 1 else 0.0})
    for (d, m, s, setting), pts in by_curve.items():
        if len(pts) < 2:
            continue
        label = f"{display_name(m)} ({s})"
        if label in out[d]:
            label += f" λ={setting[0]:g} γ={setting[1]:g} {setting[2]}"
        out[d][label] = sorted(pts, key=lambda p: p["fraction"])
    return {d: c for d, c in out.items() if c}


def scaling_answer(curves: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """The paper's question 4, from measured curves: how balanced accuracy changes with data per class."""
    parts = []
    for d, cs in curves.items():
        for label, pts in cs.items():
            a, b = pts[0], pts[-1]
            parts.append(f"{d}, {label}: from ~{a['per_class']:.0f} to ~{b['per_class']:.0f} training images per "
                         f"class, "
                         f"test balanced accuracy {a['balanced_accuracy']:.3f} → {b['balanced_accuracy']:.3f} "
                         f"(accuracy {a['accuracy']:.3f} → {b['accuracy']:.3f}; {b['n_seeds']} seed(s) per point)")
    return "Measured with the data-scaling axis: " + "; ".join(parts) + "."
