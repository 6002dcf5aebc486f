"""Beyond memory: import N synthetic 76x76x3 JPEG cutouts, then train one epoch from memory and from disk.

1. Writes N JPEGs of two classes (round and elongated noisy blobs, numpy + Pillow; fast, not GalSim)
   as an ImageFolder tree, unless it is already there.
2. Imports them with `astroclass data import folder` in a child process.
3. Trains one epoch of a small model (timm's test_resnet by default) twice in child processes: with the
   default memory budget (the images in memory) and with `--max-memory 256MB` (streamed from the file);
   then once on 2,000 of the images, which shows what the process takes with next to no data (Python,
   torch, timm, the model's training and evaluation).

For each child the benchmark samples, every 50 ms, the memory of the child and all its descendants (the
decoding workers) and prints the peak of their summed RSS (shared pages counted in every process that
maps them: an upper bound) and of their summed PSS (shared pages split between the processes: what they
take together). Printed too: import images/s, and training images/s of both paths and their ratio.

The tree and the prepared file go to --folder (default: a temporary folder beside the repository, on the
same disk); N = 100,000 needs about 2.5 GB there (JPEGs, the file, and the import's scratch file while it
runs). `--n 1000000` is for a bigger disk.
Usage: python benchmarks/bench_scale.py [--n 100000] [--model test_resnet] [--budget 256MB] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, save  # noqa: E402

SIZE = 76


def _write_images(job: tuple[Path, int, int]) -> None:
    """Images start..stop-1: even ones round blobs (class round), odd ones elongated (class elongated)."""
    from PIL import Image

    root, start, stop = job
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32) - (SIZE - 1) / 2
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        label = "round" if i % 2 == 0 else "elongated"
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * xx + s * yy, -s * xx + c * yy
        width = rng.uniform(4, 9)
        axis = 1.0 if label == "round" else rng.uniform(0.3, 0.6)
        blob = np.exp(-0.5 * ((u / width) ** 2 + (v / (width * axis)) ** 2))
        colour = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        img = blob[..., None] * colour * 200 + rng.normal(20, 12, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / label / f"{i:07d}.jpg", quality=90)


def make_tree(root: Path, n: int) -> float:
    """The ImageFolder tree of n JPEGs (kept between runs of the benchmark); returns images/s written."""
    done = root / f".complete-{n}"
    if done.exists():
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for label in ("round", "elongated"):
        (root / label).mkdir(parents=True)
    step = 2000
    t0 = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_images, [(root, i, min(n, i + step)) for i in range(0, n, step)])
    done.touch()
    return n / (time.perf_counter() - t0)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    pids += _tree(int(child))
    except OSError:
        pass
    return pids


PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    """Resident bytes of one process (cheap to read), 0 when it has gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size of one process (shared pages split between their users); slower to read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:")), 0)
    except (OSError, ValueError, IndexError):
        return 0


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, int, str]:
    """Run cmd; (seconds, peak summed RSS, peak summed PSS of it and its descendants, its stdout). RSS is
    sampled every 50 ms, PSS (which costs more to read, and would slow the measured process) every 0.5 s."""
    peak = [0, 0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Event()

    def sample() -> None:
        tick = 0
        while not stop.is_set():
            pids = _tree(proc.pid)
            peak[0] = max(peak[0], sum(_rss(p) for p in pids))
            if tick % 10 == 0:
                peak[1] = max(peak[1], sum(_pss(p) for p in pids))
            tick += 1
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0, peak[0], peak[1], out


TRAIN = """
import json, sys
from astroclass.training import RunConfig, train
cfg = RunConfig(dataset=sys.argv[1], model=sys.argv[2], epochs=1, patience=1, batch_size=64, max_memory=sys.argv[3],
                seed=0)
r = train(cfg, sys.argv[4], progress=False)
print(json.dumps({"storage": r.storage, "train_images_per_s": r.train_images_per_s, "status": r.status,
                  "val_accuracy": r.val.get("accuracy"), "train_seconds": r.train_seconds}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--budget", default="256MB", help="the streamed run's --max-memory")
    ap.add_argument("--folder", type=Path, default=None, help="where the JPEGs and the dataset go")
    ap.add_argument("--keep", action="store_true", help="keep the JPEG tree for the next run")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="astroclass-scale-", dir=REPO.parent))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MPLCONFIGDIR": str(folder / "mpl")}
    try:
        tree = folder / f"jpeg-{args.n}"
        rate = make_tree(tree, args.n)
        raw_gb = args.n * 3 * SIZE * SIZE / 1e9
        print(f"{args.n} JPEGs in {tree}" + (f" (written at {rate:.0f} images/s)" if rate else " (kept from before)")
              + f"; {raw_gb:.2f} GB as uint8")
        h5 = folder / "scale.h5"
        secs, rss, pss, _ = run_measured([sys.executable, "-m", "astroclass", "data", "import", "folder", str(tree),
                                          "-o", str(h5), "--overwrite"], env)
        imp = {"seconds": secs, "images_per_s": args.n / secs, "peak_rss_gb": rss / 1e9, "peak_pss_gb": pss / 1e9,
               "file_gb": h5.stat().st_size / 1e9}
        print(f"import: {secs:.1f} s = {args.n / secs:.0f} images/s; peak memory of all processes: RSS "
              f"{rss / 1e9:.2f} GB, PSS {pss / 1e9:.2f} GB; file {imp['file_gb']:.2f} GB")
        # what a run takes with almost no data: the same model and code on 2,000 of the images, in memory
        small_tree = folder / "small"
        shutil.rmtree(small_tree, ignore_errors=True)
        for label in ("round", "elongated"):
            (small_tree / label).mkdir(parents=True)
            for p in sorted((tree / label).iterdir())[:1000]:
                (small_tree / label / p.name).symlink_to(p)
        small = folder / "small.h5"
        subprocess.run([sys.executable, "-m", "astroclass", "data", "import", "folder", str(small_tree), "-o",
                        str(small), "--overwrite"], env=env, check=True, capture_output=True)
        train_rows = {}
        for name, data, budget in (("memory", h5, "auto"), ("stream", h5, args.budget),
                                   ("baseline_2000_images", small, "auto")):
            secs, rss, pss, out = run_measured([sys.executable, "-c", TRAIN, str(data), args.model, budget,
                                                str(folder / f"run-{name}")], env)
            res = json.loads(out.strip().splitlines()[-1])
            train_rows[name] = {**res, "budget": budget, "seconds": secs, "peak_rss_gb": rss / 1e9,
                                "peak_pss_gb": pss / 1e9}
            print(f"train 1 epoch{' (2,000 images)' if data == small else ''}, max_memory {budget}: "
                  f"storage {res['storage']}, "
                  f"{res['train_images_per_s']:.0f} training images/s, val accuracy {res['val_accuracy']:.3f}; "
                  f"peak RSS {rss / 1e9:.2f} GB, PSS {pss / 1e9:.2f} GB ({secs:.0f} s with start-up and evaluation)")
        ratio = train_rows["stream"]["train_images_per_s"] / train_rows["memory"]["train_images_per_s"]
        print(f"streaming / in memory, training images/s: {ratio:.2f}x")
        path = save(f"scale_{args.n}", {"n": args.n, "model": args.model, "raw_gb": raw_gb, "import": imp,
                                        "train": train_rows, "stream_vs_memory": ratio})
        print(f"saved {path}")
    finally:
        for p in (folder / "scale.h5", folder / "small.h5", folder / "small", folder / "run-memory",
                  folder / "run-stream", folder / "run-baseline_2000_images", folder / "mpl"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
