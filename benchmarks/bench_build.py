"""Seconds to build each paper backbone with the paper's head at 76 px (random initialisation, the scratch setup): what
every run, and every run of a fused group, pays before its first step.

Two ways, interleaved in one process: ``build_model`` as it is, and the same with timm's VGG constructor left to
build (and initialise) the fc6/fc7 layers that ``build_model`` then drops, as earlier versions did. Only VGG
differs between the two; the other backbones are the control.

Usage: python benchmarks/bench_build.py [--repeats 5]
Results: benchmarks/results/build_cpu.json (build_gpu.json where a GPU is present; the build runs on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER_NAMES, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    from astroclass import models

    fast_vgg = models._vgg
    times: dict[str, dict[str, list[float]]] = {m: {"build_model": [], "with_fc6_fc7": []} for m in PAPER_NAMES}
    models.build_model("vgg16", 2)  # imports and first-call costs out of the way
    for _ in range(args.repeats):
        for m in PAPER_NAMES:
            for way in ("build_model", "with_fc6_fc7"):
                models._vgg = fast_vgg if way == "build_model" else (lambda name: False)
                torch.manual_seed(0)
                t = time.perf_counter()
                models.build_model(m, 2, input_size=76)
                times[m][way].append(time.perf_counter() - t)
    models._vgg = fast_vgg
    out = {}
    print(f"{'model':22s} {'build_model s':>14s} {'with fc6/fc7 s':>15s} {'ratio':>6s}")
    for m, t in times.items():
        a, b = statistics.median(t["build_model"]), statistics.median(t["with_fc6_fc7"])
        out[m] = {"build_model_s": round(a, 4), "with_fc6_fc7_s": round(b, 4), "ratio": round(b / a, 2)}
        print(f"{m:22s} {a:14.3f} {b:15.3f} {b / a:6.1f}x")
    gpu = torch.cuda.is_available()
    path = save("build_gpu" if gpu else "build_cpu", {"repeats": args.repeats, "median_seconds": out})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
