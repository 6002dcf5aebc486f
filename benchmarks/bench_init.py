"""Scratch backbones with timm's initialisation vs Keras' (``init timm`` vs ``init keras``), the paper's preset
(λ 0.1, γ 0, Adam), on the real ARIES star/galaxy cutouts at 76 px: the same seeds, data and epochs for both.
Which runs end at one class (the majority or the minority) under each? (The paper's Table 2 on SG: VGG16 and
InceptionResNetV2 at the majority class, 0.562; DenseNet121 and ResNeXt50 learn.)

CPU-sized: a stratified part of the training split (``--fraction``), ``--epochs`` epochs, no early stopping,
fp32. Usage: python benchmarks/bench_init.py [--seeds 3] [--epochs 3] [--fraction 0.15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER_NAMES, import_real, save  # noqa: E402


def summarise(rows: list[dict], models: list[str]) -> dict:
    """Per backbone and initialisation: mean test accuracy and balanced accuracy, and the runs that predict one
    class for (nearly) every test image, the majority or the minority class."""
    print("\nmodel               init   mean test acc  mean balanced  runs at one class (>= 99% of test images)")
    summary = {}
    for model in models:
        for init in ("timm", "keras"):
            rs = [r for r in rows if r["model"] == model and r["init"] == init]
            one_class = sum(r["test_share_predicted_majority"] >= 0.99 or r["test_share_predicted_majority"] <= 0.01
                            for r in rs)
            s = {"test_accuracy": float(np.mean([r["test_accuracy"] for r in rs])),
                 "test_balanced_accuracy": float(np.mean([r["test_balanced_accuracy"] for r in rs])),
                 "at_one_class": int(one_class), "runs": len(rs)}
            summary[f"{model}/{init}"] = s
            print(f"{PAPER_NAMES[model]:18s}  {init:5s}  {s['test_accuracy']:.3f}          "
                  f"{s['test_balanced_accuracy']:.3f}          {one_class} of {len(rs)}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.15)
    ap.add_argument("--models", default=",".join(PAPER_NAMES))
    args = ap.parse_args()
    from astroclass.training import RunConfig, train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        h5 = import_real("aries_star_galaxy", tmp)
        for model in args.models.split(","):
            for seed in range(args.seeds):
                for init in ("timm", "keras"):
                    t0 = time.perf_counter()
                    run = Path(tmp) / f"{model}-{init}-{seed}"
                    res = train(RunConfig(dataset=str(h5), model=model, setup="scratch", l2=0.1, maxnorm=0.0,
                                          optimizer="adam", init=init, seed=seed, epochs=args.epochs,
                                          patience=args.epochs, train_fraction=args.fraction, amp="off"),
                                run, progress=False)
                    pred = np.load(run / "predictions.npz")
                    p, y = pred["test_probs"].argmax(1), pred["test_labels"]
                    majority = int(np.bincount(pred["val_labels"]).argmax())
                    row = {"model": model, "init": init, "seed": seed, "val_accuracy": res.val["accuracy"],
                           "test_accuracy": res.test["accuracy"],
                           "test_balanced_accuracy": res.test["balanced_accuracy"],
                           "test_share_predicted_majority": float((p == majority).mean()),
                           "majority_share": float((y == majority).mean()), "best_epoch": res.best_epoch,
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(f"{PAPER_NAMES[model]:18s} {init:5s} seed {seed}: val {row['val_accuracy']:.3f}, test "
                          f"{row['test_accuracy']:.3f} (balanced {row['test_balanced_accuracy']:.3f}), majority class "
                          f"for {100 * row['test_share_predicted_majority']:.0f}% of the test images "
                          f"({row['seconds']:.0f} s)", flush=True)
    summary = summarise(rows, args.models.split(","))
    print(f"saved {save('init_cpu', {'args': vars(args), 'rows': rows, 'summary': summary})}")


if __name__ == "__main__":
    main()
