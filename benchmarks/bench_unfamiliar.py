"""Does `unfamiliar_score` find objects of classes a model never saw? Galaxy Zoo 1 (../shared/data/gz1_sdss): a
model trained on elliptical, edge-on and spiral (clockwise and anticlockwise together), then `astroclass predict` on
every image; the unseen classes (merger, don't-know) against the known classes' test images.

    python benchmarks/bench_unfamiliar.py --budget 3m

Prints the ROC-AUC of the score for unseen vs known (test split) objects, and how many of each the flag (the
threshold chosen on validation: 95% of validation objects below it) marks unfamiliar.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import DATA, save, src_env

KNOWN = "elliptical,edge_on,spiral=spiral_acw+spiral_cw"
UNSEEN = ("merger", "dont_know")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--work", type=Path, default=Path("/tmp/astroclass-bench-unfamiliar"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, run, out = args.work / "gz1.h5", args.work / "run", args.work / "predicted.parquet"

    def astroclass(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", "astroclass", *argv], check=True, env=src_env())

    if not data.exists():
        astroclass("data", "import", "catalog", str(DATA / "gz1_sdss" / "labels.csv"), "-o", str(data))
    if not (run / "checkpoint.pt").exists():
        astroclass("train", str(data), "--recipe", "modern", "--budget", args.budget, "--classes", KNOWN, "-q",
                   "-o", str(run))
    if not out.exists():
        astroclass("predict", str(run / "checkpoint.pt"), str(data), "-q", "-o", str(out))

    from astropy.table import Table
    from sklearn.metrics import roc_auc_score

    from astroclass.data.prepared import PreparedDataset

    t = Table.read(out)
    with PreparedDataset(data) as ds:
        labels = np.array([ds.class_names[i] for i in ds.labels])
        test = np.zeros(len(ds), bool)
        test[ds.indices("test")] = True
    unseen = np.isin(labels, UNSEEN)
    known = ~unseen & test
    score = np.asarray(t["unfamiliar_score"], dtype=float)
    flag = np.asarray(t["unfamiliar"], dtype=bool)
    pick = unseen | known
    auc = roc_auc_score(unseen[pick], score[pick])
    print(f"unseen classes {UNSEEN}: {unseen.sum()} objects; known classes, test split: {known.sum()} objects")
    print(f"ROC-AUC of unfamiliar_score, unseen vs known: {auc:.3f}")
    for name in UNSEEN:
        m = labels == name
        print(f"  {name}: {flag[m].mean():.3f} flagged unfamiliar ({m.sum()} objects)")
    print(f"  known, test split: {flag[known].mean():.3f} flagged unfamiliar (about 0.05 by construction)")
    flagged = {name: float(flag[labels == name].mean()) for name in UNSEEN} | {"known_test": float(flag[known].mean())}
    saved = save("unfamiliar_gz1", {"budget": args.budget, "known": KNOWN, "roc_auc": auc, "flagged": flagged,
                                    "n_unseen": int(unseen.sum()), "n_known_test": int(known.sum())})
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
