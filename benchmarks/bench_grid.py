"""The comparison grid end to end, one run per worker (``--fuse off``) vs fused (the default), same call.

For each model it runs a real mini paper grid through ``astroclass grid run`` (a subprocess, as a user
runs it) on ARIES star/galaxy cutouts from ../shared/data: the paper's 24 settings (setup × λ × γ ×
optimiser) at a fixed small epoch budget (no early stopping), twice: ``--fuse off`` and the default
(``auto``; on a CPU, where auto trains one run per worker, ``--fuse 24``), both with ``grid run``'s default
workers (on a CPU one per core, one thread each). The pretrained setup loads a saved
random initialisation as its "ImageNet" weights (nothing
can be downloaded here; the timings do not depend on the weights' values). It also trains one scratch
cell of 24 runs (12 settings × 2 seeds) fused as one group, for the aggregate-throughput ratio.

Printed and saved (benchmarks/results/grid_<device>.json):
* wall time of each grid and its end-to-end aggregate train images/s (all runs' training images / wall), and
  the same over epochs ≥ 2 only (training and validation; a gap between the two is start-up and the work
  around the epochs: each run's final evaluation, checkpoint and files, the store);
* per-run start-up: the group's set-up (data, initial weights, model) plus its first epoch's excess over
  its later epochs (compile, CUDA-graph capture), per run; for the first group of an architecture on a
  worker and for later ones (the worker keeps the built, compiled model);
* steady aggregate throughput (epochs ≥ 2) of the 24-run cell, fused (``--fuse 24``: on a CPU one group per
  worker) and unfused (``--fuse off``), both with the default workers, vs the same work one run at a time with
  every core (``--workers 1``, as astroclass ran a CPU grid by default before): one run alone of each of the
  cell's optimisers, in turn, each with twice the cell's epochs. The three are measured one after another
  ``--cell-repeats`` times and the median of each ratio is saved;
* peak GPU memory;
* where the wall time went (each run's result.json, ``environment.seconds``, and the store's claim and result
  times): per group its start-up, its epochs, its rebuilding as runs left, its runs' final evaluations and
  checkpoints, and the worker's time outside the training loop (its process start and imports, sizing the
  group); per run the final evaluation's predictions, its metrics and files, and its checkpoint; the time
  workers sat without a group while others trained; and the grid's own, the driver's before its first claim
  and after its last result (imports, the workers' exits), paid once per ``grid run``;
* the projected wall time of the paper's 600-run grid for each path (:func:`project_paper_hours`): each part of
  the measured wall scaled to the paper's grid. Its epochs: paper images / the steady rate, where paper images
  follow Table 7's epochs to convergence plus patience on the paper's dataset sizes (benchmarks/common.py); per
  group start-up and rebuilding for the paper's groups, 600 (off) or 50 cells × ⌈12 / mean fused group size⌉
  (fused: a cell is one dataset, model and setup); per run its checkpoint, and its final evaluation scaled to
  the paper dataset's val and test images; the grid's own time once. Also saved, as ``end_to_end_hours``, the
  earlier results' method: the wall net of start-up as one rate R, the paper grid ``paper groups × start-up /
  workers + paper images / R``, which charges the runs' final evaluations and the grid's own time to the
  images of this grid's short runs.

Usage: python benchmarks/bench_grid.py [--models test_resnet,test_efficientnet] [--images 600] [--size 32]
       [--epochs 3] [--workers N] [--per-gpu 1] [--name grid_cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, PAPER_NAMES, PAPER_SIZES, paper_train_images, save, src_env  # noqa: E402

PAPER_SETTINGS = {"setups": ["scratch", "pretrained"], "l2": [0.0, 0.1], "maxnorm": [0.0, 2.0],
                  "optimizers": ["rmsprop", "adam", "radam"]}


def aries_subset(folder: Path, images: int, size: int) -> Path:
    """``images`` ARIES cutouts at ``size`` px, evenly spaced through the catalogue, so stars and galaxies keep
    their catalogue proportions (the catalogue lists all galaxies first: its first rows are one class)."""
    from astroclass.data import ImageSpec, build_dataset
    from astroclass.data.importers import catalog_items

    cat = DATA / "aries_star_galaxy" / "labels.csv"
    if not cat.exists():
        sys.exit(f"{cat} not found: the benchmark needs ../shared/data beside the repository")
    every = catalog_items(cat)
    n = min(images, len(every))
    items = [every[i * len(every) // n] for i in range(n)]
    out = folder / f"aries_{len(items)}_{size}px.h5"
    build_dataset(items, out, ImageSpec(size=size), source={"kind": "benchmark slice"}, show_progress=False)
    return out


def standin_weights(model: str, folder: Path, size: int = 76) -> Path:
    """A saved random initialisation of ``model``'s backbone standing in for ImageNet weights, its batch norms'
    running statistics measured on random images as trained weights' are on theirs: fine-tuning keeps the
    backbone's batch norms in inference mode, where a random initialisation's statistics (mean 0, variance 1)
    let activations grow layer by layer (InceptionV3's features reach ~5e7 at 76 px, ~300 calibrated; 6 of its 24
    runs failed in the GPU grid with the uncalibrated stand-in, not reproduced on a CPU, fp32 or bf16)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from astroclass.models import timm_name

    torch.manual_seed(0)
    bb = timm.create_model(timm_name(model), num_classes=0, global_pool="")
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    bb.train()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # the ImageNet normalisation the model applies
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for _ in range(4):
            bb.forward_features((torch.rand(32, 3, size, size) - mean) / std)
    for m in norms:
        m.momentum = 0.1
    path = folder / f"{model}-standin.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(path))
    return path


