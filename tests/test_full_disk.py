"""A disk that really fills up, and one that cannot be written: small tmpfs mounted for the test (where the
machine lets a test mount one; tests/test_robustness.py injects the same errors where it does not). Every
command ends in one line naming the file and what to do, leaves nothing half-written, and continues once
space is freed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from test_robustness import one_line, tiny_grid

from conftest import data_set


def mounted(disk: Path, options: str):
    """A tmpfs at ``disk``. Mounting needs root: run by another user the test is skipped (the same errors are
    injected by tests/test_robustness.py); as root a mount that fails fails the test."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root; tests/test_robustness.py injects the same errors")
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True)
    assert done.returncode == 0, f"root could not mount a tmpfs: {done.stderr.decode().strip()}"
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system at tmp_path / 'disk', unmounted afterwards."""
    yield from mounted(tmp_path / "disk", "size=1m")


@pytest.fixture
def read_only_disk(tmp_path):
    yield from mounted(tmp_path / "ro", "size=1m,ro")


def fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk`` but ``leave`` bytes."""
    import os

    filler = disk / "filler"
    st = os.statvfs(disk)
    filler.write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - leave)))
    return filler




def test_train_on_a_full_disk_names_the_checkpoint_and_leaves_no_run_folder(tiny_h5, small_disk, cli):
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-q",
                       "-o", small_disk / "run")
    assert code == 1 and one_line(err), err
    assert f"{small_disk / 'run' / 'checkpoint.pt'}: no space left on the device" in err
    assert list(small_disk.iterdir()) == []


def test_import_on_a_full_disk_names_the_output_and_leaves_nothing(small_disk, cli):
    code, _, err = cli("data", "import", "catalog", data_set("aries_star_galaxy") / "labels.csv", "-o",
                       small_disk / "d.h5")
    assert code == 1 and one_line(err) and f"{small_disk / 'd.h5'}: no space left on the device" in err
    assert list(small_disk.iterdir()) == []


def test_a_grid_stops_on_a_full_disk_without_spending_attempts_and_continues_once_space_is_freed(
        tiny_h5, small_disk, cli, tmp_path):
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({"name": "g", "datasets": {"SG": str(tiny_h5)}, "models": ["test_resnet"],
                                    "setups": ["scratch"], "l2": [0.0, 0.1], "maxnorm": [0.0],
                                    "optimizers": ["adam"], "train": {"epochs": 1, "batch_size": 16}}))
    exp = small_disk / "exp"
    code, _, err = cli("grid", "run", spec, "-e", exp, "-q", "--workers", "2", "--threads", "1")
    assert code == 1 and one_line(err) and "no space left on the device" in err and "The grid stopped" in err
    code, out, _ = cli("grid", "status", spec, "-e", exp)
    assert code == 0 and "pending 2, running 0, done 0, failed 0" in out  # no attempt spent, nothing failed
    assert [p.name for p in (exp / "runs").iterdir()] == []  # no attempt's files left
    # the store moves elsewhere with room: the grid finishes every run
    roomy = tmp_path / "exp"
    import shutil

    shutil.copytree(exp, roomy)
    code, _, err = cli("grid", "run", spec, "-e", roomy, "-q", "--threads", "1")
    assert code == 0, err
    code, out, _ = cli("grid", "status", spec, "-e", roomy)
    assert "done 2" in out


def test_predict_on_a_full_disk_keeps_its_finished_parts_and_continues_once_space_is_freed(
        tiny_h5, small_disk, cli, tmp_path):
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-q",
                       "-o", tmp_path / "run")
    assert code == 0, err
    cat = data_set("aries_star_galaxy") / "labels.csv"
    filler = fill(small_disk, 48 * 1024)
    out = small_disk / "p.csv"
    code, _, err = cli("predict", tmp_path / "run" / "checkpoint.pt", cat, "-o", out, "--part-size", "512", "-q")
    assert code == 1 and one_line(err) and f"{out}: no space left on the device" in err
    assert "parts finished are kept in" in err and "continues from them" in err and not out.exists()
    kept = len(list((small_disk / ".p.csv.parts").glob("part-*.npz")))
    assert kept >= 1
    filler.unlink()
    code, stdout, err = cli("predict", tmp_path / "run" / "checkpoint.pt", cat, "-o", out, "--part-size", "512")
    assert code == 0, err
    assert f"resuming: {kept} of" in stdout + err
    assert len(out.read_text().splitlines()) == 1 + len(cat.read_text().splitlines()) - 1
    assert not (small_disk / ".p.csv.parts").exists()


def test_every_output_on_a_read_only_file_system_is_one_line_before_any_work(tiny_h5, read_only_disk, cli,
                                                                             tmp_path):
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "-q", "-o",
                       tmp_path / "run")
    assert code == 0, err
    ck = tmp_path / "run" / "checkpoint.pt"
    cat = data_set("aries_star_galaxy") / "labels.csv"
    ro = read_only_disk
    for args in (("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "-q", "-o", ro / "run"),
                 ("data", "import", "catalog", cat, "-o", ro / "d.h5"),
                 ("predict", ck, cat, "-q", "-o", ro / "p.csv"),
                 ("data", "info", tiny_h5, "--preview", ro / "x.png"),
                 ("export", ck, "--onnx", ro / "m.onnx"),
                 ("grid", "export", tiny_grid(tiny_h5, tmp_path).parent / "exp", "-o", ro / "r.csv")):
        code, _, err = cli(*args)
        assert code == 1 and one_line(err) and str(ro) in err, (args, err)
        assert "read-only" in err or "not writable" in err, (args, err)
