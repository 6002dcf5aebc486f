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


def sky_mosaic(folder: str | Path, n: int, seed: int = 0, tiles: tuple[int, int] = (2, 2), tile: int = 2048,
               bands: tuple[str, ...] = ("g", "r", "i"), overlap: int = 48) -> tuple[Path, dict[str, str]]:
    """A synthetic survey: ``tiles`` tiles of ``tile`` x ``tile`` pixels per band (plain float32 FITS, one TAN
    projection at 0.396"/px, each band's WCS shifted by a fraction of a pixel as SDSS bands are), with ``n``
    objects (stars: a Gaussian PSF, galaxies: wider) at random positions over the mosaic, and their catalogue
    (ra, dec, label, mag). Returns (catalogue path, {band: glob of its tiles})."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS
    from scipy import ndimage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    step = tile - overlap
    width, height = step * tiles[0] + overlap, step * tiles[1] + overlap

    def wcs(x0: float, y0: float) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [width / 2 + 0.5 - x0, height / 2 + 0.5 - y0]
        w.wcs.cdelt = [-0.396 / 3600, 0.396 / 3600]
        return w

    x, y = rng.uniform(8, width - 8, n), rng.uniform(8, height - 8, n)
    star = rng.random(n) < 0.5
    mag = rng.uniform(16, 21, n)
    sky = wcs(0, 0).pixel_to_world(x, y)
    cat = folder / "catalog.fits"
    Table({"ra": sky.ra.deg, "dec": sky.dec.deg, "label": np.where(star, "star", "galaxy"), "mag": mag}).write(
        cat, overwrite=True)
    flux = 10 ** (-0.4 * (mag - 22.5)) * 50
    patterns = {}
    for b, band in enumerate(bands):
        shift = (0.3 * b, -0.2 * b)  # each band's own WCS, a fraction of a pixel off the first
        for i in range(tiles[0]):
            for j in range(tiles[1]):
                x0, y0 = i * step, j * step
                img = np.zeros((tile, tile), np.float32)
                for kind, sigma in ((star, 1.4), (~star, 3.5)):
                    layer = np.zeros((tile, tile), np.float32)
                    px, py = np.rint(x[kind] - x0 + shift[0]).astype(int), np.rint(y[kind] - y0 + shift[1]).astype(int)
                    inside = (px >= 0) & (px < tile) & (py >= 0) & (py < tile)
                    np.add.at(layer, (py[inside], px[inside]), flux[kind][inside] * (1 + 0.2 * b))
                    img += ndimage.gaussian_filter(layer, sigma)
                img += rng.normal(0, 1.0, img.shape).astype(np.float32)
                w = wcs(x0 - shift[0], y0 - shift[1])
                hdr = w.to_header()
                hdr["FILTER"] = band
                fits.PrimaryHDU(img, hdr).writeto(folder / f"tile-{band}-{i}{j}.fits", overwrite=True)
        patterns[band] = str(folder / f"tile-{band}-*.fits")
    return cat, patterns
