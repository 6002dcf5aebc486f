"""Horizontal fusion: G runs of one architecture trained as one batched model.

The G runs of a grid cell (same dataset, backbone and setup; different seeds, λ, γ and optimisers)
become one network whose every layer holds the G runs' weights side by side, as HFTA (Wang et al.,
MLSys 2021) fuses repeated jobs. Activations are laid out run-major, ``(G·B, C, H, W)``: run r's batch
is rows ``r·B … (r+1)·B``, so everything that acts per image (activations, pooling, concatenation
along channels, reshapes in timm's forward code) runs unchanged. The layers that hold weights are
replaced, keeping their names and places:

* a convolution becomes one grouped convolution with G× the groups (its input is regrouped to
  ``(B, G·C, H, W)``, where group r sees only run r's channels), or on the CPU fast path a 1x1
  convolution becomes one batched matrix product;
* a batch-norm layer normalises the ``(B, G·C, H, W)`` regrouping, so each run keeps its own batch
  statistics, running statistics and affine parameters;
* a linear layer (the paper's head) becomes one batched matrix product.

That is the *grouped* mode, for GPUs: one kernel launch serves all G runs. Regrouping copies the
activations, so where a whole block computes per image and per channel only (a ``Sequential`` of
convolutions, batch norms, activations and pooling, such as VGG's features; timm's conv-norm-act blocks,
ResNet blocks and DenseNet layers), the block is a *grouped region*: its input is regrouped once, its layers
pass the ``(B, G·C, H, W)`` layout to each other, and its output is regrouped back once.

In the *per-run* mode (CPUs) the same layers call the unfused kernel once per run on that run's slice of the
batch, so each run is computed bit for bit as alone, and everything between those layers still runs once for
all G (a sum over a run's weights, the L2 penalty's, is also taken per run: one reduction over all runs' rows
would round differently).

Every parameter and buffer of run r is the r-th of G equal chunks along the first axis of the fused
tensor; :class:`Slots` hands out those chunks as views, so each run gets its own optimiser over its own
parameters, and its state dict (for early stopping's best weights and for its checkpoint) has exactly
the keys and shapes of the unfused model. Nothing mixes runs: every kernel computes each run from its own
inputs and weights only.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from astroclass.errors import AstroclassError
from astroclass.models import AstroNet, Conv1x1AsMatmul


class NotFusable(AstroclassError):
    """The model holds a layer type that fusion does not know how to batch."""


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1


def to_grouped(x: torch.Tensor, runs: int) -> torch.Tensor:
    """Run-major ``(G·B, C, H, W)`` → ``(B, G·C, H, W)`` (memory format kept)."""
    gb, c, h, w = x.shape
    b = gb // runs
    if _channels_last(x):
        return x.reshape(runs, b, c, h, w).permute(1, 3, 4, 0, 2).reshape(b, h, w, runs * c).permute(0, 3, 1, 2)
    return x.reshape(runs, b, c, h, w).transpose(0, 1).reshape(b, runs * c, h, w)


def from_grouped(y: torch.Tensor, runs: int) -> torch.Tensor:
    """``(B, G·C, H, W)`` → run-major ``(G·B, C, H, W)`` (memory format kept)."""
    b, gc, h, w = y.shape
    c = gc // runs
    if _channels_last(y):
        return (y.permute(0, 2, 3, 1).reshape(b, h, w, runs, c).permute(3, 0, 1, 2, 4)
                .reshape(runs * b, h, w, c).permute(0, 3, 1, 2))
    return y.reshape(b, runs, c, h, w).transpose(0, 1).reshape(runs * b, c, h, w)


class _FusedLayer:
    """What every fused layer has: ``runs`` (G), and ``grouped``: True computes the G runs with one grouped
    kernel (one launch: the GPU path), False with G calls of the unfused kernel on each run's slice of
    the batch (bit for bit what each run computes alone; on a small CPU also the faster of the two).
    ``in_region``: the layer sits in a grouped region, so it takes and gives the ``(B, G·C, H, W)`` layout."""

    runs: int
    grouped: bool
    in_region: bool = False

    def _per_run(self, x: torch.Tensor, fn, *tensors: torch.Tensor | None) -> torch.Tensor:
        """``fn(x_r, *tensors_r)`` for every run r, concatenated: the batch and each tensor split into the runs'
        chunks in one operation each (one backward node, not one per run)."""
        parts = [t.chunk(self.runs) if t is not None else [None] * self.runs for t in tensors]
        return torch.cat([fn(xr, *(p[r] for p in parts)) for r, xr in enumerate(x.chunk(self.runs))])


class FusedConv2d(_FusedLayer, nn.Conv2d):
    """G convolutions (plain, timm's Conv2dSame, or the CPU fast path's 1x1-as-matmul) of one shape."""

    run_groups: int
    kind: str  # "conv", "same" (TF "SAME" padding) or "matmul" (1x1 as a matrix product)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "same":
            from timm.layers.padding import pad_same

            return pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation))
        if self.padding_mode != "zeros":
            return F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return x

    def _padding(self):
        return (0, 0) if self.kind == "same" or self.padding_mode != "zeros" else self.padding

    def _one(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "matmul":
            return F.linear(x.permute(0, 2, 3, 1), w.flatten(1), b).permute(0, 3, 1, 2)
        return F.conv2d(self._pad(x), w, b, self.stride, self._padding(), self.dilation, self.run_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.grouped:
            return self._per_run(x, self._one, self.weight, self.bias)
        g = self.runs
        if self.kind == "matmul":  # no regrouping copies: one batched product over channels-last pixels
            gb, c, h, w = x.shape
            xb = x.permute(0, 2, 3, 1).reshape(g, -1, c)
            wt = self.weight.view(g, -1, c).transpose(1, 2)
            y = torch.bmm(xb, wt) if self.bias is None else torch.baddbmm(self.bias.view(g, 1, -1), xb, wt)
            return y.reshape(gb, h, w, -1).permute(0, 3, 1, 2)
        xg = x if self.in_region else to_grouped(x, g)
        y = F.conv2d(self._pad(xg), self.weight, self.bias, self.stride, self._padding(), self.dilation,
                     self.run_groups * g)
        return y if self.in_region else from_grouped(y, g)


class _FusedNorm(_FusedLayer):
    """G batch-norm layers (``nn.BatchNorm2d`` or timm's ``BatchNormAct2d``): each run its own batch and
    running statistics and affine parameters; PyTorch's BatchNorm semantics (momentum, cumulative average)."""

    # given by the batch-norm class this is mixed into (see _fused_norm_class)
    training: bool
    momentum: float | None
    eps: float
    track_running_stats: bool
    num_batches_tracked: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    act: nn.Module
    drop: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)  # the runs step together: one counter serves them all
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats

        def norm(xr, mean, var, w, b):
            return F.batch_norm(xr, mean if track else None, var if track else None, w, b, use_batch, factor, self.eps)

        tensors = (self.running_mean, self.running_var, self.weight, self.bias)
        if self.in_region:
            y = norm(x, *tensors)
        elif self.grouped:
            y = from_grouped(norm(to_grouped(x, self.runs), *tensors), self.runs)
        else:
            y = self._per_run(x, norm, *tensors)
        if hasattr(self, "act"):  # BatchNormAct2d: dropout then activation, per element
            y = self.act(self.drop(y))
        return y


