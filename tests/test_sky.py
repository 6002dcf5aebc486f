"""From survey images and a catalogue to a classified catalogue: cut-outs by RA/Dec on the real SDSS, Spitzer,
DSS and 2MASS fields of ../shared/data/survey_fields, catalogues in and out in every format, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from astroclass.data import PreparedDataset
from astroclass.errors import AstroclassError
from conftest import data_set

SDSS_3900 = "survey_fields/sdss_3900-6-0269"
SDSS_4510 = "survey_fields/sdss_4510-4-0030"


def fits_crop(src: Path, dst: Path, centre: tuple[float, float], shape: tuple[int, int], band: str,
              bin2: bool = False) -> Path:
    """A crop of a real frame (astropy's Cutout2D, keeping its own WCS) as plain float32 FITS; ``bin2``: its
    pixels summed 2x2, the WCS rescaled (another pixel scale)."""
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS

    with fits.open(src) as hdul:
        data, header = hdul[0].data, hdul[0].header
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = Cutout2D(data, centre, shape, wcs=WCS(header))
    out, w = cut.data.astype(np.float32), cut.wcs
    if bin2:
        ny, nx = (out.shape[0] // 2) * 2, (out.shape[1] // 2) * 2
        out = out[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).sum(axis=(1, 3))
        w = w.deepcopy()
        w.wcs.cd = w.wcs.cd * 2 if w.wcs.has_cd() else w.wcs.cd
        w.wcs.crpix = (w.wcs.crpix - 0.5) / 2 + 0.5  # pixel edges stay where they were
    hdr = w.to_header()
    hdr["FILTER"] = band
    fits.PrimaryHDU(out, hdr).writeto(dst)
    return dst


@pytest.fixture(scope="module")
def crop4510(tmp_path_factory) -> Path:
    """The 4510 field's g, r, i frames (each band its own WCS, a few pixels from the others) cut to their
    central 1600 x 1200 pixels, plain FITS, and its catalogue of stars."""
    folder = tmp_path_factory.mktemp("f4510")
    src = data_set(SDSS_4510)
    for b in "gri":
        fits_crop(src / f"frame-{b}-004510-4-0030.fits.bz2", folder / f"frame-{b}.fits", (1024, 744), (1200, 1600), b)
    shutil.copy(src / "stars.csv", folder / "stars.csv")
    return folder


def centroid_offsets(images: np.ndarray, radius: float = 4, snr: float = 20) -> np.ndarray:
    """Per image and band, the distance (px) of the background-subtracted light centroid within ``radius`` of
    the cut-out's centre from that centre; NaN where the source is fainter than ``snr`` times the noise."""
    n, c, s, _ = images.shape
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    inner = np.hypot(xx, yy) <= radius
    out = np.full((n, c), np.nan)
    for i in range(n):
        for b in range(c):
            im = images[i, b].astype(np.float64)
            bg = np.median(im[~inner])
            noise = 1.4826 * np.median(np.abs(im[~inner] - bg)) + 1e-9
            w = np.clip(im - bg, 0, None) * inner
            if (im - bg)[inner].max() / noise >= snr and w.sum() > 0:
                out[i, b] = np.hypot((w * xx).sum() / w.sum(), (w * yy).sum() / w.sum())
    return out


def test_stars_lie_at_the_centre_of_their_g_r_i_cutouts(crop4510, tmp_path, cli):
    """Each band has its own WCS, several pixels from the others: every cut-out is centred on the star in its
    own band (sub-pixel), so the stars' light centroids lie within 0.5 px of the centre in g, r and i."""
    out = tmp_path / "stars.h5"
    code, text, err = cli("data", "import", "sky", crop4510 / "stars.csv", "--band", f"g={crop4510}/frame-g.fits",
                          "--band", f"r={crop4510}/frame-r.fits", "--band", f"i={crop4510}/frame-i.fits",
                          "--size", "31", "--stretch", "linear", "--interval", "minmax", "--min-per-class", "1",
                          "--edge", "skip", "-o", out)
    assert code == 0, err
    with PreparedDataset(out) as ds:
        assert ds.band_names == ["g", "r", "i"] and ds.spec.cutout_size == 31 and ds.spec.reference_band == "g"
        images = ds.images()
        x_g, x_r = ds.column("cutout_x_g"), ds.column("cutout_x_r")
        assert (ds.column("cutout_coverage") == 1).all()
    assert np.median(np.abs(x_g - x_r)) > 3  # the bands' pixel grids really are apart
    offsets = centroid_offsets(images)
    for b, band in enumerate("gri"):
        measured = offsets[:, b][np.isfinite(offsets[:, b])]
        assert len(measured) >= 10, band
        assert np.median(measured) < 0.2 and np.percentile(measured, 90) < 0.5, (band, np.sort(measured))
    skipped = (out.parent / "stars.h5.skipped.csv").read_text()
    assert "on no g image" in skipped and "partial cut-out" in skipped


def test_a_band_with_other_pixels_is_resampled_onto_the_reference_grid(crop4510, tmp_path):
    """An r band with 2x2-binned pixels (another pixel scale): resampled on g's grid, its stars are still at
    the centre."""
    from astroclass.data.images import ImageSpec
    from astroclass.data.sky import import_sky

    binned = fits_crop(data_set(SDSS_4510) / "frame-r-004510-4-0030.fits.bz2", tmp_path / "r2.fits", (1024, 744),
                       (1200, 1600), "r", bin2=True)
    out = tmp_path / "b.h5"
    import_sky(crop4510 / "stars.csv", out, bands={"g": [str(crop4510 / "frame-g.fits")], "r": [str(binned)]},
               spec=ImageSpec(size=31, fits_stretch="linear", fits_interval="minmax"), edge="skip", min_per_class=1,
               show_progress=False)
    with PreparedDataset(out) as ds:
        offsets = centroid_offsets(ds.images())
    measured = offsets[:, 1][np.isfinite(offsets[:, 1])]
    assert len(measured) >= 10 and np.median(measured) < 0.3, np.sort(measured)


def test_a_galactic_wcs_and_a_votable_of_l_b(tmp_path, cli):
    """Spitzer GLIMPSE: the image's WCS is galactic (GLON-CAR), the catalogue a VOTable of l, b: no label
    column, so the dataset holds objects to classify, every catalogue column kept."""
    field = data_set("survey_fields/spitzer_glimpse_l018")
    out = tmp_path / "glimpse.h5"
    code, text, err = cli("data", "import", "sky", field / "catalog.xml", "--band", f"irac2={field}/image.fits",
                          "--size", "15", "--stretch", "linear", "--interval", "minmax", "-o", out)
    assert code == 0, err
    with PreparedDataset(out) as ds:
        assert len(ds) == 224 and not ds.labelled and ds.source["frame"] == "galactic"
        assert {"l", "b", "f4_5", "mag4_5", "catalog_row"} <= set(ds.column_names())
        offsets = centroid_offsets(ds.images(), radius=3)
    measured = offsets[np.isfinite(offsets)]
    assert len(measured) > 100 and np.median(measured) < 0.5
    from astroclass.training import RunConfig, train

    with pytest.raises(AstroclassError, match="unlabelled dataset"):
        train(RunConfig(dataset=str(out), model="test_resnet", epochs=1), tmp_path / "run", progress=False)


def test_an_old_plate_solution_without_ctype_and_sexagesimal_positions(tmp_path, cli):
    """The DSS plate of M67 has no CTYPE: astropy turns its plate solution into a WCS. The cluster's centre,
    given in sexagesimal text, lands near the middle of the plate extracted around it; a row with a
    declination beyond 90° is named, and left out with --skip-bad."""
    plate = data_set("survey_fields/dss_m67") / "M6707HH.fits"
    cat = tmp_path / "m67.csv"
    cat.write_text("name,ra,dec\nM67,08:51:18,+11:48:00\nnowhere,08:51:18,+95:00:00\n")
    args = ["data", "import", "sky", cat, "--band", f"pos={plate}", "--id-col", "name", "-o", tmp_path / "m.h5"]
    code, _, err = cli(*args)
    assert code == 1 and "m67.csv, row 2 (line 3)" in err and "beyond ±90°" in err and "--skip-bad" in err
    code, _, err = cli(*args, "--skip-bad")
    assert code == 0, err
    with PreparedDataset(tmp_path / "m.h5") as ds:
        assert ds.ids == ["M67"]
        x, y = ds.column("cutout_x_pos")[0], ds.column("cutout_y_pos")[0]
    assert abs(x - 529) < 60 and abs(y - 529) < 60, (x, y)
    assert "row 2 (line 3)" in (tmp_path / "m.h5.skipped.csv").read_text()


def test_a_plain_text_catalogue_with_repeated_positions(tmp_path, cli):
    """2MASS: a whitespace table with no header (col1, col2), half its rows off the images, many repeated:
    without named columns a one-line error lists the columns; with them, the rows off the mosaic are listed
    and identical cut-outs are kept in one split."""
    field = data_set("survey_fields/twomass_galactic_centre")
    bands = [a for b in "jhk" for a in ("--band", f"{b.upper()}={field}/2MASS_{b}.fits.gz")]
    out = tmp_path / "tm.h5"
    code, _, err = cli("data", "import", "sky", field / "sources.txt", *bands, "-o", out)
    assert code == 1 and "no RA/Dec columns" in err and "['col1', 'col2']" in err and "--ra-col" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, text, err = cli("data", "import", "sky", field / "sources.txt", *bands, "--ra-col", "col1", "--dec-col",
                          "col2", "--size", "16", "-o", out)
    assert code == 0, err
    with PreparedDataset(out) as ds:
        assert len(ds) == 1270 and ds.band_names == ["J", "H", "K"]
        rows = ds.column("catalog_row")
        pos = np.stack([ds.column("col1"), ds.column("col2")], 1)
        split = ds.split_codes
    _, first, inverse = np.unique(pos, axis=0, return_index=True, return_inverse=True)
    assert len(first) < len(pos)  # repeated positions
    assert (split == split[first][inverse.ravel()]).all()  # each group in one split
    skipped = list(csv.reader(open(tmp_path / "tm.h5.skipped.csv")))[1:]
    assert len(skipped) == 2356 - 1270 and all("on no J image" in r[1] for r in skipped)
    assert len(set(rows.tolist())) == 1270


def test_a_cube_and_a_tile_compressed_extension_give_the_cut_outs_their_planes_give(tmp_path):
    """The 2MASS J, H, K mosaics share one pixel grid: stacked into a cube (BANDS = 'J,H,K', a third WCS axis)
    they give the same cut-outs as the three files; K written tile-compressed (.fz) in an extension HDU gives
    the same as K plain."""
    from astropy.io import fits

    from astroclass.data.images import ImageSpec
    from astroclass.data.sky import import_sky

    field = data_set("survey_fields/twomass_galactic_centre")
    planes, header = [], None
    for b in "jhk":
        with fits.open(field / f"2MASS_{b}.fits.gz") as hdul:
            planes.append(hdul[0].data.astype(np.float32))
            header = header or hdul[0].header.copy()
    cube = fits.PrimaryHDU(np.stack(planes), header)
    cube.header["NAXIS"], cube.header["CTYPE3"], cube.header["BANDS"] = 3, "BAND", "J,H,K"
    cube.writeto(tmp_path / "cube.fits")
    with fits.open(field / "2MASS_k.fits.gz", do_not_scale_image_data=True) as hdul:  # int16 and BSCALE: lossless
        k = fits.CompImageHDU(hdul[0].data, hdul[0].header, name="SCI")
        fits.HDUList([fits.PrimaryHDU(), k]).writeto(tmp_path / "k.fits.fz")
    kw = dict(ra_col="col1", dec_col="col2", spec=ImageSpec(size=16), duplicates="drop", show_progress=False)
    import_sky(field / "sources.txt", tmp_path / "cube.h5", images=[str(tmp_path / "cube.fits")], **kw)
    import_sky(field / "sources.txt", tmp_path / "files.h5",
               bands={b.upper(): [str(field / f"2MASS_{b}.fits.gz")] for b in "jhk"}, **kw)
    import_sky(field / "sources.txt", tmp_path / "fz.h5", bands={"K": [f"{tmp_path}/k.fits.fz[SCI]"]}, **kw)
    import_sky(field / "sources.txt", tmp_path / "k.h5", bands={"K": [str(field / "2MASS_k.fits.gz")]}, **kw)
    with PreparedDataset(tmp_path / "cube.h5") as a, PreparedDataset(tmp_path / "files.h5") as b:
        assert a.band_names == b.band_names == ["J", "H", "K"] and len(a) > 500
        np.testing.assert_array_equal(a.images(), b.images())
    with PreparedDataset(tmp_path / "fz.h5") as a, PreparedDataset(tmp_path / "k.h5") as b:
        assert list(a.column("cutout_hdu_K")) == [1] * len(a)
        # the same pixels, scaled by BSCALE in another precision: the same to float16 rounding
        np.testing.assert_allclose(a.images().astype(np.float32), b.images().astype(np.float32), atol=1e-3)


def test_overlapping_images_give_each_object_the_one_where_it_lies_farthest_from_an_edge(tmp_path):
    """Two overlapping crops of one g frame: an object on both is cut from the crop where it is deeper
    inside."""
    from astroclass.catalogs import read_catalog, sky_positions
    from astroclass.data.sky import find_images, plan_cutouts

    src = data_set(SDSS_4510) / "frame-g-004510-4-0030.fits.bz2"
    left = fits_crop(src, tmp_path / "left.fits", (600, 744), (1489, 1200), "g")
    right = fits_crop(src, tmp_path / "right.fits", (1500, 744), (1489, 1096), "g")
    order, images = find_images({"g": [str(left), str(right)]})
    pos = sky_positions(read_catalog(data_set(SDSS_4510) / "stars.csv"), "stars.csv")
    plan = plan_cutouts(pos.coords, order, images)
    chosen = plan.image_of["g"]
    assert {0, 1} <= set(chosen[chosen >= 0].tolist())
    margins = []
    for im in images["g"]:  # each object's distance to the nearest edge of each crop, from that crop's own WCS
        x, y = im.wcs().world_to_pixel(pos.coords)
        ny, nx = im.shape
        margins.append(np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y]))
    margins = np.array(margins)
    on_both = (margins > 0).all(axis=0)
    assert on_both.sum() > 10 and (chosen[on_both] == 1).any() and (chosen[on_both] == 0).any()
    assert (margins[chosen[on_both], np.flatnonzero(on_both)] >= margins.max(axis=0)[on_both]).all()


