"""A budget kept whatever the load: the same `astroclass train --recipe modern --budget` run on a quiet machine and
with CPU hogs (busy-loop processes) running for the first part of it, in one invocation.

    python benchmarks/bench_budget_load.py --budget 5m --hogs 2 --hog-seconds 120

Prints, for each: wall time against the budget, epochs trained (fine-tuning), test accuracy and balanced
accuracy on ARIES's test split (images the run never trains or chooses on). A kept budget ends within it plus
one epoch, under load too; a run whose load went away re-plans its epochs up and trains on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, save, src_env


def hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def run(data: Path, out: Path, budget: str, hogs: int, hog_seconds: float) -> dict:
    procs = [multiprocessing.Process(target=hog, args=(hog_seconds,)) for _ in range(hogs)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "astroclass", "train", str(data), "--recipe", "modern", "--budget", budget,
                    "-q", "-o", str(out)], check=True, env=src_env())
    wall = time.perf_counter() - t0
    for p in procs:
        p.terminate()
        p.join()
    res = json.loads((out / "result.json").read_text())
    epochs = [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]]
    return {"hogs": hogs, "wall_seconds": round(wall, 1), "finetune_epochs": epochs.count("finetune"),
            "head_epochs": epochs.count("head"), "test_accuracy": res["test"]["accuracy"],
            "test_balanced_accuracy": res["test"]["balanced_accuracy"],
            "budget_seconds_used": res["environment"].get("budget", {}).get("seconds_used"),
            "first_epoch_seconds": res["environment"].get("budget", {}).get("first_epoch_seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--hog-seconds", type=float, default=120.0, help="how long the hogs run from the start")
    ap.add_argument("--work", type=Path, default=Path("/tmp/astroclass-bench-budget"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "aries.h5"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "astroclass", "data", "import", "catalog",
                        str(DATA / "aries_star_galaxy" / "labels.csv"), "-o", str(data)], check=True, env=src_env(),
                       stdout=subprocess.DEVNULL)
    from astroclass.runconfig import parse_duration

    budget = parse_duration(args.budget)
    rows = []
    for name, hogs in (("quiet", 0), ("loaded", args.hogs)):
        out = args.work / name
        if out.exists():
            import shutil

            shutil.rmtree(out)
        r = run(data, out, args.budget, hogs, args.hog_seconds)
        rows.append({"run": name, **r})
        print(f"{name:7s} ({hogs} hogs for the first {args.hog_seconds:.0f} s): wall {r['wall_seconds']:.0f} s of a "
              f"{budget:.0f} s budget, {r['head_epochs']} head + {r['finetune_epochs']} fine-tuning epochs, test "
              f"accuracy {r['test_accuracy']:.4f}, balanced {r['test_balanced_accuracy']:.4f}", flush=True)
    quiet, loaded = rows
    print(f"loaded - quiet: wall {loaded['wall_seconds'] - quiet['wall_seconds']:+.0f} s, test accuracy "
          f"{100 * (loaded['test_accuracy'] - quiet['test_accuracy']):+.1f} points, balanced "
          f"{100 * (loaded['test_balanced_accuracy'] - quiet['test_balanced_accuracy']):+.1f} points")
    name = f"budget_load_hogs{args.hog_seconds:.0f}s"
    print(f"saved {save(name, {'budget': args.budget, 'hog_seconds': args.hog_seconds, 'runs': rows})}")


if __name__ == "__main__":
    main()
