"""Importing the real data sets in ../shared/data, EFIGI views, Galaxy10 files, determinism."""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from astroclass.data import ImageSpec, PreparedDataset, import_catalog, import_efigi, import_folder, import_galaxy10
from astroclass.data.importers import efigi_view, read_efigi_catalog
from conftest import data_set


def label_counts(csv_path: Path, col: str = "label") -> Counter:
    import csv

    with open(csv_path) as fh:
        return Counter(row[col] for row in csv.DictReader(fh))


def check_stratified(ds: PreparedDataset, fractions=(0.8, 0.1, 0.1)) -> None:
    """Every class is in every split, in proportions within one object of the requested fractions."""
    counts = ds.counts()
    for c in ds.class_names:
        total = sum(counts[s][c] for s in counts)
        for s, f in zip(("train", "val", "test"), fractions):
            assert counts[s][c] >= 1, (c, s)
            assert abs(counts[s][c] - f * total) <= 1.0 + 1e-9, (c, s, counts[s][c], total)


@pytest.mark.parametrize("name, classes, col", [
    ("aries_star_galaxy", {"star": 2587, "galaxy": 801}, "label"),
    ("galaxy10_decals_subset", None, "label"),
    ("gz1_sdss", {"elliptical": 3948, "edge_on": 848, "spiral_acw": 371, "spiral_cw": 352, "merger": 98,
                  "dont_know": 48}, "label"),
    ("gz_kaggle_spiral", {"non_spiral": 4214, "spiral": 1317}, "label"),
])
def test_import_real_jpeg_sets(tmp_path, name, classes, col):
    root = data_set(name)
    expected = label_counts(root / "labels.csv", col)
    if classes is not None:
        assert expected == classes  # the data README's counts
    out = tmp_path / f"{name}.h5"
    report = import_catalog(root / "labels.csv", out, show_progress=False)
    assert report.n_written == sum(expected.values())
    with PreparedDataset(out) as ds:
        assert ds.image_shape == (3, 76, 76) and ds.dtype == np.uint8
        assert ds.class_names == sorted(expected)
        got = Counter(ds.class_names[i] for i in ds.labels)
        assert got == expected
        check_stratified(ds)
        assert ds.content_hash == report.content_hash
        # every stored path is one from the catalogue, and ids are file stems
        assert ds.paths[0].startswith("images/") and ds.ids[0] == Path(ds.paths[0]).stem
        x, y = ds.tensors("val")
        assert x.shape[1:] == (3, 76, 76) and len(x) == len(y) == len(ds.indices("val"))
        assert 5 < float(x.float().mean()) < 250  # real pixels, not a blank array


def test_import_sdss_fits_cubes(tmp_path):
    root = data_set("sdss_ugriz_fits")
    out = tmp_path / "fits.h5"
    import_catalog(root / "labels.csv", out, label_col="label_pm1", min_per_class=3, show_progress=False,
                   spec=ImageSpec(fits_magnitudes=True))
    with PreparedDataset(out, in_memory=True) as ds:
        assert ds.image_shape == (5, 76, 76) and ds.dtype == np.float16
        assert ds.band_names == ["u", "g", "r", "i", "z"]
        assert Counter(ds.class_names[i] for i in ds.labels) == label_counts(root / "labels.csv", "label_pm1")
        x = ds.images()
        assert np.isfinite(x.astype(np.float32)).all() and x.min() >= 0 and x.max() <= 1
        # converted from magnitudes: the object (centre) is brighter than the sky (corner) in every band
        assert (x[:, :, 36:40, 36:40].astype(np.float32).mean(axis=(2, 3)) >
                x[:, :, :8, :8].astype(np.float32).mean(axis=(2, 3))).mean() > 0.9
        check_stratified(ds)
    # band selection and order by header names
    out2 = tmp_path / "gri.h5"
    import_catalog(root / "labels.csv", out2, label_col="label_pm1", min_per_class=3, show_progress=False,
                   spec=ImageSpec(bands=("i", "r", "g"), fits_magnitudes=True, fits_stretch="linear"))
    with PreparedDataset(out2) as ds2:
        assert ds2.image_shape == (3, 76, 76) and ds2.band_names == ["i", "r", "g"]


