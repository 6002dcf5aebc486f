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
    """The command's error is one line, its last (progress lines, where no bar can be drawn, may come before)."""
    lines = err.rstrip("\n").split("\n")
    return lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1 \
        and "Traceback" not in err


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


def tiny_grid(dataset: Path, folder: Path) -> Path:
    """A one-run grid trained into ``folder / 'exp'``; returns its spec."""
    from astroclass.experiments import GridOptions, GridSpec, run_grid

    spec = folder / "g.yaml"
    spec.write_text(yaml.safe_dump({"name": "g", "datasets": {"SG": str(dataset)}, "models": ["test_resnet"],
                                    "setups": ["scratch"], "l2": [0.0], "maxnorm": [0.0], "optimizers": ["adam"],
                                    "train": {"epochs": 1, "batch_size": 16}}))
    run_grid(GridSpec.load(spec), folder / "exp", GridOptions(threads=1), progress=False)
    return spec


def test_previews_and_grid_exports_never_replace_an_existing_file_unasked(tiny_h5, tmp_path, cli):
    png = tmp_path / "exists.png"
    png.write_bytes(b"not mine to replace")
    code, _, err = cli("data", "info", tiny_h5, "--preview", png)
    assert code == 1 and "exists" in err and png.read_bytes() == b"not mine to replace"
    code, _, err = cli("data", "info", tiny_h5, "--preview", tiny_h5, "--overwrite")
    assert code == 1 and "is also an input" in err
    tiny_grid(tiny_h5, tmp_path)
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


@pytest.mark.parametrize("damage", ["CAST(X'7b22ff22' AS TEXT)", "'{\"val_accuracy\": 0.5'"])
def test_a_results_store_with_a_damaged_row_is_named_by_every_reader(tiny_h5, tmp_path, cli, damage):
    """Bytes changed inside a run's text (no longer UTF-8, or no longer JSON): status, export and report end
    in one line naming the store, the run and how to recover, and change nothing."""
    import sqlite3

    spec = tiny_grid(tiny_h5, tmp_path)
    store = tmp_path / "exp" / "store.sqlite"
    with sqlite3.connect(store) as db:
        db.execute(f"UPDATE runs SET metrics = {damage}")
    before = store.read_bytes()
    for args in (("grid", "status", spec, "-e", tmp_path / "exp"), ("grid", "export", tmp_path / "exp", "-o",
                 tmp_path / "r.csv"), ("report", tmp_path / "exp", "-o", tmp_path / "r.html")):
        code, _, err = cli(*args)
        assert code == 1 and one_line(err) and "results store is damaged" in err and str(store) in err, (args, err)
        assert ".recover" in err and not (tmp_path / "r.csv").exists() and not (tmp_path / "r.html").exists()
    assert store.read_bytes() == before


def test_a_prepared_file_with_a_damaged_block_is_found_by_data_info_and_named_by_train(tiny_h5, tmp_path, cli):
    """Bytes overwritten inside a compressed chunk of images: data info reads every image and names the
    damaged rows (exit 1); train stops with one line naming the file, before writing a result."""
    import shutil

    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "r") as f:
        chunk_rows = f["images"].chunks[0]
        info = f["images"].id.get_chunk_info(0)
    with open(bad, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(64))
    code, out, err = cli("data", "info", bad)
    assert code == 1 and f"rows 0-{chunk_rows - 1}" in err and "damaged block" in err and one_line(err)
    code, out, err = cli("data", "info", tiny_h5)
    assert code == 0 and "images read back" in out
    code, _, err = cli("train", bad, "--model", "test_resnet", "--epochs", "1", "-o", tmp_path / "run")
    assert code == 1 and one_line(err) and str(bad) in err and "damaged" in err
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_run_that_never_started_leaves_no_folder_and_a_failed_run_folder_can_be_reused(tiny_h5, tmp_path, cli,
                                                                                         monkeypatch):
    """A bad model name or weights file ends before any result: no folder that looks like a run is left. A
    run that failed on a NaN loss keeps its result and history, and its -o can be trained into again."""
    import math

    import torch

    import astroclass.models as models

    code, _, err = cli("train", tiny_h5, "--model", "resnet18", "--weights", tmp_path / "missing.pt", "--setup",
                       "pretrained", "-o", tmp_path / "w")
    assert code == 1 and one_line(err) and "missing.pt" in err and not (tmp_path / "w").exists()
    built = models.build_model

    def diverged(*args, **kwargs):
        model = built(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(math.inf)
        return model

    monkeypatch.setattr(models, "build_model", diverged)
    out = tmp_path / "nan"
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-o", out)
    assert code == 1 and "epoch 1" in err and '"failed"' in (out / "result.json").read_text()
    monkeypatch.setattr(models, "build_model", built)
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-o", out)
    assert code == 0, err
    assert '"done"' in (out / "result.json").read_text()
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "-o", out)
    assert code == 1 and "holds a finished run already" in err


