"""The notebook API: the CLI's steps as three objects, for a catalogue table or arrays already in memory.

    ds = astroclass.Dataset.from_catalog(df, path_col="file", label_col="type", root="cutouts/")
    run = astroclass.fit(ds, model="resnext50_32x4d", setup="scratch", epochs=20)
    run.metrics["test"]["balanced_accuracy"]; run.predict(new_images); run.save("run/")

A :class:`Dataset` is a prepared dataset (the HDF5 file ``astroclass data import`` writes: same stratified
split, content hash and provenance); made in memory, it lives in a temporary folder until :meth:`Dataset.save`.
:func:`fit` takes every run option of ``astroclass train`` as a keyword, validated with the same messages,
and returns a :class:`Run`: its metrics, history, checkpoint and predictions, in a temporary folder until
:meth:`Run.save`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.errors import AstroclassError
from astroclass.runconfig import RunConfig

RUN_OPTION_NAMES = frozenset(f for f in RunConfig.__dataclass_fields__ if f != "dataset")
"""fit()'s keyword options: every run option (tests check the two stay one list)."""


class Dataset:
    """A prepared dataset file; see :meth:`open`, :meth:`from_catalog` and :meth:`from_arrays`."""

    def __init__(self, path: str | Path, _keep: Any = None):
        from astroclass.data.prepared import PreparedDataset

        self.path = Path(path)
        self._keep = _keep  # the temporary folder of a dataset made in memory: removed with this object
        with PreparedDataset(self.path) as ds:
            self.class_names: list[str] = list(ds.class_names)
            self.content_hash: str = ds.content_hash
            self.n_images = len(ds)
            self.counts: dict[str, dict[str, int]] = ds.counts()  # images per class in each split

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}: {self.n_images} images, classes {self.class_names})"

    def _repr_html_(self) -> str:
        """In a notebook: objects per class in each split, and a contact sheet of examples per class."""
        import html

        from astroclass.data.prepared import PreparedDataset
        from astroclass.data.preview import contact_sheet

        splits = list(self.counts)
        rows = "".join(f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{self.counts[s].get(c, 0)}</td>"
                                                                 for s in splits) + "</tr>"
                       for c in self.class_names or ["(unlabelled)"])
        table = (f"<table><tr><th>class</th>{''.join(f'<th>{s}</th>' for s in splits)}</tr>{rows}</table>")
        with tempfile.TemporaryDirectory(prefix="astroclass-sheet-") as tmp, PreparedDataset(self.path) as ds:
            sheet = _png_tag(contact_sheet(ds, Path(tmp) / "sheet.png", per_class=6), "contact sheet")
        return (f"<div><b>{html.escape(str(self.path))}</b>: {self.n_images} images, content hash "
                f"{self.content_hash[:12]}{table}{sheet}</div>")

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """A prepared dataset already on disk (``astroclass data import``'s output)."""
        return cls(path)

    @classmethod
    def from_catalog(cls, table: Any, path_col: str = "path", label_col: str = "label", id_col: str | None = None,
                     root: str | Path = ".", output: str | Path | None = None, allow_outside: bool = False,
                     size: int = 76, channels: int = 3, split: tuple[float, float, float] = (0.8, 0.1, 0.1),
                     seed: int = 0, skip_bad: bool = False, duplicates: str = "together", min_per_class: int = 10,
                     workers: int | None = None, show_progress: bool = False) -> Dataset:
        """A table of image paths and labels: a pandas DataFrame, or any mapping of column name to values.
        Paths are relative to ``root`` and may not leave it unless ``allow_outside``; images are read and
        checked as ``astroclass data import catalog`` does (FITS included), with the same options."""
        from astroclass.data.images import ImageSpec
        from astroclass.data.importers import build_dataset, table_items

        try:
            columns = [str(c) for c in (table.keys() if hasattr(table, "keys") else table.columns)]
        except AttributeError:
            raise AstroclassError("from_catalog takes a pandas DataFrame or a mapping of column names to values, "
                                  f"got {type(table).__name__}") from None
        wanted = [c for c in (path_col, label_col, id_col) if c is not None and c in columns]
        rows = [dict(zip(wanted, values)) for values in zip(*(list(table[c]) for c in wanted))]
        items = table_items(columns, rows, "catalogue table", Path(root), path_col, label_col, id_col, allow_outside,
                            lambda i: f"catalogue table, row {i}")  # a DataFrame's rows: its 0-based index
        out, keep = _output(output, "catalog.h5")
        build_dataset(items, out, ImageSpec(size=size, channels=channels),
                      source={"kind": "catalog table", "root": str(root), "path_col": path_col,
                              "label_col": label_col},
                      fractions=split, seed=seed, workers=workers, skip_bad=skip_bad, duplicates=duplicates,
                      min_per_class=min_per_class, show_progress=show_progress)
        return cls(out, keep)

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: Sequence, class_names: Sequence[str] | None = None,
                    ids: Sequence[str] | None = None, output: str | Path | None = None,
                    split: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> Dataset:
        """Images already in memory: ``images`` (N, C, S, S), uint8 or floats in [0, 1] (stored as float16),
        and ``labels`` as class names, or as integers indexing ``class_names``. Identical images are kept in
        one split, as the importers do."""
        from astroclass.data.images import ImageSpec
        from astroclass.data.importers import _duplicate_groups, pixel_digest
        from astroclass.data.prepared import write_prepared
        from astroclass.data.splits import stratified_split

        x = np.asarray(images)
        if x.ndim != 4 or x.shape[2] != x.shape[3]:
            raise AstroclassError(f"images must be (N, C, S, S) square images, got shape {x.shape}")
        if not len(x):
            raise AstroclassError("no images: a dataset needs at least a few images of each class")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.floating):
                raise AstroclassError(f"images must be uint8, or floats in [0, 1]; got {x.dtype}")
            bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
            if bad.any():
                raise AstroclassError(f"{int(bad.sum())} image(s) hold NaN or infinite values (the first: image "
                                      f"{int(np.flatnonzero(bad)[0])}); replace them (e.g. by the band's median)")
            if x.min() < 0 or x.max() > 1:
                raise AstroclassError(f"float images must be in [0, 1]; got values in [{x.min():g}, {x.max():g}]")
            x = x.astype(np.float16)
        y = list(labels)
        if len(y) != len(x):
            raise AstroclassError(f"{len(x)} images but {len(y)} labels")
        if class_names is None:
            if any(not isinstance(v, str) for v in y):
                raise AstroclassError("labels are not class names: give class_names for integer labels")
            class_names = sorted(set(y))
        names = list(class_names)
        try:
            codes = np.array([names.index(v) if isinstance(v, str) else int(v) for v in y], dtype=np.int64)
        except ValueError as exc:
            raise AstroclassError(f"a label is not among the class names {names}: {exc}") from None
        if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
            raise AstroclassError(f"integer labels must index class_names (0..{len(names) - 1})")
        ids = [str(i) for i in (ids if ids is not None else range(len(x)))]
        groups, _ = _duplicate_groups([pixel_digest(a) for a in x])
        split_codes = stratified_split(codes, names, split, seed, groups)
        out, keep = _output(output, "arrays.h5")
        spec = ImageSpec(size=int(x.shape[2]), channels=int(x.shape[1]) if x.shape[1] in (1, 3) else 3)
        write_prepared(out, images=x, labels=codes, split=split_codes, class_names=names, ids=ids, paths=ids,
                       spec=spec, source={"kind": "arrays"}, options={"fractions": list(split), "seed": seed},
                       split_seed=seed, overwrite=True)
        return cls(out, keep)

    def save(self, path: str | Path, overwrite: bool = False) -> Dataset:
        """Write the prepared dataset to ``path`` (for the CLI, a grid spec, or later sessions)."""
        from astroclass.fileio import atomic_output

        path = Path(path)
        if path.exists() and not overwrite:
            raise AstroclassError(f"{path}: output exists (pass overwrite=True to replace it)")
        with atomic_output(path) as tmp:
            shutil.copyfile(self.path, tmp)
        return Dataset(path)


