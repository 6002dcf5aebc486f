"""Classify many objects into a catalogue: image files, prepared datasets, or a catalogue on survey images.

The output is a table in the format its extension names (:mod:`astroclass.catalogs`): the input catalogue's
every column (for a catalogue; ``id`` and ``source`` for files and folders), then ``predicted``, one
``p_<class>`` column per class, ``status`` (ok / failed) and ``error``, one row per input row, in the input's
order; from survey images also ``cutout_coverage``. The model card goes into the table's metadata.

The work is done in parts (up to :data:`PART_SIZE` objects; from survey images, objects cut from the same
images): each finished part is saved in a folder beside the output (``.OUTPUT.parts``), so a prediction
that is killed resumes where it stopped when run again with the same arguments; the output is written once,
atomically, when every part is done, and the folder removed. Parts run on this machine (their images read
or cut out one part ahead of the model, by a thread or by worker processes) or on a Ray cluster
(:mod:`astroclass.classify_ray`), whose nodes need no shared file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.errors import AstroclassError, os_error_text

PART_SIZE = 512
"""Objects per part: the unit of reading, of prediction and of resuming."""
OUTPUT_COLUMNS = ("predicted", "status", "error")
PAD_TO = 32
"""The model sees batches of a multiple of this many images (the rest blank, their results dropped)."""


@dataclass
class FilesPart:
    """Image or FITS files to read with the model's preprocessing."""

    index: int
    rows: np.ndarray
    paths: list[str]
    preprocessing: tuple[dict, int, bool]


@dataclass
class H5Part:
    """Rows of a prepared dataset."""

    index: int
    rows: np.ndarray
    path: str
    h5_rows: np.ndarray
    shape: tuple[int, int, int]
    float_store: bool


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


def load_part(part: Any) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """A part's images as the model's training data was stored ((n, C, H, W), zeros where a row failed), the
    error of each row ('' if none), and extra output columns. Runs in worker processes and on Ray nodes."""
    from astroclass.data.sky import SkyPart, cut_part

    if isinstance(part, SkyPart):
        arrays, cover, errors = cut_part(part)
        return arrays, errors, {"cutout_coverage": cover.astype(np.float32)}
    if isinstance(part, H5Part):
        from astroclass.data.prepared import PreparedDataset

        with PreparedDataset(part.path) as ds:
            x = ds.images(np.asarray(part.h5_rows, dtype=np.int64))
        if x.shape[1:] != part.shape:
            error = f"{part.path}: images of shape {x.shape[1:]}, the model takes {part.shape}"
            return np.zeros((len(part.rows), *part.shape), np.uint8), [error] * len(part.rows), {}
        if part.float_store and x.dtype == np.uint8:
            x = (x.astype(np.float32) / 255).astype(np.float16)
        return x, [""] * len(part.rows), {}
    spec, channels, float_store = part.preprocessing
    out = np.zeros((len(part.paths), channels, spec["size"], spec["size"]), np.float16 if float_store else np.uint8)
    errors = []
    for i, path in enumerate(part.paths):
        arr, err = read_for_model(path, part.preprocessing)
        errors.append(err)
        if arr is not None:  # a FITS file for a model of 8-bit images: scaled to 8 bits
            out[i] = arr if arr.dtype == out.dtype else np.rint(arr.astype(np.float32) * 255).clip(0, 255)
    return out, errors, {}


@dataclass
class PredictJob:
    """What to classify: ``table`` holds the output's leading columns (one row per object), ``parts`` the work,
    ``failed`` the rows that failed before any work (row → reason), ``extra`` further output columns that
    the parts fill, ``describe`` what identifies the job (for resuming)."""

    table: Any
    parts: list[Any]
    failed: dict[int, str] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    """Files the parts read (images, datasets): what a Ray node without shared storage is sent."""
    inputs: list[str] = field(default_factory=list)
    """The job's other inputs (catalogues), which its output may not replace."""


def _stat(path: str | Path) -> list[Any]:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _check_names(table: Any, class_names: Sequence[str], where: str, extra: Sequence[str] = ()) -> None:
    """An input catalogue may not have a column the output writes (``extra``: the job's own further columns)."""
    ours = {*OUTPUT_COLUMNS, *extra, *(f"p_{c}" for c in class_names)}
    clash = sorted(ours & set(table.colnames))
    if clash:
        raise AstroclassError(f"{where}: has column(s) {clash}, which the predictions are written to: rename them "
                              f"(e.g. in TOPCAT or with astropy) before classifying it again")


