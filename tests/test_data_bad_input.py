"""Every bad-input case of dataset preparation, with real bad files, through the CLI."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astroclass.data import PreparedDataset
from conftest import data_set


def small_catalog(tmp_path: Path, n_per_class: int = 6) -> Path:
    """A copy of a few real ARIES cutouts with a labels.csv, to damage in each test."""
    root = data_set("aries_star_galaxy")
    with open(root / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for r in rows if r["label"] == "star"][:n_per_class] + \
        [r for r in rows if r["label"] == "galaxy"][:n_per_class]
    dst = tmp_path / "cat"
    for r in picked:
        (dst / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / r["path"], dst / r["path"])
    with open(dst / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"]} for r in picked)
    return dst


def rows_of(cat: Path) -> list[dict]:
    with open(cat / "labels.csv") as fh:
        return list(csv.DictReader(fh))


def fits_catalog(tmp_path: Path) -> Path:
    """Copies of the real SDSS ugriz cubes with their labels."""
    root = data_set("sdss_ugriz_fits")
    dst = tmp_path / "fits"
    shutil.copytree(root, dst)
    return dst


def assert_fails(cli, args, *needles):
    code, out, err = cli(*args)
    assert code != 0, out
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    return err


def test_missing_file(cli, tmp_path):
    cat = small_catalog(tmp_path)
    victim = cat / rows_of(cat)[2]["path"]
    victim.unlink()
    out = tmp_path / "o.h5"
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", out], str(victim), "not found")
    assert not out.exists()
    code, text, _ = cli("data", "import", "catalog", cat / "labels.csv", "-o", out, "--skip-bad",
                        "--min-per-class", "1")
    assert code == 0 and "skipped 1" in text
    skipped = (tmp_path / "o.h5.skipped.csv").read_text()
    assert str(victim) in skipped
    with PreparedDataset(out) as ds:
        assert len(ds) == 11


def test_truncated_jpeg(cli, tmp_path):
    cat = small_catalog(tmp_path)
    victim = cat / rows_of(cat)[0]["path"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5"], str(victim))


def test_not_an_image(cli, tmp_path):
    cat = small_catalog(tmp_path)
    victim = cat / rows_of(cat)[1]["path"]
    victim.write_text("this is not a JPEG")
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5"], str(victim),
                 "not a readable image")


def test_fits_without_image_hdu(cli, tmp_path):
    cat = fits_catalog(tmp_path)
    victim = cat / "images" / "obj03.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"flux": [1.0, 2.0]}))]).writeto(victim, overwrite=True)
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "--label-col", "label_pm1", "-o",
                       tmp_path / "o.h5"], str(victim), "no image HDU")


def test_all_nan_fits(cli, tmp_path):
    cat = fits_catalog(tmp_path)
    victim = cat / "images" / "obj04.fits"
    with fits.open(victim) as hdul:
        data = hdul[0].data.copy()
        header = hdul[0].header.copy()
    data[2] = np.nan
    fits.PrimaryHDU(data, header).writeto(victim, overwrite=True)
    err = assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "--label-col", "label_pm1", "-o",
                             tmp_path / "o.h5"], str(victim), "all NaN")
    assert "band r" in err
    # partly-NaN images are repaired, not rejected
    data[2] = 20.0
    data[2, :5, :5] = np.inf
    fits.PrimaryHDU(data, header).writeto(victim, overwrite=True)
    code, _, err = cli("data", "import", "catalog", cat / "labels.csv", "--label-col", "label_pm1", "-o",
                       tmp_path / "o.h5", "--min-per-class", "3")
    assert code == 0, err


def test_mismatched_band_counts(cli, tmp_path):
    cat = fits_catalog(tmp_path)
    victim = cat / "images" / "obj05.fits"
    with fits.open(victim) as hdul:
        fits.PrimaryHDU(hdul[0].data[:3]).writeto(victim, overwrite=True)
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "--label-col", "label_pm1", "-o",
                       tmp_path / "o.h5"], str(victim), "has 3 band(s)", "have 5")
    code, _, _ = cli("data", "import", "catalog", cat / "labels.csv", "--label-col", "label_pm1", "-o",
                     tmp_path / "o.h5", "--skip-bad", "--min-per-class", "3")
    assert code == 0
    with PreparedDataset(tmp_path / "o.h5") as ds:
        assert len(ds) == 19 and ds.channels == 5


def test_csv_without_the_named_column(cli, tmp_path):
    cat = small_catalog(tmp_path)
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "--label-col", "klass", "-o",
                       tmp_path / "o.h5"], "labels.csv", "'klass'", "['path', 'label']")


def test_empty_label_names_the_row(cli, tmp_path):
    cat = small_catalog(tmp_path)
    rows = rows_of(cat)
    rows[4]["label"] = ""
    with open(cat / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5"], "row 5 (line 6)")


def test_empty_class_folder(cli, tmp_path):
    cat = small_catalog(tmp_path)
    root = cat / "images"
    (root / "quasar").mkdir()
    assert_fails(cli, ["data", "import", "folder", root, "-o", tmp_path / "o.h5"], "quasar", "no images")
    code, _, _ = cli("data", "import", "folder", root, "-o", tmp_path / "o.h5", "--skip-bad", "--min-per-class", "1")
    assert code == 0
    with PreparedDataset(tmp_path / "o.h5") as ds:
        assert ds.class_names == ["galaxy", "star"]
    assert "quasar" in (tmp_path / "o.h5.skipped.csv").read_text()


def test_class_too_small_to_split(cli, tmp_path):
    cat = small_catalog(tmp_path, n_per_class=2)
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5"],
                 "too few to split", "needs at least 3")


def test_output_exists_is_refused_and_kept(cli, tmp_path):
    cat = small_catalog(tmp_path)
    out = tmp_path / "o.h5"
    assert cli("data", "import", "catalog", cat / "labels.csv", "-o", out, "--min-per-class", "1")[0] == 0
    before = out.read_bytes()
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", out], str(out), "--overwrite")
    # a failing import with --overwrite leaves the existing file untouched
    (cat / rows_of(cat)[0]["path"]).write_text("broken")
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", out, "--overwrite"],
                 "not a readable image")
    assert out.read_bytes() == before


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    import h5py

    from astroclass.data import import_catalog

    cat = small_catalog(tmp_path)
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, name, *a, **k):
        calls["n"] += 1
        if name == "ids":
            raise KeyboardInterrupt  # the user hits ctrl-C half way through the write
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    out = tmp_path / "o.h5"
    with pytest.raises(KeyboardInterrupt):
        import_catalog(cat / "labels.csv", out, show_progress=False, min_per_class=1)
    assert calls["n"] >= 3
    assert list(tmp_path.glob("o.h5*")) == [] and list(tmp_path.glob(".o.h5*")) == []


def test_fits_table_catalogue(cli, tmp_path):
    cat = fits_catalog(tmp_path)
    with open(cat / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    Table({"file": [r["path"] for r in rows], "cls": [("star" if r["label_pm1"] == "1" else "galaxy") for r in rows]}
          ).write(cat / "cat.fits")
    code, out, err = cli("data", "import", "catalog", cat / "cat.fits", "--path-col", "file", "--label-col", "cls",
                         "-o", tmp_path / "o.h5", "--min-per-class", "3", "--fits-magnitudes")
    assert code == 0, err
    with PreparedDataset(tmp_path / "o.h5") as ds:
        assert ds.class_names == ["galaxy", "star"] and len(ds) == 20


def test_data_info_and_preview(cli, tmp_path):
    cat = small_catalog(tmp_path)
    out = tmp_path / "o.h5"
    cli("data", "import", "catalog", cat / "labels.csv", "-o", out, "--min-per-class", "1")
    code, text, _ = cli("data", "info", out, "--preview", tmp_path / "sheet.png", "--per-class", "4")
    assert code == 0
    assert "galaxy" in text and "star" in text and "content hash" in text
    from PIL import Image

    with Image.open(tmp_path / "sheet.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
    assert_fails(cli, ["data", "info", tmp_path / "nope.h5"], "nope.h5", "not found")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5")
    assert_fails(cli, ["data", "info", tmp_path / "fake.h5"], "fake.h5", "not a readable HDF5")


def test_16_bit_png_and_tiff_are_scaled_by_their_bit_depth(cli, tmp_path):
    """A 16-bit greyscale image was stored saturated (99% of pixels 255); it is now value / 257."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    truth = {}
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            a = rng.integers(0, 65536, (40, 40), dtype=np.uint16)
            for ext in ("png", "tif"):
                Image.fromarray(a).save(root / c / f"{i}.{ext}")
                truth[f"{c}/{i}.{ext}"] = a
    with Image.open(root / "a" / "0.png") as im:
        assert im.mode == "I;16"  # really 16-bit on disk
    code, _, err = cli("data", "import", "folder", root, "-o", tmp_path / "o.h5", "--size", "40", "--channels", "1",
                       "--min-per-class", "1", "--duplicates", "together")
    assert code == 0, err
    with PreparedDataset(tmp_path / "o.h5") as ds:
        imgs = ds.images(np.arange(len(ds)))
        for path, img in zip(ds.paths, imgs):
            expect = np.round(truth[path] / 257).astype(np.uint8)
            assert np.array_equal(img[0], expect), path
        assert (imgs == 255).mean() < 0.01
    # floating-point pixels have no known scale: refused, named
    Image.fromarray(rng.random((40, 40), dtype=np.float32)).save(root / "a" / "f.tif")
    assert_fails(cli, ["data", "import", "folder", root, "-o", tmp_path / "f.h5", "--min-per-class", "1"],
                 "f.tif", "floating-point pixels", "FITS")


