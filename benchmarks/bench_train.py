"""Training and inference throughput per backbone: the naive path vs astroclass's fast path, same run.

naive: a conventional torch ``Dataset`` that decodes and resizes the JPEG files each epoch, a
``DataLoader`` (batch 32), fp32, NCHW, eager.
fast: astroclass's default fast path on this device (``RunConfig().speed(device)``): the prepared split
held in memory as uint8 (on the GPU when there is one), batches gathered by index, channels-last, fused
Adam; bf16 autocast on CUDA and on CPUs with AMX; on CPU 1x1 convolutions as matrix products; on CUDA
each training step one CUDA graph (``compile: step-graph``). Training batch still 32 (same semantics),
inference batch 256.
"fast fp32" is the same with ``amp="off"`` (and no compile), for CPUs without bf16 units.

Also prints a projection of the paper's 600-run grid wall time from the measured fast-path
throughput and the paper's epochs to convergence (Table 7), and, on a GPU, packed (k concurrent
runs) vs single aggregate throughput. Results: benchmarks/results/train_<device>.json.

Usage: python benchmarks/bench_train.py [--models vgg16,densenet121] [--steps 6] [--pack 4]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.models import PAPER_MODELS, build_model, matmul_1x1  # noqa: E402
from astroclass.training import RunConfig, make_optimizer  # noqa: E402
from astroclass.training.speed import STEP_GRAPH, StepGraph  # noqa: E402
from common import DATA, PAPER_NAMES, projection, save  # noqa: E402


class JpegDataset(torch.utils.data.Dataset):
    """The conventional baseline: decode and resize every file on every access."""

    def __init__(self, root: Path, rows: list[dict]):
        self.root, self.rows = root, rows
        self.classes = sorted({r["label"] for r in rows})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from PIL import Image

        r = self.rows[i]
        with Image.open(self.root / r["path"]) as im:
            arr = np.asarray(im.convert("RGB").resize((76, 76), Image.Resampling.LANCZOS), dtype=np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1), self.classes.index(r["label"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_s(step: Callable[[], int], steps: int, device: torch.device, warm: int = 1) -> float:
    """Call ``step`` (it returns its batch size) ``warm`` times untimed, then ``steps`` times timed."""
    for _ in range(warm):
        step()
    sync(device)
    t0 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    sync(device)
    return n / (time.perf_counter() - t0)


def naive_train(model, loader, device, steps: int) -> float:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    it = iter(loader)

    def step() -> int:
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(x)

    return images_per_s(step, steps, device)


def speed_options(device: torch.device, amp: str = "auto") -> dict:
    """The fast path's options on ``device``, exactly as a training run resolves them."""
    return RunConfig(dataset="-", amp=amp, compile="auto" if amp == "auto" else "off").speed(device)


def fast_model(model, speed: dict):
    model = model.to(memory_format=torch.channels_last)
    if speed["matmul_1x1"]:
        matmul_1x1(model)
    return model


def fast_train(model, x_all, y_all, device, steps: int, speed: dict, batch: int = 32) -> float:
    """Adam steps at batch 32 as the run's speed options take them: eager, under torch.compile, or (``step-graph``)
    each step one CUDA graph replayed on static inputs, as astroclass's training loop does."""
    model = fast_model(model, speed).train()
    amp, compile_mode = speed["amp"] is not None, speed["compile"]
    graph = compile_mode == STEP_GRAPH
    fwd = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode and not graph else model
    opt = make_optimizer("adam", model.parameters(), lr=1e-4, fused=speed["fused_optimizer"],
                         capturable=graph and device.type == "cuda")
    gen = torch.Generator().manual_seed(0)

    def train_step(x: torch.Tensor, y: torch.Tensor, graphed: bool = False) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=not graphed):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=not graph)  # a graph's gradients are zeroed in place
        loss.backward()
        opt.step()

    run_step = StepGraph(train_step, device) if graph else train_step

    def step() -> int:
        idx = torch.randint(0, len(x_all), (batch,), generator=gen).to(x_all.device)
        x = x_all[idx].to(device, non_blocking=True).float().div_(255).contiguous(memory_format=torch.channels_last)
        y = y_all[idx].to(device, non_blocking=True)
        run_step(x, y)
        return batch

    return images_per_s(step, steps, device, warm=3 if compile_mode else 1)


@torch.inference_mode()
def naive_infer(model, loader, device, batches: int) -> float:
    model.eval()
    it = iter(loader)

    def step() -> int:
        x, _ = next(it)
        model(x.to(device))
        return len(x)

    return images_per_s(step, batches, device)


