"""Stratified, deterministic train/val/test splits that keep identical images together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from astroclass.errors import AstroclassError


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' (or a sequence) → three fractions that sum to 1."""
    try:
        parts = [float(p) for p in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise AstroclassError(f"split fractions must be three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise AstroclassError(f"split fractions must be three non-negative numbers summing to 1 "
                              f"(train > 0), got {text!r}")
    return parts[0], parts[1], parts[2]


def stratified_split(labels: np.ndarray, class_names: Sequence[str],
                     fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) per object, stratified by class.

    Each class is split on its own: its units (objects, or groups of identical images when
    ``groups`` is given, so that duplicates never straddle two splits) are shuffled with a
    generator seeded by ``seed`` and cut at round(n * fraction), with at least one unit in
    every split whose fraction is non-zero. A class too small for that is an error naming it.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if groups is None:
        groups = np.arange(n)
    # one unit per group, labelled by the group's first member
    uniq, first = np.unique(groups, return_index=True)
    unit_label = labels[first]
    rng = np.random.default_rng(seed)
    unit_code = np.zeros(len(uniq), dtype=np.uint8)
    for c, name in enumerate(class_names):
        units = np.flatnonzero(unit_label == c)
        m = len(units)
        n_val = max(1, round(m * fractions[1])) if fractions[1] > 0 else 0
        n_test = max(1, round(m * fractions[2])) if fractions[2] > 0 else 0
        if m - n_val - n_test < 1:
            need = 1 + (fractions[1] > 0) + (fractions[2] > 0)
            raise AstroclassError(f"class {name!r} has {m} distinct image(s): too few to split into "
                                  f"train/val/test (needs at least {need})")
        perm = units[rng.permutation(m)]
        unit_code[perm[m - n_val - n_test: m - n_test]] = 1
        unit_code[perm[m - n_test:]] = 2
    code_of_group = dict(zip(uniq.tolist(), unit_code.tolist()))
    return np.array([code_of_group[g] for g in groups.tolist()], dtype=np.uint8)