def test_catalogue_paths_may_not_leave_its_folder(cli, tmp_path):
    cat = small_catalog(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(cat / rows_of(cat)[0]["path"], outside / "stray.jpg")
    rows = rows_of(cat)
    for bad, shown in (("../outside/stray.jpg", "../outside/stray.jpg"), (str(outside / "stray.jpg"), "stray.jpg"),
                       ("../../../../../../etc/passwd", "etc/passwd")):
        edited = [dict(r) for r in rows]
        edited[3]["path"] = bad
        with open(cat / "edited.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "label"])
            w.writeheader()
            w.writerows(edited)
        assert_fails(cli, ["data", "import", "catalog", cat / "edited.csv", "-o", tmp_path / "o.h5",
                           "--min-per-class", "1"], "edited.csv, row 4 (line 5)", shown, "is outside",
                     "--allow-outside")
        assert not (tmp_path / "o.h5").exists()
    edited = [dict(r) for r in rows]
    edited[3]["path"] = "../outside/stray.jpg"
    with open(cat / "edited.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(edited)
    code, _, err = cli("data", "import", "catalog", cat / "edited.csv", "-o", tmp_path / "o.h5", "--min-per-class", "1",
                       "--allow-outside")
    assert code == 0, err
    with PreparedDataset(tmp_path / "o.h5") as ds:
        assert "../outside/stray.jpg" in ds.paths


def test_one_image_with_two_labels_is_an_error_or_skipped_and_listed(cli, tmp_path):
    cat = small_catalog(tmp_path)
    rows = rows_of(cat)
    star = next(r for r in rows if r["label"] == "star")
    with open(cat / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([star["path"], "galaxy"])  # the same file again, as a galaxy
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5",
                       "--min-per-class", "1"], "different labels", star["path"], "--skip-bad")
    assert not (tmp_path / "o.h5").exists()
    code, _, err = cli("data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5", "--min-per-class", "1",
                       "--skip-bad")
    assert code == 0, err
    with PreparedDataset(tmp_path / "o.h5") as ds:
        assert len(ds) == len(rows) - 1 and star["path"] not in ds.paths
    skipped = list(csv.DictReader(open(tmp_path / "o.h5.skipped.csv")))
    assert len(skipped) == 2 and all("with another label" in r["reason"] for r in skipped)


def test_skipped_list_is_written_before_the_dataset_and_restored_if_that_fails(tmp_path, monkeypatch):
    import astroclass.data.importers as imp

    cat = small_catalog(tmp_path)
    (cat / rows_of(cat)[1]["path"]).write_text("broken")
    out = tmp_path / "o.h5"
    side = tmp_path / "o.h5.skipped.csv"
    side.write_text("source,reason\nold,list\n")
    seen = {}

    class Failing(imp.PreparedWriter):
        def append(self, images):  # the disk fills up while the images are written
            seen["side"] = side.read_text()  # the new list is in place before the .h5 is written
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(imp, "PreparedWriter", Failing)
    with pytest.raises(OSError):
        imp.import_catalog(cat / "labels.csv", out, show_progress=False, min_per_class=1, skip_bad=True)
    assert "broken" not in seen["side"] and rows_of(cat)[1]["path"] in seen["side"]
    assert side.read_text() == "source,reason\nold,list\n" and not out.exists()
    monkeypatch.undo()
    imp.import_catalog(cat / "labels.csv", out, show_progress=False, min_per_class=1, skip_bad=True)
    assert rows_of(cat)[1]["path"] in side.read_text() and out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_temporaries_left_by_killed_writes_are_removed_by_the_next_write_in_their_folder(cli, tmp_path):
    import socket
    import subprocess
    import sys

    cat = small_catalog(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".o.h5.{host}-{int(dead.stdout)}.k7x2.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a SIGKILL during the write leaves
    live = tmp_path / f".o.h5.{host}-{os.getpid()}.q9z1.tmp"  # a writer that is still running: kept
    live.write_bytes(b"\0")
    other = tmp_path / f".preview.png.{host}-{int(dead.stdout)}.m3p0.tmp"  # another output's, as dead: removed
    other.write_bytes(b"\0")
    remote = tmp_path / f".o.h5.another-host-{int(dead.stdout)}.a1b2.tmp"  # another host's writer: not ours to judge
    remote.write_bytes(b"\0")
    assert cli("data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5", "--min-per-class", "1")[0] == 0
    assert not stale.exists() and not other.exists() and live.exists() and remote.exists()


def test_killing_the_parent_of_an_import_stops_its_decoding_workers(tmp_path):
    """The decode pool (forkserver and workers) must not outlive `data import` when it is SIGKILLed."""
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    with open(tmp_path / "cat.csv", "w") as fh:
        fh.write("path,label\n" + "".join(f"{'ab'[i % 2]}.jpg,{'ab'[i % 2]}\n" for i in range(2000)))
    proc = subprocess.Popen([sys.executable, "-m", "astroclass", "data", "import", "catalog", str(tmp_path / "cat.csv"),
                             "-o", str(tmp_path / "o.h5"), "--workers", "2", "--min-per-class", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def descendants(pid: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        out, todo = set(), [pid]
        while todo:
            for c in children.get(todo.pop(), []):
                out.add(c)
                todo.append(c)
        return out

    deadline = time.time() + 60
    while len(descendants(proc.pid)) < 3 and time.time() < deadline:  # forkserver + 2 workers decoding
        time.sleep(0.2)
    pool = descendants(proc.pid)
    assert len(pool) >= 3, "the import never started its decode pool"
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and "Z" not in
                                         Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
                                         for p in pool if Path(f"/proc/{p}/stat").exists()):
        time.sleep(0.2)
    alive = [p for p in pool if Path(f"/proc/{p}/stat").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == [], f"decode processes outlived their parent: {alive}"
    # the decoded images' working file has no name: nothing of the killed import is left on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.jpg", "cat.csv"]
