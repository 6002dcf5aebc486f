"""Which band scaling a model learns star/galaxy separation better from, on the real SDSS field 3900-6-0269
(u and i frames, 562 objects with SDSS photometric types): cut-outs scaled per band (each band fills [0, 1],
colour lost) against scaled jointly (Lupton et al. 2004, colour kept).

For each split seed the field is cut out twice (the same objects in the same splits; 32-pixel cut-outs, 13",
resampled to 76 pixels, so that the objects, most of them faint, fill more of the image), and
efficientnet_lite0 is fine-tuned from its packaged ImageNet weights with the modern recipe (TTA for the final
metrics only), the same seed and epochs for both scalings; the test metrics are pooled over the seeds
(paired: the same test objects). Usage:
python benchmarks/bench_sky_scaling.py [--seeds 4] [--epochs 20] [--cutout-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--cutout-size", type=int, default=32)
    args = ap.parse_args()
    from scipy.stats import binomtest

    from astroclass.data.images import ImageSpec
    from astroclass.data.sky import import_sky
    from astroclass.training import RunConfig, train

    field = DATA / "survey_fields" / "sdss_3900-6-0269"
    if not field.exists():
        sys.exit(f"{field} not found: the benchmark needs ../shared/data beside the repository")
    results: dict = {"seeds": args.seeds, "epochs": args.epochs, "cutout_size": args.cutout_size,
                     "model": "efficientnet_lite0", "runs": []}
    correct: dict[str, list[np.ndarray]] = {"per-band": [], "joint": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for scaling in ("per-band", "joint"):
                h5 = Path(tmp) / f"{scaling}-{seed}.h5"
                import_sky(field / "catalog.csv", h5, images=[f"{field}/frame-*.fits.bz2"],
                           cutout_size=args.cutout_size, spec=ImageSpec(band_scaling=scaling), seed=seed,
                           show_progress=False)
                run = Path(tmp) / f"run-{scaling}-{seed}"
                res = train(RunConfig(dataset=str(h5), recipe="modern", model="efficientnet_lite0",
                                      setup="pretrained", weights="package", epochs=args.epochs, seed=seed,
                                      tta_each_epoch=False, amp="off"), run, progress=False)
                pred = np.load(run / "predictions.npz")
                correct[scaling].append(pred["test_probs"].argmax(1) == pred["test_labels"])
                row = {"seed": seed, "scaling": scaling, "test_accuracy": res.test["accuracy"],
                       "test_balanced_accuracy": res.test["balanced_accuracy"],
                       "val_balanced_accuracy": res.val["balanced_accuracy"]}
                results["runs"].append(row)
                print(f"seed {seed} {scaling:8s}: test accuracy {row['test_accuracy']:.3f}, balanced "
                      f"{row['test_balanced_accuracy']:.3f} (val balanced {row['val_balanced_accuracy']:.3f})",
                      flush=True)
    summary = {}
    for scaling in ("per-band", "joint"):
        rows = [r for r in results["runs"] if r["scaling"] == scaling]
        summary[scaling] = {k: float(np.mean([r[k] for r in rows])) for k in
                            ("test_accuracy", "test_balanced_accuracy", "val_balanced_accuracy")}
        summary[scaling]["test_balanced_accuracy_sd"] = float(np.std([r["test_balanced_accuracy"] for r in rows],
                                                                     ddof=1)) if len(rows) > 1 else 0.0
    a, b = np.concatenate(correct["per-band"]), np.concatenate(correct["joint"])
    only_joint, only_per_band = int((b & ~a).sum()), int((a & ~b).sum())
    p = binomtest(only_joint, only_joint + only_per_band).pvalue if only_joint + only_per_band else 1.0
    results["summary"] = summary
    results["paired_test"] = {"objects": int(len(a)), "right_only_joint": only_joint,
                              "right_only_per_band": only_per_band, "mcnemar_exact_p": float(p)}
    for scaling, s in summary.items():
        print(f"{scaling:8s}: test accuracy {s['test_accuracy']:.3f}, balanced {s['test_balanced_accuracy']:.3f} "
              f"± {s['test_balanced_accuracy_sd']:.3f} (mean ± sd over {args.seeds} split seeds)")
    print(f"paired over {len(a)} test objects: right only with joint {only_joint}, only with per-band "
          f"{only_per_band}; exact McNemar p = {p:.3g}")
    print(f"saved {save('sky_scaling_cpu', results)}")


if __name__ == "__main__":
    main()
