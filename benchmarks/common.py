"""Helpers shared by the benchmark scripts: where real data is, and how results are saved."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository, or $ASTROCLASS_BENCH_DATA (a copy carried to a machine without it);
# results go to benchmarks/results, or to $ASTROCLASS_BENCH_RESULTS (e.g. a folder that comes back from a GPU machine)
DATA = Path(os.environ.get("ASTROCLASS_BENCH_DATA", REPO.parent / "shared" / "data"))
RESULTS = Path(os.environ.get("ASTROCLASS_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def src_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that runs astroclass from this checkout (``extra`` set too)."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    except ImportError:
        info["device"] = f"CPU ({os.cpu_count()} cores)"
    return info


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def run_states(name: str, runs: int, device, size: int = 76) -> tuple[list[dict], object]:
    """The initial weights of ``runs`` runs of backbone ``name`` with the paper's head (seeds 0 … runs-1, 2 classes),
    and a channels-last model of it on ``device`` to fuse them into."""
    import torch

    from astroclass.models import build_model

    states = []
    for seed in range(runs):
        torch.manual_seed(seed)
        states.append(build_model(name, 2, input_size=size).state_dict())
    return states, build_model(name, 2, input_size=size).to(device, memory_format=torch.channels_last)


def import_real(name: str, folder: str | Path, **kw) -> Path:
    """Import ../shared/data/NAME (its labels.csv) into FOLDER/NAME.h5; exit with a clear message if absent."""
    from astroclass.data import import_catalog

    cat = DATA / name / "labels.csv"
    if not cat.exists():
        sys.exit(f"{cat} not found: the benchmark needs ../shared/data beside the repository")
    out = Path(folder) / f"{name}.h5"
    import_catalog(cat, out, show_progress=False, **kw)
    return out


# The paper's datasets (images) and its models' names in its tables
PAPER_SIZES = {"SG": 50090, "MG": 15766, "EF-2": 3604, "EF-4": 4389, "EF-15": 4327}
PAPER_NAMES = {"vgg16": "VGG16", "inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2",
               "resnext50_32x4d": "ResNext50", "densenet121": "DenseNet121"}


def paper_epochs() -> dict[tuple[str, str, str], float]:
    """Table 7: the paper's mean epochs to convergence per (dataset, model, optimiser)."""
    from importlib import resources

    text = resources.files("astroclass").joinpath("reference/table7_epochs_to_convergence.csv").read_text()
    return {(r["dataset"], r["model"], r["optimizer"]): float(r["mean_epochs"])
            for r in csv.DictReader(text.splitlines())}


def paper_train_images(model: str) -> float:
    """Training images the paper's 120 runs of ``model`` see: per (dataset, optimiser) Table 7's epochs to
    convergence + the 10 patience epochs over 80% of the images, 4 (λ, γ) × scratch and pretrained; pretrained
    runs add 10 head epochs."""
    epochs = paper_epochs()
    total = 0.0
    for d, n in PAPER_SIZES.items():
        for opt in ("rmsprop", "adam", "radam"):
            e = epochs[(d, PAPER_NAMES[model], opt)] + 10
            total += 0.8 * n * (4 * e + 4 * (e + 10))
    return total


def projection(rates: dict[str, float], eval_factor: float = 0.15) -> dict[str, float]:
    """Hours for the paper's 600 runs at a training throughput (images/s) per model: the images of
    :func:`paper_train_images`; validation passes add ``eval_factor`` of a training epoch's time."""
    return {m: paper_train_images(m) / rate * (1 + eval_factor) / 3600 for m, rate in rates.items()}