@functools.cache
def _fused_norm_class(cls: type) -> type:
    return type(f"Fused{cls.__name__}", (_FusedNorm, cls), {"__module__": __name__})


class FusedLinear(_FusedLayer, nn.Linear):
    """G linear layers (the paper's head): ``(G·B, I)`` → ``(G·B, O)``, one batched matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.runs
        if not self.grouped:
            return self._per_run(x, F.linear, self.weight, self.bias)
        xb = x.reshape(g, -1, x.shape[-1])
        w = self.weight.view(g, -1, self.weight.shape[-1]).transpose(1, 2)
        y = torch.bmm(xb, w) if self.bias is None else torch.baddbmm(self.bias.view(g, 1, -1), xb, w)
        return y.reshape(-1, y.shape[-1])


def _fused_module(module: nn.Module, runs: int, grouped: bool) -> nn.Module:
    """A copy of ``module`` (without tensors) that computes G of it; its tensors are set by the caller."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    src: Any = module  # a Linear, a convolution or a batch norm, by the checks below
    m: Any = copy.copy(module)
    m._parameters, m._buffers = dict(module._parameters), dict(module._buffers)
    m.runs, m.grouped = runs, grouped
    kind = type(module)
    if kind is nn.Linear:
        m.__class__ = FusedLinear
        m.out_features = src.out_features * runs
    elif kind in (nn.Conv2d, Conv1x1AsMatmul, Conv2dSame):
        m.__class__ = FusedConv2d
        m.kind = {nn.Conv2d: "conv", Conv1x1AsMatmul: "matmul", Conv2dSame: "same"}[kind]
        m.run_groups = src.groups
        m.in_channels, m.out_channels = src.in_channels * runs, src.out_channels * runs
    elif kind in (nn.BatchNorm2d, BatchNormAct2d):
        m.__class__ = _fused_norm_class(kind)
        m.num_features = src.num_features * runs
    else:
        raise NotFusable(f"cannot fuse runs of a model with a {kind.__name__} layer (one with tensors of its own that "
                         f"fusion does not know how to batch); train with fuse: off")
    return m


