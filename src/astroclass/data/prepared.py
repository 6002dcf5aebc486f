"""The prepared-dataset file: one HDF5 file per dataset, the input of every training run.

Layout (format version 1)::

    /images        (N, C, H, W) uint8 (8-bit sources) or float16 (FITS sources, scaled to [0, 1])
    /labels        (N,) int64, index into the ``class_names`` attribute
    /split         (N,) uint8, 0 = train, 1 = val, 2 = test
    /ids           (N,) str, object identifier (catalogue id, PGC name, file stem, ...)
    /paths         (N,) str, where each image came from (relative to the source root)
    /columns/NAME  (N,) optional per-object values (e.g. the true parameters of synthetic objects)

    attributes: format, format_version, class_names (JSON list), source (JSON), options (JSON),
    image_spec (JSON), band_names (JSON list), astroclass_version, content_hash (sha256 over
    images, labels, split, ids and class names), split_seed.

Nothing time-dependent is stored, so the same input and options give a byte-identical file.
Files are written to a temporary name beside the target and renamed into place, so an
interrupted write never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astroclass import __version__
from astroclass.data.images import ImageSpec
from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_output

FORMAT = "astroclass.prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


CHUNK_ROWS = 64  # images per HDF5 chunk: about 1 MB of 3-band 76x76 uint8, the unit of reads from disk
WRITE_ROWS = 1024  # images handed to HDF5 at once when writing (a whole number of chunks)


def _hash_header(class_names: Sequence[str], shape: Sequence[int], dtype: np.dtype) -> Any:
    h = hashlib.sha256()
    h.update(json.dumps([list(class_names), list(shape), str(np.dtype(dtype))]).encode())
    return h


def _hash_tail(h: Any, labels: np.ndarray, split: np.ndarray, ids: Sequence[str]) -> str:
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(split, dtype=np.uint8).tobytes())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def content_hash(images: np.ndarray, labels: np.ndarray, split: np.ndarray, ids: Sequence[str],
                 class_names: Sequence[str]) -> str:
    """sha256 over everything that defines a dataset's content (not its provenance)."""
    h = _hash_header(class_names, images.shape, images.dtype)
    h.update(np.ascontiguousarray(images).tobytes())
    return _hash_tail(h, labels, split, ids)


