"""Representations of objects (``Classifier.embed``, ``astroclass embed``): the features the model's head reads
or its hidden layer, per object, with the catalogue's columns kept."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from astroclass.errors import AstroclassError
from conftest import data_set


@pytest.fixture(scope="module")
def trained(tiny_h5, tmp_path_factory) -> Path:
    from astroclass.training import RunConfig, train

    out = tmp_path_factory.mktemp("embed") / "run"
    train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, batch_size=16, amp="off"), out,
          progress=False)
    return out / "checkpoint.pt"


def test_embed_gives_the_features_the_head_reads_and_its_hidden_layer(trained, tiny_h5):
    import astroclass
    from astroclass.data.prepared import PreparedDataset

    clf = astroclass.load(trained, device="cpu", amp="off")
    with PreparedDataset(tiny_h5) as ds:
        x = ds.images(np.arange(20))
    feats = clf.embed(x)
    with torch.no_grad():
        m = clf.model.eval()
        direct = m.features(torch.from_numpy(x).float() / 255).numpy()
        hidden = m.act(m.hidden(torch.from_numpy(direct))).numpy()
        probs = torch.softmax(m.classifier(torch.from_numpy(hidden)), 1).numpy()
    assert feats.shape == (20, clf.embedding_size()) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clf.embed(x, layer="hidden"), hidden, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, clf.predict(x), atol=1e-5)  # the head reads exactly these features
    # averaged over the 8 flips/rotations: the same representation for a galaxy however it lies on the sky
    turned = np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    np.testing.assert_allclose(clf.embed(turned, tta=True), clf.embed(x, tta=True), rtol=1e-4, atol=1e-4)
    assert not np.allclose(clf.embed(turned), feats, atol=1e-3)
    with pytest.raises(AstroclassError, match="layer must be one of"):
        clf.embed(x, layer="logits")


def test_embed_writes_every_catalogue_column_and_a_vector_or_one_column_per_value(trained, tmp_path, cli):
    from astropy.table import Table

    root = data_set("aries_star_galaxy")
    rows = list(csv.DictReader(open(root / "labels.csv")))[:50]
    cat = tmp_path / "cat.csv"
    with open(cat, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "note"])
        w.writeheader()
        w.writerows({"path": str(root / r["path"]), "label": r["label"], "note": f"n{i}"} for i, r in enumerate(rows))
    code, out, err = cli("embed", trained, cat, "--allow-outside", "-o", tmp_path / "e.parquet", "-q")
    assert code == 0, err
    assert "50 embedded (backbone" in out
    t = Table.read(tmp_path / "e.parquet")
    assert t.colnames == ["path", "label", "note", "embedding", "status", "error"]
    assert list(t["note"]) == [f"n{i}" for i in range(50)] and t["embedding"].shape[0] == 50
    import astroclass

    clf = astroclass.load(trained)
    np.testing.assert_allclose(np.asarray(t["embedding"]), clf.embed([r for r in t["path"]]), rtol=1e-3, atol=1e-4)
    code, out, err = cli("embed", trained, cat, "--allow-outside", "--layer", "hidden", "-o", tmp_path / "e.csv",
                         "-q")
    assert code == 0, err
    header = (tmp_path / "e.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["path", "label", "note"] and header[3] == "embedding_0" and header[-3] == "embedding_2047"
    code, _, err = cli("embed", trained, cat, "--allow-outside", "--layer", "logits", "-o", tmp_path / "x.parquet")
    assert code == 1 and "layer must be one of ('backbone', 'hidden')" in err


def test_predictions_say_how_unfamiliar_each_object_looks(trained, tiny_h5, tmp_path, cli):
    """1 - the largest probability per object, and a flag above the threshold the run chose on validation (what
    95% of validation objects stay under): in the result, the checkpoint's card and every prediction table."""
    import json

    from astropy.table import Table

    from astroclass.data.prepared import PreparedDataset

    result = json.loads((trained.parent / "result.json").read_text())
    threshold = result["unfamiliar"]["threshold"]
    val = np.load(trained.parent / "predictions.npz")["val_probs"]
    assert threshold == pytest.approx(float(np.quantile(1 - val.max(1), 0.95)), rel=1e-6)
    code, _, err = cli("predict", trained, tiny_h5, "-o", tmp_path / "p.fits", "-q")
    assert code == 0, err
    t = Table.read(tmp_path / "p.fits")
    probs = np.stack([t["p_galaxy"], t["p_star"]], axis=1)
    np.testing.assert_allclose(t["unfamiliar_score"], 1 - probs.max(1), atol=1e-6)
    assert (np.asarray(t["unfamiliar"]) == (np.asarray(t["unfamiliar_score"]) > threshold)).all()
    assert t.meta["ACUNFTH"] == pytest.approx(threshold, rel=1e-5)
    with PreparedDataset(tiny_h5) as ds:
        val_rows = ds.indices("val")
    assert np.asarray(t["unfamiliar"])[val_rows].mean() <= 0.05 + 1 / len(val_rows)  # by construction, on val


def test_two_operating_points_from_one_model_chosen_on_validation(trained, tiny_h5, tmp_path, cli):
    """The run chooses, on validation alone, the prior correction with the best plain accuracy and the one with
    the best balanced accuracy; the card keeps both with their val and test scores, and predict applies the one
    asked for (and says which)."""
    import json

    from astropy.table import Table

    from astroclass.metrics import OPERATING_TAUS, balanced_accuracy_and_macro_f1, confusion, prior_adjusted

    result = json.loads((trained.parent / "result.json").read_text())
    points = result["operating_points"]
    saved = np.load(trained.parent / "predictions.npz")
    prior = np.asarray(points["prior"])
    assert prior.sum() == pytest.approx(1.0)
    y = saved["val_labels"]

    def val_scores(tau: float) -> dict:
        pred = prior_adjusted(saved["val_probs"], prior, tau)
        return {"accuracy": float(np.mean(pred == y)),
                "balanced_accuracy": balanced_accuracy_and_macro_f1(confusion(y, pred, 2))[0]}

    for target in ("accuracy", "balanced_accuracy"):  # the best over every τ tried, on validation only
        assert points[target]["val"][target] == pytest.approx(max(val_scores(t)[target] for t in OPERATING_TAUS))
        assert points[target]["val"] == pytest.approx(val_scores(points[target]["tau"]))
    assert points["balanced_accuracy"]["val"]["balanced_accuracy"] >= points["accuracy"]["val"]["balanced_accuracy"]
    assert points["accuracy"]["val"]["accuracy"] >= points["balanced_accuracy"]["val"]["accuracy"]
    # τ = 0 is the model's own argmax
    np.testing.assert_array_equal(prior_adjusted(saved["test_probs"], prior, 0.0), saved["test_probs"].argmax(1))
    code, _, err = cli("predict", trained, tiny_h5, "-o", tmp_path / "b.fits", "-q", "--operating-point", "balanced")
    assert code == 0, err
    t = Table.read(tmp_path / "b.fits")
    probs = np.stack([t["p_galaxy"], t["p_star"]], axis=1)
    expected = prior_adjusted(probs, prior, points["balanced_accuracy"]["tau"])
    assert list(t["predicted"]) == [["galaxy", "star"][i] for i in expected] and t.meta["ACOPPT"] == "balanced"
    code, out, _ = cli("model", "info", trained)
    assert "rule balanced:" in out and "rule accuracy:" in out
    code, _, err = cli("predict", trained, tiny_h5, "-o", tmp_path / "x.fits", "--operating-point", "best")
    assert code == 1 and "operating point must be one of ('model', 'accuracy', 'balanced')" in err