def test_joint_band_scaling_keeps_the_colour_that_per_band_scaling_loses():
    """A source three times brighter in i than in g: scaled per band, both bands fill [0, 1]; scaled jointly
    (Lupton et al. 2004), i stays three times g wherever neither is clipped."""
    from astroclass.data.images import ImageSpec, scale_bands

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] - 15.5
    source = np.exp(-(xx ** 2 + yy ** 2) / 20)
    raw = np.stack([source * 1.0, source * 3.0])[None] + rng.normal(0, 0.001, (1, 2, 32, 32))
    per_band = scale_bands(raw, ImageSpec(), "t", ("g", "i"))[0]
    joint = scale_bands(raw, ImageSpec(band_scaling="joint"), "t", ("g", "i"))[0]
    assert per_band[0].max() == pytest.approx(1, abs=0.01) and per_band[1].max() == pytest.approx(1, abs=0.01)
    core = (joint[1] < 0.99) & (source > 0.1)
    assert core.sum() > 10
    assert np.allclose(joint[1][core] / joint[0][core], 3.0, rtol=0.05)
    assert joint.max() <= 1 and joint.min() >= 0


# ---------------------------------------------------------------------------------------------
# the three commands on the real SDSS field, and catalogues out


@pytest.fixture(scope="module")
def field3900(tmp_path_factory) -> dict:
    """SDSS run 3900 field 269 (u and i, 562 labelled objects): cut out, trained for one epoch (fp32)."""
    from astroclass.data.sky import import_sky
    from astroclass.training import RunConfig, train

    folder = tmp_path_factory.mktemp("f3900")
    field = data_set(SDSS_3900)
    import_sky(field / "catalog.csv", folder / "field.h5", images=[f"{field}/frame-*.fits.bz2"], show_progress=False)
    train(RunConfig(dataset=str(folder / "field.h5"), model="test_resnet", epochs=1, amp="off"), folder / "run",
          progress=False)
    return {"folder": folder, "field": field, "h5": folder / "field.h5", "ckpt": folder / "run" / "checkpoint.pt"}


