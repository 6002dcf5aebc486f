"""Models named by their config.json, on the Hugging Face hub (``hf_hub:OWNER/NAME``, as Zoobot's galaxy
encoders are served) or in a folder (``local-dir:PATH``): fine-tuned offline from a pre-filled hub cache,
and predicted from the checkpoint alone, with no cache and no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from astroclass.errors import AstroclassError

REPO = "astroclass-test/tiny-encoder"
MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """A hub cache (huggingface_hub's layout) holding one small timm model with its own mean and std, as
    `timm.models.save_for_hf` writes it and a download leaves it; returns the snapshot folder and the
    backbone's weights."""
    import timm
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model = timm.create_model("test_resnet", num_classes=10, pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": MEAN, "std": STD}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    timm.models.save_for_hf(model, snapshot, safe_serialization=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    return snapshot, backbone


def test_a_hub_encoder_is_fine_tuned_offline_with_its_own_weights_and_preprocessing(hub_cache, offline, tiny_h5,
                                                                                     tmp_path, cli):
    from astroclass.models import build_model

    snapshot, saved = hub_cache
    net = build_model(f"hf_hub:{REPO}", 2, in_chans=3, input_size=32, weights="hub")
    own = net.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert torch.allclose(net.mean.flatten(), torch.tensor(MEAN))
    assert torch.allclose(net.std.flatten(), torch.tensor(STD))
    code, out, err = cli("train", tiny_h5, "--model", f"hf_hub:{REPO}", "--setup", "pretrained", "--epochs", "1",
                         "--head-epochs", "0", "--batch-size", "16", "-q", "-o", tmp_path / "run")
    assert code == 0, err
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    arch = ck["card"]["arch"]
    assert arch["architecture"] == "test_resnet" and arch["pretrained_cfg"]["mean"] == list(MEAN)

    # the cache goes, the network stays off: prediction rebuilds the model from the checkpoint alone
    shutil.rmtree(snapshot.parents[1])
    import astroclass

    clf = astroclass.load(tmp_path / "run" / "checkpoint.pt")
    x = np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32), dtype=np.uint8)
    probs = clf.predict(x)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert torch.allclose(clf.model.mean.flatten().cpu(), torch.tensor(MEAN))


def test_a_folder_model_is_built_from_its_config(hub_cache, tmp_path):
    from astroclass.models import build_model

    snapshot, saved = hub_cache
    folder = tmp_path / "encoder"
    shutil.copytree(snapshot, folder)
    net = build_model(f"local-dir:{folder}", 3, in_chans=3, input_size=32, weights="hub")
    assert net.arch["architecture"] == "test_resnet"
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in saved.items())
    scratch = build_model(f"local-dir:{folder}", 3, in_chans=1, input_size=32)  # from scratch: no weights read
    assert scratch.backbone.conv1[0].weight.shape[1] == 1
    with pytest.raises(AstroclassError, match="no timm model folder at"):
        build_model(f"local-dir:{tmp_path / 'nothing'}", 2)


def test_hub_models_missing_offline_or_misnamed_get_one_line_errors(hub_cache, offline, tiny_h5, tmp_path, cli):
    code, _, err = cli("train", tiny_h5, "--model", "hf_hub:astroclass-test/not-cached", "--setup", "pretrained",
                       "--epochs", "1", "-o", tmp_path / "r")
    assert code == 1 and err.count("\n") == 1 and "'hf_hub:astroclass-test/not-cached'" in err
    assert "not in the local cache" in err and "local-dir:FOLDER" in err and not (tmp_path / "r").exists()
    code, _, err = cli("train", tiny_h5, "--model", "hf_hub:zoobot", "--epochs", "1", "-o", tmp_path / "r")
    assert code == 1 and "hf_hub:OWNER/NAME" in err
