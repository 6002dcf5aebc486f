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
import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astroclass import __version__
from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_output
from astroclass.training import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, predict_probs

CARD_REQUIRED = ("model", "class_names", "in_chans", "input_size", "image_spec")
"""What prediction needs from a model card; the rest (metrics, config, provenance) is shown when present."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling code; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AstroclassError(f"{path}: not a readable astroclass checkpoint, or one that needs arbitrary code to "
                              f"unpickle, which astroclass refuses ({type(exc).__name__}: {str(exc)[:160]})") from None
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
        from astroclass.models import build_model, matmul_1x1
        from astroclass.training import auto_amp, keep_freed_memory, resolve_device, threads_within_cores

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
            keep_freed_memory()  # each batch's activations reuse memory instead of being mapped afresh
            threads_within_cores()
        if amp not in ("off", "bf16", "auto"):
            raise AstroclassError(f"amp must be off, bf16 or auto, got {amp!r}")
        if amp == "auto":  # as the run did
            run = c.get("config", {})
            amp = "off" if run.get("paper_exact") else run.get("amp", "auto")
        self.amp = amp == "bf16" or (amp == "auto" and auto_amp(self.device) is not None)
        self.model = build_model(c["model"], len(self.class_names), self.in_chans, self.size, c.get("pooling", "avg"))
        try:
            self.model.load_state_dict(ck["state_dict"])
        except RuntimeError as exc:
            raise AstroclassError(f"{self.path}: the weights do not fit the architecture its card names "
                                  f"({c['model']}): {str(exc).splitlines()[0][:200]}") from None
        # the training fast path's layout: channels-last, and on CPU 1x1 convolutions as matrix products
        self.model.to(self.device).to(memory_format=torch.channels_last).eval()
        if self.device.type == "cpu":
            matmul_1x1(self.model)

    # -- arrays ----------------------------------------------------------------------------
    def predict_tensor(self, x: np.ndarray | torch.Tensor, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities (N, K) for stored-format images (uint8, or float in [0, 1]), computed as
        the training run's evaluation computes them."""
        t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1:] != (self.in_chans, self.size, self.size):
            raise AstroclassError(f"expected images of shape (N, {self.in_chans}, {self.size}, {self.size}), got "
                                  f"{tuple(t.shape)}")
        if not len(t):
            return np.zeros((0, len(self.class_names)), np.float32)
        return predict_probs(self.model, t, self.device, batch_size, channels_last=True,
                             amp=torch.bfloat16 if self.amp else None, tta=tta)

    def predict(self, images: np.ndarray | torch.Tensor | Sequence[str | Path], tta: bool = False) -> np.ndarray:
        """Probabilities (N, K) for an array of stored-format images or a list of image/FITS files.

        Files that cannot be read raise an error naming them (the CLI reports them per row instead).
        """
        if isinstance(images, (np.ndarray, torch.Tensor)):
            x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
            return self.predict_tensor(x, tta)
        arrays = []
        for p in images:
            arr, err = self.read(p)
            if arr is None:
                raise AstroclassError(err)
            arrays.append(arr)
        return self.predict_tensor(torch.from_numpy(np.stack(arrays)), tta) if arrays else \
            np.zeros((0, len(self.class_names)), np.float32)

    def read(self, path: str | Path) -> tuple[np.ndarray | None, str]:
        """One file with the training preprocessing: (array, "") or (None, reason)."""
        return read_for_model(str(path), self.preprocessing())

    def preprocessing(self) -> tuple[dict, int, bool]:
        return self.spec.to_dict(), self.in_chans, self.stored_dtype == np.float16


def load(checkpoint: str | Path, device: str = "auto", amp: str = "auto") -> Classifier:
    """Load a trained checkpoint for prediction: ``astroclass.load("run/checkpoint.pt").predict(x)``."""
    return Classifier(checkpoint, device, amp)


# ---------------------------------------------------------------------------------------------
# many inputs → a CSV, streamed


@dataclass
class Source:
    id: str
    path: str
    h5: str | None = None
    row: int = -1


def expand_inputs(inputs: Sequence[str | Path], path_col: str = "path", id_col: str | None = None,
                  allow_outside: bool = False) -> Iterator[Source]:
    """Files, folders (recursively), catalogue CSVs (``path_col`` relative to the CSV, which they may not
    leave unless ``allow_outside``) and prepared .h5 files."""
    from astroclass.data.images import is_image_file
    from astroclass.data.importers import catalog_path, read_table

    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q)):
                yield Source(f.relative_to(p).as_posix(), str(f))
        elif p.suffix.lower() in (".h5", ".hdf5"):
            from astroclass.data.prepared import PreparedDataset

            with PreparedDataset(p) as ds:
                for i, ident in enumerate(ds.ids):
                    yield Source(ident, f"{p}#{i}", str(p), i)
        elif p.suffix.lower() == ".csv":
            cols, rows = read_table(p)
            if path_col not in cols:
                raise AstroclassError(f"{p}: no path column {path_col!r}; columns are {cols} (use --path-col)")
            for n, row in enumerate(rows, start=2):
                rel = row[path_col]
                yield Source((row.get(id_col) or rel) if id_col else rel,
                             str(catalog_path(p.parent, rel, f"{p}, row {n}", allow_outside)))
        else:
            yield Source(p.name, str(p))