def test_an_interrupted_run_leaves_no_half_written_folder(tiny_h5, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the middle of the first epoch: the new run folder is removed."""
    import astroclass.training.loop as loop
    from astroclass.training import RunConfig, train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1, batch_size=16), tmp_path / "r",
              progress=False)
    assert not (tmp_path / "r").exists()


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_or_weights_file_carrying_code_is_refused_whole_and_never_runs(tiny_h5, tmp_path, cli):
    import torch

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "astroclass", "state_dict": _Payload(marker)}, evil)
    code, _, err = cli("predict", evil, tiny_h5, "-o", tmp_path / "p.csv")
    assert code == 1 and one_line(err) and "asks to run posix.system when it is loaded" in err
    assert err.rstrip().endswith("as .safetensors)")  # the message is whole, not cut mid-sentence
    code, _, err = cli("train", tiny_h5, "--model", "resnet18", "--setup", "pretrained", "--weights", evil,
                       "-o", tmp_path / "r")
    assert code == 1 and one_line(err) and "this weights file asks to run posix.system" in err
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_a_link_in_the_catalogue_folder_to_a_file_outside_it_is_refused_by_name(tmp_path, cli):
    import shutil

    root = data_set("aries_star_galaxy")
    rows = list(csv.DictReader(open(root / "labels.csv")))
    rows = [r for r in rows if r["label"] == "star"][:12] + [r for r in rows if r["label"] == "galaxy"][:12]
    folder = tmp_path / "cat"
    folder.mkdir()
    for i, r in enumerate(rows):
        shutil.copy(root / r["path"], folder / f"{i}.png")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(root / rows[0]["path"], outside)
    (folder / "link.png").symlink_to(outside)
    with open(folder / "labels.csv", "w") as fh:
        fh.write("path,label\n" + "".join(f"{i}.png,{r['label']}\n" for i, r in enumerate(rows)) + "link.png,star\n")
    code, _, err = cli("data", "import", "catalog", folder / "labels.csv", "-o", tmp_path / "o.h5")
    assert code == 1 and one_line(err) and "row 25 (line 26): 'link.png' is a link to" in err and "outside" in err
    assert not (tmp_path / "o.h5").exists()
    code, _, err = cli("data", "import", "catalog", folder / "labels.csv", "--allow-outside", "-o", tmp_path / "o.h5")
    assert code == 0, err


def test_a_worker_reports_a_full_disk_to_the_driver_as_the_machines_not_the_runs(tiny_h5, tmp_path, monkeypatch):
    """The worker side of a full disk (injected at the checkpoint write; tests/test_full_disk.py fills a real
    one): every run of the group comes back as the machine's failure, one line, no traceback."""
    import errno

    import astroclass.training.loop as loop
    from astroclass.experiments.workers import GroupJob, execute_group
    from astroclass.training import WorkerCache

    def full(model, data, cfg, result, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "checkpoint.pt"))

    monkeypatch.setattr(loop, "save_checkpoint", full)
    cfg = {"dataset": str(tiny_h5), "model": "test_resnet", "epochs": 1, "batch_size": 16}
    job = GroupJob("k", [(f"r{i}", {**cfg, "seed": i}, str(tmp_path / f"r{i}")) for i in range(2)], "cpu",
                   threads=1, fuse="off")
    seen: dict[str, dict] = {}
    import torch

    threads = torch.get_num_threads()
    try:  # a worker sets its threads: this process's are given back for the tests after this one
        execute_group(job, lambda rid, outcome: seen.__setitem__(rid, outcome), None, WorkerCache())
    finally:
        torch.set_num_threads(threads)
    assert sorted(seen) == ["r0", "r1"]
    for outcome in seen.values():
        text = outcome["machine"]
        assert "no space left on the device" in text and "Traceback" not in text and "\n" not in text
        assert outcome["result"]["status"] == "failed"