def files_job(clf: Any, inputs: Sequence[str | Path], path_col: str = "path", id_col: str | None = None,
              allow_outside: bool = False, part_size: int = PART_SIZE) -> PredictJob:
    """Image and FITS files, folders (recursively), catalogues of image paths (``path_col``, relative to the
    catalogue and not leaving its folder unless ``allow_outside``) and prepared datasets. A single catalogue
    keeps every one of its columns; a single prepared dataset its per-object columns; otherwise the leading
    columns are ``id`` and ``source``."""
    from astropy.table import Table

    from astroclass.catalogs import column_error, is_table_file, read_catalog, row_name, text_column
    from astroclass.data.images import is_image_file
    from astroclass.data.importers import catalog_path
    from astroclass.data.prepared import PreparedDataset

    if not inputs:
        raise AstroclassError("no inputs to predict: give image files, folders, catalogues or prepared .h5 files, "
                              "or --catalog with --band/--images to classify a catalogue from survey images")
    ids: list[str] = []
    sources: list[str] = []
    kinds: list[tuple[str, Any]] = []  # per row: ("file", path) or ("h5", (file, row))
    tables: list[Any] = []
    describe: list[Any] = []
    files: list[str] = []
    catalogues = 0
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            for f in found:
                ids.append(f.relative_to(p).as_posix())
                sources.append(str(f))
                kinds.append(("file", str(f)))
            describe.append([str(p.resolve()), [_stat(f) for f in found]])
        elif p.suffix.lower() in (".h5", ".hdf5"):
            with PreparedDataset(p) as ds:
                for i, ident in enumerate(ds.ids):
                    ids.append(ident)
                    sources.append(f"{p}#{i}")
                    kinds.append(("h5", (str(p), i)))
                if len(inputs) == 1 and ds.column_names():
                    tables.append(Table({name: ds.column(name) for name in ds.column_names()}))
            describe.append(_stat(p))
            files.append(str(p))
        elif p.is_file() and is_table_file(p):
            catalogues += 1
            table = read_catalog(p)
            cols = list(table.colnames)
            if path_col not in cols:
                raise column_error(str(p), "path", path_col, cols, "--path-col")
            if id_col is not None and id_col not in cols:
                raise column_error(str(p), "id", id_col, cols, "--id-col")
            rels = text_column(table, path_col)
            idents = text_column(table, id_col) if id_col else rels
            for n, (rel, ident) in enumerate(zip(rels, idents)):
                if not rel:
                    raise AstroclassError(f"{row_name(p, n)}: empty {path_col!r}")
                full = str(catalog_path(p.parent, rel, row_name(p, n), allow_outside))
                ids.append(ident or rel)
                sources.append(full)
                kinds.append(("file", full))
            if len(inputs) == 1:
                tables.append(table)
            describe.append(_stat(p))
        else:
            ids.append(p.name)
            sources.append(str(p))
            kinds.append(("file", str(p)))
            describe.append(_stat(p) if p.exists() else str(p))
    if id_col is not None and not catalogues:
        raise AstroclassError("--id-col names a column of a catalogue input, and no input is a catalogue")
    if not ids:
        raise AstroclassError(f"no images found in {[str(i) for i in inputs]}")
    if tables and len(tables[0]) == len(ids):
        table = tables[0]
        if "id" not in table.colnames and catalogues == 0:
            table.add_column(ids, name="id", index=0)
            table.add_column(sources, name="source", index=1)
    else:
        table = Table({"id": ids, "source": sources})
    _check_names(table, clf.class_names, str(inputs[0]))
    pre = clf.preprocessing()
    parts: list[Any] = []
    n = len(kinds)
    start = 0
    while start < n:  # runs of one kind (and one dataset), at most part_size long
        kind, what = kinds[start]
        stop = start + 1
        while stop < n and stop - start < part_size and kinds[stop][0] == kind and \
                (kind == "file" or kinds[stop][1][0] == what[0]):
            stop += 1
        rows = np.arange(start, stop)
        if kind == "file":
            parts.append(FilesPart(len(parts), rows, [kinds[i][1] for i in rows], pre))
        else:
            parts.append(H5Part(len(parts), rows, what[0], np.array([kinds[i][1][1] for i in rows]),
                                (clf.in_chans, clf.size, clf.size), clf.stored_dtype == np.float16))
        start = stop
    files += sorted({k[1] for k in kinds if k[0] == "file"})
    return PredictJob(table, parts, describe={"kind": "files", "inputs": describe, "path_col": path_col,
                                              "id_col": id_col}, files=files, inputs=[str(i) for i in inputs])


