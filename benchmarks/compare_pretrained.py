"""Test accuracy of efficientnet_lite0 from scratch vs fine-tuned from ImageNet, same epoch budget,
on real sets from ../shared/data (ARIES star/galaxy, Galaxy Zoo Kaggle spiral/non-spiral).

Scratch: `epochs` epochs of the whole network (early stopping on val loss). Pretrained: 1 head epoch
then `epochs - 1` fine-tune epochs (the paper's procedure, shortened to the same total).
Usage: python benchmarks/compare_pretrained.py [--epochs 4] [--seeds 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.training import RunConfig, train  # noqa: E402
from common import import_real, save  # noqa: E402

SETS = {"aries_star_galaxy": "SG (ARIES)", "gz_kaggle_spiral": "spiral (GZ Kaggle)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, label in SETS.items():
            h5 = import_real(name, tmp)
            for seed in args.seeds:
                for setup in ("scratch", "pretrained"):
                    cfg = RunConfig(dataset=str(h5), model="efficientnet_lite0", setup=setup, seed=seed,
                                    epochs=args.epochs if setup == "scratch" else args.epochs - 1, head_epochs=1,
                                    patience=args.epochs)
                    t0 = time.perf_counter()
                    r = train(cfg, Path(tmp) / f"{name}-{setup}-{seed}", progress=False)
                    row = {"dataset": label, "setup": setup, "seed": seed, "epochs": r.epochs_run,
                           "test_accuracy": r.test["accuracy"], "test_ci95": r.test["accuracy_ci95"],
                           "test_balanced_accuracy": r.test["balanced_accuracy"], "test_macro_f1": r.test["macro_f1"],
                           "val_accuracy": r.val["accuracy"], "seconds": time.perf_counter() - t0}
                    rows.append(row)
                    print(f"{label:20s} {setup:10s} seed {seed}: test acc {row['test_accuracy']:.3f} "
                          f"[{row['test_ci95'][0]:.3f}, {row['test_ci95'][1]:.3f}] balanced "
                          f"{row['test_balanced_accuracy']:.3f} macro-F1 {row['test_macro_f1']:.3f} "
                          f"({row['seconds']:.0f} s)", flush=True)
    print(f"saved {save('compare_pretrained', {'epochs': args.epochs, 'runs': rows})}")


if __name__ == "__main__":
    main()
