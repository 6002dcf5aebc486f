"""Contact sheets: a grid of random examples per class, for a look at a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astroclass.data.prepared import PreparedDataset


def display_rgb(img: np.ndarray) -> np.ndarray:
    """A stored (C, H, W) image as an (H, W, 3) float array in [0, 1] for display.

    uint8 (8-bit sources, already R, G, B) is divided by 255. float16 (FITS and synthetic bands,
    in wavelength order, e.g. g,r,i or u,g,r,i,z) is already in [0, 1]; its last three bands are
    shown reversed so that the reddest band is red (g,r,i: i→R, r→G, g→B); of two bands the redder is
    red, the bluer blue and their mean green. One channel is grey.
    """
    x = img.astype(np.float32)
    if img.dtype == np.uint8:
        x /= 255.0
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 2:
        x = np.stack([x[1], x.mean(axis=0), x[0]])
    elif img.dtype != np.uint8:
        x = x[-3:][::-1]
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


def contact_sheet(ds: PreparedDataset, output: str | Path, per_class: int = 8, seed: int = 0) -> Path:
    """Save a PNG with ``per_class`` random images of every class (one row per class)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's own plotting backend stays as it is

    rng = np.random.default_rng(seed)
    names = ds.class_names if ds.labelled else ["(unlabelled)"]
    k = len(names)
    fig = Figure(figsize=(per_class * 1.1, k * 1.15 + 0.3))
    axes = fig.subplots(k, per_class, squeeze=False)
    for c, name in enumerate(names):
        idx = np.flatnonzero(ds.labels == c) if ds.labelled else np.arange(len(ds))
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        imgs = ds.images(pick.astype(np.int64)) if len(pick) else np.empty((0,))
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(display_rgb(imgs[j]), interpolation="nearest")
            else:
                ax.axis("off")
        axes[c, 0].set_ylabel(f"{name}\n({len(idx)})", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{ds.path.name}: {len(ds)} images, {ds.image_shape}", fontsize=9)
    fig.tight_layout()
    output = Path(output)
    from astroclass.fileio import save_figure

    save_figure(fig, output, dpi=100)
    return output
