"""Classify new objects with a trained checkpoint.

A checkpoint (``checkpoint.pt`` of a run) carries a model card: class names, the model and its
head, input size and channels, how images were stored (uint8 or float16), the image spec of the
import (size, bands, FITS scaling), the training dataset's hash and config, and val/test
metrics. Prediction reads images with exactly that preprocessing, so a file predicted here gets
the probabilities it would have got as part of the training data.

``--tta`` averages the softmax over the 8 symmetries of the square (rotations by 90° with and
without a flip): galaxies have no preferred orientation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astroclass import __version__
from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_output
from astroclass.models import load_torch_file
from astroclass.training import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, predict_probs
from astroclass.training.method import mean_over_views

OPERATING_POINTS = ("model", "accuracy", "balanced")
"""How predict turns probabilities into a class: the largest probability, or the rule chosen on validation for
the best plain accuracy or the best balanced accuracy."""

EMBED_LAYERS = ("backbone", "hidden")
"""What ``embed`` gives: the pooled backbone features the head reads, or the head's hidden layer."""

CARD_REQUIRED = ("model", "class_names", "in_chans", "input_size", "image_spec")
"""What prediction needs from a model card; the rest (metrics, config, provenance) is shown when present."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling code; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: checkpoint not found")
    ck = load_torch_file(path, "checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise AstroclassError(f"{path}: not an astroclass checkpoint (no model card); use --weights to load a bare "
                              f"state dict into a backbone")
    card = ck.get("card")
    if int(ck.get("format_version", 0)) > CHECKPOINT_VERSION:
        made = card.get("astroclass_version") if isinstance(card, dict) else None
        raise AstroclassError(f"{path}: checkpoint format {ck['format_version']} comes from a newer astroclass "
                              f"({made or 'unknown version'}); this is {__version__}: upgrade astroclass")
    if not isinstance(card, dict):
        raise AstroclassError(f"{path}: this checkpoint has no model card (classes, preprocessing), so its outputs "
                              f"cannot be named nor its inputs prepared (a damaged or hand-edited file)")
    missing = [k for k in CARD_REQUIRED if k not in card]
    if missing:
        raise AstroclassError(f"{path}: the checkpoint's model card lacks {missing}, which prediction needs (a "
                              f"damaged or hand-edited file)")
    if "state_dict" not in ck:
        raise AstroclassError(f"{path}: the checkpoint holds no weights (state_dict)")
    if not isinstance(card["class_names"], list) or not card["class_names"]:
        raise AstroclassError(f"{path}: the model card's class_names is {card['class_names']!r}, not a list of names")
    return ck


class Classifier:
    """A trained model with its preprocessing: ``astroclass.load(checkpoint).predict(images)``."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", amp: str = "auto"):
        """``amp``: "auto" (the training run's choice: fp32 for a ``--paper-exact`` or ``--amp off`` run, bf16
        for an ``--amp bf16`` run, and for an ``--amp auto`` run bf16 autocast on CUDA GPUs and CPUs with AMX,
        fp32 elsewhere), "off" (fp32) or "bf16". bf16 moves probabilities by up to ~1e-2."""
        from astroclass.data.images import ImageSpec
        from astroclass.models import build_model
        from astroclass.training.speed import auto_amp, cpu_process_setup, fast_layout, resolve_device

        self.path = Path(checkpoint)
        ck = read_checkpoint(self.path)
        self.card: dict[str, Any] = ck["card"]
        c = self.card
        self.class_names: list[str] = list(c["class_names"])
        self.spec = ImageSpec.from_dict(c["image_spec"])
        self.stored_dtype = np.dtype(c.get("stored_dtype", "uint8"))
        self.in_chans, self.size = int(c["in_chans"]), int(c["input_size"])
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            cpu_process_setup()  # each batch's activations reuse memory instead of being mapped afresh
        if amp not in ("off", "bf16", "auto"):
            raise AstroclassError(f"amp must be off, bf16 or auto, got {amp!r}")
        self.amp_setting = amp
        if amp == "auto":  # as the run did
            run = c.get("config", {})
            amp = "off" if run.get("paper_exact") else run.get("amp", "auto")
        self.amp = amp == "bf16" or (amp == "auto" and auto_amp(self.device) is not None)
        init = "timm"  # the run's batch norms (a Keras-built backbone's epsilon and constant scales) matter here
        if isinstance(c.get("config"), dict) and c["config"]:
            from astroclass.runconfig import RunConfig

            try:
                init = RunConfig.from_dict(c["config"]).resolved_init()
            except AstroclassError:
                init = "timm"
        self.model = build_model(c["model"], len(self.class_names), self.in_chans, self.size, c.get("pooling", "avg"),
                                 init=init, arch=c.get("arch"))
        try:
            self.model.load_state_dict(ck["state_dict"])
        except RuntimeError as exc:
            raise AstroclassError(f"{self.path}: the weights do not fit the architecture its card names "
                                  f"({c['model']}): {str(exc).splitlines()[0][:200]}") from None
        # the training fast path's layout: channels-last, and on CPU 1x1 convolutions as matrix products
        self.model = fast_layout(self.model.to(self.device), {"channels_last": True,
                                                                "matmul_1x1": self.device.type == "cpu"}).eval()

    # -- arrays ----------------------------------------------------------------------------
    def _images(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Stored-format images as a (N, C, S, S) tensor, checked: the model's shape, no NaN."""
        t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1:] != (self.in_chans, self.size, self.size):
            raise AstroclassError(f"expected images of shape (N, {self.in_chans}, {self.size}, {self.size}), got "
                                  f"{tuple(t.shape)}")
        if t.is_floating_point() and len(t):
            bad = ~torch.isfinite(t).reshape(len(t), -1).all(dim=1)
            if bool(bad.any()):
                raise AstroclassError(f"{int(bad.sum())} image(s) hold NaN or infinite values (the first: image "
                                      f"{int(torch.nonzero(bad)[0])}): their outputs would be NaN")
        return t

    def predict_tensor(self, x: np.ndarray | torch.Tensor, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities (N, K) for stored-format images (uint8, or float in [0, 1]), computed as
        the training run's evaluation computes them."""
        t = self._images(x)
        if not len(t):
            return np.zeros((0, len(self.class_names)), np.float32)
        return predict_probs(self.model, t, self.device, batch_size, channels_last=True,
                             amp=torch.bfloat16 if self.amp else None, tta=tta)

    def embed_tensor(self, x: np.ndarray | torch.Tensor, layer: str = "backbone", tta: bool = False,
                     batch_size: int = 256) -> np.ndarray:
        """The model's representation (N, D) of stored-format images: ``layer`` "backbone", the pooled backbone
        features the head reads, or "hidden", the head's hidden layer after its activation (2048 values).
        With ``tta``, averaged over the 8 flips/rotations (a representation blind to orientation)."""
        t = self._images(x)
        head = layer == "hidden"
        if not len(t):
            return np.zeros((0, self.embedding_size(layer)), np.float32)
        m = self.model
        return mean_over_views(lambda xb: m.act(m.hidden(m.features(xb).float())) if head else m.features(xb), m, t,
                               self.device, batch_size, channels_last=True, amp=torch.bfloat16 if self.amp else None,
                               tta=tta)

    def decide(self, probs: np.ndarray, operating_point: str = "model") -> np.ndarray:
        """Each object's class index from its probabilities: ``model``, the largest probability; ``accuracy`` or
        ``balanced``, the rule the training run chose on validation for the best plain or balanced accuracy (a
        prior correction of the probabilities, see ``metrics.operating_points``)."""
        rule = self.decision_rule(operating_point)
        if rule is None:
            return np.asarray(probs).argmax(axis=1)
        from astroclass.metrics import prior_adjusted

        return prior_adjusted(probs, *rule)

    def decision_rule(self, operating_point: str = "model") -> tuple[np.ndarray, float] | None:
        """(training prior, exponent τ) of an operating point; None for ``model`` (the largest probability).
        An unknown point, or one the checkpoint does not have, is an error."""
        if operating_point not in OPERATING_POINTS:
            raise AstroclassError(f"operating point must be one of {OPERATING_POINTS}, got {operating_point!r}")
        if operating_point == "model":
            return None
        points = self.card.get("operating_points") or {}
        chosen = points.get("accuracy" if operating_point == "accuracy" else "balanced_accuracy")
        if not chosen:
            raise AstroclassError(f"{self.path}: this checkpoint has no operating points (it was trained by an "
                                  f"astroclass before they were chosen on validation): use --operating-point model")
        return np.asarray(points["prior"]), float(chosen["tau"])

    def embedding_size(self, layer: str = "backbone") -> int:
        """How many values :meth:`embed_tensor` gives per object for ``layer``."""
        if layer not in EMBED_LAYERS:
            raise AstroclassError(f"layer must be one of {EMBED_LAYERS}, got {layer!r}")
        return int(self.model.hidden.out_features if layer == "hidden" else self.model.hidden.in_features)

    def predict(self, images: np.ndarray | torch.Tensor | Sequence[str | Path], tta: bool = False) -> np.ndarray:
        """Probabilities (N, K) for an array of stored-format images or a list of image/FITS files.

        Files that cannot be read raise an error naming them (the CLI reports them per row instead).
        """
        return self._over(images, lambda t: self.predict_tensor(t, tta), len(self.class_names))

    def embed(self, images: np.ndarray | torch.Tensor | Sequence[str | Path], layer: str = "backbone",
              tta: bool = False) -> np.ndarray:
        """The model's representation (N, D) of an array of stored-format images or a list of image/FITS files
        (see :meth:`embed_tensor`): for similarity search, clustering, anomaly hunting. A whole catalogue, with
        its columns kept: ``astroclass embed``."""
        size = self.embedding_size(layer)
        return self._over(images, lambda t: self.embed_tensor(t, layer, tta), size)

    def _over(self, images: np.ndarray | torch.Tensor | Sequence[str | Path],
              fn: Callable[[torch.Tensor], np.ndarray], width: int) -> np.ndarray:
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return fn(torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images)
        arrays = []
        for p in images:
            arr, err = self.read(p)
            if arr is None:
                raise AstroclassError(err)
            arrays.append(arr)
        return fn(torch.from_numpy(np.stack(arrays))) if arrays else np.zeros((0, width), np.float32)

    def classify_catalog(self, catalog: str | Path, output: str | Path, bands: dict[str, list[str]] | None = None,
                         images: Sequence[str] = (), overwrite: bool = False, progress: bool = False,
                         **options: Any) -> Any:
        """Classify a catalogue of positions straight from survey images (``bands``: {band: [file patterns]};
        ``images``: file patterns whose headers name their bands), as ``astroclass predict --catalog`` does;
        ``options``: ``ra_col``, ``dec_col``, ``frame``, ``edge``, ``part_size``. Writes ``output`` (its format
        by its extension) and returns the table (astropy ``Table``): every catalogue column, then
        ``cutout_coverage``, ``predicted``, ``p_<class>``, ``unfamiliar_score``, ``unfamiliar``, ``status`` and
        ``error``."""
        from astroclass.classify import run_job, sky_job

        job = sky_job(self, catalog, bands, images, **options)
        return run_job(self, job, output, overwrite=overwrite, progress=progress)["table"]

    def read(self, path: str | Path) -> tuple[np.ndarray | None, str]:
        """One file with the training preprocessing: (array, "") or (None, reason)."""
        from astroclass.classify import read_for_model

        return read_for_model(str(path), self.preprocessing())

    def preprocessing(self) -> tuple[dict, int, bool]:
        return self.spec.to_dict(), self.in_chans, self.stored_dtype == np.float16


def load(checkpoint: str | Path, device: str = "auto", amp: str = "auto") -> Classifier:
    """Load a trained checkpoint for prediction: ``astroclass.load("run/checkpoint.pt").predict(x)``."""
    return Classifier(checkpoint, device, amp)


# ---------------------------------------------------------------------------------------------
# export


class _WithSoftmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export(clf: Classifier, onnx: str | Path | None = None, torchscript: str | Path | None = None,
           overwrite: bool = False) -> list[Path]:
    """Export the model (input: float32 (N, C, H, W) in [0, 1]; output: class probabilities); an output that
    exists is replaced only with ``overwrite``, and never when it is the checkpoint itself."""
    from astroclass.fileio import check_output

    if onnx is None and torchscript is None:
        raise AstroclassError("nothing to export: give --onnx and/or --torchscript")
    if onnx is not None and torchscript is not None and Path(onnx) == Path(torchscript):
        raise AstroclassError(f"{onnx}: --onnx and --torchscript name the same file")
    for out in (onnx, torchscript):
        if out is not None:
            check_output(out, overwrite, [clf.path], "export")
    from astroclass.models import matmul_1x1

    plain = copy.deepcopy(clf.model).cpu().to(memory_format=torch.contiguous_format)
    matmul_1x1(plain, enable=False)  # plain convolutions: what ONNX and TorchScript runtimes optimise
    net = _WithSoftmax(plain).eval()
    example = torch.rand(2, clf.in_chans, clf.size, clf.size)
    written = []
    if onnx is not None:
        from astroclass.extras import require

        require("onnx", "ONNX export")
        try:
            with atomic_output(onnx) as tmp:
                torch.onnx.export(net, (example,), str(tmp), input_names=["images"], output_names=["probabilities"],
                                  dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                                  opset_version=17, dynamo=False)
        except Exception as exc:
            raise AstroclassError(f"ONNX export of {clf.card['model']} failed: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None
        written.append(Path(onnx))
    if torchscript is not None:
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the file still loads everywhere
            traced = torch.jit.trace(net, example)
        with atomic_output(torchscript) as tmp:
            traced.save(str(tmp))
        written.append(Path(torchscript))
    return written
