"""bf16 autocast vs fp32: does mixed precision change what a run reports? Same runs (seed, data, model,
epochs), once with `--amp bf16` and once with `--amp off`, on a real set from ../shared/data (ARIES
star/galaxy by default), for several seeds.

Printed and saved per seed: test accuracy, balanced accuracy, the epoch kept by early stopping, the share
of test images whose predicted class agrees, and training images/s; then the paired difference
bf16 − fp32 of test accuracy and balanced accuracy over seeds with its Student-t 95% interval (n − 1
degrees of freedom): an interval containing 0 means no difference measurable with these seeds.

bf16 autocast gives the same numbers on any hardware; its speed depends on it: CUDA GPUs and CPUs with AMX
compute it natively (what `--amp auto` picks), CPUs with AVX512-BF16 only have bf16 dot products, others
emulate it. The script records which the machine has.
The default fine-tunes efficientnet_lite0 from its packaged ImageNet weights (1 head epoch, then up to
`--epochs`), which reaches a useful model in a few CPU epochs; a few scratch epochs leave most runs at the
majority class, where precision differences are lost in training noise.
Usage: python benchmarks/compare_precision.py [--model efficientnet_lite0] [--setup pretrained] [--epochs 3]
       [--seeds 0 1 2] [--train-fraction 1.0] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.metrics import student_t_interval  # noqa: E402
from astroclass.training import RunConfig, auto_amp, resolve_device, train  # noqa: E402
from common import import_real, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="aries_star_galaxy", help="a set of ../shared/data with a labels.csv")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--setup", default="pretrained", choices=["scratch", "pretrained"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if len(args.seeds) < 2:
        ap.error("the paired interval needs at least 2 seeds (3 or more for a useful one)")
    device = resolve_device(args.device)
    rows, agree = [], []
    with tempfile.TemporaryDirectory() as tmp:
        h5 = import_real(args.dataset, tmp)
        for seed in args.seeds:
            preds = {}
            for amp in ("off", "bf16"):
                cfg = RunConfig(dataset=str(h5), model=args.model, setup=args.setup, head_epochs=1, seed=seed,
                                epochs=args.epochs, patience=args.patience, amp=amp,
                                train_fraction=args.train_fraction, device=args.device)
                t0 = time.perf_counter()
                out = Path(tmp) / f"{amp}-{seed}"
                r = train(cfg, out, progress=False)
                with np.load(out / "predictions.npz") as z:
                    preds[amp] = z["test_probs"].argmax(1)
                rows.append({"seed": seed, "amp": amp, "test_accuracy": r.test["accuracy"],
                             "test_balanced_accuracy": r.test["balanced_accuracy"], "val_loss_best_epoch": r.best_epoch,
                             "epochs_run": r.epochs_run, "train_images_per_s": r.train_images_per_s,
                             "seconds": time.perf_counter() - t0})
                print(f"seed {seed} {'fp32' if amp == 'off' else 'bf16'}: test acc {r.test['accuracy']:.4f}, balanced "
                      f"{r.test['balanced_accuracy']:.4f}, best epoch {r.best_epoch}/{r.epochs_run}, "
                      f"{r.train_images_per_s:.0f} train images/s", flush=True)
            agree.append(float((preds["off"] == preds["bf16"]).mean()))
            print(f"seed {seed}: the two predict the same class for {agree[-1]:.1%} of the test images", flush=True)
    by = {(r["seed"], r["amp"]): r for r in rows}
    summary = {}
    for metric in ("test_accuracy", "test_balanced_accuracy"):
        d = [by[(s, "bf16")][metric] - by[(s, "off")][metric] for s in args.seeds]
        lo, hi = student_t_interval(d)
        summary[metric] = {"mean_difference": float(np.mean(d)), "ci95": [lo, hi], "per_seed": d}
        print(f"{metric}: bf16 − fp32 = {np.mean(d):+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] over "
              f"{len(d)} seeds")
    speed = float(np.mean([by[(s, "bf16")]["train_images_per_s"] / by[(s, "off")]["train_images_per_s"]
                           for s in args.seeds]))
    auto = "bf16" if auto_amp(device) is not None else "fp32"
    flags = sorted({f for line in open("/proc/cpuinfo") for f in line.split() if f in ("amx_bf16", "avx512_bf16")}) \
        if device.type == "cpu" and Path("/proc/cpuinfo").exists() else []
    hardware = f"CPU bf16 flags: {', '.join(flags) or 'none'}" if device.type == "cpu" else str(device)
    print(f"training speed bf16 / fp32: {speed:.2f}x ({hardware}; --amp auto picks {auto} here)")
    same = sum(by[(s, "bf16")]["val_loss_best_epoch"] == by[(s, "off")]["val_loss_best_epoch"] for s in args.seeds)
    print(f"same best epoch in {same} of {len(args.seeds)} seeds; test predictions agree on {np.mean(agree):.1%} "
          f"of images on average")
    name = "precision_gpu" if device.type == "cuda" else "precision_cpu"
    payload = {"args": vars(args), "amp_auto": auto, "cpu_bf16_flags": flags, "runs": rows, "agreement": agree,
               "paired": summary, "same_best_epoch": int(same), "speed_ratio": speed}
    print(f"saved {save(name, payload)}")


if __name__ == "__main__":
    main()