def read_for_model(path: str, preprocessing: tuple[dict, int, bool]) -> tuple[np.ndarray | None, str]:
    """Read one file as the model's training data was stored: (array, "") or (None, reason).

    Runs in worker processes, so it takes plain values: (image spec dict, channels, float storage).
    """
    from astroclass.data.images import ImageSpec, read_image
    from astroclass.errors import BadImageError

    spec_dict, in_chans, float_store = preprocessing
    try:
        arr = read_image(path, ImageSpec.from_dict(spec_dict)).array
    except BadImageError as exc:
        return None, str(exc)
    if arr.shape[0] != in_chans:
        return None, f"{path}: has {arr.shape[0]} band(s); the model takes {in_chans}"
    if float_store and arr.dtype == np.uint8:
        arr = (arr.astype(np.float32) / 255).astype(np.float16)
    return arr, ""


def predict_to_csv(clf: Classifier, inputs: Sequence[str | Path], output: str | Path, tta: bool = False,
                   overwrite: bool = False, block: int = 512, workers: int | None = None, path_col: str = "path",
                   id_col: str | None = None, progress: bool = True, allow_outside: bool = False) -> dict[str, Any]:
    """Predict every input and stream rows to ``output`` (written to a temporary name, renamed at the end).

    Rows: id, source, status (ok / failed), predicted class, one probability column per class, error.
    Returns counts and images/s.
    """
    from astroclass.data.prepared import PreparedDataset
    from astroclass.parallel import parallel_map
    from astroclass.progress import Bar

    output = Path(output)
    if output.exists() and not overwrite:
        raise AstroclassError(f"{output}: output exists (pass --overwrite to replace it)")
    if not output.parent.is_dir():
        raise AstroclassError(f"{output.parent}: output folder does not exist")
    sources = list(expand_inputs(inputs, path_col, id_col, allow_outside))
    if not sources:
        raise AstroclassError("no inputs to predict")
    counts = {"ok": 0, "failed": 0}
    h5_cache: dict[str, PreparedDataset] = {}
    t0 = time.perf_counter()
    try:
        with atomic_output(output) as tmp, open(tmp, "w", newline="") as fh, \
                Bar(progress, len(sources), "predicting") as bar:
            w = csv.writer(fh)
            w.writerow(["id", "source", "status", "predicted", *[f"p_{c}" for c in clf.class_names], "error"])
            for start in range(0, len(sources), block):
                chunk = sources[start:start + block]
                arrays: list[np.ndarray | None] = []
                errors: list[str] = []
                files = [s for s in chunk if s.h5 is None]
                decoded = iter(parallel_map(read_for_model, [f.path for f in files], (clf.preprocessing(),), workers)
                               if files else ())
                from_h5 = {}  # (file, row) -> image: one read per file and block, not one per row
                for path in {s.h5 for s in chunk if s.h5 is not None}:
                    ds = h5_cache.get(path) or h5_cache.setdefault(path, PreparedDataset(path))
                    rows = np.array(sorted({s.row for s in chunk if s.h5 == path}))
                    from_h5.update({(path, int(r)): img for r, img in zip(rows, ds.images(rows))})
                for s in chunk:
                    if s.h5 is None:
                        arr, err = next(decoded)
                    else:
                        arr, err = from_h5[(s.h5, s.row)], ""
                        shape = arr.shape
                        if shape != (clf.in_chans, clf.size, clf.size):
                            arr, err = None, f"{s.h5}: images of shape {shape}, the model takes " \
                                             f"{(clf.in_chans, clf.size, clf.size)}"
                    arrays.append(arr)
                    errors.append(err)
                good = [a for a in arrays if a is not None]
                probs = clf.predict_tensor(torch.from_numpy(np.stack(good)), tta) if good else np.empty((0, 0))
                where = {i: k for k, i in enumerate(i for i, a in enumerate(arrays) if a is not None)}
                for i, s in enumerate(chunk):
                    if i in where:
                        p = probs[where[i]]
                        w.writerow([s.id, s.path, "ok", clf.class_names[int(p.argmax())], *[f"{v:.6g}" for v in p], ""])
                        counts["ok"] += 1
                    else:
                        w.writerow([s.id, s.path, "failed", "", *[""] * len(clf.class_names), errors[i]])
                        counts["failed"] += 1
                bar.advance(len(chunk))
    finally:
        for ds in h5_cache.values():
            ds.close()
    dt = time.perf_counter() - t0
    return {**counts, "seconds": dt, "images_per_s": len(sources) / dt if dt > 0 else 0.0, "output": output}


# ---------------------------------------------------------------------------------------------
# export


class _WithSoftmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export(clf: Classifier, onnx: str | Path | None = None, torchscript: str | Path | None = None) -> list[Path]:
    """Export the model (input: float32 (N, C, H, W) in [0, 1]; output: class probabilities)."""
    if onnx is None and torchscript is None:
        raise AstroclassError("nothing to export: give --onnx and/or --torchscript")
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
