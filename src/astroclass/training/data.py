"""What a run trains on: its prepared dataset, after class grouping and train_fraction, in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astroclass.errors import AstroclassError
from astroclass.training.config import RunConfig


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
    splits: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]  # split → (images, labels, dataset rows)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[split][0], self.splits[split][1]


def load_run_data(cfg: RunConfig) -> RunData:
    """Read the run's dataset into memory, apply ``classes`` and ``train_fraction``, check every split."""
    from astroclass.data.prepared import PreparedDataset
    from astroclass.data.subsets import nested_subset, parse_classes

    with PreparedDataset(cfg.dataset, in_memory=True) as ds:
        labels = ds.labels.copy()
        names = list(ds.class_names)
        if cfg.classes:
            names, mapping = parse_classes(cfg.classes, ds.class_names)
            labels = np.array([mapping.get(int(v), -1) for v in labels], dtype=np.int64)
        splits = {}
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
            splits[split] = (torch.from_numpy(ds.images(rows)), torch.from_numpy(labels[rows]), rows)
        return RunData(ds.path, ds.content_hash, names, ds.channels, ds.image_shape[-1], ds.dtype, ds.spec,
                       list(ds.band_names), splits)


class DataCache:
    """A worker's datasets, kept between runs: by content hash (and class grouping, train fraction), the
    in-memory splits and, on a GPU, the train and val tensors already on the device."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: dict[tuple, tuple[RunData, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = {}

    def get(self, cfg: RunConfig, device: torch.device) -> tuple[RunData, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(the run's data, its train and val tensors on the device the run trains on)."""
        from astroclass.data.prepared import PreparedDataset

        with PreparedDataset(cfg.dataset) as ds:
            key = (ds.content_hash, cfg.classes, cfg.train_fraction, cfg.subset_seed, str(device))
        if key in self._items:
            self._items[key] = self._items.pop(key)  # most recently used last
            return self._items[key]
        data = load_run_data(cfg)
        on_device = {s: data.tensors(s) for s in ("train", "val")}
        if device.type == "cuda":
            on_device = {s: (x.to(device), y.to(device)) for s, (x, y) in on_device.items()}
        while len(self._items) >= self.size:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (data, on_device)
        return self._items[key]

    def clear(self) -> None:
        self._items.clear()