class _Region:
    """Mixed into a block whose computation is per image and per channel only (see :func:`_region_kind`): the
    block runs in the grouped layout, its input and output regrouped once."""

    runs: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_grouped(super().forward(to_grouped(x, self.runs)), self.runs)  # type: ignore[misc]


class _DenseLayerRegion:
    """timm's DenseLayer (concatenate its inputs, norm, 1x1 conv, norm, 3x3 conv) as a grouped region: the
    concatenation in the run-major layout, the rest grouped."""

    runs: int
    norm1: nn.Module
    conv1: nn.Module
    norm2: nn.Module
    conv2: nn.Module

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        h = to_grouped(x if isinstance(x, torch.Tensor) else torch.cat(x, 1), self.runs)
        return from_grouped(self.conv2(self.norm2(self.conv1(self.norm1(h)))), self.runs)


_ELEMENTWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh,
                nn.Hardswish, nn.Hardsigmoid, nn.MaxPool2d, nn.AvgPool2d)
"""Layers that act on each value, or on each channel map of each image, alone: the same in either layout."""


def _region_kind(module: nn.Module) -> type | None:
    """The region class mixed into ``module`` when it can run as a grouped region, else None. Only blocks whose
    ``forward`` is known to combine its layers per element (timm's, read for this) qualify."""
    from timm.layers import ConvNormAct
    from timm.models.densenet import DenseLayer
    from timm.models.resnet import BasicBlock, Bottleneck

    kind = type(module)
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward or kind is ConvNormAct:
        mixin: type = _Region
    elif kind in (Bottleneck, BasicBlock) and getattr(module, "se", None) is None and \
            isinstance(getattr(module, "drop_path", None), (type(None), nn.Identity)):
        mixin = _Region
    elif kind is DenseLayer and not getattr(module, "drop_rate", 1.0) and not getattr(module, "grad_checkpointing", 1):
        mixin = _DenseLayerRegion
    else:
        return None
    return _region_class(mixin, cast(type, kind)) if all(_layout_free(c) for c in module.children()) else None


def _layout_free(module: nn.Module) -> bool:
    """Whether ``module`` computes the same in the grouped layout: a grouped-kernel layer (not a 1x1-as-matmul
    one, which has its own layout), an element- or channel-wise layer, or a block that qualifies as a region."""
    if isinstance(module, FusedConv2d):
        return module.grouped and module.kind != "matmul"
    if isinstance(module, _FusedNorm):
        return module.grouped and all(type(getattr(module, a, nn.Identity())) in _ELEMENTWISE for a in ("act", "drop"))
    if isinstance(module, _FusedLayer):  # FusedLinear: acts on the last axis
        return False
    if type(module) in _ELEMENTWISE:
        return True
    return _region_kind(module) is not None


@functools.cache
def _region_class(mixin: type, cls: type) -> type:
    return type(f"Grouped{cls.__name__}", (mixin, cls), {"__module__": __name__})


def _mark_regions(module: nn.Module, runs: int) -> int:
    """Make the largest qualifying blocks under ``module`` grouped regions; how many were made."""
    made = 0
    for child in module.children():
        kind = _region_kind(child)
        if kind is None:
            made += _mark_regions(child, runs)
            continue
        child.__class__ = kind
        child.runs = runs  # type: ignore[assignment]
        for m in child.modules():
            if isinstance(m, _FusedLayer):
                m.in_region = True
        made += 1
    return made


def regions(model: nn.Module) -> list[str]:
    """The names of a fused model's grouped regions."""
    return [n for n, m in model.named_modules() if isinstance(m, (_Region, _DenseLayerRegion))]


def fusable(model: nn.Module) -> bool:
    """Whether every layer of ``model`` that holds tensors is one fusion knows how to batch."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    known = (nn.Linear, nn.Conv2d, Conv1x1AsMatmul, Conv2dSame, nn.BatchNorm2d, BatchNormAct2d)
    return all(type(m) in known for _, m in _holders(model))


def _holders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that hold parameters or per-run buffers of their own (the AstroNet's mean/std excluded)."""
    out = []
    for name, m in model.named_modules():
        if m is model:
            continue
        if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            out.append((name, m))
    return out


