"""The optimiser step of a fused group, per paper backbone: what training does (runs that share an optimiser share
one optimiser object over each run's own parameter views: one operation per run and tensor) vs one span of each
fused tensor per shared optimiser (those runs side by side: one operation per tensor for all of them).

G fused runs (default 12) train with the paper grid's three optimisers, G/3 runs each, as a grid cell's 24 runs
do, each optimiser in the training loop's configuration (fused Adam; RMSprop and RAdam have no fused kernel). Both
ways start from the same weights and gradients and take the same steps; reported per step: the operators the
step calls (``torch.profiler``; on a GPU also its kernel launches, each a fixed cost there), the median time, and
how far apart the two ways' weights are after all the steps. The update is per element either way; a run's
elements can fall in a kernel's vectorised loop in one way and in its scalar tail in the other, which rounds
differently (measured: 5e-10 on one 12-element bias of test_efficientnet after 4 steps; 0 elsewhere).

On this 2-core CPU, with freed memory kept as a training process keeps it, spans took 0.88-1.83x the time of
the views (12 runs; without it 0.46-1.50x: a span's temporaries were mapped afresh every step). The optimiser step
is a small part of a fused step there, so training keeps the views; on a GPU each operator is a kernel launch.

Usage: python benchmarks/bench_spans.py [--runs 12] [--repeats 5] [--models vgg16,densenet121]
Results: benchmarks/results/spans_cpu.json (spans_gpu.json on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER_NAMES, run_states, save  # noqa: E402

OPTIMIZERS = ("rmsprop", "adam", "radam")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=12, help="fused runs (a multiple of 3)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(PAPER_NAMES))
    args = ap.parse_args()
    if args.runs % len(OPTIMIZERS):
        sys.exit(f"--runs must be a multiple of {len(OPTIMIZERS)}")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from astroclass.training import keep_freed_memory
    from astroclass.training.fusion import Slots, fuse
    from astroclass.training.method import make_optimizer

    kept = not torch.cuda.is_available() and keep_freed_memory()  # as a training process does on a CPU

    def span(net, names: list[str], start: int, count: int) -> list:
        """Parameters ``names`` of runs start … start+count-1 as leaf views, their gradients bound likewise."""
        params, views = dict(net.named_parameters()), []
        for n in names:
            p = params[n]
            rows = p.shape[0] // g
            with torch.no_grad():
                v = p.narrow(0, start * rows, count * rows)
            v.grad = p.grad.narrow(0, start * rows, count * rows)
            views.append(v)
        return views

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g, per = args.runs, args.runs // len(OPTIMIZERS)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    out: dict[str, dict] = {}
    print(f"{g} fused runs, {per} per optimiser ({', '.join(OPTIMIZERS)}), {dev}")
    print(f"{'model':22s} {'tensors':>7s} {'operators/step':>18s} {'launches/step':>16s} {'step ms':>19s} "
          f"{'ratio':>6s} weights apart")
    for name in args.models.split(","):
        states, template = run_states(name, g, dev)
        nets = {way: fuse(template, states, grouped=dev.type == "cuda") for way in ("views", "spans")}
        del states
        names = [n for n, _ in nets["views"].named_parameters()]
        torch.manual_seed(0)
        for p in nets["views"].parameters():
            p.grad = torch.randn_like(p) * 1e-3
        for p, q in zip(nets["views"].parameters(), nets["spans"].parameters()):
            q.grad = p.grad.clone()
        optimizers = {}
        for way, net in nets.items():
            slots = Slots(net)
            groups = []
            for k, kind in enumerate(OPTIMIZERS):
                params = span(net, names, k * per, per) if way == "spans" else \
                    [p for r in range(k * per, (k + 1) * per) for p in slots.parameters(r, names)]
                groups.append(make_optimizer(kind, params, fused=True))
            slots.bind_grads(names)
            optimizers[way] = groups

        def step(groups: list) -> None:
            for opt in groups:
                opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        ops, launches = {}, {}
        for way in nets:
            step(optimizers[way])  # the first step creates the optimiser state
            with profile(activities=activities) as prof:
                step(optimizers[way])
            events = prof.events()
            ops[way] = sum(1 for e in events if e.name.startswith("aten::"))
            launches[way] = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC"))
        seconds: dict[str, list[float]] = {way: [] for way in nets}
        for _ in range(args.repeats):
            for way in nets:
                t = time.perf_counter()
                step(optimizers[way])
                seconds[way].append(time.perf_counter() - t)
        apart = max((p - q).abs().max().item() for p, q in zip(nets["views"].parameters(), nets["spans"].parameters()))
        med = {way: statistics.median(v) * 1000 for way, v in seconds.items()}
        ratio = med["views"] / med["spans"]
        out[name] = {"parameter_tensors_per_run": len(names), "operators_per_step": ops,
                     "kernel_launches_per_step": launches if dev.type == "cuda" else None,
                     "step_ms": {k: round(v, 3) for k, v in med.items()}, "ratio": round(ratio, 3),
                     "max_weight_difference": apart}
        print(f"{name:22s} {len(names):7d} {ops['views']:8d} vs {ops['spans']:6d} {launches['views']:6d} vs "
              f"{launches['spans']:6d} {med['views']:8.2f} vs {med['spans']:7.2f} {ratio:5.2f}x {apart:.1e}",
              flush=True)
        del nets, optimizers, template
    path = save("spans_gpu" if dev.type == "cuda" else "spans_cpu",
                {"runs": g, "runs_per_optimizer": per, "keep_freed_memory": kept, "optimizers": list(OPTIMIZERS),
                 "repeats": args.repeats,
                 "models": out})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
