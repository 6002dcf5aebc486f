"""Nothing lost, nothing silent: outputs never replace inputs or existing files unasked, and every option and
spec value is checked at the door, with one-line errors naming what is wrong (real files throughout)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from astroclass.errors import AstroclassError
from conftest import data_set


@pytest.fixture(scope="module")
def run_dir(tiny_h5, tmp_path_factory) -> Path:
    from astroclass.training import RunConfig, train

    out = tmp_path_factory.mktemp("robust") / "run"
    train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1, batch_size=16, amp="off"), out,
          progress=False)
    return out


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def test_exports_never_replace_the_checkpoint_nor_an_existing_file_unasked(run_dir, tmp_path, cli):
    ck = run_dir / "checkpoint.pt"
    before = ck.read_bytes()
    code, _, err = cli("export", ck, "--onnx", ck)
    assert code == 1 and "is also an input" in err and one_line(err) and ck.read_bytes() == before
    code, _, err = cli("export", ck, "--torchscript", ck, "--overwrite")
    assert code == 1 and "is also an input" in err and ck.read_bytes() == before
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    code, _, err = cli("export", ck, "--torchscript", existing)
    assert code == 1 and "exists (pass --overwrite" in err and existing.read_text() == "keep me"
    code, _, err = cli("export", ck, "--torchscript", existing, "--overwrite")
    assert code == 0 and existing.stat().st_size > 1000


def test_previews_and_grid_exports_never_replace_an_existing_file_unasked(tiny_h5, tmp_path, cli):
    png = tmp_path / "exists.png"
    png.write_bytes(b"not mine to replace")
    code, _, err = cli("data", "info", tiny_h5, "--preview", png)
    assert code == 1 and "exists" in err and png.read_bytes() == b"not mine to replace"
    code, _, err = cli("data", "info", tiny_h5, "--preview", tiny_h5, "--overwrite")
    assert code == 1 and "is also an input" in err
    from astroclass.experiments import GridOptions, GridSpec, run_grid

    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({"name": "g", "datasets": {"SG": str(tiny_h5)}, "models": ["test_resnet"],
                                    "setups": ["scratch"], "l2": [0.0], "maxnorm": [0.0], "optimizers": ["adam"],
                                    "train": {"epochs": 1, "batch_size": 16}}))
    run_grid(GridSpec.load(spec), tmp_path / "exp", GridOptions(threads=1), progress=False)
    out = tmp_path / "exists.csv"
    out.write_text("mine")
    code, _, err = cli("grid", "export", tmp_path / "exp", "-o", out)
    assert code == 1 and "exists" in err and out.read_text() == "mine"
    code, _, err = cli("grid", "export", tmp_path / "exp", "-o", tmp_path / "exp" / "store.sqlite", "--overwrite")
    assert code == 1 and "is also an input" in err


def test_predict_never_writes_over_its_input_catalogue(run_dir, tmp_path, cli):
    root = data_set("aries_star_galaxy")
    cat = tmp_path / "cat.csv"
    with open(cat, "w", newline="") as fh:
        csv.writer(fh).writerows([["path"], [str(root / "images/star/IC3521-H01_1198_1599_6.jpg")]])
    before = cat.read_text()
    code, _, err = cli("predict", run_dir / "checkpoint.pt", cat, "--allow-outside", "-o", cat, "--overwrite")
    assert code == 1 and "is also an input" in err and cat.read_text() == before


@pytest.mark.parametrize("option", [("--maxnorm", "nan"), ("--l2", "nan"), ("--lr", "inf"), ("--lr", "1e300"),
                                    ("--finetune-momentum", "1.5")])
def test_run_options_must_be_finite_and_in_range_before_any_work(tiny_h5, tmp_path, cli, option):
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", *option, "-o", tmp_path / "r")
    name = option[0].lstrip("-").replace("-", "_")
    assert code == 1 and name in err and one_line(err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("change, message", [
    ({"train": {"epochs": 1, "batch_size": [16, 32]}}, "batch_size must be a single int"),
    ({"l2": [float("nan")]}, "l2: nan is not a finite number"),
    ({"axes": {"lr": []}}, "axes: lr: an empty list runs nothing"),
    ({"optimizers": []}, "optimizers: an empty list runs nothing"),
    ({"name": "../../escape"}, "must be a plain folder name"),
    ({"name": "/tmp/elsewhere"}, "must be a plain folder name"),
])
def test_spec_values_of_the_wrong_shape_are_named(tiny_h5, tmp_path, change, message):
    from astroclass.experiments import GridSpec

    d = {"name": "g", "datasets": {"SG": str(tiny_h5)}, "models": ["test_resnet"], "setups": ["scratch"],
         "l2": [0.0], "maxnorm": [0.0], "optimizers": ["adam"], "train": {"epochs": 1}}
    d.update(change)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(d))
    with pytest.raises(AstroclassError, match=message.replace("(", r"\(")):
        GridSpec.load(spec)


def test_grid_workers_must_be_at_least_one(tiny_h5, tmp_path, cli):
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({"name": "g", "datasets": {"SG": str(tiny_h5)}, "models": ["test_resnet"],
                                    "setups": ["scratch"], "l2": [0.0], "maxnorm": [0.0], "optimizers": ["adam"]}))
    code, _, err = cli("grid", "run", spec, "-e", tmp_path / "exp", "--workers", "-1", "-q")
    assert code == 1 and "--workers must be a whole number of at least 1" in err and one_line(err)


def test_one_class_imports_with_a_warning_and_is_refused_by_training_and_fit(tmp_path, cli):
    import astroclass

    root = data_set("aries_star_galaxy")
    rows = list(csv.DictReader(open(root / "labels.csv")))
    stars = [r for r in rows if r["label"] == "star"][:30]
    cat = tmp_path / "stars.csv"
    with open(cat, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": str(root / r["path"]), "label": "star"} for r in stars)
    code, out, err = cli("data", "import", "catalog", cat, "--allow-outside", "-o", tmp_path / "one.h5")
    assert code == 0 and "one class only (['star'])" in out + err and "not to train" in out + err
    code, _, err = cli("train", tmp_path / "one.h5", "--model", "test_resnet", "-o", tmp_path / "run")
    assert code == 1 and "one class only" in err and one_line(err) and not (tmp_path / "run" / "result.json").exists()
    x = np.random.default_rng(0).integers(0, 255, (30, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(AstroclassError, match="one class only"):
        ds = astroclass.Dataset.from_arrays(x, ["star"] * 30)
        astroclass.fit(ds, model="test_resnet", epochs=1)
    with pytest.raises(AstroclassError, match="no images"):
        astroclass.Dataset.from_arrays(np.zeros((0, 3, 32, 32), np.uint8), [])


def test_a_csv_row_with_an_unquoted_comma_is_named_with_its_field_count(tmp_path, cli):
    root = data_set("aries_star_galaxy")
    rows = list(csv.DictReader(open(root / "labels.csv")))[:30]
    cat = tmp_path / "labels.csv"
    lines = ["path,label"] + [f"{root / r['path']},{r['label']}" for r in rows]
    lines[5] = lines[5] + ", barred"  # line 6, data row 5: three fields
    cat.write_text("\n".join(lines) + "\n")
    code, _, err = cli("data", "import", "catalog", cat, "--allow-outside", "-o", tmp_path / "o.h5")
    assert code == 1 and "row 5 (line 6): 3 fields, the header has 2" in err and "quote" in err


def test_nan_images_are_named_not_turned_into_nan_probabilities(run_dir):
    import astroclass

    clf = astroclass.load(run_dir / "checkpoint.pt")
    x = np.full((3, 3, 32, 32), 0.5, np.float32)
    x[1, 0, 4, 4] = np.nan
    with pytest.raises(AstroclassError, match=r"1 image\(s\) hold NaN or infinite values \(the first: image 1\)"):
        clf.predict(x)
    with pytest.raises(AstroclassError, match="hold NaN"):
        astroclass.Dataset.from_arrays(x, ["a", "b", "a"])


def test_a_full_disk_while_importing_is_one_line_and_leaves_nothing_half_written(tmp_path, cli, monkeypatch):
    """The disk fills up while the dataset is written (an injected ENOSPC at the HDF5 write): one line naming
    the file and what to do, exit 1, no output and no temporary left; an earlier output is intact."""
    import errno

    from astroclass.data import prepared

    root = data_set("aries_star_galaxy")
    out = tmp_path / "d.h5"
    earlier = tmp_path / "d.h5"
    earlier.write_bytes(b"an earlier output")

    def full(self, images):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(prepared.PreparedWriter, "append", full)
    code, _, err = cli("data", "import", "catalog", root / "labels.csv", "-o", out, "--overwrite")
    assert code == 1 and one_line(err) and "no space left on the device" in err and str(out) in err
    assert earlier.read_bytes() == b"an earlier output"
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary left behind