def test_one_band_fits_beside_an_8_bit_image_points_to_channels_not_only_skip_bad(tmp_path, cli):
    from astropy.io import fits
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(12):
            fits.PrimaryHDU(rng.normal(size=(32, 32)).astype(np.float32)).writeto(tmp_path / "tree" / c / f"{i}.fits")
    code, _, err = cli("data", "import", "folder", tmp_path / "tree", "-o", tmp_path / "one.h5")
    assert code == 0, err  # one-band FITS alone: one band, whatever --channels says
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "tree" / "a" / "grey.png")
    code, _, err = cli("data", "import", "folder", tmp_path / "tree", "-o", tmp_path / "mixed.h5")
    assert code == 1 and one_line(err) and "grey.png: has 3 band(s), while 24 other images have 1" in err
    assert "--channels 1 reads them as 1" in err
    code, _, err = cli("data", "import", "folder", tmp_path / "tree", "--channels", "1", "-o", tmp_path / "mixed.h5")
    assert code == 0, err


def _enospc_inside(message: str) -> Exception:
    """torch's error for a failed write: a RuntimeError whose context is the OSError(ENOSPC) it hides."""
    import errno

    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        try:
            raise RuntimeError(message)  # noqa: B904 (the context is what torch leaves)
        except RuntimeError as exc:
            return exc


def test_a_full_disk_at_the_checkpoint_is_named_and_leaves_no_run(tiny_h5, tmp_path, cli, monkeypatch):
    """Injected where tests/test_full_disk.py fills a real disk: torch's bare "enforce fail" while the checkpoint
    is written is traced to its ENOSPC, named by the checkpoint, and the new run folder is removed."""
    import torch

    def full(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise _enospc_inside("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-q",
                       "-o", out)
    assert code == 1 and one_line(err) and f"{out / 'checkpoint.pt'}: no space left on the device" in err
    assert not out.exists()


def test_a_full_disk_while_predicting_keeps_the_finished_parts_to_continue_from(run_dir, tiny_h5, tmp_path, cli,
                                                                                 monkeypatch):
    import errno

    from astroclass import classify

    real = classify.PartStore.save
    saved: list[int] = []

    def fills_up(self, index, *args):
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self._path(index)))
        saved.append(index)
        real(self, index, *args)

    monkeypatch.setattr(classify.PartStore, "save", fills_up)
    out = tmp_path / "p.csv"
    code, _, err = cli("predict", run_dir / "checkpoint.pt", tiny_h5, "-o", out, "--part-size", "16", "-q")
    assert code == 1 and one_line(err) and f"{out}: no space left on the device" in err
    assert "the 2 of 5 parts finished are kept in" in err and not out.exists()
    monkeypatch.setattr(classify.PartStore, "save", real)
    code, stdout, err = cli("predict", run_dir / "checkpoint.pt", tiny_h5, "-o", out, "--part-size", "16")
    assert code == 0 and "resuming: 2 of 5 parts were done already" in stdout + err
    assert len(out.read_text().splitlines()) == 81