def fuse(template: AstroNet, states: list[dict[str, torch.Tensor]], grouped: bool = True,
         grouped_regions: bool = True) -> AstroNet:
    """One fused model computing ``len(states)`` runs of ``template``'s architecture, run r with weights
    ``states[r]`` (state dicts of the unfused model); ``grouped``: grouped kernels or per-run kernels (see
    :class:`_FusedLayer`); ``grouped_regions`` (grouped kernels only): blocks that can, run in the grouped
    layout throughout (False: every layer regroups its input and output; for comparison). With one state, an
    unfused copy."""
    runs = len(states)
    fused = copy.deepcopy(template)
    if runs == 1:
        fused.load_state_dict(states[0])
        return fused
    for name, module in _holders(fused):
        parent_name, _, attr = name.rpartition(".")
        parent = fused.get_submodule(parent_name) if parent_name else fused
        try:
            new = _fused_module(module, runs, grouped)
        except NotFusable as exc:
            raise NotFusable(f"{name}: {exc}") from None
        for kind in ("_parameters", "_buffers"):
            for key, t in getattr(module, kind).items():
                if t is None:
                    continue
                full = f"{name}.{key}"
                if t.dim() == 0:  # num_batches_tracked: the runs step together
                    value = states[0][full].clone()
                else:
                    value = torch.cat([s[full].to(t.device, t.dtype) for s in states], dim=0)
                    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
                        value = value.contiguous(memory_format=torch.channels_last)
                getattr(new, kind)[key] = nn.Parameter(value, requires_grad=t.requires_grad) \
                    if kind == "_parameters" else value
        setattr(parent, attr, new)
    if grouped and grouped_regions:
        _mark_regions(fused, runs)
    return fused


class Slots:
    """Run r's share of a fused model: views of its parameters and buffers, its state dict, its grads."""

    def __init__(self, model: AstroNet):
        self.model = model
        self.runs = model.runs
        self._chunked: dict[str, tuple[torch.Tensor, bool]] = {}
        params = dict(model.named_parameters())
        for name, t in model.state_dict(keep_vars=True).items():
            chunked = self.runs > 1 and t.dim() > 0 and name not in ("mean", "std")
            self._chunked[name] = (params.get(name, t), chunked)
        self._bound: dict[str, torch.Tensor] = {}
        self._views: dict[int, dict[str, torch.Tensor]] = {}

    def _view(self, t: torch.Tensor, chunked: bool, r: int) -> torch.Tensor:
        return t.narrow(0, r * (t.shape[0] // self.runs), t.shape[0] // self.runs) if chunked else t

    def views(self, r: int) -> dict[str, torch.Tensor]:
        """Run r's tensors (parameters and buffers) as views into the fused ones, state-dict names."""
        if r not in self._views:
            with torch.no_grad():
                self._views[r] = {k: self._view(t, c, r) for k, (t, c) in self._chunked.items()}
        return self._views[r]

    def parameters(self, r: int, names: list[str]) -> list[torch.Tensor]:
        """Run r's parameters ``names`` (in that order), as leaf views an optimiser can update in place."""
        v = self.views(r)
        return [v[n] for n in names]

    def state(self, r: int) -> dict[str, torch.Tensor]:
        """A copy of run r's state dict (same keys and shapes as the unfused model's)."""
        with torch.no_grad():
            return {k: v.detach().clone() for k, v in self.views(r).items()}

    @torch.no_grad()
    def load(self, r: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite run r's parameters and buffers in place (compiled graphs stay valid)."""
        for k, v in self.views(r).items():
            v.copy_(state[k])

    def refresh(self) -> None:
        """Forget the views handed out: call after changing which parameters train (autograd forbids using
        a view made before a parameter's requires_grad changed once the parameter is updated in place)."""
        self._views.clear()
        self._bound.clear()

    def bind_grads(self, names: list[str]) -> None:
        """After a backward pass: point every run's parameter views' ``.grad`` at its chunk of the fused
        gradient (done again only when autograd allocated a new gradient tensor)."""
        if self.runs == 1:
            return
        for n in names:
            p = self._chunked[n][0]
            if p.grad is None or self._bound.get(n) is p.grad:
                continue
            self._bound[n] = p.grad
            for r in range(self.runs):
                self.views(r)[n].grad = self._view(p.grad, True, r)

    def zero_grads(self, set_to_none: bool = False) -> None:
        """Zero the fused gradients in place (the runs' gradient views stay bound), or drop them
        (``set_to_none``: the next backward pass allocates them and :meth:`bind_grads` binds the new ones).
        Under torch.compile's CUDA graphs a gradient is an output of the previous step's graph, whose memory the
        next replay reuses: reading it then (zeroing it in place) is an error, so those steps drop them."""
        if set_to_none:
            for p in self.model.parameters():
                p.grad = None
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)
