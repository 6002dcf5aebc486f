"""Grouped regions against regrouping at every layer: one training step (forward and backward) of G fused runs of
each paper backbone in the grouped-kernel mode (the GPU path), channels-last, at 76 px (on a GPU under bf16
autocast, as training there).

With regions, a block that computes per image and per channel only (VGG's features, ResNet blocks, DenseNet
layers, conv-norm-act blocks) regroups its input and output once; without, every convolution and batch norm
regroups its own input and output (two copies of the activations each way, forward and backward). Both models
are built from the same weights and stepped in turn in one process; the step's copy operations (``aten::copy_``
calls, counted by ``torch.profiler``) and its median wall time are reported. On a GPU those copies are memory-
bound kernels of their own; on this CPU they compete with much slower convolutions, so the time ratio here
understates what they cost a GPU step.

Usage: python benchmarks/bench_regions.py [--runs 12] [--batch 2] [--repeats 3] [--models vgg16,densenet121]
Results: benchmarks/results/regions_cpu.json (regions_gpu.json on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER_NAMES, run_states, save  # noqa: E402


def train_step(net, x, y, masks, weights) -> None:
    """One forward and backward pass of every run (the optimiser's step is the same with or without regions)."""
    import torch

    from astroclass.training.method import run_losses

    net.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):  # as training on a GPU does
        logits = net(x, masks)
    run_losses(logits, y, weights).sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2, help="images per run per step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(PAPER_NAMES))
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from astroclass.training.fusion import fuse, regions

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    g, b = args.runs, args.batch
    out: dict[str, dict] = {}
    print(f"{g} fused runs x {b} images, grouped kernels, channels-last, {dev}")
    print(f"{'model':22s} {'regions':>7s} {'copies/step':>18s} {'step s':>17s} {'ratio':>6s}")
    for name in args.models.split(","):
        states, template = run_states(name, g, dev)
        nets = {way: fuse(template, states, grouped=True, grouped_regions=way == "regions").train()
                for way in ("regions", "per_layer")}
        torch.manual_seed(0)
        x = torch.rand(g * b, 3, 76, 76, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (g * b,), device=dev)
        masks = torch.ones(g * b, 2048, device=dev)
        w = torch.ones(g, 2, device=dev)

        step = functools.partial(train_step, x=x, y=y, masks=masks, weights=w)
        copies = {}
        for way, net in nets.items():
            step(net)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(net)
            copies[way] = sum(1 for e in prof.events() if e.name == "aten::copy_")
        seconds: dict[str, list[float]] = {way: [] for way in nets}
        for _ in range(args.repeats):
            for way, net in nets.items():
                t = time.perf_counter()
                step(net)
                seconds[way].append(time.perf_counter() - t)
        med = {way: statistics.median(v) for way, v in seconds.items()}
        ratio = med["per_layer"] / med["regions"]
        out[name] = {"regions": len(regions(nets["regions"])), "copies_per_step": copies,
                     "step_seconds": {k: round(v, 4) for k, v in med.items()}, "ratio": round(ratio, 3)}
        print(f"{name:22s} {out[name]['regions']:7d} {copies['regions']:8d} vs {copies['per_layer']:6d} "
              f"{med['regions']:7.3f} vs {med['per_layer']:6.3f} {ratio:5.2f}x", flush=True)
        del nets, template, states
    path = save("regions_gpu" if dev.type == "cuda" else "regions_cpu",
                {"runs": g, "batch": b, "repeats": args.repeats, "models": out})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
