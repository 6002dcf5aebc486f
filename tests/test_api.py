"""The notebook API: the notebook guide's example runs as written; datasets made in memory are real prepared
datasets (split, hash, provenance); options are validated as the CLI validates them."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

import astroclass
from astroclass.data import PreparedDataset
from astroclass.errors import AstroclassError

REPO = Path(__file__).resolve().parents[1]


def test_the_notebook_guides_example_runs(tmp_path, monkeypatch):
    text = (REPO / "docs" / "guides" / "notebook.md").read_text()
    block = re.search(r"# In a notebook.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    block = block.replace('"notebook-run/"', repr(str(tmp_path / "notebook-run"))) \
                 .replace('"notebook-sg.h5"', repr(str(tmp_path / "notebook-sg.h5")))
    names: dict = {}
    t0 = time.perf_counter()
    exec(compile(block, "docs/guides/notebook.md", "exec"), names)
    print(f"notebook guide's example: {time.perf_counter() - t0:.1f} s")
    run, ds, probs = names["run"], names["ds"], names["probs"]
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert run.metrics["test"]["balanced_accuracy"] > 0.5 and run.metrics["epochs_run"] == 3  # better than chance
    assert ds.class_names == ["galaxy", "star"] and len(ds) == 120 and sum(ds.counts["train"].values()) == 96
    assert (tmp_path / "notebook-run" / "checkpoint.pt").exists() and len(run.history) == 3
    assert list(run.history["phase"]) == ["head", "finetune", "finetune"] and run.history["val_loss"].dtype.kind == "f"
    assert "balanced accuracy" in run._repr_html_() and "data:image/png;base64" in run._repr_html_()
    assert "contact sheet" in ds._repr_html_() and "<th>train</th>" in ds._repr_html_()
    saved = astroclass.load(tmp_path / "notebook-run" / "checkpoint.pt")
    paths = [str(REPO.parent / "shared/data/aries_star_galaxy" / p) for p in names["df"]["path"][:4]]
    np.testing.assert_allclose(saved.predict(paths), probs, atol=1e-5)
    with PreparedDataset(tmp_path / "notebook-sg.h5") as f:
        assert f.content_hash == ds.content_hash and f.source["kind"] == "catalog table"


def test_datasets_from_arrays_are_prepared_datasets(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (90, 3, 16, 16), dtype=np.uint8)
    y = ["a"] * 60 + ["b"] * 30
    ds = astroclass.Dataset.from_arrays(x, y)
    again = astroclass.Dataset.from_arrays(x, y)
    assert ds.content_hash == again.content_hash  # same input, same split and hash
    assert ds.counts == {"train": {"a": 48, "b": 24}, "val": {"a": 6, "b": 3}, "test": {"a": 6, "b": 3}}
    kept = ds.save(tmp_path / "arrays.h5")
    with PreparedDataset(kept.path) as f:
        assert f.class_names == ["a", "b"] and np.array_equal(f.images(np.arange(90)), x)
        assert f.source == {"kind": "arrays"}
    ints = astroclass.Dataset.from_arrays(x.astype(np.float32) / 255, [0] * 60 + [1] * 30, class_names=["a", "b"])
    assert ints.counts == ds.counts
    run = astroclass.fit(kept, model="test_resnet", epochs=1, batch_size=16)
    assert run.class_names == ["a", "b"] and run.predict(x[:5]).shape == (5, 2)


def test_bad_arguments_get_the_cli_messages(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)
    ds = astroclass.Dataset.from_arrays(x, ["a", "b"] * 20)
    with pytest.raises(AstroclassError, match="lr must be a positive learning rate up to 10, got -1"):
        astroclass.fit(ds, model="test_resnet", lr=-1)
    with pytest.raises(AstroclassError, match=r"unknown key\(s\) \['learning_rate'\]"):
        astroclass.fit(ds, learning_rate=0.1)
    with pytest.raises(AstroclassError, match=r"\(N, C, S, S\) square images"):
        astroclass.Dataset.from_arrays(x[:, :, :, :8], ["a", "b"] * 20)
    with pytest.raises(AstroclassError, match=r"float images must be in \[0, 1\]; got values in \[0, 255\]"):
        astroclass.Dataset.from_arrays(x.astype(np.float32), ["a", "b"] * 20)
    with pytest.raises(AstroclassError, match="40 images but 3 labels"):
        astroclass.Dataset.from_arrays(x, ["a", "b", "a"])
    with pytest.raises(AstroclassError, match="no label column 'kind'"):
        astroclass.Dataset.from_catalog({"path": ["x.png"], "label": ["a"]}, label_col="kind")
    import pandas as pd

    with pytest.raises(AstroclassError, match="catalogue table, row 1: empty 'label' for b.png"):
        astroclass.Dataset.from_catalog(pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", float("nan")]}))
    with pytest.raises(AstroclassError, match="is outside"):
        astroclass.Dataset.from_catalog({"path": [os.path.abspath("x.png")], "label": ["a"]}, root=tmp_path)


def test_a_script_without_a_main_guard_can_use_the_decoding_pool(tmp_path):
    """Worker processes start without re-running the caller's script (forkserver and spawn would import it
    again, and a script without `if __name__ == "__main__":` would fail)."""
    import subprocess
    import sys

    root = REPO.parent / "shared/data/aries_star_galaxy"
    script = tmp_path / "plain.py"
    script.write_text(
        "import csv, astroclass\n"
        f"rows = list(csv.DictReader(open({str(root / 'labels.csv')!r})))\n"
        "rows = [r for r in rows if r['label'] == 'star'][:40] + [r for r in rows if r['label'] == 'galaxy'][:40]\n"
        "table = {'path': [r['path'] for r in rows], 'label': [r['label'] for r in rows]}\n"
        f"ds = astroclass.Dataset.from_catalog(table, root={str(root)!r}, size=32, workers=2)\n"
        "print('images', len(ds))\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("images 80") == 1  # the script ran once, not once per worker


def test_fit_names_every_run_option_with_its_type_for_editors():
    """fit's keyword options are RunConfig's fields, each with its type (or None: the recipe's value)."""
    import inspect
    import typing
    from dataclasses import fields

    from astroclass.api import RUN_OPTION_NAMES
    from astroclass.runconfig import RunConfig

    params = inspect.signature(astroclass.fit).parameters
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == set(RUN_OPTION_NAMES) == {f.name for f in fields(RunConfig)} - {"dataset"}
    fit_types, run_types = typing.get_type_hints(astroclass.fit), typing.get_type_hints(RunConfig)
    for name in keywords:
        assert fit_types[name] == run_types[name] | None, name
        assert params[name].default is None
    assert (Path(astroclass.__file__).parent / "py.typed").is_file()