class PreparedWriter:
    """Write a prepared dataset image block by image block, so that memory does not grow with its size.

    ``with PreparedWriter(path, n, shape, dtype, class_names) as w:`` then :meth:`append` the images in
    order (any block sizes), then :meth:`finish` with the per-object arrays. The file appears at ``path``
    only when the ``with`` block ends without error (written under a temporary name, then renamed); the
    content hash is computed on the way, and equals :func:`content_hash` over the whole arrays.
    """

    def __init__(self, path: str | Path, n: int, shape: Sequence[int], dtype: Any, class_names: Sequence[str],
                 overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise AstroclassError(f"{self.path}: output exists (pass --overwrite to replace it)")
        if not self.path.parent.exists():
            raise AstroclassError(f"{self.path.parent}: output folder does not exist")
        self.n, self.shape, self.dtype = n, tuple(int(v) for v in shape), np.dtype(dtype)
        self.class_names = list(class_names)
        self._hash = _hash_header(self.class_names, (n,) + self.shape, self.dtype)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._written = 0
        self.content_hash = ""

    def __enter__(self) -> PreparedWriter:
        self._atomic = atomic_output(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w", track_order=False)
            n = self.n
            self._images = self._file.create_dataset(
                "images", shape=(n,) + self.shape, dtype=self.dtype,
                chunks=((max(1, min(n, CHUNK_ROWS)),) + self.shape) if n else None,
                compression="gzip" if n else None, compression_opts=4 if n else None, shuffle=bool(n),
                track_times=False)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def append(self, images: np.ndarray) -> None:
        """The next images, (k, C, H, W) in the dataset's shape and dtype."""
        images = np.ascontiguousarray(images)
        if images.shape[1:] != self.shape or images.dtype != self.dtype:
            raise ValueError(f"images {images.shape[1:]} {images.dtype} do not match the dataset's "
                             f"{self.shape} {self.dtype}")
        if self._written + self._pending_rows + len(images) > self.n:
            raise ValueError(f"more than the {self.n} images announced")
        self._hash.update(images.tobytes())
        self._pending.append(images)
        self._pending_rows += len(images)
        if self._pending_rows >= WRITE_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._images[self._written:self._written + len(block)] = block
        self._written += len(block)
        self._pending, self._pending_rows = [], 0

    def finish(self, *, labels: np.ndarray, split: np.ndarray, ids: Sequence[str], paths: Sequence[str],
               spec: ImageSpec, source: Mapping[str, Any], options: Mapping[str, Any],
               band_names: Sequence[str] = (), split_seed: int | None = None,
               columns: Mapping[str, np.ndarray] | None = None) -> str:
        """Write everything but the images; returns the content hash."""
        self._flush()
        n = self.n
        if self._written != n:
            raise ValueError(f"{self._written} images written, {n} announced")
        if len(labels) != n or len(split) != n or len(ids) != n or len(paths) != n:
            raise ValueError("images, labels, split, ids and paths must have the same length")
        labels = np.asarray(labels, dtype=np.int64)
        split = np.asarray(split, dtype=np.uint8)
        f = self._file
        self.content_hash = _hash_tail(self._hash, labels, split, ids)
        f.create_dataset("labels", data=labels, track_times=False)
        f.create_dataset("split", data=split, track_times=False)
        str_dt = h5py.string_dtype()
        f.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=str_dt, track_times=False)
        f.create_dataset("paths", data=np.array(list(paths), dtype=object), dtype=str_dt, track_times=False)
        if columns:
            grp = f.create_group("columns", track_order=False)
            for name in sorted(columns):
                values = np.asarray(columns[name])
                if values.dtype.kind in "OUS":  # text: variable-length UTF-8
                    values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
                    grp.create_dataset(name, data=values, dtype=str_dt, track_times=False)
                else:
                    grp.create_dataset(name, data=values, track_times=False)
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class_names": json.dumps(self.class_names),
            "source": json.dumps(dict(source), sort_keys=True),
            "options": json.dumps(dict(options), sort_keys=True),
            "image_spec": json.dumps(spec.to_dict(), sort_keys=True),
            "band_names": json.dumps(list(band_names)),
            "astroclass_version": __version__,
            "content_hash": self.content_hash,
            "split_seed": -1 if split_seed is None else int(split_seed),
        }
        for k, v in attrs.items():
            f.attrs[k] = v
        return self.content_hash

    def __exit__(self, etype: Any, value: Any, tb: Any) -> None:
        try:
            self._file.close()
            if etype is None and not self.content_hash:
                raise ValueError("PreparedWriter closed before finish()")
        except BaseException as err:
            if etype is None:
                self._atomic.__exit__(type(err), err, err.__traceback__)
                raise
        self._atomic.__exit__(etype, value, tb)


def write_prepared(path: str | Path, *, images: np.ndarray, labels: np.ndarray, split: np.ndarray,
                   class_names: Sequence[str], ids: Sequence[str], paths: Sequence[str],
                   spec: ImageSpec, source: Mapping[str, Any], options: Mapping[str, Any],
                   band_names: Sequence[str] = (), split_seed: int | None = None,
                   columns: Mapping[str, np.ndarray] | None = None, overwrite: bool = False) -> str:
    """Write a prepared dataset held in memory, atomically; returns its content hash."""
    n = len(labels)
    if images.shape[0] != n or len(split) != n or len(ids) != n or len(paths) != n:
        raise ValueError("images, labels, split, ids and paths must have the same length")
    with PreparedWriter(path, n, images.shape[1:], images.dtype, class_names, overwrite) as w:
        for i in range(0, n, WRITE_ROWS):
            w.append(images[i:i + WRITE_ROWS])
        return w.finish(labels=labels, split=split, ids=ids, paths=paths, spec=spec, source=source,
                        options=options, band_names=band_names, split_seed=split_seed, columns=columns)


