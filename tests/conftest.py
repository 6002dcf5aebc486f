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
    """A folder of ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is not present (it lies beside the repository in ../shared/data)")
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