def test_same_input_same_bytes_and_seed_changes_split(tmp_path):
    root = data_set("aries_star_galaxy")
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    import_catalog(root / "labels.csv", a, workers=1, show_progress=False)
    import_catalog(root / "labels.csv", b, workers=2, show_progress=False)
    import_catalog(root / "labels.csv", c, seed=1, show_progress=False)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with PreparedDataset(a) as da, PreparedDataset(c) as dc:
        assert (da.split_codes != dc.split_codes).any()
        assert da.counts() == dc.counts()  # stratification does not depend on the seed


def test_lazy_and_in_memory_reads_agree(tmp_path):
    root = data_set("aries_star_galaxy")
    out = tmp_path / "a.h5"
    import_catalog(root / "labels.csv", out, show_progress=False)
    with PreparedDataset(out) as lazy, PreparedDataset(out, in_memory=True) as mem:
        for s in ("train", "val", "test"):
            xl, yl = lazy.tensors(s)
            xm, ym = mem.tensors(s)
            assert (xl == xm).all() and (yl == ym).all()
        idx = np.array([30, 2, 17])
        assert (lazy.images(idx) == mem.images()[idx]).all()


def test_efigi_views_match_the_paper_counts():
    cat = read_efigi_catalog(data_set("efigi") / "EFIGI_attributes.txt")
    assert len(cat) == 4458
    paper = {
        "EF-2": {"Elliptical": 289, "Spiral": 3315},
        "EF-4": {"Elliptical": 289, "Spiral": 3315, "Lenticular": 537, "Irregular": 248},
        "EF-15": {"Elliptical:-5": 227, "Spiral:0": 196, "Spiral:1": 257, "Spiral:2": 219, "Spiral:3": 517,
                  "Spiral:4": 472, "Spiral:5": 303, "Spiral:6": 448, "Spiral:7": 285, "Spiral:8": 355,
                  "Spiral:9": 263, "Lenticular:-3": 189, "Lenticular:-2": 196, "Lenticular:-1": 152,
                  "Irregular:10": 248},
    }
    for view, expected in paper.items():
        classes, label_of = efigi_view(cat, view)
        assert Counter(label_of.values()) == expected
        assert set(classes) == set(expected)
    assert sum(paper["EF-15"].values()) == 4327