def _open(path: Path) -> h5py.File:
    """The prepared-dataset file at ``path``, open for reading, or an error that says what is wrong with it."""
    if not path.is_file():
        raise AstroclassError(f"{path}: prepared dataset not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise AstroclassError(f"{path}: not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise AstroclassError(f"{path}: not an astroclass prepared dataset (missing format attribute)")
    return f


def read_content_hash(path: str | Path) -> str:
    """A prepared dataset's content hash, from its attributes alone (cheap whatever the dataset's size)."""
    with _open(Path(path)) as f:
        return str(f.attrs["content_hash"])


class PreparedDataset:
    """Read access to a prepared-dataset file.

    ``in_memory=True`` reads all arrays at once; otherwise images are read from the file on
    demand (the file stays open until :meth:`close`).
    """

    def __init__(self, path: str | Path, in_memory: bool = False):
        self.path = Path(path)
        self._file = f = _open(self.path)
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            self._file.close()
            raise AstroclassError(f"{self.path}: format version {version} is newer than this astroclass "
                                  f"understands ({FORMAT_VERSION}); upgrade astroclass")
        missing = [k for k in ("images", "labels", "split", "ids", "paths") if k not in f]
        if missing:
            self._file.close()
            raise AstroclassError(f"{self.path}: damaged prepared dataset, missing {missing}")
        self.class_names: list[str] = json.loads(f.attrs["class_names"])
        self.labels: np.ndarray = f["labels"][()]
        self.split_codes: np.ndarray = f["split"][()]
        self.ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        self.paths: list[str] = [s.decode() if isinstance(s, bytes) else s for s in f["paths"][()]]
        self.attrs: dict[str, Any] = {k: f.attrs[k] for k in f.attrs}
        self.spec = ImageSpec.from_dict(json.loads(f.attrs["image_spec"]))
        self.band_names: list[str] = json.loads(f.attrs.get("band_names", "[]"))
        self.content_hash: str = str(f.attrs["content_hash"])
        self.source: dict = json.loads(f.attrs.get("source", "{}"))
        self.options: dict = json.loads(f.attrs.get("options", "{}"))
        self._images = f["images"]
        if in_memory:
            self._images = self.images()

    # -- shape -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self._images.shape[1:]
        return c, h, w

    @property
    def chunk_rows(self) -> int:
        """Images per HDF5 chunk of the file (the unit in which it is read from disk)."""
        chunks = self._file["images"].chunks
        return int(chunks[0]) if chunks else max(1, len(self))

    @property
    def channels(self) -> int:
        return int(self._images.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self._images.dtype

    def column_names(self) -> list[str]:
        return sorted(self._file["columns"]) if "columns" in self._file else []

    def column(self, name: str) -> np.ndarray:
        """A per-object column; text as str."""
        if name not in self.column_names():
            raise AstroclassError(f"{self.path}: no per-object column {name!r} (have {self.column_names()})")
        values = self._file["columns"][name][()]
        if values.dtype == object:
            values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
        return values

    @property
    def labelled(self) -> bool:
        """Whether the objects have classes (a dataset cut out without a label column has none)."""
        return bool(self.class_names)

    # -- splits ------------------------------------------------------------------------
    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise AstroclassError(f"unknown split {split!r}; choose from {SPLITS}")
        return np.flatnonzero(self.split_codes == SPLITS.index(split))

    def images(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        try:
            if index is None:
                return self._images[()]
            if isinstance(index, np.ndarray):
                if len(index) == 0:
                    return np.zeros((0,) + self.image_shape, dtype=self.dtype)
                order = np.argsort(index, kind="stable")
                out = np.empty((len(index),) + self.image_shape, dtype=self.dtype)
                out[order] = self._images[np.sort(index)]
                return out
            return self._images[index]
        except OSError as exc:  # a damaged compressed block: name the file and how to find the rows
            raise AstroclassError(f"{self.path}: its images cannot be read ({' '.join(str(exc).split())[:120]}): "
                                  f"the file is damaged; `astroclass data info {self.path}` lists the damaged "
                                  f"rows; import the dataset again from its sources") from None

    def damaged_rows(self, progress: Callable[[int], None] | None = None) -> list[tuple[int, int]]:
        """Read every block of images once; the [first, last] rows of each block that cannot be read (a
        damaged compressed chunk). ``progress`` is called with the images read so far."""
        bad: list[tuple[int, int]] = []
        step = self.chunk_rows
        for start in range(0, len(self), step):
            stop = min(len(self), start + step)
            try:
                self._file["images"][start:stop]
            except OSError:
                bad.append((start, stop - 1))
            if progress is not None:
                progress(stop)
        return bad

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(split)
        return self.images(idx), self.labels[idx]

    def tensors(self, split: str):
        """(images, labels) of one split as torch tensors: uint8/float16 (N,C,H,W) and int64 (N,)."""
        import torch

        x, y = self.split_arrays(split)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def counts(self) -> dict[str, dict[str, int]]:
        """Objects per class in each split: {split: {class: count}}."""
        out: dict[str, dict[str, int]] = {}
        for code, name in enumerate(SPLITS):
            sel = self.labels[self.split_codes == code]
            if not self.labelled:
                out[name] = {"(unlabelled)": len(sel)}
                continue
            binc = np.bincount(sel, minlength=self.num_classes)
            out[name] = {c: int(binc[i]) for i, c in enumerate(self.class_names)}
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PreparedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