@torch.inference_mode()
def fast_infer(model, x_all, device, images: int, speed: dict, batch: int = 256) -> float:
    model = fast_model(model, speed).eval()
    amp = speed["amp"] is not None
    start = iter(range(0, images + batch, batch))

    def step() -> int:
        i = next(start)
        x = x_all[i % len(x_all):][:batch].to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        return len(x)

    return images_per_s(step, -(-images // batch), device)


def _packed_worker(args):
    name, steps, seed = args
    device = torch.device("cuda")
    torch.manual_seed(seed)
    x = torch.randint(0, 255, (2048, 3, 76, 76), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (2048,), device=device)
    m = build_model(name, 2).to(device)
    return fast_train(m, x, y, device, steps, {**speed_options(device), "compile": None})


def packed(name: str, k: int, steps: int) -> float:
    """Aggregate images/s of k concurrent training processes on one GPU."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(k) as pool:
        rates = pool.map(_packed_worker, [(name, steps, s) for s in range(k)])
    return float(sum(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pack", type=int, default=4, help="runs packed per GPU for the packing measurement")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = DATA / "gz1_sdss"
    if not root.exists():
        sys.exit(f"{root} not found: the benchmark needs ../shared/data")
    with open(root / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))[:4096]
    ds = JpegDataset(root, rows)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=0)
    x_all = torch.stack([(ds[i][0] * 255).round().to(torch.uint8) for i in range(min(len(ds), 512))])
    k = len(ds.classes)
    y_all = torch.tensor([ds.classes.index(rows[i]["label"]) for i in range(len(x_all))])
    if device.type == "cuda":
        x_all, y_all = x_all.to(device), y_all.to(device)
    gpu = device.type == "cuda"
    speed, speed32 = speed_options(device), speed_options(device, "off")
    results: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if gpu else None,
                     "fast_path": {**speed, "amp": str(speed["amp"]) if speed["amp"] else None}, "models": {}}
    print(f"device: {results['gpu'] or f'CPU, {torch.get_num_threads()} threads'}; fast path: {results['fast_path']}")
    print(f"{'model':22s} {'train naive':>11s} {'train fast':>10s} {'ratio':>6s} {'infer naive':>11s} "
          f"{'infer fast':>10s} {'ratio':>6s}  (images/s)")
    for name in args.models.split(","):
        torch.manual_seed(0)
        m = build_model(name, k).to(device)
        tn = naive_train(m, loader, device, args.steps)
        m = build_model(name, k).to(device)
        tf = fast_train(m, x_all, y_all, device, args.steps, speed)
        m = build_model(name, k).to(device)
        inn = naive_infer(m, loader, device, args.steps)
        images = 32 * args.steps * (8 if gpu else 2)
        inf = fast_infer(m, x_all, device, images, speed)
        row = {"train_naive": tn, "train_fast": tf, "train_ratio": tf / tn, "infer_naive": inn, "infer_fast": inf,
               "infer_ratio": inf / inn}
        if speed["amp"] is not None:  # the fp32 fast path too, for hardware without bf16 units
            row["train_fast_fp32"] = fast_train(build_model(name, k).to(device), x_all, y_all, device, args.steps,
                                                speed32)
            row["infer_fast_fp32"] = fast_infer(build_model(name, k).to(device), x_all, device, images, speed32)
        if gpu and args.pack > 1:
            single = packed(name, 1, args.steps * 4)
            row["packed_single"], row["pack"] = single, args.pack
            row["packed_k"] = packed(name, args.pack, args.steps * 4)
        results["models"][name] = row
        print(f"{name:22s} {tn:11.1f} {tf:10.1f} {tf / tn:5.2f}x {inn:11.1f} {inf:10.1f} {inf / inn:5.2f}x"
              + (f"  fp32: train {row['train_fast_fp32']:.1f} ({row['train_fast_fp32'] / tn:.2f}x), inference "
                 f"{row['infer_fast_fp32']:.1f} ({row['infer_fast_fp32'] / inn:.2f}x)"
                 if "infer_fast_fp32" in row else "")
              + (f"  packed x{args.pack}: {row['packed_k']:.0f} vs {row['packed_single']:.0f} "
                 f"({row['packed_k'] / row['packed_single']:.2f}x)" if "packed_k" in row else ""), flush=True)
    paper = {m: r["train_fast"] for m, r in results["models"].items() if m in PAPER_NAMES}
    naive = {m: r["train_naive"] for m, r in results["models"].items() if m in PAPER_NAMES}
    if len(paper) == 5:
        fast_h, naive_h = projection(paper), projection(naive)
        results["projection_hours"] = {"fast": sum(fast_h.values()), "naive": sum(naive_h.values()),
                                       "fast_per_model": fast_h, "naive_per_model": naive_h}
        print(f"projected paper grid (600 runs, one run at a time): fast {sum(fast_h.values()):.1f} h, "
              f"naive {sum(naive_h.values()):.1f} h")
        packed_rates = {m: r["packed_k"] for m, r in results["models"].items() if m in PAPER_NAMES and "packed_k" in r}
        if len(packed_rates) == 5:  # k runs at a time: the grid's images at the packed aggregate rate
            packed_h = projection(packed_rates)
            results["projection_hours"]["packed"] = sum(packed_h.values())
            results["projection_hours"]["packed_per_model"] = packed_h
            print(f"projected paper grid, {args.pack} runs packed per GPU: {sum(packed_h.values()):.1f} h")
    tag = "gpu" if gpu else "cpu"
    print(f"saved {save(f'train_{tag}', results)}")


if __name__ == "__main__":
    main()
