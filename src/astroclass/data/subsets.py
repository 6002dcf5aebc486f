"""Views of a prepared dataset for a run: class groupings and nested training subsets.

``classes`` selects or groups classes with a comma-separated list of entries:

* ``NAME`` keeps class NAME as it is;
* ``NEW=A+B`` merges classes A and B into a class NEW;
* ``NEW=*`` gathers every class not named elsewhere (e.g. ``merger,rest=*`` is merger vs rest).

Objects of classes that no entry covers are left out of every split.

``train_fraction`` keeps a stratified part of the training split. For each class, the training
objects are put in an order fixed by ``subset_seed`` and the first round(f·n) (at least one) are
kept, so a smaller fraction is always contained in a larger one (nested subsets), whatever the
run's seed. Validation and test splits are never subsampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from astroclass.errors import AstroclassError


def parse_classes(text: str, class_names: Sequence[str]) -> tuple[list[str], dict[int, int]]:
    """New class names and {old label: new label} for a ``classes`` expression."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise AstroclassError(f"classes {text!r}: empty")
    new_names: list[str] = []
    mapping: dict[int, int] = {}
    star: int | None = None
    for e in entries:
        name, _, members = e.partition("=")
        name = name.strip()
        if name in new_names:
            raise AstroclassError(f"classes {text!r}: {name!r} appears twice")
        new_names.append(name)
        if members.strip() == "*":
            star = len(new_names) - 1
            continue
        for m in (members.split("+") if members else [name]):
            m = m.strip()
            if m not in class_names:
                raise AstroclassError(f"classes {text!r}: {m!r} is not a class of the dataset ({list(class_names)})")
            old = class_names.index(m)
            if old in mapping:
                raise AstroclassError(f"classes {text!r}: {m!r} is in two groups")
            mapping[old] = len(new_names) - 1
    if star is not None:
        for old in range(len(class_names)):
            mapping.setdefault(old, star)
    if len(new_names) < 2:
        raise AstroclassError(f"classes {text!r}: at least two classes are needed")
    return new_names, mapping


def nested_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a stratified ``fraction`` of ``labels``; nested across fractions for one seed."""
    if not 0 < fraction <= 1:
        raise AstroclassError(f"train_fraction must be in (0, 1], got {fraction}")
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
        keep.append(order[:max(1, round(fraction * len(idx)))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
