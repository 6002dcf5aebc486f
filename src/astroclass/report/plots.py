"""The report's figures (matplotlib, Agg backend), saved as PNG without timestamps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.modelnames import display_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    from astroclass.fileio import save_figure

    save_figure(fig, path, dpi=90, metadata={"Software": None})
    _plt().close(fig)
    return path


def heatmap(values: dict[tuple[str, str], float], datasets: list[str], models: list[str], title: str,
            path: Path) -> Path:
    """Datasets × models accuracy heatmap; gaps are left blank."""
    plt = _plt()
    mat = np.array([[values.get((d, m), np.nan) for m in models] for d in datasets], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(models) + 2.2, 0.55 * len(datasets) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=np.nanmin(mat) if np.isfinite(mat).any() else 0,
                   vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(models)), [display_name(m) for m in models], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
    for i in range(len(datasets)):
        for j in range(len(models)):
            txt = "–" if math.isnan(mat[i, j]) else f"{mat[i, j]:.3f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if mat[i, j] < 0.8 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def overview(panels: dict[str, list[tuple[str, float, float, float, float, bool]]], path: Path) -> Path:
    """Per candidate (label, test accuracy, its 95% interval low and high, validation accuracy, chosen), one
    panel per dataset, in order of validation accuracy (on which the model is chosen; the chosen one in blue),
    each point its test accuracy with the interval: the report's first picture."""
    plt = _plt()
    heights = [max(1, len(rows)) * 0.32 + 0.9 for rows in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (d, rows) in zip(axes[:, 0], panels.items()):
        rows = sorted(rows, key=lambda r: -r[4])  # stable: ties keep the ranking's order
        y = np.arange(len(rows))[::-1]
        vals = np.array([r[1] for r in rows])
        lo = np.array([r[2] if math.isfinite(r[2]) else r[1] for r in rows])
        hi = np.array([r[3] if math.isfinite(r[3]) else r[1] for r in rows])
        colours = ["tab:blue" if r[5] else "tab:grey" for r in rows]
        for yi, v, a, b, c in zip(y, vals, lo, hi, colours):
            ax.errorbar([v], [yi], xerr=[[v - a], [b - v]], fmt="o", color=c, elinewidth=2, capsize=3, ms=5)
        for yi, v in zip(y, vals):
            ax.annotate(f"{v:.3f}", (v, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_yticks(y, [f"{r[0]} (val {r[4]:.3f})" for r in rows], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(d, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("test accuracy (95% interval)", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def scratch_vs_pretrained(pairs: list[tuple[str, str, float, float]], path: Path) -> Path:
    """(dataset, model, scratch accuracy, pretrained accuracy): points above the diagonal favour pre-training."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.6))
    datasets = list(dict.fromkeys(p[0] for p in pairs))
    markers = "osD^v<>p*h"
    for i, d in enumerate(datasets):
        pts = [p for p in pairs if p[0] == d]
        ax.scatter([p[2] for p in pts], [p[3] for p in pts], marker=markers[i % len(markers)], label=d, s=36)
    lo = min([min(p[2], p[3]) for p in pairs] + [1.0]) - 0.02
    ax.plot([lo, 1], [lo, 1], color="grey", lw=1, ls="--")
    ax.set_xlabel("from scratch: best validation accuracy")
    ax.set_ylabel("ImageNet pre-trained: best validation accuracy")
    ax.set_title("Scratch vs pre-trained (one point per model)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def learning_curves(history: list[dict[str, Any]], title: str, path: Path) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    x = list(range(1, len(history) + 1))
    for key, ax in (("loss", a1), ("accuracy", a2)):
        train = [float(h[f"train_{key}"]) for h in history]
        val = [float(h[f"val_{key}"]) for h in history]
        ax.plot(x, train, label="train", marker=".")
        ax.plot(x, val, label="validation", marker=".")
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel(key)
        finite = [v for v in train + val if math.isfinite(v) and v > 0]
        if key == "loss" and finite and max(finite) > 10 * min(finite):
            # an L2 term makes the first epochs' loss 30-100x the later ones': on a linear axis the rest is flat
            ax.set_yscale("log")
            ax.set_ylabel("loss (log scale)")
        ax.legend(fontsize=7)
    switch = [i for i in range(1, len(history)) if history[i]["phase"] != history[i - 1]["phase"]]
    for s in switch:
        for ax in (a1, a2):
            ax.axvline(s + 0.5, color="grey", ls=":", lw=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def confusion(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> Path:
    plt = _plt()
    m = np.array(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(class_names)
    size = max(3.2, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def reliability(bins: dict[str, list[float]], ece: float, title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    conf, acc, cnt = (np.array(bins[k], dtype=float) for k in ("confidence", "accuracy", "count"))
    ok = cnt > 0
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.scatter(conf[ok], acc[ok], s=10 + 90 * cnt[ok] / max(cnt.max(), 1))
    ax.plot(conf[ok], acc[ok])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def gallery(images: list[np.ndarray], captions: list[str], title: str, path: Path) -> Path:
    from astroclass.data.preview import display_rgb

    plt = _plt()
    n = max(1, len(images))
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.95 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(display_rgb(img), interpolation="nearest")
        ax.set_title(cap, fontsize=6.5, wrap=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def accuracy_vs_truth(curves: dict[str, tuple[list[float], list[float], list[int]]], xlabel: str, title: str,
                      path: Path, log_x: bool = True) -> Path:
    """Test accuracy per bin of a true parameter (e.g. S/N), one line per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, (x, acc, _) in curves.items():
        ax.plot(x, acc, marker="o", label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def scaling(curves: dict[str, list[dict[str, Any]]], title: str, path: Path) -> Path:
    """Test accuracy and balanced accuracy against training images per class, one line per model, ±1 std."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, name in ((axes[0], "accuracy", "test accuracy"),
                          (axes[1], "balanced_accuracy", "test balanced accuracy")):
        for label, pts in curves.items():
            x = [p["per_class"] for p in pts]
            ax.errorbar(x, [p[key] for p in pts], yerr=[p[f"{key}_std"] for p in pts], marker="o", capsize=3,
                        label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training images per class")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
