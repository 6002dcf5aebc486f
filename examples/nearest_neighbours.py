"""Nearest neighbours of galaxies in a trained model's representation (Galaxy10 DECaLS, 849 galaxies, 10 classes).

    python examples/nearest_neighbours.py --budget 3m --work nn-work

Imports ../shared/data/galaxy10_decals_subset, trains the modern recipe for the budget, embeds every galaxy
(pooled backbone features, averaged over the 8 flips/rotations so that a galaxy's orientation does not count),
and for each test galaxy finds its 5 nearest training galaxies by cosine distance. Prints how often the
neighbours share the query's class, against neighbours found in raw pixels and against chance, and writes
``neighbours.png``: query galaxies (left column) and their neighbours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "galaxy10_decals_subset"


def agreement(train: np.ndarray, y_train: np.ndarray, query: np.ndarray, y_query: np.ndarray, k: int) -> float:
    """Mean fraction of each query's k nearest training objects (cosine distance) that share its class."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(train)
    _, idx = nn.kneighbors(query)
    return float((y_train[idx] == y_query[:, None]).mean())


def main() -> None:
    import pandas as pd

    import astroclass
    from astroclass.data.prepared import PreparedDataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="3m", help="training budget (the modern recipe's --budget)")
    ap.add_argument("--work", type=Path, default=Path("nn-work"), help="folder for the dataset, run and figure")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    data = args.work / "galaxy10.h5"
    ds = astroclass.Dataset.open(data) if data.exists() else astroclass.Dataset.from_catalog(
        pd.read_csv(DATA / "labels.csv"), root=DATA, output=data, show_progress=True)
    run_dir = args.work / "run"
    if not (run_dir / "checkpoint.pt").exists():
        astroclass.fit(ds, output=run_dir, recipe="modern", budget=args.budget, progress=True)
    clf = astroclass.load(run_dir / "checkpoint.pt")

    with PreparedDataset(ds.path) as p:
        tr, te = p.indices("train"), p.indices("test")
        x_tr, y_tr = p.split_arrays("train")
        x_te, y_te = p.split_arrays("test")
        names = p.class_names
    e_tr, e_te = clf.embed(x_tr, tta=True), clf.embed(x_te, tta=True)
    k = args.k
    chance = float(np.mean([np.mean(y_tr == y) for y in y_te]))  # a random training galaxy shares the class
    pixels = agreement(x_tr.reshape(len(x_tr), -1).astype(np.float32), y_tr,
                       x_te.reshape(len(x_te), -1).astype(np.float32), y_te, k)
    learned = agreement(e_tr, y_tr, e_te, y_te, k)
    print(f"{len(te)} test galaxies, {len(tr)} training galaxies, {len(names)} classes, {e_tr.shape[1]} features")
    print(f"share of {k} nearest neighbours with the query's class: model representation {learned:.3f}, "
          f"raw pixels {pixels:.3f}, chance {chance:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(e_tr).kneighbors(e_te)
    picks = np.random.default_rng(0).choice(len(te), size=4, replace=False)
    fig, axes = plt.subplots(len(picks), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(picks)))
    for row, q in enumerate(picks):
        for col, (img, label) in enumerate([(x_te[q], y_te[q])] + [(x_tr[j], y_tr[j]) for j in idx[q]]):
            ax = axes[row, col]
            ax.imshow(np.moveaxis(img, 0, -1))
            ax.set_title(("query: " if col == 0 else "") + names[label].replace("_", " ")[:18], fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.work / "neighbours.png", dpi=120)
    print(f"wrote {args.work / 'neighbours.png'}")


if __name__ == "__main__":
    main()
