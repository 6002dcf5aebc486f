"""The fast path's two same-maths kernel changes, per paper backbone, measured side by side in one run:

* forward+backward of one training batch (32 images, 76x76, channels-last, fp32) with the backbone's
  1x1 convolutions as oneDNN convolutions vs as one GEMM each (``models.matmul_1x1``), with the loss
  and each one's gradient error relative to a float64 computation of the same step (train-mode batch
  norm on the small maps makes even the fp32 convolution gradient only ~1e-2 accurate at initialisation);
* one optimiser step over the model's parameters: PyTorch's multi-tensor Adam vs the fused Adam, and
  RMSprop and RAdam (no fused kernel in PyTorch) for reference.

Results: benchmarks/results/kernels_<device>.json. Usage: python benchmarks/bench_kernels.py [--models vgg16]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.models import PAPER_MODELS, build_model, matmul_1x1  # noqa: E402
from astroclass.training import make_optimizer  # noqa: E402
from common import save  # noqa: E402


def fwd_bwd_ms(model, x, y, reps: int) -> tuple[float, float]:
    """(ms per forward+backward after one untimed step, the untimed step's loss)."""
    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return float(loss.detach())

    torch.manual_seed(0)
    loss = step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - t0) / max(reps, 1) * 1000, loss


def gradient(model, x, y) -> torch.Tensor:
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm())


def optimiser_ms(params, name: str, fused: bool, reps: int) -> float:
    opt = make_optimizer(name, params, lr=1e-4, fused=fused)
    opt.step()
    t0 = time.perf_counter()
    for _ in range(reps):
        opt.step()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(32, 3, 76, 76).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (32,))
    results: dict = {"device": "cpu", "models": {}}
    print(f"{'model':20s} {'1x1s':>4s} {'conv ms':>8s} {'GEMM ms':>8s} {'ratio':>6s} {'err conv':>8s} "
          f"{'err GEMM':>8s} | "
          f"{'adam':>6s} {'fused':>6s} {'ratio':>6s} {'rmsprop':>7s} {'radam':>6s}  (ms per step)")
    for name in args.models.split(","):
        conv = build_model(name, 2).to(memory_format=torch.channels_last).train()
        mm = copy.deepcopy(conv)
        n = matmul_1x1(mm)
        t_conv, loss_conv = fwd_bwd_ms(conv, x, y, args.reps)
        t_mm, loss_mm = fwd_bwd_ms(mm, x, y, args.reps)
        # the same step (same dropout mask) in fp32 both ways and in float64 as the reference; relative L2 error
        # of the whole gradient vector (per-parameter ratios mean nothing where the exact gradient is 0)
        ref = copy.deepcopy(conv).double()
        g_conv, g_mm, g_64 = (gradient(net, x, y) for net, x in ((conv, x), (mm, x), (ref, x.double())))
        err_conv, err_mm = rel(g_conv, g_64), rel(g_mm, g_64)
        params = [p for p in conv.parameters() if p.requires_grad]
        opt = {f"{o}{'_fused' if f else ''}": optimiser_ms(params, o, f, args.reps)
               for o, f in (("adam", False), ("adam", True), ("rmsprop", False), ("radam", False))}
        row = {"matmul_1x1_count": n, "fwd_bwd_conv_ms": t_conv, "fwd_bwd_gemm_ms": t_mm,
               "loss_conv": loss_conv, "loss_gemm": loss_mm, "grad_rel_error_vs_float64": {"conv": err_conv,
                                                                                           "gemm": err_mm},
               "optimizer_step_ms": opt, "params_m": sum(p.numel() for p in params) / 1e6}
        results["models"][name] = row
        print(f"{name:20s} {n:4d} {t_conv:8.0f} {t_mm:8.0f} {t_conv / t_mm:5.2f}x {err_conv:8.1e} {err_mm:8.1e} | "
              f"{opt['adam']:6.0f} {opt['adam_fused']:6.0f} {opt['adam'] / opt['adam_fused']:5.2f}x "
              f"{opt['rmsprop']:7.0f} {opt['radam']:6.0f}", flush=True)
    print(f"saved {save('kernels_cpu', results)}")


if __name__ == "__main__":
    main()