def test_survey_images_to_a_classified_fits_catalogue_in_three_commands(field3900, tmp_path, cli):
    """Cut out (labelled), train, then classify the FITS catalogue straight from the frames: the output is a
    FITS table that astropy opens, with every input column, rows in catalogue order, the model card in its
    header, and the probabilities the model gives the same objects' cut-outs in the dataset."""
    from astropy.table import Table

    field = field3900["field"]
    with PreparedDataset(field3900["h5"]) as ds:
        assert ds.band_names == ["u", "i"] and ds.class_names == ["galaxy", "star"] and len(ds) == 562
        assert ds.ids == [str(i) for i in range(1, 563)]
    out = tmp_path / "classified.fits"
    code, text, err = cli("predict", field3900["ckpt"], "--catalog", field / "catalog.fits", "--images",
                          f"{field}/frame-*.fits.bz2", "-o", out, "-q")
    assert code == 0, err
    got = Table.read(out)
    cat = Table.read(field / "catalog.fits")
    assert got.colnames == [*cat.colnames, "cutout_coverage", "predicted", "p_galaxy", "p_star", "unfamiliar_score",
                            "unfamiliar", "status", "error"]
    assert (got["objid"] == cat["objid"]).all() and np.allclose(got["ra"], cat["ra"])
    assert set(got["status"]) == {"ok"} and set(got["predicted"]) <= {"galaxy", "star"}
    assert got.meta["ACMODEL"] == "test_resnet" and got.meta["ACCLASS"] == "galaxy,star"
    assert got.meta["ACBANDS"] == "u,i" and 0 <= got.meta["ACTACC"] <= 1
    # the same objects through the dataset the model was trained on: the same cut-outs, the same probabilities
    code, _, err = cli("predict", field3900["ckpt"], field3900["h5"], "-o", tmp_path / "h5.csv", "-q")
    assert code == 0, err
    via_h5 = Table.read(tmp_path / "h5.csv")
    assert (via_h5["objid"] == cat["objid"]).all()  # the dataset kept the catalogue's columns
    np.testing.assert_allclose(np.asarray(got["p_star"]), np.asarray(via_h5["p_star"]), atol=1e-5)
    # and from Python, as in a notebook
    import astroclass

    table = astroclass.load(field3900["ckpt"]).classify_catalog(field / "catalog.fits", tmp_path / "api.ecsv",
                                                                 images=[f"{field}/frame-*.fits.bz2"])
    assert table.colnames == got.colnames and (tmp_path / "api.ecsv").is_file()
    np.testing.assert_allclose(np.asarray(table["p_star"]), np.asarray(got["p_star"]), atol=1e-6)


