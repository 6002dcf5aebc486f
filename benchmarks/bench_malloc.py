"""glibc's default malloc vs :func:`astroclass.training.keep_freed_memory` (freed memory kept for reuse), on CPU.

By default glibc gives each block over 128 KiB-32 MiB a mapping of its own and returns it to the system on
``free``; PyTorch's CPU allocator keeps no cache, so every large temporary is mapped and page-faulted afresh.
Each measurement runs in a fresh process, once with ``ASTROCLASS_KEEP_FREED_MEMORY=0`` (glibc's default) and once
without (kept), alternating, ``--repeats`` times; medians:

* a 100 MB temporary (``x * 2`` on 25 M floats), 20 times: ms and minor page faults each;
* training on an ARIES slice (evenly spaced through the catalogue, 32 px): test_resnet alone, and a fused 24-run
  cell (the paper's 12 settings × 2 seeds, as ``bench_grid.py``'s cell); steady train images/s over epochs ≥ 2;
* VGG16 alone at 76 px (the paper's size: a batch's first activations are 47 MB), steady train images/s.

Usage: python benchmarks/bench_malloc.py [--repeats 2] [--skip-vgg16]
Results: benchmarks/results/malloc_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, save  # noqa: E402

WAYS = {"glibc default": "0", "kept": "1"}


def temporary() -> dict:
    import resource

    import torch

    from astroclass.training import keep_freed_memory

    kept = keep_freed_memory()
    x = torch.randn(25_000_000)
    (x * 2.0).sum()  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(20):
        y = x * 2.0
        del y
    seconds = (time.perf_counter() - t0) / 20
    return {"kept": kept, "ms": seconds * 1000, "page_faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                                                                - faults) / 20}


def training(data: str, model: str, runs: int, epochs: int) -> dict:
    from astroclass.training import RunConfig, train_group

    grid = itertools.product(["rmsprop", "adam", "radam"], [0.0, 0.1], [0.0, 2.0], [0, 1])
    configs = [RunConfig(dataset=data, model=model, optimizer=o, l2=l2, maxnorm=mn, seed=s, epochs=epochs,
                         patience=epochs) for o, l2, mn, s in grid][:runs]
    with tempfile.TemporaryDirectory(prefix="astroclass-bench-malloc-") as tmp:
        outs = [Path(tmp) / f"r{i}" for i in range(len(configs))]
        results = train_group(configs, outs, progress=False)
        rows = [r for r in csv.DictReader(open(outs[0] / "history.csv")) if int(r["epoch"]) >= 2]
    seconds = sum(float(r["seconds"]) for r in rows)
    images = sum(results[0].train_counts.values()) * len(rows) * runs  # every run trains on every image each epoch
    return {"kept": results[0].environment["speed"]["keep_freed_memory"], "images_per_s": images / seconds}


def child(argv: list[str]) -> None:
    kind = argv[0]
    out = temporary() if kind == "temporary" else training(argv[1], argv[2], int(argv[3]), int(argv[4]))
    print("RESULT " + json.dumps(out), flush=True)


def measure(args: list[str], way: str) -> dict:
    env = {**os.environ, "ASTROCLASS_KEEP_FREED_MEMORY": WAYS[way], "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{' '.join(args)} ({way}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-vgg16", action="store_true")
    args = ap.parse_args()
    from bench_grid import aries_subset

    out: dict = {"repeats": args.repeats, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="astroclass-bench-malloc-") as tmp:
        small = str(aries_subset(Path(tmp), 600, 32))
        workloads = {"100 MB temporary": ["temporary"],
                     "test_resnet alone, 32 px": ["train", small, "test_resnet", "1", "3"],
                     "test_resnet fused 24-run cell, 32 px": ["train", small, "test_resnet", "24", "3"]}
        if not args.skip_vgg16:
            workloads["vgg16 alone, 76 px"] = ["train", str(aries_subset(Path(tmp), 200, 76)), "vgg16", "1", "2"]
        for name, wl in workloads.items():
            got: dict[str, list[dict]] = {way: [] for way in WAYS}
            for _ in range(args.repeats):
                for way in WAYS:
                    got[way].append(measure(wl, way))
            if not all(r["kept"] == (way == "kept") for way in WAYS for r in got[way]):
                sys.exit(f"{name}: keep_freed_memory did not apply as asked: {got}")
            row = {way: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "kept"}
                   for way, rs in got.items()}
            key = "ms" if wl[0] == "temporary" else "images_per_s"
            row["speed-up"] = (row["glibc default"][key] / row["kept"][key] if key == "ms" else
                               row["kept"][key] / row["glibc default"][key])
            out["workloads"][name] = row
            extra = (f", page faults {row['glibc default']['page_faults']:.0f} vs {row['kept']['page_faults']:.0f}"
                     if key == "ms" else "")
            print(f"{name:40s} {key}: default {row['glibc default'][key]:9.1f}, kept {row['kept'][key]:9.1f} "
                  f"({row['speed-up']:.2f}x){extra}", flush=True)
    cell, alone = (out["workloads"].get(f"test_resnet {k}, 32 px") for k in ("fused 24-run cell", "alone"))
    if cell and alone:
        out["cell24_ratio"] = {way: cell[way]["images_per_s"] / alone[way]["images_per_s"] for way in WAYS}
        print("fused 24-run cell vs one RMSprop run alone: " + ", ".join(f"{way} {r:.2f}x"
                                                                for way, r in out["cell24_ratio"].items()))
    print(f"saved {save('malloc_cpu', out)}")


if __name__ == "__main__":
    main()
