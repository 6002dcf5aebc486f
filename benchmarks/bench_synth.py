"""Rendering throughput of the GalSim synthetic sky (images/s, 3 bands, 76 px), per task,
one process vs all cores, measured back to back in one run.
Usage: python benchmarks/bench_synth.py [--n 240]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.data.synth import SynthConfig, synthesize  # noqa: E402
from common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=240)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in ("sg", "mg", "morph"):
            for workers in (1, cores):
                t0 = time.perf_counter()
                synthesize(SynthConfig(task=task, n=args.n, seed=0), Path(tmp) / f"{task}{workers}.h5",
                           workers=workers, show_progress=False)
                rate = args.n / (time.perf_counter() - t0)
                results[f"{task}/{workers}"] = rate
                print(f"{task:6s} workers={workers}: {rate:6.1f} images/s", flush=True)
            print(f"{task:6s} ratio {cores} workers / 1: {results[f'{task}/{cores}'] / results[f'{task}/1']:.2f}x")
    print(f"saved {save('synth_render', {'n': args.n, 'images_per_s': results})}")


if __name__ == "__main__":
    main()
