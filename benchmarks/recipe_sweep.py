"""The modern recipe's parts, each measured on validation data: the recipe, and the recipe with one part changed.

For each real set in ../shared/data (as benchmarks/accuracy.py imports it: 76 px, stratified 80/10/10 with
seed 0), every variant below trains under the same wall-clock budget and is scored on the validation split
only: its best epoch's validation accuracy and balanced accuracy. Test metrics are neither printed nor saved,
so no choice in ``RECIPES["modern"]`` can be made on the test split. One seed per (set, variant): a
difference of one or two points on a few hundred validation images is within noise; the table says how
many images each set validates on.

Usage: PYTHONPATH=src python benchmarks/recipe_sweep.py [--sets aries,gz_kaggle] [--variants base,no_ema]
       [--budget 2m] [--seed 0] [--merge]     results: benchmarks/results/recipe_sweep_<device>.json
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
from accuracy import SETS  # noqa: E402

from common import RESULTS, import_real, save  # noqa: E402

VARIANTS: dict[str, dict] = {
    "base": {},                                       # RECIPES["modern"] as it stands
    "bn_train": {"finetune_bn": "train"},             # batch norms train in phase 2
    "no_ema": {"ema": 0.0},
    "no_smoothing": {"label_smoothing": 0.0},
    "lr_1e-3": {"finetune_lr": 1e-3},
    "lr_1e-4": {"finetune_lr": 1e-4},
    "no_tta": {"tta": False},                          # cheaper epochs: more of them in the budget
    "tta_final": {"tta_each_epoch": False},           # TTA for the final metrics only (the recipe's since)
    "tta_every_epoch": {"tta_each_epoch": True},      # TTA on every epoch's validation too
    "monitor_bal": {"monitor": "balanced_accuracy"},  # best epoch by balanced accuracy, not loss
    "paper_layers": {"unfreeze": "7"},                # phase 2 trains the last 7 layers only
    "no_shift": {"augment_shift": 0.0},
    "head_1": {"head_epochs": 1},
}


def run_variant(h5: Path, classes: str | None, overrides: dict, budget: float, seed: int, folder: Path) -> dict:
    from astroclass.runconfig import RunConfig
    from astroclass.training import train

    cfg = RunConfig.from_dict({"dataset": str(h5), "classes": classes, "recipe": "modern", "seed": seed,
                               "budget": f"{budget:g}s", "epochs": 1000, **overrides})
    t0 = time.perf_counter()
    r = train(cfg, folder, progress=False)
    return {"seed": seed, "val_accuracy": r.val["accuracy"], "val_balanced_accuracy": r.val["balanced_accuracy"],
            "val_images": r.val["n"], "epochs": r.epochs_run, "best_epoch": r.best_epoch,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="aries,gz_kaggle,galaxy10,gz1")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget", default="2m", help="wall-clock budget of every run (e.g. 90s, 2m)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="results file name (default recipe_sweep_<device>)")
    ap.add_argument("--merge", action="store_true", help="add to the results file (same budget); a (set, variant) "
                                                         "run again replaces its earlier run")
    args = ap.parse_args()
    import torch

    from astroclass.runconfig import RECIPES, parse_duration

    budget = parse_duration(args.budget)
    name = args.name or f"recipe_sweep_{'gpu' if torch.cuda.is_available() else 'cpu'}"
    out: dict = {"budget_s": budget, "seed": args.seed, "modern": RECIPES["modern"], "variants": VARIANTS,
                 "sets": {}}
    if args.merge:
        earlier = json.loads((RESULTS / f"{name}.json").read_text())
        if (earlier["budget_s"], earlier["seed"]) != (budget, args.seed):
            sys.exit(f"--merge: {name}.json was measured with another budget or seed")
        if earlier["modern"] != json.loads(json.dumps(RECIPES["modern"])):
            sys.exit(f"--merge: {name}.json was measured against another version of the recipe (its 'modern'); "
                     f"start a new file (--name)")
        out["sets"] = earlier["sets"]
    with tempfile.TemporaryDirectory(prefix="astroclass-sweep-") as tmp:
        for set_name in args.sets.split(","):
            source, classes = SETS[set_name]
            h5 = import_real(source, tmp)
            rows = out["sets"].setdefault(set_name, {})
            for variant in args.variants.split(","):
                r = run_variant(h5, classes, VARIANTS[variant], budget, args.seed, Path(tmp) / f"{set_name}-{variant}")
                rows[variant] = r
                print(f"{set_name:>10} {variant:>13}: val accuracy {r['val_accuracy']:.3f}, balanced "
                      f"{r['val_balanced_accuracy']:.3f}; best epoch {r['best_epoch']} of {r['epochs']} in "
                      f"{r['seconds']:.0f} s", flush=True)
                save(name, out)
    print(table(out["sets"]))
    print(f"saved {save(name, out)}")


def table(sets: dict) -> str:
    """Markdown: validation balanced accuracy per variant and set, and each variant's mean change from base."""
    names = [v for v in VARIANTS if any(v in rows for rows in sets.values())]
    lines = ["| variant | " + " | ".join(sets) + " | mean change vs base |", "|---" * (len(sets) + 2) + "|"]
    for v in names:
        cells, deltas = [], []
        for rows in sets.values():
            if v not in rows:
                cells.append("")
                continue
            cells.append(f"{rows[v]['val_balanced_accuracy']:.3f} ({rows[v]['val_accuracy']:.3f})")
            if "base" in rows:
                deltas.append(rows[v]["val_balanced_accuracy"] - rows["base"]["val_balanced_accuracy"])
        mean = f"{100 * statistics.mean(deltas):+.1f}" if deltas else ""
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
