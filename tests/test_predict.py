"""Predict: parity with training-time evaluation on real images, TTA, export, bad inputs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import astroclass
from astroclass.data import PreparedDataset
from astroclass.errors import AstroclassError
from astroclass.training import RunConfig, dihedral, train
from conftest import data_set


@pytest.fixture(scope="module")
def trained(tiny_h5, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pred") / "run"
    # fp32 (amp off): predictions must then equal the training evaluation to 1e-5 whatever the batching
    train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, batch_size=16, seed=1, amp="off"), run,
          progress=False)
    return run


def rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def probs_of(rows_: list[dict], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows_])


def test_predict_equals_training_evaluation_on_h5_and_on_the_jpeg_files(trained, tiny_h5, tmp_path, cli):
    evald = np.load(trained / "predictions.npz")
    clf = astroclass.load(trained / "checkpoint.pt")
    code, out, err = cli("predict", trained / "checkpoint.pt", tiny_h5, "-o", tmp_path / "h5.csv", "-q")
    assert code == 0, err
    got = rows(tmp_path / "h5.csv")
    with PreparedDataset(tiny_h5) as ds:
        assert [r["id"] for r in got] == ds.ids
        test_paths = [ds.paths[i] for i in ds.indices("test")]
    p = probs_of(got, clf.class_names)
    np.testing.assert_allclose(p[evald["test_index"]], evald["test_probs"], atol=1e-5)
    # the same test images read again from the real JPEG files, with the checkpoint's preprocessing
    root = data_set("aries_star_galaxy")
    cat = tmp_path / "new.csv"
    with open(cat, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file"])
        w.writerows([[str(root / p)] for p in test_paths])
    # absolute paths leave the catalogue's folder: refused (nothing read or written) unless --allow-outside
    args = ("predict", trained / "checkpoint.pt", cat, "--path-col", "file", "-o", tmp_path / "jpg.csv", "-q")
    code, _, err = cli(*args)
    assert code == 1 and "new.csv, row 1 (line 2)" in err and "--allow-outside" in err
    assert not (tmp_path / "jpg.csv").exists()
    code, _, err = cli(*args, "--allow-outside")
    assert code == 0, err
    np.testing.assert_allclose(probs_of(rows(tmp_path / "jpg.csv"), clf.class_names), evald["test_probs"], atol=1e-5)
    # and through the Python API
    api = clf.predict([root / p for p in test_paths[:3]])
    np.testing.assert_allclose(api, evald["test_probs"][:3], atol=1e-5)


def test_amp_auto_follows_the_training_run(trained, tmp_path):
    """auto does as the run did: fp32 for fp32 runs, bf16 for bf16 runs, and for amp="auto" runs bf16 exactly
    where training used it."""
    from astroclass.training import auto_amp

    assert astroclass.load(trained / "checkpoint.pt").amp is False  # the fixture's run: amp off
    ck = torch.load(trained / "checkpoint.pt", weights_only=True)
    ck["card"]["config"]["amp"] = "auto"
    torch.save(ck, tmp_path / "auto.pt")
    assert astroclass.load(tmp_path / "auto.pt").amp is (auto_amp(torch.device("cpu")) is not None)
    ck["card"]["config"].update(amp="auto", paper_exact=True)
    torch.save(ck, tmp_path / "exact.pt")
    assert astroclass.load(tmp_path / "exact.pt").amp is False
    ck["card"]["config"].update(amp="bf16", paper_exact=False)
    torch.save(ck, tmp_path / "bf16.pt")
    assert astroclass.load(tmp_path / "bf16.pt").amp is True
    assert astroclass.load(tmp_path / "bf16.pt", amp="off").amp is False


def test_tta_is_rotation_invariant_and_changes_predictions(trained, tiny_h5):
    clf = astroclass.load(trained / "checkpoint.pt")
    with PreparedDataset(tiny_h5) as ds:
        x, _ = ds.tensors("test")
    plain = clf.predict_tensor(x)
    tta = clf.predict_tensor(x, tta=True)
    np.testing.assert_allclose(tta.sum(1), 1, atol=1e-5)
    assert not np.allclose(plain, tta, atol=1e-4)
    for k in range(1, 8):
        np.testing.assert_allclose(clf.predict_tensor(dihedral(x, k), tta=True), tta, atol=1e-5)


def test_onnx_and_torchscript_agree_with_pytorch_on_real_images(trained, tiny_h5, tmp_path, cli):
    import onnxruntime as ort
    code, _, err = cli("export", trained / "checkpoint.pt", "--onnx", tmp_path / "m.onnx", "--torchscript",
                       tmp_path / "m.pt")
    assert code == 0, err
    clf = astroclass.load(trained / "checkpoint.pt")
    with PreparedDataset(tiny_h5) as ds:
        x, _ = ds.tensors("val")
    xf = x.float().div(255).numpy()
    ref = clf.predict_tensor(x)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"images": xf})[0], ref, atol=1e-4)
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(xf)).numpy(), ref, atol=1e-4)


def test_bad_rows_are_reported_and_the_rest_continue(trained, tmp_path, cli):
    root = data_set("aries_star_galaxy")
    folder = tmp_path / "new"
    folder.mkdir()
    imgs = sorted((root / "images" / "star").iterdir())[:6]
    for i, p in enumerate(imgs):
        shutil.copy(p, folder / f"{i:02d}.jpg")
    (folder / "03.jpg").write_bytes(imgs[3].read_bytes()[:300])  # truncated, in the middle
    fits_src = data_set("sdss_ugriz_fits") / "images" / "obj00.fits"
    shutil.copy(fits_src, folder / "04_five_bands.fits")  # 5 bands for a 3-channel model
    code, out, err = cli("predict", trained / "checkpoint.pt", folder, "-o", tmp_path / "p.csv", "-q")
    assert code == 3, err
    got = {r["id"]: r for r in rows(tmp_path / "p.csv")}
    assert len(got) == 7
    assert got["03.jpg"]["status"] == "failed" and "03.jpg" in got["03.jpg"]["error"]
    assert got["04_five_bands.fits"]["status"] == "failed" and "5 band(s)" in got["04_five_bands.fits"]["error"]
    assert sum(r["status"] == "ok" for r in got.values()) == 5
    assert "5 predicted, 2 failed" in out
    # an existing output is refused unless --overwrite
    code, _, err = cli("predict", trained / "checkpoint.pt", folder, "-o", tmp_path / "p.csv", "-q")
    assert code == 1 and "--overwrite" in err
    assert cli("predict", trained / "checkpoint.pt", folder, "-o", tmp_path / "p.csv", "-q", "--overwrite")[0] == 3


def test_bad_checkpoints(trained, tmp_path, cli):
    ck = torch.load(trained / "checkpoint.pt", weights_only=True)
    newer = dict(ck, format_version=99)
    torch.save(newer, tmp_path / "newer.pt")
    code, _, err = cli("model", "info", tmp_path / "newer.pt")
    assert code == 1 and "newer astroclass" in err
    other = dict(ck, card={**ck["card"], "model": "test_efficientnet"})
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(AstroclassError, match="do not fit the architecture its card names"):
        astroclass.load(tmp_path / "other.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickle.pt")
    code, _, err = cli("predict", tmp_path / "pickle.pt", trained / "history.csv", "-o", tmp_path / "x.csv")
    assert code == 1 and "never code, so it was not loaded" in err
    torch.save(ck["state_dict"], tmp_path / "bare.pt")
    with pytest.raises(AstroclassError, match="no model card"):
        astroclass.load(tmp_path / "bare.pt")
    # an astroclass checkpoint whose card is missing, or lacks class_names: one-line errors, no KeyError
    torch.save({k: v for k, v in ck.items() if k != "card"}, tmp_path / "nocard.pt")
    card = {k: v for k, v in ck["card"].items() if k != "class_names"}
    torch.save(dict(ck, card=card), tmp_path / "noclasses.pt")
    for bad, needle in (("nocard.pt", "no model card"), ("noclasses.pt", "lacks ['class_names']")):
        for args in (("model", "info", tmp_path / bad), ("predict", tmp_path / bad, trained / "history.csv", "-o",
                                                          tmp_path / "x.csv")):
            code, out, err = cli(*args)
            assert code == 1 and needle in err and bad in err and "Traceback" not in out + err, (args, err)
    # a card without the optional parts (metrics, config, provenance) still prints
    lean = {k: ck["card"][k] for k in ("model", "class_names", "in_chans", "input_size", "image_spec")}
    torch.save(dict(ck, card=lean), tmp_path / "lean.pt")
    code, out, err = cli("model", "info", tmp_path / "lean.pt")
    assert code == 0 and "classes:      galaxy, star" in out and "(not recorded)" in out, err


def test_model_info(trained, cli):
    code, out, _ = cli("model", "info", trained / "checkpoint.pt")
    assert code == 0 and "classes:      galaxy, star" in out and "test:" in out and "test_resnet" in out
    code, out, _ = cli("model", "info", trained / "checkpoint.pt", "--json")
    assert code == 0 and '"class_names"' in out


def test_bf16_inference_agrees_with_fp32(trained, tiny_h5, cli, tmp_path):
    fp32 = astroclass.load(trained / "checkpoint.pt")
    bf16 = astroclass.load(trained / "checkpoint.pt", amp="bf16")
    with PreparedDataset(tiny_h5) as ds:
        x, _ = ds.tensors("train")
    a, b = fp32.predict_tensor(x), bf16.predict_tensor(x)
    assert np.abs(a - b).max() < 0.05 and (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert not np.array_equal(a, b)  # it did run in bf16
    code, _, err = cli("predict", trained / "checkpoint.pt", tiny_h5, "-o", tmp_path / "b.csv", "--amp", "bf16", "-q")
    assert code == 0, err
    with pytest.raises(AstroclassError, match="amp must be"):
        astroclass.load(trained / "checkpoint.pt", amp="fp8")
