"""Throughput of `astroclass predict` against the model alone, measured in one run on this machine:

1. files: efficientnet_lite0 fine-tuned briefly on the real ARIES cutouts; the model alone (batch 256, images
   already in memory) vs `predict` on the 3388 JPEG files (default settings, and with --workers 2);
2. the sky: efficientnet_lite0 trained briefly on cut-outs of a synthetic 3-band mosaic (4 tiles of
   2048x2048, TAN WCSs); the model alone vs `predict --catalog` straight from the FITS tiles, with 1,000 and
   100,000 objects, each in its own process, whose peak memory is read at its end.

Each prediction runs in a fresh process; its rate is given end to end (from loading the model: reading the
catalogue or listing the files, placing the catalogue on the tiles, reading, cutting, classifying, writing the
table) and for its parts alone (what `predict` prints: reading and classifying). The model alone is measured
just before and just after each prediction (this machine is shared: the ratio is to their mean). Usage:
python benchmarks/bench_predict.py [--big 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, import_real, save, sky_mosaic, src_env  # noqa: E402


def model_alone(checkpoint: Path, x) -> float:
    """Images/s of the model on images already in memory, batch 256 (the second of two passes)."""
    from astroclass.predict import load

    clf = load(checkpoint, "cpu")
    clf.predict_tensor(x[:256])
    t0 = time.perf_counter()
    clf.predict_tensor(x, batch_size=256)
    return len(x) / (time.perf_counter() - t0)


def child(args: list[str]) -> None:
    """Run one prediction in this process and print its result and peak memory as JSON."""
    from astroclass.classify import files_job, run_job, sky_job
    from astroclass.predict import load

    kind, checkpoint, out = args[0], args[1], args[2]
    t0 = time.perf_counter()
    clf = load(checkpoint, "cpu")
    if kind == "sky":
        catalog, patterns = args[3], json.loads(args[4])
        job = sky_job(clf, catalog, {b: [p] for b, p in patterns.items()})
    else:
        job = files_job(clf, [args[3]])
    workers = int(args[5]) if len(args) > 5 else None
    res = run_job(clf, job, out, progress=False, workers=workers)
    wall = time.perf_counter() - t0
    print(json.dumps({"objects": res["ok"] + res["failed"], "ok": res["ok"], "wall_s": wall,
                      "objects_per_s": (res["ok"] + res["failed"]) / wall, "parts_objects_per_s": res["images_per_s"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(measure, *args: str) -> dict:
    """One prediction in a fresh process, between two measurements of the model alone (``measure()``), with its
    ratios to their mean."""
    before = measure()
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env=src_env())
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    after = measure()
    mean = (before + after) / 2
    result.update(model_alone_before=before, model_alone_after=after, ratio=result["objects_per_s"] / mean,
                  parts_ratio=result["parts_objects_per_s"] / mean)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--big", type=int, default=100_000, help="objects of the large sky case")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from astroclass.data import PreparedDataset
    from astroclass.data.sky import import_sky
    from astroclass.training import RunConfig, train

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. files
        h5 = import_real("aries_star_galaxy", tmp)
        train(RunConfig(dataset=str(h5), model="efficientnet_lite0", setup="pretrained", weights="package",
                        head_epochs=1, epochs=1), tmp / "files_run", progress=False)
        with PreparedDataset(h5) as ds:
            x = ds.images()
        import torch

        files_ck = tmp / "files_run" / "checkpoint.pt"
        xt = torch.from_numpy(x)

        def files_alone() -> float:
            return model_alone(files_ck, xt)

        cat = str(DATA / "aries_star_galaxy" / "labels.csv")
        default = run_child(files_alone, "files", str(files_ck), str(tmp / "f1.csv"), cat)
        pool = run_child(files_alone, "files", str(files_ck), str(tmp / "f2.csv"), cat, "{}", "1")
        results["files"] = {"predict_default": default, "predict_in_process": pool}
        for name, r in (("default (a process per core, taking turns with the model)", default),
                        ("--workers 1 (read in the model's process)", pool)):
            print(f"files ({len(x)} ARIES JPEGs), {name}: {r['objects_per_s']:.0f}/s end to end "
                  f"({r['ratio']:.2f}x the model alone, {r['model_alone_before']:.0f}-{r['model_alone_after']:.0f}/s), "
                  f"parts {r['parts_objects_per_s']:.0f}/s ({r['parts_ratio']:.2f}x)", flush=True)
        # 2. the sky
        train_cat, train_bands = sky_mosaic(tmp / "train_sky", 1500, seed=1)
        sky_h5 = tmp / "sky.h5"
        import_sky(train_cat, sky_h5, bands={b: [p] for b, p in train_bands.items()}, show_progress=False)
        train(RunConfig(dataset=str(sky_h5), model="efficientnet_lite0", setup="scratch", epochs=1),
              tmp / "sky_run", progress=False)
        with PreparedDataset(sky_h5) as ds:
            xs = torch.from_numpy(ds.images())
        sky_ck = tmp / "sky_run" / "checkpoint.pt"
        xs2 = torch.cat([xs] * 2)

        def sky_alone() -> float:
            return model_alone(sky_ck, xs2)

        results["sky"] = {}
        for n in (1000, args.big):
            cat_n, bands_n = sky_mosaic(tmp / f"sky_{n}", n, seed=2)
            r = run_child(sky_alone, "sky", str(sky_ck), str(tmp / f"s{n}.fits"), str(cat_n), json.dumps(bands_n))
            results["sky"][str(n)] = r
            print(f"sky, {n} objects on 4 tiles x 3 bands: {r['objects_per_s']:.0f}/s end to end ({r['ratio']:.2f}x "
                  f"the model alone, {r['model_alone_before']:.0f}-{r['model_alone_after']:.0f}/s); parts "
                  f"{r['parts_objects_per_s']:.0f}/s ({r['parts_ratio']:.2f}x); peak memory {r['peak_rss_mb']:.0f} MB",
                  flush=True)
            for f in (tmp / f"sky_{n}").glob("*.fits"):
                f.unlink()
        small, big = results["sky"]["1000"]["peak_rss_mb"], results["sky"][str(args.big)]["peak_rss_mb"]
        results["sky"]["memory_ratio_big_vs_1000"] = big / small
        print(f"peak memory {args.big} vs 1000 objects: {big / small:.3f}x")
    print(f"saved {save('predict_cpu', results)}")


if __name__ == "__main__":
    main()