@pytest.mark.parametrize("suffix", [".parquet", ".vot", ".xml", ".ecsv", ".csv"])
def test_every_output_format_opens_in_astropy_with_every_column(field3900, tmp_path, cli, suffix):
    from astropy.table import Table

    field = field3900["field"]
    out = tmp_path / f"p{suffix}"
    code, _, err = cli("predict", field3900["ckpt"], "--catalog", field / "catalog.csv", "--band",
                       f"u={field}/frame-u-003900-6-0269.fits.bz2", "--band",
                       f"i={field}/frame-i-003900-6-0269.fits.bz2", "-o", out, "-q")
    assert code == 0, err
    got = Table.read(out)
    assert len(got) == 562 and {"objid", "petroth50_r", "predicted", "p_galaxy", "status"} <= set(got.colnames)
    if suffix in (".parquet", ".ecsv"):
        assert got.meta["ACMODEL"] == "test_resnet"
    if suffix in (".vot", ".xml"):
        from astropy.io.votable import parse

        infos = {i.name: i.value for i in parse(str(out)).resources[0].infos}
        assert infos["ACMODEL"] == "test_resnet" and infos["ACCLASS"] == "galaxy,star"
    if suffix == ".parquet":
        import pandas as pd

        assert pd.read_parquet(out).shape == (562, len(got.colnames))