def sky_job(clf: Any, catalog: str | Path, bands: Mapping[str, Sequence[str]] | None = None,
            images: Sequence[str] = (), ra_col: str | None = None, dec_col: str | None = None,
            frame: str | None = None, edge: str = "pad", part_size: int = PART_SIZE) -> PredictJob:
    """A catalogue classified straight from survey images, cut out as the model's training cut-outs were (its
    card's bands, cut-out size, reference band and scaling); nothing is written but the output."""
    from dataclasses import replace

    from astroclass.data.sky import lay_catalog

    spec = clf.spec
    if spec.cutout_size is None or not spec.bands:
        raise AstroclassError(f"{clf.path}: this model was trained on image files, not on cut-outs from survey "
                              f"images (its card records no cut-out size and bands): classify cut-out files with it")
    if clf.stored_dtype != np.float16:
        raise AstroclassError(f"{clf.path}: this model takes 8-bit images; cut-outs from FITS images are floats")
    given = set((bands or {}).keys())
    missing = [b for b in spec.bands if b not in given] if bands and not images else []
    if missing:
        raise AstroclassError(f"the model takes bands {list(spec.bands)} (in that order); --band gives "
                              f"{sorted(given)}: add {missing}")
    sky = lay_catalog(catalog, bands, images, list(spec.bands), ra_col, dec_col, frame, spec.reference_band,
                      spec.cutout_size, edge)
    _check_names(sky.table, clf.class_names, str(catalog), ["cutout_coverage"])
    parts = sky.parts(replace(spec), part_size=part_size)
    used = sorted({im.path for p in parts for im in p.images})
    describe = {"kind": "sky", "catalog": _stat(catalog), "images": [_stat(f) for f in used],
                "bands": {b: [im.label() for im in sky.plan.images[b]] for b in sky.plan.bands},
                "coordinates": list(sky.positions.columns), "frame": sky.positions.frame, "edge": edge,
                "part_size": part_size}
    extra = {"cutout_coverage": np.full(len(sky.table), np.nan, np.float32)}
    return PredictJob(sky.table, parts, {r: why for r, why in sky.reasons.items()}, extra, describe, used,
                      [str(catalog)])


# ---------------------------------------------------------------------------------------------
# finished parts, kept beside the output until it is written


