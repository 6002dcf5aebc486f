"""Helpers shared by the benchmark scripts: where real data is, and how results are saved."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


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
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def import_real(name: str, folder: str | Path, **kw) -> Path:
    """Import ../shared/data/NAME (its labels.csv) into FOLDER/NAME.h5; exit with a clear message if absent."""
    from astroclass.data import import_catalog

    cat = DATA / name / "labels.csv"
    if not cat.exists():
        sys.exit(f"{cat} not found: the benchmark needs ../shared/data beside the repository")
    out = Path(folder) / f"{name}.h5"
    import_catalog(cat, out, show_progress=False, **kw)
    return out