class StepFailed(RuntimeError):
    """A grid run of the benchmark failed or ran past the deadline."""


def run_grid_cli(spec: dict, folder: Path, fuse: str, workers: int | None, per_gpu: int,
                 timeout: float | None = None) -> tuple[float, list[dict], list[str]]:
    """``astroclass grid run`` in a subprocess (``workers`` None: its default); (wall seconds, the store's done
    runs with their histories, a line per failed run)."""
    from astroclass.experiments import Store

    name = f"{spec['name']}-{fuse}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    exp = folder / name
    cmd = [sys.executable, "-m", "astroclass.cli", "grid", "run", str(path), "-e", str(exp), "-q", "--fuse", fuse,
           "--per-gpu", str(per_gpu)] + (["--workers", str(workers)] if workers else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=src_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # the driver is killed; its workers die with it
        raise StepFailed(f"grid run cut at the deadline after {time.perf_counter() - t0:.0f} s: {' '.join(cmd)}") \
            from None
    wall = time.perf_counter() - t0
    failed: list[str] = []
    runs: list[dict] = []
    if (exp / "store.sqlite").exists():
        store = Store(exp / "store.sqlite")
        runs = store.runs(status="done")
        failed = [f"{r['config']['optimizer']} l2={r['config']['l2']} maxnorm={r['config']['maxnorm']} "
                  f"{r['setup']}: {(r['error'] or '').strip().splitlines()[-1:]}" for r in store.runs(status="failed")]
        for r in runs:
            r["history"] = store.history(r["id"])
        store.close()
    if proc.returncode != 0 and not runs:
        raise StepFailed(f"grid run failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
                         + "\n".join(failed))
    for f in failed:  # measured on the runs that finished; the failures are said and saved
        print(f"  failed run: {f}", flush=True)
    return wall, runs, failed


FINISH = ("final_predict", "final_metrics", "checkpoint")


def summarise(runs: list[dict], wall: float, n_train: int, workers: int) -> dict:
    """Start-up per group and per run, images, throughput, the fit of wall = groups·S/workers + images/R, and where
    the wall time went (each run's ``environment.seconds``): per group its start-up, epochs, rebuilding and its runs'
    final evaluations and checkpoints; the rest of the wall is the grid's own (processes, imports, the store)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["token"], []).append(r)
    startups, first, later = [], [], []
    parts: dict[str, list[float]] = {"epochs": [], "regroup": [], "finish": [], "outside": []}
    spans = []
    per_run: dict[str, list[float]] = {k: [] for k in FINISH}
    graphed = {"replayed_steps": 0, "eager_steps": 0, "not_captured": []}
    for members in groups.values():
        env = members[0]["metrics"]["environment"]
        graph = env.get("speed", {}).get("step_graph")
        if graph:  # compile: step-graph; how many training steps replayed the captured graph, and why not
            graphed["replayed_steps"] += graph["replayed_steps"]
            graphed["eager_steps"] += graph["eager_steps"]
            if graph["not_captured"] and graph["not_captured"] not in graphed["not_captured"]:
                graphed["not_captured"].append(graph["not_captured"])
        epochs = {}
        for r in members:
            for h in r["history"]:
                epochs.setdefault((h["phase"], h["epoch"]), h["seconds"])
        times = [epochs[k] for k in sorted(epochs, key=lambda k: (k[0] != "head", k[1]))]
        steady = statistics.median(times[1:]) if len(times) > 1 else 0.0
        excess = max(0.0, times[0] - steady)  # the first epoch's over the later ones': start-up (compile, capture)
        startup = env.get("setup_seconds", 0.0) + excess
        startups.append(startup)
        (later if env.get("worker_model_reused") else first).append(startup / len(members))
        seconds = [r["metrics"]["environment"].get("seconds", {}) for r in members]
        parts["epochs"].append(sum(times) - excess)
        parts["regroup"].append(max((s.get("regroup", 0.0) for s in seconds), default=0.0))
        parts["finish"].append(sum(s.get(k, 0.0) for s in seconds for k in FINISH))
        # from its claim to its last run's result (the store's times), less the above: the worker's time outside the
        # training loop (its process start and imports for its first group, sizing the group, reporting the runs)
        spans.append(max(r["ended"] for r in members) - min(r["started"] for r in members))
        inside = startup + sum(parts[k][-1] for k in ("epochs", "regroup", "finish"))
        parts["outside"].append(max(0.0, spans[-1] - inside))
        for s in seconds:
            for k in FINISH:
                per_run[k].append(s.get(k, 0.0))
    images = sum(len(r["history"]) * n_train for r in runs)
    startup_total = sum(startups) / workers
    span = max(r["ended"] for r in runs) - min(r["started"] for r in runs)
    net = max(wall - startup_total, 1e-9)
    peak = max((r["metrics"]["environment"].get("peak_gpu_memory_bytes", 0) for r in runs), default=0)
    return {"runs": len(runs), "groups": len(groups), "mean_group_size": len(runs) / len(groups), "wall_s": wall,
            "train_images": images, "aggregate_images_per_s": images / wall,
            "startup_per_group_s": statistics.mean(startups),
            "startup_per_run_first_s": statistics.mean(first) if first else None,
            "startup_per_run_later_s": statistics.mean(later) if later else None,
            "net_images_per_s": images / net, "steady_images_per_s": steady_rate(runs, n_train, workers),
            "peak_gpu_memory_gib": peak / 2**30,
            # where the wall went: per group (means), per run, and the grid's own rest
            "wall_split": {"per_group_s": {"startup": statistics.mean(startups),
                                           **{k: statistics.mean(v) for k, v in parts.items()}},
                           "finish_per_run_s": {k: statistics.mean(v) for k, v in per_run.items()},
                           # the driver's own, before its first claim and after its last result, paid once per grid
                           "grid_s": max(0.0, wall - span),
                           # workers without a group while others trained (the grid's tail)
                           "idle_workers_s": max(0.0, workers * span - sum(spans)) / workers},
            **({"step_graph": graphed} if graphed["replayed_steps"] or graphed["eager_steps"] else {})}


def project_paper_hours(model: str, s: dict, workers: int, eval_images: int) -> dict[str, float] | None:
    """The paper grid's hours for one of its five models (None for other models), two ways:

    * ``hours``: what each part of the measured wall time becomes in the paper's grid. Its epochs at the steady
      rate (epochs ≥ 2, validation included): paper images / that rate. Per group its start-up, its rebuilding
      and the worker's time outside the training loop, as measured, for the paper's groups (conservative: a
      worker's process start is paid by its first group only). Per run its checkpoint as measured, and its final
      evaluation (val and test predictions, metrics, predictions.npz) scaled by the paper dataset's val and test
      images over this grid's ``eval_images``. The grid's own time, paid once per ``grid run``, is left out
      (:func:`main` adds it once to the sum over models). Not in it: a fused group whose runs stop at different
      epochs trains fewer runs at a time towards its end, which these fixed-epoch runs do not measure.
    * ``end_to_end_hours`` (the method of earlier results): the wall net of start-up gives one rate R for all the
      rest, and the paper grid is its groups' start-up plus paper images / R. It charges each run's final
      evaluation and the grid's own time to the images of this grid's short runs: an overestimate where the
      paper's runs train many more epochs."""
    if model not in PAPER_NAMES:
        return None
    paper_groups = 600 / 5 if s["mean_group_size"] <= 1 else 10 * math.ceil(12 / s["mean_group_size"])
    startup = paper_groups * s["startup_per_group_s"] / workers
    end_to_end = (startup + paper_train_images(model) / s["net_images_per_s"]) / 3600
    split = s["wall_split"]
    per_group = sum(split["per_group_s"][k] for k in ("startup", "regroup", "outside"))
    run = split["finish_per_run_s"]
    evaluation = run["final_predict"] + run["final_metrics"]
    finish = sum(24 * (run["checkpoint"] + evaluation * 0.2 * n / eval_images) for n in PAPER_SIZES.values())
    hours = (paper_groups * per_group / workers + finish / workers
             + paper_train_images(model) / s["steady_images_per_s"]) / 3600
    return {"hours": hours, "end_to_end_hours": end_to_end}


def steady_rate(runs: list[dict], n_train: int, workers: int = 1) -> float:
    """Aggregate train images/s over epochs ≥ 2: every group's (token's) epochs, each with its runs' images and the
    group's seconds, summed; ``workers`` groups at a time side by side (the workers equally busy, as a cell's
    equal groups are) multiply it."""
    per_epoch: dict[tuple, list] = {}
    for r in runs:
        for h in r["history"]:
            if h["epoch"] >= 2:
                per_epoch.setdefault((r["token"], h["phase"], h["epoch"]), [0, h["seconds"]])[0] += n_train
    images = sum(v[0] for v in per_epoch.values())
    seconds = sum(v[1] for v in per_epoch.values())
    return workers * images / seconds if seconds else float("nan")


def main(argv: list[str] | None = None, defaults: dict | None = None) -> dict:
    d = {"models": "test_resnet,test_efficientnet", "images": 600, "size": 32, "epochs": 3, "workers": None,
         "per_gpu": 1, "name": "grid_cpu", "budget": 0, "cell_repeats": 3, **(defaults or {})}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=d["models"])
    ap.add_argument("--images", type=int, default=d["images"], help="ARIES cutouts used (80/10/10 split)")
    ap.add_argument("--size", type=int, default=d["size"], help="pixels")
    ap.add_argument("--epochs", type=int, default=d["epochs"], help="epochs per run (pretrained: 1 head + this)")
    ap.add_argument("--workers", type=int, default=d["workers"],
                    help="CPU: concurrent groups (default: grid run's, one per core as memory allows)")
    ap.add_argument("--per-gpu", type=int, default=d["per_gpu"], help="fuse off on a GPU: runs packed per GPU")
    ap.add_argument("--name", default=d["name"], help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--skip-cell24", action="store_true", help="skip the 24-run cell ratio")
    ap.add_argument("--cell-repeats", type=int, default=d["cell_repeats"],
                    help="times the 24-run cell and its runs alone are measured (the ratio saved is their median)")
    ap.add_argument("--compile", default="", help="the fused runs' compile option (e.g. step-graph); the --fuse off "
                                                  "runs keep auto")
    ap.add_argument("--budget", type=float, default=d["budget"],
                    help="seconds; 0 = none. Steps run in the order: the fused grids of all models, then per model "
                         "its fuse-off grid and its 24-run cell; a step that would start after the budget is skipped "
                         "and said so (results are saved after every step)")
    ap.add_argument("--deadline", type=float, default=d.get("deadline", 0),
                    help="seconds; 0 = none. A grid still running then is stopped (its step is recorded as cut) "
                         "and the script ends with what it measured")
    args = ap.parse_args(argv)
    import torch

    t_start = time.perf_counter()
    from astroclass.experiments.engines import local_slots

    gpu = torch.cuda.is_available()
    cpu_workers = len(local_slots(args.workers))  # on a CPU both paths use grid run's workers
    workers_off = args.per_gpu * torch.cuda.device_count() if gpu else cpu_workers
    fused_flag = "auto" if gpu else "24"  # auto on a CPU is one run per worker: measure fusion there explicitly
    models = args.models.split(",")
    out: dict = {"settings": vars(args), "models": {m: {} for m in models}, "skipped": [], "failed": []}

    def in_budget(step: str) -> bool:
        spent = time.perf_counter() - t_start
        if (args.budget and spent > args.budget) or (args.deadline and spent > args.deadline - 5):
            out["skipped"].append(step)
            print(f"skipped (time budget): {step}", flush=True)
            return False
        return True

    with tempfile.TemporaryDirectory(prefix="astroclass-bench-grid-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("XDG_CACHE_HOME", str(folder / "cache"))  # a cold compile cache, as for a new user
        data = aries_subset(folder, args.images, args.size)
        from astroclass.data import PreparedDataset

        with PreparedDataset(data) as ds:
            n_train = len(ds.indices("train"))
            n_eval = len(ds.indices("val")) + len(ds.indices("test"))
        specs = {}
        for model in models:
            weights = standin_weights(model, folder, args.size)
            specs[model] = {"name": model, "datasets": {"SG": str(data)}, "models": [model], "seeds": [0],
                            **PAPER_SETTINGS, "train": {"epochs": args.epochs, "patience": args.epochs,
                                                        "head_epochs": 1, "weights": str(weights)}}
        # fused grids first (the projection needs every model), then per model today's path and the 24-run cell;
        # the fuse-off grid compiles the model into the on-disk cache that the cell's single run then finds
        steps = [("fused", m) for m in models] + [(k, m) for m in models
                                                  for k in (("off",) if args.skip_cell24 else ("off", "cell24"))]

        def left() -> float | None:
            return max(1.0, args.deadline - (time.perf_counter() - t_start)) if args.deadline else None

        def fused_options(spec: dict) -> dict:
            return {**spec, "train": {**spec["train"], "compile": args.compile}} if args.compile else spec

        def measure_step(kind: str, model: str) -> None:
            row = out["models"][model]
            if kind == "cell24":
                cell = {"name": f"{model}-cell24", "datasets": {"SG": str(data)}, "models": [model],
                        "setups": ["scratch"], "l2": [0.0, 0.1], "maxnorm": [0.0, 2.0],
                        "optimizers": ["rmsprop", "adam", "radam"], "seeds": [0, 1],
                        "train": {"epochs": max(3, args.epochs), "patience": max(3, args.epochs)}}  # steady: epochs ≥ 2
                # the same work alone: one run of each of the cell's optimisers (their steps cost differently), one
                # after another with every core (--workers 1), with twice the cell's epochs (a tiny model's epochs
                # are short). Then the cell fused and unfused with the default workers (a GPU: one fused group).
                # The three are repeated: on a shared machine the rates drift between calls
                one = {**cell, "l2": [0.1], "maxnorm": [0.0], "seeds": [0],
                       "train": {k: 2 * v for k, v in cell["train"].items()}}
                w = 1 if gpu else cpu_workers
                pairs = []
                for k in range(args.cell_repeats):
                    _, single, _ = run_grid_cli({**one, "name": f"{model}-single-{k}"}, folder, "off", 1, 1, left())
                    _, cell_runs, _ = run_grid_cli(fused_options({**cell, "name": f"{model}-cell24-{k}"}), folder,
                                                   "24", 1 if gpu else None, 1, left())
                    singles = {r["config"]["optimizer"]: steady_rate([r], n_train) for r in single}
                    r1, r24 = steady_rate(single, n_train), steady_rate(cell_runs, n_train, w)
                    pair = {"single_images_per_s": r1, "single_runs_images_per_s": singles,
                            "fused24_images_per_s": r24, "fused24_workers": w, "ratio": r24 / r1}
                    line = (f"{model:>20} 24-run cell fused ({w} group(s) side by side): {r24:8.0f} train images/s vs "
                            f"its optimisers' runs alone, one at a time {r1:8.0f} "
                            f"({', '.join(f'{k} {v:.0f}' for k, v in singles.items())}): {r24 / r1:.2f}x")
                    if not gpu:  # the cell unfused on the same workers: how much of it fusion itself gives
                        _, off_runs, _ = run_grid_cli({**cell, "name": f"{model}-cell24off-{k}"}, folder, "off",
                                                      None, 1, left())
                        r_off = steady_rate(off_runs, n_train, w)
                        pair.update(unfused24_images_per_s=r_off, unfused_ratio=r_off / r1, fusion_ratio=r24 / r_off)
                        line += f"; unfused on {w} worker(s) {r_off:8.0f}: {r_off / r1:.2f}x, fusion {r24 / r_off:.2f}x"
                    pairs.append(pair)
                    print(line, flush=True)
                row["cell24"] = {key: statistics.median(p[key] for p in pairs)
                                 for key in ("ratio", "unfused_ratio", "fusion_ratio") if key in pairs[0]}
                row["cell24"]["pairs"] = pairs
                return
            fuse, workers = ("off", workers_off) if kind == "off" else (fused_flag, 1 if gpu else cpu_workers)
            wall, runs, failed = run_grid_cli(specs[model] if fuse == "off" else fused_options(specs[model]), folder,
                                              fuse, workers, args.per_gpu if fuse == "off" else 1, left())
            s = summarise(runs, wall, n_train, workers)
            s["failed_runs"] = failed
            projected = project_paper_hours(model, s, workers, n_eval)
            s["paper_grid_hours"] = projected["hours"] if projected else None
            s["paper_grid_hours_end_to_end"] = projected["end_to_end_hours"] if projected else None
            row[kind] = s
            print(f"{model:>20} fuse {fuse:>4}: {s['runs']} runs in {s['groups']} groups, wall {wall:7.1f} s, "
                  f"{s['aggregate_images_per_s']:8.0f} train images/s end to end ({s['steady_images_per_s']:.0f} "
                  f"in epochs ≥ 2, validation included), start-up per run "
                  f"first {s['startup_per_run_first_s'] or 0:.2f} s / later {s['startup_per_run_later_s'] or 0:.2f} s, "
                  f"peak GPU {s['peak_gpu_memory_gib']:.1f} GiB" + (f"; paper grid ≈ {s['paper_grid_hours']:.2f} h "
                                                          f"({s['paper_grid_hours_end_to_end']:.2f} h end to end)"
                                                          if s["paper_grid_hours"] is not None else ""), flush=True)
            split = s["wall_split"]
            print(f"{'':>20} wall split: per group " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                 split["per_group_s"].items())
                  + "; per run " + ", ".join(f"{k} {v:.3f} s" for k, v in split["finish_per_run_s"].items())
                  + f"; the grid's own {split['grid_s']:.1f} s; workers idle {split['idle_workers_s']:.1f} s",
                  flush=True)
            if "off" in row and "fused" in row:
                row["wall_ratio"] = row["off"]["wall_s"] / row["fused"]["wall_s"]
                print(f"{model:>20} grid wall time off/fused: {row['wall_ratio']:.2f}x", flush=True)

        for kind, model in steps:
            if not in_budget(f"{kind} {model}"):
                continue
            try:
                measure_step(kind, model)
            except StepFailed as e:
                out["failed"].append({"step": f"{kind} {model}", "error": str(e)[-4000:]})
                print(f"FAILED {kind} {model}: {e}", flush=True)
                if kind == "fused" and model == models[0]:
                    save(args.name, out)
                    sys.exit(1)  # the first step: nothing later would work either; end now, saying why
            save(args.name, out)  # after each step: a run cut short by a time limit keeps what it measured
    paper = [m for m in models if m in PAPER_NAMES]
    for f in ("fused", "off"):
        have = [m for m in paper if f in out["models"][m]]
        if have:  # one grid: its own time (processes, imports, the store) once
            grid_s = statistics.mean(out["models"][m][f]["wall_split"]["grid_s"] for m in have)
            hours = sum(out["models"][m][f]["paper_grid_hours"] for m in have) + grid_s / 3600
            end_to_end = sum(out["models"][m][f]["paper_grid_hours_end_to_end"] for m in have)
            out.setdefault("paper_grid_hours", {})[f] = {"hours": hours, "end_to_end_hours": end_to_end,
                                                         "models": have}
            print(f"projected paper grid, {f}, for {len(have) * 120} of its 600 runs ({', '.join(have)}): "
                  f"{hours:.2f} h ({end_to_end:.2f} h by the end-to-end rate; methods: project_paper_hours)",
                  flush=True)
    path = save(args.name, out)
    print(f"saved {path}")
    return out


if __name__ == "__main__":
    main()
