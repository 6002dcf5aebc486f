"""What a run trains on: its prepared dataset, after class grouping and train_fraction.

A dataset whose images fit the run's memory budget (``max_memory``) is read into memory (and on a GPU the
train and val images go to the device); a larger one stays in its file and streams: :class:`DiskImages`
reads whole HDF5 chunks, an epoch visits the chunks in random order, shuffling the images of a window of
chunks together, and a background thread reads the next batches while the current one trains. Reads go
through the operating system's page cache, which every worker on the machine shares.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astroclass.errors import AstroclassError
from astroclass.training.config import RunConfig
from astroclass.training.speed import available_memory

WINDOW_IMAGES = 4096
"""Images a streamed epoch shuffles together when no memory budget sets it: blocks (the split's images in
one HDF5 chunk) from random places in the file, enough of them to hold this many images."""


def memory_budget(cfg: RunConfig, device: torch.device, share: int = 1, device_share: int = 1) -> tuple[int, int]:
    """(bytes the run's images may take in RAM, bytes they may take on ``device``): ``max_memory``, or
    with auto half the available RAM (split between the ``share`` workers of the machine) and, on a GPU,
    half its free memory (at most its total split between the ``device_share`` workers on it)."""
    from astroclass.runconfig import parse_size

    if cfg.max_memory != "auto":
        size = parse_size(cfg.max_memory, "max_memory")
        return size, size
    host = available_memory(torch.device("cpu")) // (2 * max(1, share))
    return host, available_memory(device, device_share) // 2 if device.type == "cuda" else host


class DiskImages:
    """One split's images, read from the prepared file when asked for: ``x[i:j]`` and ``x.gather(positions)``
    give a (k, C, H, W) tensor of stored values, like the in-memory tensor they stand in for.

    The unit of reading is a block: the split's images that lie in one HDF5 chunk, read (decompressed) once
    and kept in a small cache of at most ``cache_images`` images."""

    def __init__(self, path: Path, rows: np.ndarray, shape: tuple[int, int, int], dtype: np.dtype,
                 chunk_rows: int, window: int | None = None):
        self.path, self.rows = path, np.asarray(rows, dtype=np.int64)
        self.image_shape, self.np_dtype = shape, np.dtype(dtype)
        chunk = self.rows // max(1, chunk_rows)
        self.starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]) if len(chunk) else np.zeros(0, np.int64)
        self.ends = np.r_[self.starts[1:], len(self.rows)].astype(np.int64)
        self.window = max(1, window or WINDOW_IMAGES)
        self.cache_images = 2 * self.window
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self._file: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows),) + self.image_shape

    def _load(self, b: int) -> np.ndarray:
        """Block b: the split's images at positions [starts[b], ends[b]), from one chunk."""
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        rows = self.rows[self.starts[b]:self.ends[b]]
        try:
            if self._file is None:
                import h5py

                self._file = h5py.File(self.path, "r")
            out = self._file["images"][int(rows[0]):int(rows[-1]) + 1][rows - rows[0]]
        except (OSError, KeyError, ValueError) as exc:
            raise AstroclassError(f"{self.path}: cannot read images {rows[0]}-{rows[-1]} while streaming them "
                                  f"({exc}); the file is damaged, or was changed or removed during the run") from None
        self._cache[b] = out
        self._cached += len(out)
        while self._cached > self.cache_images and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1])
        return out

    def gather(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The images at these positions of the split, in the order given."""
        pos = positions.cpu().numpy() if isinstance(positions, torch.Tensor) else np.asarray(positions)
        out = np.empty((len(pos),) + self.image_shape, dtype=self.np_dtype)
        blocks = np.searchsorted(self.starts, pos, side="right") - 1
        with self._lock:
            for b in np.unique(blocks):
                sel = blocks == b
                out[sel] = self._load(int(b))[pos[sel] - self.starts[b]]
        return torch.from_numpy(out)

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice):
            return self.gather(np.asarray(key))
        pos = np.arange(len(self.rows))[key]
        out = self.gather(pos)
        if len(pos):  # slices are read in order (evaluation): blocks before this one are not needed again
            first = int(np.searchsorted(self.starts, pos.min(), side="right") - 1)
            self._drop(lambda b: b < first)
        return out

    def _drop(self, which: Any) -> None:
        with self._lock:
            for b in [b for b in self._cache if which(b)]:
                self._cached -= len(self._cache.pop(b))

    def drop_cache(self) -> None:
        """Forget the blocks read so far (an epoch is over: the next one reads them in another order)."""
        self._drop(lambda b: True)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached = 0
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getstate__(self) -> dict:
        raise TypeError("DiskImages stays in the process that opened it")


Images = torch.Tensor | DiskImages


def block_order(y: torch.Tensor, sampler: str, gen: torch.Generator, starts: np.ndarray, ends: np.ndarray,
                window: int) -> torch.Tensor:
    """An epoch's order for streamed images: the blocks [starts[b], ends[b]) in random order, taken a window
    (``window`` images or a little more) at a time, each window's images in the order :func:`epoch_order`
    gives them (a permutation, or balanced draws). A split no larger than a window gets exactly the
    in-memory order. Files often hold their images sorted (by class, by catalogue row): a window mixes
    blocks from random places, so its batches are not runs of one class."""
    from astroclass.training.method import epoch_order

    if len(y) <= window:
        return epoch_order(y, sampler, gen)
    out: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        pos = torch.cat(current)
        out.append(pos[epoch_order(y[pos], sampler, gen)])

    for b in torch.randperm(len(starts), generator=gen).tolist():
        current.append(torch.arange(int(starts[b]), int(ends[b])))
        size += int(ends[b] - starts[b])
        if size >= window:
            flush()
            current, size = [], 0
    if current:
        flush()
    return torch.cat(out)


def stream_window(budget: int | None, image_bytes: int) -> int:
    """Images a streamed epoch shuffles together: an eighth of the memory budget (the blocks of the window
    being trained on and of the next one are cached, and batches are gathered from them), 256 to 16,384."""
    if budget is None:
        return WINDOW_IMAGES
    return min(16384, max(256, budget // (8 * image_bytes)))


def training_order(x: Images, y: torch.Tensor, sampler: str, gen: torch.Generator) -> torch.Tensor:
    """The training images of one epoch, in order: fully shuffled in memory, window by window when streamed."""
    from astroclass.training.method import epoch_order

    if isinstance(x, DiskImages):
        return block_order(y, sampler, gen, x.starts, x.ends, x.window)
    return epoch_order(y, sampler, gen)


def batches(x: Images, indices: Sequence[torch.Tensor], pin: bool = False, depth: int = 3) -> Iterator[torch.Tensor]:
    """The stored images of each index batch in turn. In memory they are gathered as they are needed (on the
    images' device; from CPU memory into pinned memory with ``pin``); streamed, a background thread reads up to
    ``depth`` batches ahead (into pinned memory with ``pin``). Pinned batches copy to a GPU asynchronously."""
    if not isinstance(x, DiskImages):
        for idx in indices:
            xb = x[idx.to(x.device)]
            yield xb.pin_memory() if pin and not xb.is_cuda else xb
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: tuple) -> bool:
        """Queue item unless the training loop has stopped listening; whether it was queued."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for idx in indices:
                xb = x.gather(idx)
                if not hand_over(("ok", xb.pin_memory() if pin else xb)):
                    return
        except BaseException as exc:  # handed to the training thread, which raises it
            hand_over(("error", exc))

    reader = threading.Thread(target=read, name="astroclass-prefetch", daemon=True)
    reader.start()
    try:
        for _ in indices:
            kind, value = q.get()
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        reader.join()


@dataclass
class RunData:
    """What a run trains and evaluates on: a prepared dataset after class grouping and train_fraction."""

    path: Path
    content_hash: str
    class_names: list[str]
    channels: int
    size: int
    dtype: np.dtype
    spec: Any
    band_names: list[str]
    splits: dict[str, tuple[Images, torch.Tensor, np.ndarray]]  # split → (images, labels, dataset rows)
    storage: str = "memory"
    """Where the images are while the run trains: memory, device (train and val on the GPU) or stream."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, split: str) -> tuple[Images, torch.Tensor]:
        return self.splits[split][0], self.splits[split][1]

    def close(self) -> None:
        for x, _, _ in self.splits.values():
            if isinstance(x, DiskImages):
                x.close()


def load_run_data(cfg: RunConfig, budget: int | None = None) -> RunData:
    """The run's dataset, ``classes`` and ``train_fraction`` applied and every split checked: its images in
    memory when they take at most ``budget`` bytes (or no budget is given), else streamed from the file."""
    from astroclass.data.prepared import PreparedDataset
    from astroclass.data.subsets import nested_subset, parse_classes

    with PreparedDataset(cfg.dataset) as ds:
        if not ds.labelled:
            raise AstroclassError(f"{ds.path}: an unlabelled dataset (objects to classify, cut out without a label "
                                  f"column): training needs a class per object (--label-col)")
        labels = ds.labels.copy()
        names = list(ds.class_names)
        if cfg.classes:
            names, mapping = parse_classes(cfg.classes, ds.class_names)
            labels = np.array([mapping.get(int(v), -1) for v in labels], dtype=np.int64)
        if len(names) < 2:
            raise AstroclassError(f"{ds.path}: one class only ({names}): a classifier needs at least two")
        rows_of = {}
        for split in ("train", "val", "test"):
            rows = ds.indices(split)
            rows = rows[labels[rows] >= 0]
            if split == "train" and cfg.train_fraction < 1:
                rows = rows[nested_subset(labels[rows], cfg.train_fraction, cfg.subset_seed)]
            present = np.bincount(labels[rows], minlength=len(names))
            missing = [c for c, n in zip(names, present) if n == 0]
            if missing:
                hint = "; re-import with other split fractions" if split == "test" else ""
                raise AstroclassError(f"{ds.path}: the {split} split has no examples of class(es) {missing}{hint}")
            rows_of[split] = rows
        image_bytes = int(np.prod(ds.image_shape)) * ds.dtype.itemsize
        total = sum(len(r) for r in rows_of.values()) * image_bytes
        stream = budget is not None and total > budget
        window = stream_window(budget, image_bytes)
        chunk_rows = ds.chunk_rows
        splits: dict[str, tuple[Images, torch.Tensor, np.ndarray]] = {}
        for split, rows in rows_of.items():
            x: Images = DiskImages(ds.path, rows, ds.image_shape, ds.dtype, chunk_rows, window) if stream else \
                torch.from_numpy(ds.images(rows))
            splits[split] = (x, torch.from_numpy(labels[rows]), rows)
        return RunData(ds.path, ds.content_hash, names, ds.channels, ds.image_shape[-1], ds.dtype, ds.spec,
                       list(ds.band_names), splits, "stream" if stream else "memory")


class DataCache:
    """A worker's datasets, kept between runs: by content hash (and class grouping, train fraction, memory
    budget), the splits and, on a GPU when they fit, the train and val tensors already on the device."""

    def __init__(self, size: int = 2, share: int = 1):
        self.size = size
        self.share = share  # workers on this machine (their automatic memory budgets split the RAM)
        self.device_share = 1  # workers on this worker's GPU (they split its memory)
        self._items: dict[tuple, tuple[RunData, dict[str, tuple[Images, torch.Tensor]]]] = {}

    def get(self, cfg: RunConfig, device: torch.device) -> tuple[RunData, dict[str, tuple[Images, torch.Tensor]]]:
        """(the run's data, its train and val images and labels where the run reads them)."""
        from astroclass.data.prepared import read_content_hash

        key = (read_content_hash(cfg.dataset), cfg.classes, cfg.train_fraction, cfg.subset_seed, str(device),
               cfg.max_memory)
        if key in self._items:
            self._items[key] = self._items.pop(key)  # most recently used last
            return self._items[key]
        while len(self._items) >= self.size:  # before loading: the old data's memory is free for the new
            self._items.pop(next(iter(self._items)))[0].close()
        host, on_gpu = memory_budget(cfg, device, self.share, self.device_share)
        data = load_run_data(cfg, host)
        placed = {s: data.tensors(s) for s in ("train", "val")}
        image_bytes = data.channels * data.size ** 2 * np.dtype(data.dtype).itemsize
        if device.type == "cuda" and data.storage == "memory" and \
                sum(len(x) for x, _ in placed.values()) * image_bytes <= on_gpu:
            placed = {s: (x.to(device), y.to(device)) for s, (x, y) in placed.items()}  # type: ignore[union-attr]
            data.storage = "device"
        self._items[key] = (data, placed)
        return self._items[key]

    def clear(self) -> None:
        for data, _ in self._items.values():
            data.close()
        self._items.clear()
