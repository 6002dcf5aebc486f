"""A short real training run on a GPU: the fast path vs --paper-exact, same config, on real ARIES cutouts
(../shared/data beside the repository).
Usage: PYTHONPATH=src python benchmarks/gpu_train_check.py [--model resnext50_32x4d] [--epochs 3]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnext50_32x4d")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = import_real("aries_star_galaxy", tmp)
        for mode in ("fast", "paper_exact"):
            cfg = RunConfig(dataset=str(h5), model=args.model, epochs=args.epochs, patience=args.epochs, seed=0,
                            paper_exact=mode == "paper_exact")
            t0 = time.perf_counter()
            r = train(cfg, Path(tmp) / mode, progress=False)
            rows[mode] = {"val_accuracy": r.val["accuracy"], "test_accuracy": r.test["accuracy"],
                          "train_images_per_s": r.train_images_per_s, "eval_images_per_s": r.eval_images_per_s,
                          "seconds": time.perf_counter() - t0, "speed": r.environment.get("speed"),
                          "device": r.environment.get("gpu", r.environment["device"])}
    print(f"{'mode':12s} {'val acc':>8s} {'test acc':>8s} {'train img/s':>11s} {'eval img/s':>10s} {'seconds':>8s}")
    for mode, r in rows.items():
        print(f"{mode:12s} {r['val_accuracy']:8.3f} {r['test_accuracy']:8.3f} {r['train_images_per_s']:11.0f} "
              f"{r['eval_images_per_s']:10.0f} {r['seconds']:8.1f}")
    print(f"saved {save('gpu_train_check', {'model': args.model, 'epochs': args.epochs, 'runs': rows})}")


if __name__ == "__main__":
    main()
