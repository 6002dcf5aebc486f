"""torch.compile on this machine: training throughput eager vs compiled, and what the compile cache saves.

For each model and precision, three fresh processes train the fast path (in-memory batches of 32,
channels-last, 1x1 convolutions as GEMM on CPU, fused Adam) on random 76x76 images:
  eager        no compile;
  cold cache   ``--compile default`` with an empty TorchInductor cache (astroclass's ``compiled``);
  warm cache   the same again, with the cache the cold process left: what every later run of the
               same architecture on this machine pays.
Prints seconds to the first finished step (compile time) and images/s after warm-up.
Results: benchmarks/results/compile_<device>.json.

Usage: python benchmarks/bench_compile.py [--models inception_v3] [--amp off,auto] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def child(name: str, amp: str, mode: str | None, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from astroclass.models import build_model, matmul_1x1
    from astroclass.training import RunConfig, compiled, make_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    speed = RunConfig(dataset="-", amp=amp, compile=mode or "off").speed(device)
    torch.manual_seed(0)
    model = build_model(name, 2).to(device, memory_format=torch.channels_last).train()
    if speed["matmul_1x1"]:
        matmul_1x1(model)
    fwd = compiled(model, speed["compile"])
    opt = make_optimizer("adam", model.parameters(), lr=1e-4, fused=True)
    x_all = torch.randint(0, 255, (512, 3, 76, 76), dtype=torch.uint8, device=device)
    y_all = torch.randint(0, 2, (512,), device=device)

    def step() -> None:
        idx = torch.randint(0, 512, (32,), device=device)
        x = x_all[idx].float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed["amp"] is not None):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"first_step_s": first, "images_per_s": 32 * steps / (time.perf_counter() - t0),
            "amp": str(speed["amp"]) if speed["amp"] else None}


def run_child(name: str, amp: str, mode: str | None, steps: int, cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cmd = [sys.executable, __file__, "--child", name, amp, mode or "none", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, amp, mode, steps = sys.argv[2:6]
        print(json.dumps(child(name, amp, None if mode == "none" else mode, int(steps))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="inception_v3")
    ap.add_argument("--amp", default="off,auto", help="precisions to measure (astroclass --amp values)")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    results: dict = {"runs": {}}
    print(f"{'model':20s} {'amp':5s} {'eager':>8s} {'compiled':>9s} {'ratio':>6s} {'compile cold':>13s} "
          f"{'compile warm':>13s}  (images/s; seconds to the first step)")
    for name in args.models.split(","):
        for amp in args.amp.split(","):
            with tempfile.TemporaryDirectory() as cache:
                eager = run_child(name, amp, None, args.steps, cache)
                cold = run_child(name, amp, "default", args.steps, cache)
                warm = run_child(name, amp, "default", args.steps, cache)
            row = {"eager": eager, "cold_cache": cold, "warm_cache": warm,
                   "compiled_ratio": warm["images_per_s"] / eager["images_per_s"]}
            results["runs"][f"{name}/{amp}"] = row
            print(f"{name:20s} {amp:5s} {eager['images_per_s']:8.1f} {warm['images_per_s']:9.1f} "
                  f"{row['compiled_ratio']:5.2f}x {cold['first_step_s']:12.0f}s {warm['first_step_s']:12.0f}s "
                  f"(eager first step {eager['first_step_s']:.1f}s; amp {eager['amp']})", flush=True)
    import torch

    tag = "gpu" if torch.cuda.is_available() else "cpu"
    print(f"saved {save(f'compile_{tag}', results)}")


if __name__ == "__main__":
    main()
