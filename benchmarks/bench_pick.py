"""The backbone picker's epoch estimate against the epochs a run then trains, in one invocation.

    python benchmarks/bench_pick.py [--set aries_star_galaxy] [--epochs 3]

``--recipe modern`` with a budget and no model times a few training steps of each candidate backbone and keeps
the largest whose epoch leaves room for enough fine-tuning epochs (``training/pick.py``). Here, for
efficientnet_lite0 with its packaged ImageNet weights on a real set: the estimate as the picker computes it
(the run's fine-tuning optimiser, memory format, 1x1 convolutions as matrix products, autocast), the same few
steps timed as a plain PyTorch loop would run them (AdamW, contiguous tensors, no fast path: how the picker
timed before), and the fine-tuning epochs of a real `astroclass train --recipe modern` run of the same set
(their training and validation, as ``history.csv`` records them). A ratio near 1 means the picker sizes
candidates as training will run them; above 1, it passes over backbones that would have fitted.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, save, src_env


def plain_estimate(dataset: Path, steps: int = 3) -> float:
    """The few steps timed as a plain loop: AdamW over every parameter, contiguous batches, fp32."""
    import torch

    from astroclass.data.prepared import PreparedDataset
    from astroclass.models import build_model
    from astroclass.training.pick import VAL_SHARE

    with PreparedDataset(dataset) as ds:
        n, c, s, k = len(ds.indices("train")), ds.channels, ds.image_shape[-1], len(ds.class_names)
    net = build_model("efficientnet_lite0", k, c, s, "avg", "package").train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    x, y = torch.randn(32, c, s, s), torch.randint(0, k, (32,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return -(-n // 32) * (time.perf_counter() - t0) / steps * (1 + VAL_SHARE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="aries_star_galaxy", help="a folder of ../shared/data with a labels.csv")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the real run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/astroclass-bench-pick"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / f"{args.set}.h5"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "astroclass", "data", "import", "catalog",
                        str(DATA / args.set / "labels.csv"), "-o", str(data)], check=True, env=src_env(),
                       stdout=subprocess.DEVNULL)
    from astroclass.training.pick import epoch_seconds

    options = {"dataset": str(data), "recipe": "modern"}
    picker = [epoch_seconds("efficientnet_lite0", "package", options) for _ in range(3)]
    plain = [plain_estimate(data) for _ in range(3)]
    out = args.work / "run"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    subprocess.run([sys.executable, "-m", "astroclass", "train", str(data), "--recipe", "modern", "--model",
                    "efficientnet_lite0", "--weights", "package", "--epochs", str(args.epochs), "--patience",
                    str(args.epochs), "-q", "-o", str(out)], check=True, env=src_env())
    with open(out / "history.csv") as fh:
        measured = [float(r["seconds"]) for r in csv.DictReader(fh) if r["phase"] == "finetune"]
    real = statistics.median(measured)
    row = {"set": args.set, "picker_estimates_s": [round(v, 2) for v in picker],
           "plain_estimates_s": [round(v, 2) for v in plain], "finetune_epochs_s": measured,
           "picker_over_real": round(statistics.median(picker) / real, 2),
           "plain_over_real": round(statistics.median(plain) / real, 2)}
    print(f"{args.set}: fine-tuning epoch {real:.1f} s (median of {len(measured)}); the picker's estimate "
          f"{statistics.median(picker):.1f} s ({row['picker_over_real']:.2f}x), timed as a plain loop "
          f"{statistics.median(plain):.1f} s ({row['plain_over_real']:.2f}x)")
    print(f"saved {save(f'pick_{args.set}', row)}")


if __name__ == "__main__":
    main()