def test_bad_output_and_column_options_are_refused_before_any_work(field3900, tmp_path, cli):
    field = field3900["field"]
    ck = field3900["ckpt"]
    code, _, err = cli("predict", ck, "--catalog", field / "catalog.csv", "--images", f"{field}/frame-*.fits.bz2",
                       "-o", tmp_path / "p.json")
    assert code == 1 and "unknown catalogue format '.json'" in err and not (tmp_path / "p.json").exists()
    assert not list(tmp_path.iterdir())
    # a mistyped id column: a one-line error listing the columns, not ids silently made of paths
    cat = tmp_path / "paths.fits"
    from astropy.table import Table

    root = data_set("aries_star_galaxy")
    Table({"path": [str(root / "images/star/IC3521-H01_1198_1599_6.jpg")], "name": ["a"]}).write(cat)
    code, _, err = cli("predict", ck, cat, "--id-col", "nmae", "--allow-outside", "-o", tmp_path / "p.csv")
    assert code == 1 and "no id column 'nmae'" in err and "['path', 'name']" in err
    # a catalogue naming the model's output columns already
    clash = tmp_path / "clash.csv"
    clash.write_text("ra,dec,predicted\n164.35,39.05,star\n")
    code, _, err = cli("predict", ck, "--catalog", clash, "--images", f"{field}/frame-*.fits.bz2", "-o",
                       tmp_path / "c.csv")
    assert code == 1 and "['predicted']" in err and not (tmp_path / "c.csv").exists()
    code, _, err = cli("predict", ck, "--catalog", field / "catalog.csv", "-o", tmp_path / "c.csv")
    assert code == 1 and "--band" in err