def _efigi_pngs(folder: Path, names: list[str]) -> None:
    """Small real PNG files named after real PGC galaxies (the EFIGI images are not available here)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{name}.png")


def test_efigi_import_from_tgz_and_folder(tmp_path):
    cat_path = data_set("efigi") / "EFIGI_attributes.txt"
    names = [pgc for pgc, _ in read_efigi_catalog(cat_path)]
    _efigi_pngs(tmp_path / "png", names)
    tgz = tmp_path / "efigi_png_gri-1.6.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "png", arcname="efigi-1.6/png")
    out2 = tmp_path / "ef2.h5"
    import_efigi(cat_path, tgz, "EF-2", out2, show_progress=False)
    with PreparedDataset(out2) as ds:
        assert ds.class_names == ["Elliptical", "Spiral"]
        assert Counter(ds.class_names[i] for i in ds.labels) == {"Elliptical": 289, "Spiral": 3315}
        assert all(i.startswith("PGC") for i in ds.ids)
        check_stratified(ds)
    out15 = tmp_path / "ef15.h5"
    import_efigi(cat_path, tmp_path / "png", "EF-15", out15, show_progress=False)
    with PreparedDataset(out15) as ds:
        assert len(ds) == 4327 and ds.num_classes == 15
        assert ds.class_names[0] == "Elliptical:-5" and ds.class_names[-1] == "Irregular:10"


def _galaxy10_file(path: Path, size: int, per_class: int = 12) -> list[int]:
    """An official-layout Galaxy10 file (images (N,H,W,3) uint8, ans) from the real Galaxy10 JPEGs."""
    root = data_set("galaxy10_decals_subset")
    import csv

    with open(root / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    picked: list[dict] = []
    for k in range(10):
        picked += [r for r in rows if int(r["galaxy10_class"]) == k][:per_class]
    imgs = np.stack([np.asarray(Image.open(root / r["path"]).convert("RGB").resize((size, size))) for r in picked])
    ans = np.array([int(r["galaxy10_class"]) for r in picked], dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = imgs
        f["ans"] = ans
    return ans.tolist()


@pytest.mark.parametrize("size, layout", [(256, "decals"), (69, "sdss")])
def test_galaxy10_import(tmp_path, size, layout):
    h5 = tmp_path / "Galaxy10.h5"
    ans = _galaxy10_file(h5, size)
    out = tmp_path / "g10.h5"
    report = import_galaxy10(h5, out, show_progress=False, min_per_class=5)
    with PreparedDataset(out) as ds:
        assert ds.num_classes == 10 and ds.source["layout"] == layout
        assert ds.class_names[1] == ("Merging" if layout == "decals" else "Smooth_Completely_round")
        assert ds.labels.tolist() == ans and ds.ids[0] == "1"
        assert ds.image_shape == (3, 76, 76)
        check_stratified(ds)
    assert report.n_written == len(ans)


def test_folder_import_keeps_duplicates_in_one_split(tmp_path):
    root = data_set("gz_kaggle_spiral")
    src = sorted((root / "images" / "spiral").iterdir())[:30] + sorted((root / "images" / "non_spiral").iterdir())[:30]
    tree = tmp_path / "tree"
    for p in src:
        (tree / p.parent.name).mkdir(parents=True, exist_ok=True)
        (tree / p.parent.name / p.name).write_bytes(p.read_bytes())
    dup = tree / "spiral" / "copy_of_first.jpg"
    dup.write_bytes(src[0].read_bytes())
    out = tmp_path / "t.h5"
    report = import_folder(tree, out, show_progress=False)
    assert len(report.duplicates) == 1 and len(report.duplicates[0]) == 2
    with PreparedDataset(out) as ds:
        pair = [i for i, p in enumerate(ds.paths) if Path(p).name in (src[0].name, dup.name)]
        assert len(pair) == 2 and ds.split_codes[pair[0]] == ds.split_codes[pair[1]]
    report = import_folder(tree, tmp_path / "d.h5", show_progress=False, duplicates="drop")
    assert report.n_written == 60 and (tmp_path / "d.h5.skipped.csv").exists()


def test_mixed_png_and_fits_stream_into_one_float_dataset(tmp_path):
    """8-bit and FITS images in one import: stored as float16, 8-bit ones as value / 255, and an 8-bit image
    identical to a FITS one as stored is found as a duplicate (digests are taken of the stored form)."""
    from astropy.io import fits

    rng = np.random.default_rng(3)
    tree = tmp_path / "tree"
    pngs = {}
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for i in range(12):
            px = rng.integers(0, 256, (76, 76, 3), dtype=np.uint8)
            px[0, 0], px[0, 1] = 0, 255  # every band spans 0..255, so min-max scaling is value / 255
            Image.fromarray(px).save(tree / cls / f"{cls}{i:02d}.png")
            pngs[f"{cls}/{cls}{i:02d}"] = px
    fits.PrimaryHDU(pngs["b/b00"].transpose(2, 0, 1).astype(np.float32)).writeto(tree / "b" / "copy.fits")
    out = tmp_path / "m.h5"
    spec = ImageSpec(fits_interval="minmax", fits_stretch="linear")
    report = import_folder(tree, out, spec=spec, show_progress=False, min_per_class=1, workers=2)
    assert report.duplicates == [["b/b00", "b/copy"]]
    with PreparedDataset(out) as ds:
        assert ds.dtype == np.float16 and len(ds) == 25
        for i, ident in enumerate(ds.ids):
            if ident in pngs:
                want = pngs[ident].transpose(2, 0, 1).astype(np.float16) / np.float16(255)
                assert (ds.images(np.array([i]))[0] == want).all(), ident
        pair = [ds.ids.index("b/b00"), ds.ids.index("b/copy")]
        assert ds.split_codes[pair[0]] == ds.split_codes[pair[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "tree"]  # no scratch file left