class PartStore:
    """The finished parts of one prediction, in ``.OUTPUT.parts/`` beside the output: a manifest naming the
    job (a digest of the checkpoint, the inputs and the options), one ``.npz`` per part. A folder left by
    another job for the same output is replaced."""

    def __init__(self, output: Path, key: str):
        self.folder = output.parent / f".{output.name}.parts"
        self.key = key
        manifest = self.folder / "manifest.json"
        try:
            same = json.loads(manifest.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if self.folder.exists() and not same:
            shutil.rmtree(self.folder, ignore_errors=True)
        if not self.folder.exists():
            from astroclass.fileio import atomic_write_text

            try:
                self.folder.mkdir()
            except OSError as exc:
                raise AstroclassError(f"{self.folder}: cannot be made ({exc.strerror}): the output's folder must be "
                                      f"writable") from None
            atomic_write_text(manifest, json.dumps({"key": key}))

    def _path(self, index: int) -> Path:
        return self.folder / f"part-{index:07d}.npz"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.folder.glob("part-*.npz")}

    def save(self, index: int, rows: np.ndarray, probs: np.ndarray, errors: Sequence[str],
             extra: Mapping[str, np.ndarray]) -> None:
        from astroclass.fileio import atomic_output

        with atomic_output(self._path(index)) as tmp, open(tmp, "wb") as fh:
            arrays: dict[str, Any] = {"rows": rows, "probs": probs, "errors": np.array(list(errors), dtype=str),
                                      **{f"extra_{k}": v for k, v in extra.items()}}
            np.savez(fh, **arrays)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray]]:
        with np.load(self._path(index)) as z:
            extra = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
            return z["rows"], z["probs"], [str(e) for e in z["errors"]], extra

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def job_key(clf: Any, job: PredictJob, tta: bool, embed: str | None = None) -> str:
    """What identifies a prediction's parts: the checkpoint's bytes, the job and the options that change results."""
    h = hashlib.sha256()
    with open(clf.path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({"job": job.describe, "tta": tta, "amp": clf.amp_setting, "parts": len(job.parts),
                         **({"embed": embed} if embed else {})}, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# running the parts


def _ahead(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``fn(item)`` for each item, computed by a thread one item ahead of the caller (the model runs while the
    next part is read)."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work() -> None:
        for item in items:
            try:
                result = (True, fn(item))
            except BaseException as exc:  # handed to the caller, which raises it
                result = (False, exc)
            while not stop.is_set():
                try:
                    q.put(result, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or not result[0]:
                return

    t = threading.Thread(target=work, name="astroclass-read-ahead", daemon=True)
    t.start()
    try:
        for _ in items:
            ok, value = q.get()
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        t.join()


def default_workers(device: Any) -> int:
    """Reading processes: every core on a CPU (they and the model take turns, see :func:`predict_parts`), every
    core but one with a GPU."""
    from astroclass.parallel import usable_cores

    return usable_cores() if device.type == "cpu" else max(1, usable_cores() - 1)


def split_part(part: Any, pieces: int) -> list[Any]:
    """A part's rows in up to ``pieces`` consecutive pieces of the same kind (a prepared dataset's rows stay
    whole: reading them is cheap)."""
    from dataclasses import replace

    from astroclass.data.sky import SkyPart

    n = len(part.rows)
    if pieces <= 1 or n < 2 * pieces or isinstance(part, H5Part):
        return [part]
    cuts = np.linspace(0, n, pieces + 1).astype(int)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if isinstance(part, SkyPart):
            out.append(replace(part, rows=part.rows[a:b], xy=part.xy[a:b], jacobian=part.jacobian[a:b]))
        else:
            out.append(replace(part, rows=part.rows[a:b], paths=part.paths[a:b]))
    return out


def _joined(results: list[tuple[np.ndarray, list[str], dict]]) -> tuple[np.ndarray, list[str], dict]:
    """The pieces of a part, read apart, as one."""
    if len(results) == 1:
        return results[0]
    extra = {k: np.concatenate([r[2][k] for r in results]) for k in results[0][2]}
    return np.concatenate([r[0] for r in results]), [e for r in results for e in r[1]], extra


def _taking_turns(parts: Sequence[Any], workers: int) -> Iterator[Any]:
    """:func:`load_part` of each part, the part split over ``workers`` processes that read it together while the
    model waits, then wait while the model runs: on a CPU the two take turns at every core, rather than
    slowing each other down on the same cores."""
    if workers <= 1 or sum(len(p.rows) for p in parts) < 2 * workers:
        yield from (load_part(p) for p in parts)
        return
    from astroclass.parallel import process_pool

    with process_pool(workers) as pool:
        for part in parts:
            futures = [pool.submit(load_part, piece) for piece in split_part(part, workers)]
            yield _joined([f.result() for f in futures])


def predict_parts(clf: Any, parts: Sequence[Any], tta: bool, workers: int, embed: str | None = None
                  ) -> Iterator[tuple[Any, np.ndarray, list[str], dict]]:
    """(part, probabilities (n, K) with NaN rows where it failed, errors, extra columns) for each part, in order,
    on this machine (with ``embed``, the representation of that layer (n, D) instead of probabilities). On a CPU
    the parts are read by ``workers`` processes taking turns with the model; with a GPU they are read ahead, by a
    thread or by ``workers`` processes, while the GPU classifies."""
    import torch

    from astroclass.parallel import parallel_imap

    if clf.device.type == "cpu":
        loaded: Iterable[Any] = _taking_turns(parts, workers)
    else:
        loaded = _ahead(load_part, parts) if workers <= 1 else \
            parallel_imap(load_part, list(parts), (), workers, chunk=1, ahead=2)
    k = clf.embedding_size(embed) if embed else len(clf.class_names)
    for part, (arrays, errors, extra) in zip(parts, loaded):
        good = np.array([not e for e in errors], dtype=bool)
        probs = np.full((len(errors), k), np.nan, np.float32)
        if good.any():
            x = arrays[good]
            n = len(x)
            # padded with blank images to a multiple of PAD_TO: parts of every size then reach the model in a
            # few batch shapes, each of whose kernels a CPU backend prepares once, not once per part
            padded = np.zeros((-(-n // PAD_TO) * PAD_TO, *x.shape[1:]), x.dtype)
            padded[:n] = x
            x = torch.from_numpy(padded)
            probs[good] = (clf.embed_tensor(x, embed, tta) if embed else clf.predict_tensor(x, tta))[:n]
        yield part, probs, errors, extra


def card_meta(clf: Any, tta: bool) -> dict[str, tuple[Any, str]]:
    """The model card as table metadata (8-letter keywords, for FITS headers too)."""
    from astroclass import __version__

    card = clf.card
    meta: dict[str, tuple[Any, str]] = {
        "ACVERS": (__version__, "astroclass version that classified this table"),
        "ACMODEL": (card["model"], "model"),
        "ACCKPT": (str(clf.path), "checkpoint"),
        "ACCLASS": (",".join(clf.class_names), "classes: columns p_<class>"),
        "ACBANDS": (",".join(card.get("band_names") or []) or "8-bit channels", "bands, in order"),
        "ACDATA": (str(card.get("dataset_hash") or "not recorded"), "training data content hash (sha256)"),
        "ACTTA": (bool(tta), "probabilities averaged over the 8 flips/rotations"),
        "ACAMP": ("bf16" if clf.amp else "fp32", "precision of the model"),
    }
    threshold = (card.get("unfamiliar") or {}).get("threshold")
    if threshold is not None:
        meta["ACUNFTH"] = (round(float(threshold), 6), "unfamiliar: unfamiliar_score above this (val q95)")
    for split, tag in (("val", "V"), ("test", "T")):
        m = (card.get("metrics") or {}).get(split) or {}
        if "accuracy" in m:
            meta[f"AC{tag}ACC"] = (round(float(m["accuracy"]), 6), f"{split} accuracy of the model")
        if "balanced_accuracy" in m:
            meta[f"AC{tag}BAL"] = (round(float(m["balanced_accuracy"]), 6), f"{split} balanced accuracy")
        if "n" in m:
            meta[f"AC{tag}N"] = (int(m["n"]), f"{split} images")
    return meta


def run_job(clf: Any, job: PredictJob, output: str | Path, tta: bool | None = None, overwrite: bool = False,
            workers: int | None = None, progress: bool = True, engine: str = "local",
            ray_address: str | None = None, log: Callable[[str], None] | None = None,
            embed: str | None = None, operating_point: str = "model") -> dict[str, Any]:
    """Classify every part of ``job`` (resuming from the parts a killed run finished) and write the output
    table. ``tta`` None: as the model's run evaluated. ``embed`` ("backbone" or "hidden"): each object's
    representation from that layer instead of its class (an ``embedding`` column; ``embedding_<i>`` columns in
    CSV). ``operating_point``: how probabilities become the ``predicted`` class (``Classifier.decide``). Returns
    counts, images/s, the output path and the table written (an astropy ``Table``)."""
    from astroclass.catalogs import output_format, write_catalog
    from astroclass.fileio import check_output
    from astroclass.progress import Bar

    output = Path(output)
    output_format(output)
    check_output(output, overwrite, [*job.files, *job.inputs, clf.path], "output")
    if not embed:
        clf.decision_rule(operating_point)  # an unknown or missing rule is refused before any work
    if engine not in ("local", "ray"):
        raise AstroclassError(f"engine must be local or ray, got {engine!r}")
    if tta is None:
        tta = bool((clf.card.get("config") or {}).get("tta", False))
    n = len(job.table)
    k = clf.embedding_size(embed) if embed else len(clf.class_names)
    probs = np.full((n, k), np.nan, np.float32)
    errors = [""] * n
    for r, why in job.failed.items():
        errors[r] = why
    extra = {name: values.copy() for name, values in job.extra.items()}
    store = PartStore(output, job_key(clf, job, tta, embed))
    done = store.done()

    def keep(rows: np.ndarray, p: np.ndarray, errs: Sequence[str], ext: Mapping[str, np.ndarray]) -> None:
        probs[rows] = p
        for r, e in zip(rows.tolist(), errs):
            errors[r] = e
        for name, values in ext.items():
            if name in extra:
                extra[name][rows] = values

    for index in sorted(done):
        keep(*store.load(index))
    todo = [p for p in job.parts if p.index not in done]
    if done and log is not None:
        log(f"resuming: {len(done)} of {len(job.parts)} parts were done already")
    t0 = time.perf_counter()
    predicted = 0
    try:
        with Bar(progress, sum(len(p.rows) for p in todo), "classifying") as bar:
            if engine == "ray":
                from astroclass.classify_ray import predict_parts_ray

                results = predict_parts_ray(clf, job, todo, tta, ray_address, embed)
            else:
                results = predict_parts(clf, todo, tta, workers or default_workers(clf.device), embed)
            for part, p, errs, ext in results:
                store.save(part.index, part.rows, p, errs, ext)
                keep(part.rows, p, errs, ext)
                predicted += len(part.rows)
                bar.advance(len(part.rows))
        seconds = time.perf_counter() - t0
        table = _output_table(clf, job, probs, errors, extra, embed, output_format(output) == "ascii.csv",
                              operating_point)
        meta = card_meta(clf, tta)
        if embed:
            meta["ACEMBED"] = (embed, "embedding: backbone (pooled features) or hidden (head)")
        else:
            meta["ACOPPT"] = (operating_point, "predicted: model (argmax), accuracy or balanced rule")
        write_catalog(table, output, meta)
    except OSError as exc:  # a full disk: the parts finished are kept, and the same command continues from them
        text = os_error_text(OSError(exc.errno, exc.strerror, str(output)))
        if text is None:
            raise
        raise AstroclassError(f"{text}; the {len(store.done())} of {len(job.parts)} parts finished are kept in "
                              f"{store.folder}, and the same command continues from them") from None
    store.remove()
    ok = table["status"] == "ok"
    return {"ok": int(ok.sum()), "failed": int(n - ok.sum()), "seconds": seconds,
            "images_per_s": predicted / seconds if seconds > 0 else 0.0, "output": output, "tta": tta,
            "resumed_parts": len(done), "table": table}


def _output_table(clf: Any, job: PredictJob, probs: np.ndarray, errors: list[str],
                  extra: dict[str, np.ndarray], embed: str | None = None, flat: bool = False,
                  operating_point: str = "model") -> Any:
    """The catalogue with each object's class, probabilities, status and error added (with ``embed``, its
    representation: one vector column, or ``flat`` one column per value, as CSV needs)."""
    k = len(clf.class_names)
    ok = np.array([not e for e in errors], dtype=bool) & np.isfinite(probs).all(axis=1)
    table = job.table.copy(copy_data=False)
    for name, values in extra.items():
        table[name] = values
    if embed:
        if flat:
            for i in range(probs.shape[1]):
                table[f"embedding_{i}"] = probs[:, i]
        else:
            table["embedding"] = probs
        table["status"] = np.where(ok, "ok", "failed")
        table["error"] = [e if not good else "" for e, good in zip(errors, ok)]
        return table
    table["predicted"] = [clf.class_names[int(i)] if good else "" for i, good in
                          zip(clf.decide(np.nan_to_num(probs, nan=1.0 / k), operating_point), ok)]
    for c in range(k):
        table[f"p_{clf.class_names[c]}"] = probs[:, c]
    from astroclass.training.outputs import unfamiliarity

    score = unfamiliarity(np.nan_to_num(probs, nan=0.0))
    score[~ok] = np.nan
    table["unfamiliar_score"] = score
    threshold = (clf.card.get("unfamiliar") or {}).get("threshold")
    if threshold is not None:  # checkpoints from before the score have no threshold: the score alone
        table["unfamiliar"] = ok & (score > threshold)
    table["status"] = np.where(ok, "ok", "failed")
    table["error"] = [e if not good else "" for e, good in zip(errors, ok)]
    return table