def test_a_fits_table_of_paths_is_a_catalogue_not_an_image(field3900, tmp_path, cli):
    """predict CKPT cat.fits reads a FITS table of image paths as a catalogue (its columns kept)."""
    from astropy.io import fits
    from astropy.table import Table

    with PreparedDataset(field3900["h5"]) as ds:
        imgs = ds.images(np.arange(3))
    paths = []
    for i, img in enumerate(imgs):
        hdu = fits.PrimaryHDU(img.astype(np.float32))
        hdu.header["BANDS"] = "u,i"  # the model takes bands u, i: the file must say which planes they are
        hdu.writeto(tmp_path / f"o{i}.fits")
        paths.append(f"o{i}.fits")
    Table({"path": paths, "mag": [1.0, 2.0, 3.0]}).write(tmp_path / "cat.fits")
    code, _, err = cli("predict", field3900["ckpt"], tmp_path / "cat.fits", "-o", tmp_path / "out.fits", "-q")
    assert code == 0, err
    got = Table.read(tmp_path / "out.fits")
    assert list(got["mag"]) == [1.0, 2.0, 3.0] and set(got["status"]) == {"ok"}


def test_a_killed_prediction_resumes_without_redoing_finished_parts(field3900, tmp_path, monkeypatch):
    from astropy.table import Table

    from astroclass import classify
    from astroclass.predict import load

    field = field3900["field"]
    clf = load(field3900["ckpt"], "cpu")

    def job():
        return classify.sky_job(clf, field / "catalog.fits", images=[f"{field}/frame-*.fits.bz2"], part_size=128)

    full = classify.run_job(clf, job(), tmp_path / "full.fits", progress=False)
    assert full["resumed_parts"] == 0
    real = classify.predict_parts
    done = []

    def dies_after_two(clf_, parts, tta, workers, embed=None):
        for item in real(clf_, parts, tta, workers, embed):
            if len(done) == 2:
                raise KeyboardInterrupt
            done.append(item[0].index)
            yield item

    monkeypatch.setattr(classify, "predict_parts", dies_after_two)
    out = tmp_path / "out.fits"
    with pytest.raises(KeyboardInterrupt):
        classify.run_job(clf, job(), out, progress=False)
    assert not out.exists() and len(list((tmp_path / ".out.fits.parts").glob("part-*.npz"))) == 2
    processed: list[int] = []

    def counting(clf_, parts, tta, workers, embed=None):
        processed.extend(p.index for p in parts)
        yield from real(clf_, parts, tta, workers, embed)

    monkeypatch.setattr(classify, "predict_parts", counting)
    again = classify.run_job(clf, job(), out, progress=False)
    assert sorted(processed) == [i for i in range(len(job().parts)) if i not in done]
    assert again["resumed_parts"] == 2 and again["ok"] == full["ok"] == 562
    assert not (tmp_path / ".out.fits.parts").exists()
    a, b = Table.read(out), Table.read(tmp_path / "full.fits")
    np.testing.assert_array_equal(np.asarray(a["p_star"]), np.asarray(b["p_star"]))
    # another job for the same output (here with TTA) does not take the parts of an earlier one
    monkeypatch.setattr(classify, "predict_parts", dies_after_two)
    done.clear()
    with pytest.raises(KeyboardInterrupt):
        classify.run_job(clf, job(), tmp_path / "o2.fits", progress=False)
    monkeypatch.setattr(classify, "predict_parts", real)
    other = classify.run_job(clf, job(), tmp_path / "o2.fits", tta=True, progress=False)
    assert other["resumed_parts"] == 0