class Run:
    """A trained run: ``metrics`` (val and test), ``history`` (per epoch), ``predict`` and ``save``."""

    def __init__(self, path: str | Path, result: Any, _keep: Any = None):
        self.path = Path(path)
        self.result = result
        self._keep = _keep
        self._classifier: Any = None

    @property
    def metrics(self) -> dict[str, Any]:
        r = self.result
        return {"val": r.val, "test": r.test, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                "threshold": r.threshold}

    @property
    def history(self) -> Any:
        """One row per epoch (phase, epoch, losses, accuracies, learning rate, seconds) as a pandas DataFrame of
        numbers."""
        import pandas as pd

        return pd.read_csv(self.path / "history.csv")

    def __repr__(self) -> str:
        t = self.result.test
        return (f"Run({str(self.path)!r}: test accuracy {t['accuracy']:.4f}, balanced {t['balanced_accuracy']:.4f}, "
                f"best epoch {self.result.best_epoch} of {self.result.epochs_run})")

    def _repr_html_(self) -> str:
        """In a notebook: val and test metrics with their 95% intervals, and the learning curve."""
        import html

        def interval(m: dict, key: str) -> str:
            ci = m.get(f"{key}_ci95")
            return f"{m[key]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

        rows = "".join(f"<tr><td>{split}</td><td>{m.get('n', '')}</td><td>{interval(m, 'accuracy')}</td>"
                       f"<td>{interval(m, 'balanced_accuracy')}</td><td>{interval(m, 'macro_f1')}</td></tr>"
                       for split, m in (("val", self.result.val), ("test", self.result.test)))
        table = ("<table><tr><th></th><th>images</th><th>accuracy</th><th>balanced accuracy</th><th>macro-F1</th>"
                 f"</tr>{rows}</table>")
        return (f"<div><b>{html.escape(str(self.path))}</b>: {html.escape(str(self.result.config.get('model')))}, "
                f"best epoch {self.result.best_epoch} of {self.result.epochs_run} (95% intervals){table}"
                f"{self._curve()}</div>")

    def _curve(self) -> str:
        from matplotlib.figure import Figure  # no pyplot: a notebook's own plotting backend stays as it is

        h = self.history
        fig = Figure(figsize=(4.5, 2.4))
        ax = fig.subplots()
        x = np.arange(1, len(h) + 1)
        ax.plot(x, h["train_loss"], label="train loss")
        ax.plot(x, h["val_loss"], label="val loss")
        ax.set_xlabel("epoch (all phases)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        with tempfile.TemporaryDirectory(prefix="astroclass-curve-") as tmp:
            fig.savefig(Path(tmp) / "curve.png", dpi=90)
            return _png_tag(Path(tmp) / "curve.png", "learning curve")

    def predict(self, images: Any, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, K) for image files or stored-format arrays, as ``astroclass.load`` gives."""
        if self._classifier is None:
            from astroclass.predict import load

            self._classifier = load(self.path / "checkpoint.pt")
        return self._classifier.predict(images, tta)

    @property
    def class_names(self) -> list[str]:
        from astroclass.predict import read_checkpoint

        return list(read_checkpoint(self.path / "checkpoint.pt")["card"]["class_names"])

    def save(self, path: str | Path) -> Run:
        """Copy the run folder (config.yaml, history.csv, checkpoint.pt, predictions.npz, result.json)."""
        path = Path(path)
        if path.exists():
            raise AstroclassError(f"{path}: exists; choose a new folder for the run")
        shutil.copytree(self.path, path)
        return Run(path, self.result)


def fit(dataset: Dataset | str | Path, output: str | Path | None = None, progress: bool = False, *,
        model: str | None = None, setup: str | None = None, l2: float | None = None, maxnorm: float | None = None,
        optimizer: str | None = None, seed: int | None = None, epochs: int | None = None,
        patience: int | None = None, batch_size: int | None = None, eval_batch_size: int | None = None,
        device: str | None = None, augment: bool | None = None, augment_shift: float | None = None,
        tta: bool | None = None, tta_each_epoch: bool | None = None, schedule: str | None = None,
        warmup_epochs: int | None = None, label_smoothing: float | None = None, ema: float | None = None,
        recipe: str | None = None, budget: str | None = None, lr: float | None = None,
        head_epochs: int | None = None, unfreeze: str | None = None, finetune_bn: str | None = None,
        frozen_bn: str | None = None, finetune_lr: float | None = None, finetune_momentum: float | None = None,
        finetune_optimizer: str | None = None, weights: str | None = None, init: str | None = None,
        pooling: str | None = None, class_weights: str | None = None, sampler: str | None = None,
        monitor: str | None = None, train_fraction: float | None = None, classes: str | None = None,
        subset_seed: int | None = None, paper_exact: bool | None = None, channels_last: bool | None = None,
        amp: str | None = None, compile: str | None = None, max_memory: str | None = None, fuse: str | None = None,
        **unknown: Any) -> Run:
    """Train one run on ``dataset`` with any run option of ``astroclass train`` as a keyword (``model``,
    ``setup``, ``epochs``, ``l2``, ``unfreeze``...: see ``astroclass train --help`` or :class:`RunConfig`; an
    option left at None takes the recipe's value or RunConfig's default); ``output``: the run folder (default:
    a temporary one); ``progress``: a line per epoch (and plain progress lines) on stderr, through the
    ``astroclass`` logger."""
    given = {k: v for k, v in locals().items() if k in RUN_OPTION_NAMES and v is not None}
    options = {**given, **unknown}  # unknown names are refused by RunConfig with the names it knows
    from astroclass.progress import say, show_messages
    from astroclass.training import train
    from astroclass.training.pick import with_picked_backbone

    if progress:
        show_messages()
    path = dataset.path if isinstance(dataset, Dataset) else Path(dataset)
    options = with_picked_backbone({**options, "dataset": str(path)}, say if progress else (lambda line: None))
    cfg = RunConfig.from_dict(options, "fit()")
    out, keep = (Path(output), None) if output is not None else _temporary("run", "astroclass-run-")
    return Run(out, train(cfg, out, progress=progress), keep)


def _output(output: str | Path | None, name: str) -> tuple[Path, Any]:
    if output is not None:
        out = Path(output)
        if out.exists():
            raise AstroclassError(f"{out}: output exists")
        return out, None
    return _temporary(name, "astroclass-data-")


def _temporary(name: str, prefix: str) -> tuple[Path, Any]:
    """``name`` in a new temporary folder, and the object that removes the folder when it is collected."""
    keep = tempfile.TemporaryDirectory(prefix=prefix)
    return Path(keep.name) / name, keep


def _png_tag(path: Path, alt: str) -> str:
    """An <img> holding the PNG at ``path`` (a notebook keeps it with its outputs)."""
    import base64

    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"/>'
