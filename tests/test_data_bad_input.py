"""Every bad-input case of dataset preparation, with real bad files, through the CLI."""

from __future__ import annotations

import csv
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
    picked = [r for r in rows if r["label"] == "star"][:n_per_class] + [r for r in rows if r["label"] == "galaxy"][:n_per_class]
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
    code, text, _ = cli("data", "import", "catalog", cat / "labels.csv", "-o", out, "--skip-bad", "--min-per-class", "1")
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
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", tmp_path / "o.h5"], "row 6")


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
    assert_fails(cli, ["data", "import", "catalog", cat / "labels.csv", "-o", out, "--overwrite"], "not a readable image")
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