# ---------------------------------------------------------------------------------------------
# bad survey input


def test_bad_survey_input_gets_one_line_errors_or_failed_rows(crop4510, field3900, tmp_path, cli):
    from astropy.io import fits

    stars = crop4510 / "stars.csv"
    g = crop4510 / "frame-g.fits"
    # a catalogue without coordinates names the columns it has
    nocoord = tmp_path / "nocoord.csv"
    nocoord.write_text("name,mag\na,1\n")
    code, _, err = cli("data", "import", "sky", nocoord, "--band", f"g={g}", "-o", tmp_path / "x.h5")
    assert code == 1 and "['name', 'mag']" in err and "Traceback" not in err
    # a non-numeric coordinate: the row is named
    text = stars.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], "abc,36.8,star", *text[1:]]) + "\n")
    code, _, err = cli("data", "import", "sky", bad, "--band", f"g={g}", "-o", tmp_path / "x.h5")
    assert code == 1 and "bad.csv, row 1 (line 2)" in err and "'abc'" in err
    # an image without a celestial WCS is named
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((50, 50), np.float32)).writeto(plain)
    code, _, err = cli("data", "import", "sky", stars, "--band", f"g={plain}", "-o", tmp_path / "x.h5")
    assert code == 1 and "plain.fits" in err and "no celestial WCS" in err
    # a file that is not FITS, and a pattern matching nothing
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file at all" * 10)
    code, _, err = cli("data", "import", "sky", stars, "--band", f"g={junk}", "-o", tmp_path / "x.h5")
    assert code == 1 and "junk.fits" in err and "not a readable FITS image" in err
    code, _, err = cli("data", "import", "sky", stars, "--band", f"g={tmp_path}/nothing-*.fits", "-o",
                       tmp_path / "x.h5")
    assert code == 1 and "no file matches" in err
    assert not (tmp_path / "x.h5").exists()
    # a truncated frame (header whole, pixels cut short): every object on it fails with the file named
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    code, _, err = cli("data", "import", "sky", stars, "--band", f"g={trunc}", "-o", tmp_path / "x.h5")
    assert code == 1 and "trunc.fits" in err and "Traceback" not in err and not (tmp_path / "x.h5").exists()
    # blank (NaN) pixels: padded with the local sky and flagged; an object with no real pixel around it fails
    blank = tmp_path / "blank.fits"
    with fits.open(g) as hdul:
        data = hdul[0].data.copy()
        data[:, :150] = np.nan
        fits.PrimaryHDU(data, hdul[0].header).writeto(blank)
    coverage = {}
    for name, frame in (("whole", g), ("blank", blank)):
        code, text, err = cli("data", "import", "sky", stars, "--band", f"g={frame}", "--size", "31", "--skip-bad",
                              "--min-per-class", "1", "-o", tmp_path / f"{name}.h5")
        assert code == 0, err
        with PreparedDataset(tmp_path / f"{name}.h5") as ds:
            x = dict(zip(ds.column("catalog_row").tolist(), ds.column("cutout_x_g")))
            coverage[name] = dict(zip(ds.column("catalog_row").tolist(), ds.column("cutout_coverage")))
            assert np.isfinite(ds.images().astype(np.float32)).all()
    assert all(v > 134 for v in x.values())  # objects whose cut-out is all blank failed: not in the dataset
    assert any(0 < coverage["blank"][r] < coverage["whole"][r] for r in x if x[r] < 166)
    assert all(coverage["blank"][r] == coverage["whole"][r] for r in x if x[r] > 170)
    assert "no real pixel within the cut-out" in (tmp_path / "blank.h5.skipped.csv").read_text()
    # predicting from the truncated frame: failed rows with the reason, the others classified
    ck = field3900["ckpt"]
    field = field3900["field"]
    u = field / "frame-u-003900-6-0269.fits.bz2"
    bad_i = tmp_path / "frame-i.fits"
    with fits.open(field / "frame-i-003900-6-0269.fits.bz2") as hdul:
        fits.PrimaryHDU(hdul[0].data, hdul[0].header).writeto(tmp_path / "whole-i.fits")
    bad_i.write_bytes((tmp_path / "whole-i.fits").read_bytes()[:6_000_000])
    code, text, err = cli("predict", ck, "--catalog", field / "catalog.csv", "--band", f"u={u}", "--band",
                          f"i={bad_i}", "-o", tmp_path / "p.csv", "-q")
    assert code == 3, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 562 and {r["status"] for r in rows} == {"failed"}
    assert all("frame-i.fits" in r["error"] and "unreadable FITS data" in r["error"] for r in rows)


