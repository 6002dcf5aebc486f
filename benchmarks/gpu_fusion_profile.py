"""Where a fused group's time goes on a GPU: the same 12-run scratch group (λ × γ × 3 optimisers) of a paper
backbone on ARIES cutouts at 76 px (half the training split), trained by ``train_group`` in variants of the
fast path, against one run alone; then one epoch of the default variant under ``torch.profiler``: the
GPU's busy time against the wall time, and the kernels and operators that take it.

Variants: grouped kernels + channels-last, eager (the default on a GPU), the same with every layer regrouping its
own input and output (no grouped regions), the same with each training step captured as one CUDA graph
(``compile: step-graph``; its train losses are compared with the eager variant's), the same under torch.compile's
CUDA graphs (``compile: reduce-overhead``), grouped + NCHW, per-run kernels + channels-last, and one run alone,
eager, under torch.compile's CUDA graphs and as a step graph (a paper run's default on a GPU), and one run at batch
384 as a step graph (the images of a fused step as one dense batch: a bound on the fused rate).

A micro-benchmark times one convolution of each backbone's kind, forward and backward, bf16: 12 runs as one
grouped convolution (NHWC and NCHW), as 12 convolutions of batch 32, and one convolution over 12 × 32 images
(what the hardware does with a dense batch of that size).

Usage (GPU; from the repository root): PYTHONPATH=src python benchmarks/gpu_fusion_profile.py [--models vgg16]
Results: benchmarks/results/fusion_profile_<device>.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import import_real, save  # noqa: E402

FRACTION = 0.5  # of the training split: epochs of 1355 images (42 steps) keep the call short
SETTINGS = [(l2, mn, opt) for l2 in (0.0, 0.1) for mn in (0.0, 2.0) for opt in ("rmsprop", "adam", "radam")]
VARIANTS = [  # (label, what differs from 12 fused runs, grouped kernels, grouped regions, channels-last, eager)
    ("fused_grouped_nhwc", {}), ("fused_grouped_nhwc_per_layer", {"regions": False}),
    ("fused_grouped_nhwc_stepgraph", {"compile": "step-graph"}),
    ("fused_grouped_nhwc_cudagraphs", {"compile": "reduce-overhead"}),
    ("fused_grouped_nchw", {"channels_last": False}), ("fused_per_run_nhwc", {"grouped": False}),
    ("single_eager", {"runs": 1}), ("single_cudagraphs", {"runs": 1, "compile": "reduce-overhead"}),
    ("single_stepgraph", {"runs": 1, "compile": "step-graph"}),
    # one run at 12 × 32 images per step: what the chip does with a fused group's images as one dense batch, a
    # bound on the fused group's rate
    ("single_batch384_stepgraph", {"runs": 1, "compile": "step-graph", "batch_size": 384})]
CONVS = {  # (in, out, kernel, groups, pixels): one typical layer of each backbone at 76 px
    "vgg16": (128, 128, 3, 1, 38), "resnext50_32x4d": (128, 128, 3, 32, 19), "inception_v3": (64, 96, 3, 1, 17),
    "densenet121": (128, 32, 3, 1, 19), "inception_resnet_v2": (192, 192, 3, 1, 17)}


def steady_epoch_seconds(folder: Path) -> float:
    """The median seconds of epochs ≥ 2 of a run's history.csv."""
    with open(folder / "history.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) >= 2]
    return statistics.median(float(r["seconds"]) for r in rows)


def run_variant(h5: Path, model: str, runs: int, epochs: int, tmp: Path, grouped: bool = True, regions: bool = True,
                **kw) -> dict:
    from astroclass.runconfig import RunConfig
    from astroclass.training import fusion, loop, train_group

    speed = RunConfig.speed

    def patched(self, device):
        return {**speed(self, device), "grouped_kernels": grouped}

    kw = {"train_fraction": FRACTION, **kw}
    cfgs = [RunConfig(dataset=str(h5), model=model, epochs=epochs, patience=epochs, seed=i, l2=l2, maxnorm=mn,
                      optimizer=opt, **kw) for i, (l2, mn, opt) in enumerate(SETTINGS[:runs])]
    dirs = [tmp / f"{model}-{runs}-{grouped}-{regions}-{kw}-{i}" for i in range(runs)]
    RunConfig.speed = patched  # type: ignore[method-assign]
    loop.fuse = functools.partial(fusion.fuse, grouped_regions=regions)  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        results = train_group(cfgs, dirs, progress=False)
        wall = time.perf_counter() - t0
    finally:
        RunConfig.speed = speed  # type: ignore[method-assign]
        loop.fuse = fusion.fuse
    n_train = sum(results[0].train_counts.values())
    done = [d for d, r in zip(dirs, results) if r.status == "done"]
    failed = [r.error for r in results if r.status != "done"]
    sec = steady_epoch_seconds(done[0]) if done else float("nan")
    losses = [[float(h["train_loss"]) for h in csv.DictReader(open(d / "history.csv"))] for d in done]
    return {"runs": runs, "grouped": grouped, "regions": regions, **kw, "wall_s": wall, "epoch_s": sec,
            "aggregate_images_per_s": runs * n_train / sec, "failed": failed,
            "step_graph": results[0].environment["speed"].get("step_graph"), "train_losses": losses}


def profile_epoch(h5: Path, model: str, tmp: Path) -> dict:
    """One fused epoch (12 runs, default variant) under torch.profiler: busy GPU time vs wall, top kernels/ops."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from astroclass.runconfig import RunConfig
    from astroclass.training import train_group

    cfgs = [RunConfig(dataset=str(h5), model=model, epochs=1, patience=1, seed=i, l2=l2, maxnorm=mn, optimizer=opt,
                      train_fraction=FRACTION) for i, (l2, mn, opt) in enumerate(SETTINGS)]
    train_group(cfgs, [tmp / f"warm-{model}-{i}" for i in range(12)], progress=False)  # cuDNN autotuning, caches
    gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        t0 = time.perf_counter()
        train_group(cfgs, [tmp / f"prof-{model}-{i}" for i in range(12)], progress=False)
        if gpu:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA),
                     key=lambda e: -getattr(e, "self_device_time_total", 0))
    busy = sum(getattr(e, "self_device_time_total", 0) for e in kernels) / 1e6
    if not kernels:  # the kernels attributed to the operators that launched them instead
        kernels = sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))
        busy = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
    top_gpu = [(e.key[:90], e.count, getattr(e, "self_device_time_total", 0) / 1e3) for e in kernels[:18]]
    cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:18]
    top_cpu = [(e.key[:90], e.count, e.self_cpu_time_total / 1e3) for e in cpu]
    print(f"\n{model}: one fused epoch (+ set-up and evaluation) {wall:.2f} s wall, GPU busy {busy:.2f} s "
          f"({100 * busy / wall:.0f}%)", flush=True)
    print("  top GPU kernels (self time, ms):")
    for k, n, ms in top_gpu:
        print(f"    {ms:9.1f} {n:7d}  {k}")
    print("  top CPU operators (self time, ms):")
    for k, n, ms in top_cpu:
        print(f"    {ms:9.1f} {n:7d}  {k}")
    return {"wall_s": wall, "gpu_busy_s": busy, "top_gpu_ms": top_gpu, "top_cpu_ms": top_cpu}


def conv_bench(model: str) -> dict:
    """Forward + backward of one convolution, bf16, ms: 12 runs grouped (NHWC, NCHW), 12 × batch 32, one × 384."""
    import torch
    import torch.nn.functional as F

    cin, cout, k, groups, px = CONVS[model]
    g, b = 12, 32
    dev = torch.device("cuda")

    def timed(fn, reps: int = 20) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e3

    def case(batch: int, w_out: int, grp: int, calls: int, mf) -> float:
        x = torch.randn(batch, cin * grp // groups, px, px, device=dev, dtype=torch.bfloat16)
        x = x.to(memory_format=mf).requires_grad_()
        w = torch.randn(w_out, cin // groups, k, k, device=dev, dtype=torch.bfloat16).to(memory_format=mf)
        w.requires_grad_()

        def step() -> None:
            for _ in range(calls):
                x.grad = w.grad = None
                F.conv2d(x, w, None, 1, k // 2, 1, grp).float().square().mean().backward()

        return timed(step)

    out = {}
    for fmt, mf in (("nhwc", torch.channels_last), ("nchw", torch.contiguous_format)):
        out[f"grouped_{fmt}"] = case(b, g * cout, g * groups, 1, mf)
        out[f"dense_batch384_{fmt}"] = case(g * b, cout, groups, 1, mf)
        out[f"12x_batch32_{fmt}"] = case(b, cout, groups, g, mf)
    print(f"{model} conv {cin}->{cout} k{k} groups {groups} at {px} px, fwd+bwd ms: "
          + ", ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
    return out


def nan_check(h5: Path, model: str, epochs: int, tmp: Path, out: dict) -> None:
    r = run_variant(h5, model, 12, epochs, tmp)
    out["nan_check"] = {"model": model, **r}
    print(f"{model} fused 12 runs: {len(r['failed'])} failed: {r['failed']}", flush=True)
    save(out["name"], out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnext50_32x4d,vgg16")
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS), help="which of the variants, in order")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nan-check", default="inception_v3", help="a backbone whose fused 12-run group is trained "
                                                                "once to show any failed run's error ('' = none)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled epoch of the first backbone")
    ap.add_argument("--name", default="", help="results file name (default fusion_profile_gpu, or _cpu)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels for each new shape "
                    "(torch.backends.cudnn.benchmark; astroclass itself leaves it off)")
    args = ap.parse_args()
    import torch

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    known = dict(VARIANTS)
    unknown = [v for v in args.variants.split(",") if v not in known]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(known)}")
    chosen = [(v, known[v]) for v in args.variants.split(",")]
    name = args.name or "fusion_profile_" + ("gpu" if torch.cuda.is_available() else "cpu")
    out: dict = {"name": name, "cudnn_benchmark": args.cudnn_benchmark, "models": {}}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        h5 = import_real("aries_star_galaxy", tmp)
        for i, model in enumerate(args.models.split(",")):
            if i == 1 and args.nan_check:
                nan_check(h5, args.nan_check, args.epochs, tmp, out)
            row = out["models"][model] = {}
            if torch.cuda.is_available():
                row["conv"] = conv_bench(model)
            for label, kw in chosen:
                kw = {"compile": "off", **kw}
                runs = kw.pop("runs", 12)
                r = run_variant(h5, model, runs, args.epochs, tmp, **kw)
                eager = row.get("single_eager" if runs == 1 else "fused_grouped_nhwc")
                if kw.get("compile") == "step-graph" and eager and eager["train_losses"] and r["train_losses"]:
                    # the same runs, eager: equal up to bf16 and cuDNN's non-deterministic kernels
                    r["train_loss_max_rel_diff_vs_eager"] = max(
                        abs(a - b) / max(abs(b), 1e-12) for ra, rb in zip(r["train_losses"], eager["train_losses"])
                        for a, b in zip(ra, rb))
                    print(f"{model:>16} {label}: step graph {r['step_graph']}, train losses vs eager: max relative "
                          f"difference {r['train_loss_max_rel_diff_vs_eager']:.2e}", flush=True)
                row[label] = r
                print(f"{model:>16} {label:20s} epoch {r['epoch_s']:6.2f} s, {r['aggregate_images_per_s']:8.0f} "
                      f"train images/s (all runs), wall {r['wall_s']:6.1f} s"
                      + (f", FAILED: {r['failed']}" if r["failed"] else ""), flush=True)
                save(name, out)
            if torch.cuda.is_available() and i == 0 and not args.no_profile:
                row["profile"] = profile_epoch(h5, model, tmp)
                save(name, out)
    print(f"saved {save(name, out)}")


if __name__ == "__main__":
    main()
