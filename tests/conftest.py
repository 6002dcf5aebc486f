"""Shared test fixtures: the real data sets in ../shared/data, temp homes for tools, a CLI runner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# Tools that write to the home directory write to a temp folder instead.
_home = tempfile.mkdtemp(prefix="astroclass-test-home-")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_home, "mpl"))
os.environ.setdefault("TORCH_HOME", os.path.join(_home, "torch"))
os.environ.setdefault("HF_HOME", os.path.join(_home, "hf"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_home, "cache"))
os.environ.setdefault("RAY_TMPDIR", os.path.join(_home, "ray"))


def data_set(name: str) -> Path:
    """A folder of ../shared/data; the tests run on real data, so its absence fails them, naming the path."""
    path = DATA / name
    if not path.exists():
        pytest.fail(f"real data {path} is not present: the tests need ../shared/data beside the repository")
    return path


@pytest.fixture
def cli(capsys):
    """Run the astroclass CLI in-process: returns (exit code, stdout, stderr)."""
    from astroclass.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def aries_h5(tmp_path_factory) -> Path:
    """The whole real ARIES star/galaxy set (3388 cutouts) as a prepared dataset."""
    from astroclass.data import import_catalog

    root = data_set("aries_star_galaxy")
    out = tmp_path_factory.mktemp("aries") / "aries.h5"
    import_catalog(root / "labels.csv", out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    """A small real slice of ARIES (40 stars, 40 galaxies, 32 px) for fast training tests."""
    from astroclass.data import ImageSpec, build_dataset
    from astroclass.data.importers import catalog_items

    root = data_set("aries_star_galaxy")
    items = catalog_items(root / "labels.csv")
    picked = [it for it in items if it.label == "star"][:40] + [it for it in items if it.label == "galaxy"][:40]
    out = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    build_dataset(picked, out, ImageSpec(size=32), source={"kind": "test slice"}, show_progress=False)
    return out