@pytest.mark.slow
def test_a_ray_cluster_without_shared_storage_classifies_a_catalogue_and_resumes(field3900, tmp_path, monkeypatch):
    """Two Ray nodes on this machine; the one that works does not see the driver's folder, where the catalogue,
    the frames and the checkpoint are: the frames and the checkpoint reach it through the object store. A local
    prediction killed after two parts leaves them done; run again on the cluster it classifies only the rest,
    and its table equals an uninterrupted local run's."""
    import sys

    from astropy.table import Table

    from astroclass import classify
    from astroclass.predict import load
    from conftest import two_node_ray

    driver = tmp_path / "driver"
    driver.mkdir()
    for f in ("catalog.fits", "frame-u-003900-6-0269.fits.bz2", "frame-i-003900-6-0269.fits.bz2"):
        shutil.copy(field3900["field"] / f, driver / f)
    shutil.copy(field3900["ckpt"], driver / "model.pt")
    monkeypatch.chdir(driver)
    clf = load("model.pt")

    def job():
        return classify.sky_job(clf, "catalog.fits", images=["frame-*.fits.bz2"], part_size=128)

    n_parts = len(job().parts)
    full = classify.run_job(clf, job(), driver / "local.fits", progress=False)
    real = classify.predict_parts

    def dies_after_two(clf_, parts, tta, workers, embed=None):
        for k, item in enumerate(real(clf_, parts, tta, workers, embed)):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(classify, "predict_parts", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        classify.run_job(clf, job(), driver / "out.fits", progress=False)
    monkeypatch.setattr(classify, "predict_parts", real)
    assert len(list(driver.glob(".out.fits.parts/part-*.npz"))) == 2
    with two_node_ray(tmp_path, driver) as cluster:
        out = cluster.run(driver, sys.executable, "-m", "astroclass", "predict", "model.pt", "--catalog",
                          "catalog.fits", "--images", "frame-*.fits.bz2", "--part-size", "128", "--engine", "ray",
                          "--ray-address", cluster.address, "-o", "out.fits", "-q")
    assert f"resuming: 2 of {n_parts} parts were done already" in out.stderr
    assert f"{full['ok']} predicted, 0 failed" in out.stdout
    got, want = Table.read(driver / "out.fits"), Table.read(driver / "local.fits")
    assert (got["objid"] == want["objid"]).all() and list(got["predicted"]) == list(want["predicted"])
    np.testing.assert_allclose(np.asarray(got["p_star"]), np.asarray(want["p_star"]), atol=1e-5)
    assert not (driver / ".out.fits.parts").exists()
    # the working node received the checkpoint and both frames into its own cache, each once
    received = sorted(p.name for p in (cluster.node / "cache" / "files").glob("*/[!.]*"))
    assert received == ["frame-i-003900-6-0269.fits.bz2", "frame-u-003900-6-0269.fits.bz2", "model.pt"]
