"""Import throughput of gz1_sdss (5665 JPEGs, 212 px → 76 px): one decoding process vs all cores.

Both imports run back to back in this one process, so the ratio is meaningful on a noisy machine.
Usage: python benchmarks/bench_import.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.data import import_catalog  # noqa: E402
from common import DATA, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cat = DATA / "gz1_sdss" / "labels.csv"
    if not cat.exists():
        sys.exit(f"{cat} not found: the benchmark needs ../shared/data")
    cores = os.cpu_count() or 1
    best: dict[int, float] = {}
    decode: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, cores):
                out = Path(tmp) / f"gz1_{workers}_{r}.h5"
                t0 = time.perf_counter()
                rep = import_catalog(cat, out, id_col="sdss_objid", workers=workers, show_progress=False)
                dt = time.perf_counter() - t0
                best[workers] = max(best.get(workers, 0.0), rep.n_written / dt)
                decode[workers] = max(decode.get(workers, 0.0), rep.images_per_second)
                print(f"workers={workers}: {rep.n_written} images in {dt:.2f} s = {rep.n_written / dt:.0f} images/s "
                      f"(decoding alone {rep.images_per_second:.0f}/s)")
    ratio = best[cores] / best[1]
    print(f"\nbest of {args.repeats}: 1 worker {best[1]:.0f} images/s, {cores} workers {best[cores]:.0f} images/s, "
          f"ratio {ratio:.2f}x (decoding stage alone: {decode[cores] / decode[1]:.2f}x; checks, hashing and "
          f"the compressed write are serial)")
    path = save("import_gz1", {"images": 5665, "images_per_s": {str(k): v for k, v in best.items()}, "ratio": ratio,
                                    "decode_images_per_s": {str(k): v for k, v in decode.items()},
                                    "decode_ratio": decode[cores] / decode[1]})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
