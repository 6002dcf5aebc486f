"""GridSpec: the comparison grid in YAML, and its expansion into runs with stable ids.

A spec names its datasets (short name → prepared file, as the paper's tables name them: SG, MG,
EF-2, ...) and the axes to cross. Example::

    name: paper
    datasets: {SG: sg.h5, MG: mg.h5, EF-2: ef2.h5, EF-4: ef4.h5, EF-15: ef15.h5}
    models: [vgg16, inception_v3, inception_resnet_v2, resnext50_32x4d, densenet121]
    setups: [scratch, pretrained]
    l2: [0.0, 0.1]    # left out: the recipe's (paper: the preset's 0.1; modern: 0)
    maxnorm: [0.0, 2.0]
    optimizers: [rmsprop, adam, radam]   # left out: the recipe's (paper: adam; modern: adamw)
    seeds: [0]
    axes: {}          # any other RunConfig field as an axis, e.g. {augment: [false, true]} or
                      # {recipe: [paper, modern]}
    train:            # RunConfig options shared by every run
      epochs: 200
      patience: 10
      batch_size: 32

Relative dataset paths are resolved against the spec file's folder (for a built-in spec,
against the current folder). A run's id is the first 16 hex digits of the sha256 of its
canonical config: the dataset by short name, the paper's axes, and every other option that differs
from its default (device, evaluation batch size and fusion excluded, since they do not change what is
computed), so the same run has the same id in every store and across astroclass versions that add
options.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from astroclass.errors import AstroclassError
from astroclass.runconfig import OPTIMIZERS, SETUPS, RunConfig, apply_recipe, upgrade_legacy

AXES = {"models": "model", "setups": "setup", "l2": "l2", "maxnorm": "maxnorm", "optimizers": "optimizer",
        "seeds": "seed"}
TOP_KEYS = {"name", "datasets", "axes", "train", *AXES}
NOT_IN_ID = {"device", "eval_batch_size", "fuse", "max_memory"}
BUILTIN = ("paper", "demo", "tiny")
PAPER_PRESET_L2 = 0.1
"""A grid's λ when it names none and runs the paper recipe: the paper's preset (λ = 0.1, γ = 0, Adam)."""


ID_ALWAYS = {"dataset", "model", "setup", "l2", "maxnorm", "optimizer", "seed"}
ID_PRETRAINED = {"unfreeze", "frozen_bn"}
"""Always in the id of a pretrained run: these replaced ``unfreeze_layers``, whose runs computed something
else under the same defaults, so pretrained runs of earlier versions keep ids of their own."""


def run_id(config: dict[str, Any]) -> str:
    """sha256 of the canonical config: the paper's axes, plus every other option that differs from its
    default (so options added to RunConfig later, at their defaults, leave existing ids unchanged)."""
    defaults = RunConfig.defaults()
    always = ID_ALWAYS | (ID_PRETRAINED if config.get("setup") == "pretrained" else set())
    canon = {k: v for k, v in config.items()
             if k not in NOT_IN_ID and (k in always or k not in defaults or v != defaults[k])}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunSpec:
    """One run of a grid: its id and its config (dataset by short name)."""

    id: str
    config: dict[str, Any]

    @property
    def dataset(self) -> str:
        return self.config["dataset"]


@dataclass
class GridSpec:
    name: str
    datasets: dict[str, Path]
    models: list[str]
    setups: list[str] = field(default_factory=lambda: ["scratch"])
    l2: list[float] | None = None  # None: the recipe's (the paper preset's λ = 0.1 for the paper recipe)
    maxnorm: list[float] = field(default_factory=lambda: [0.0])
    optimizers: list[str] | None = None  # None: the recipe's (adam for the paper recipe, adamw for modern)
    seeds: list[int] = field(default_factory=lambda: [0])
    axes: dict[str, list[Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, base: Path, check_models: bool = True) -> GridSpec:
        if not isinstance(d, dict):
            raise AstroclassError(f"{where}: a grid spec is a mapping with keys {sorted(TOP_KEYS)}")
        unknown = sorted(set(d) - TOP_KEYS)
        if unknown:
            raise AstroclassError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
        if not d.get("datasets") or not isinstance(d["datasets"], dict):
            raise AstroclassError(f"{where}: 'datasets' must map short names to prepared files, e.g. {{SG: sg.h5}}")
        if not d.get("models"):
            raise AstroclassError(f"{where}: 'models' must list at least one model")
        d = dict(d)
        if isinstance(d.get("train"), dict):
            d["train"] = upgrade_legacy(d["train"])
        if isinstance(d.get("axes"), dict):
            d["axes"] = upgrade_legacy({k: _list(d["axes"], k) for k in d["axes"]}, axes=True)
        run_fields = {f.name for f in fields(RunConfig)}
        for key in ("train", "axes"):
            sub = d.get(key) or {}
            if not isinstance(sub, dict):
                raise AstroclassError(f"{where}: '{key}' must be a mapping of run options")
            bad = sorted(set(sub) - (run_fields - {"dataset"}))
            if bad:
                raise AstroclassError(f"{where}: unknown {key} option(s) {bad}; allowed: "
                                      f"{sorted(run_fields - {'dataset'})}")
        clash = sorted(set(d.get("axes") or {}) & (set(AXES.values()) | set(d.get("train") or {})))
        if clash:
            raise AstroclassError(f"{where}: {clash} given both as an axis and elsewhere; give each once")
        datasets = {str(k): (base / str(v)) if not Path(str(v)).is_absolute() else Path(str(v))
                    for k, v in d["datasets"].items()}
        spec = cls(name=str(d.get("name") or "grid"), datasets=datasets, models=[str(m) for m in _list(d, "models")],
                   source=where, train=dict(d.get("train") or {}),
                   axes={k: _list(d["axes"], k) for k in d.get("axes") or {}})
        if not re.fullmatch(r"[\w.+-]+", spec.name) or spec.name in (".", ".."):
            raise AstroclassError(f"{where}: name {spec.name!r} must be a plain folder name (letters, digits, '_', "
                                  f"'.', '+', '-'): the experiment's store goes to experiments/NAME")
        for key in ("setups", "l2", "maxnorm", "optimizers", "seeds"):
            if key in d:
                setattr(spec, key, _list(d, key))
        lists = [(k, getattr(spec, k)) for k in ("models", "setups", "l2", "maxnorm", "optimizers", "seeds")]
        for key, values in lists + [(f"axes: {k}", v) for k, v in spec.axes.items()]:
            if values is not None and not values:
                raise AstroclassError(f"{where}: {key}: an empty list runs nothing; give at least one value")
        for value in spec.setups:
            if value not in SETUPS:
                raise AstroclassError(f"{where}: setups: {value!r} is not one of {list(SETUPS)}")
        for value in spec.optimizers or []:
            if value not in OPTIMIZERS:
                raise AstroclassError(f"{where}: optimizers: {value!r} is not one of {list(OPTIMIZERS)}")
        if spec.l2 is not None:
            spec.l2 = [_number(where, "l2", v) for v in spec.l2]
        spec.maxnorm = [_number(where, "maxnorm", v) for v in spec.maxnorm]
        spec.seeds = [int(_number(where, "seeds", v)) for v in spec.seeds]
        from astroclass.modelnames import check_model_name

        for m in spec.models if check_models else []:
            try:
                check_model_name(m)
            except AstroclassError as exc:
                raise AstroclassError(f"{where}: models: {exc}") from None
        runs = spec.expand()
        checked = set()
        for cfg in runs:  # every run's options: the shared ones and each axis value
            key = json.dumps({k: v for k, v in cfg.config.items() if k != "dataset"}, sort_keys=True, default=str)
            if key not in checked:
                checked.add(key)
                RunConfig.from_dict({**cfg.config, "dataset": "x"}, where)
        from astroclass.modelnames import resolve_unfreeze

        for model, unfreeze in sorted({(r.config["model"], str(r.config["unfreeze"])) for r in runs
                                       if r.config["setup"] == "pretrained"}):
            try:
                resolve_unfreeze(model, unfreeze)
            except AstroclassError as exc:
                raise AstroclassError(f"{where}: {exc}") from None
        return spec

    @classmethod
    def load(cls, spec: str | Path, data_overrides: dict[str, str] | None = None,
             check_models: bool = True) -> GridSpec:
        """A spec file, or the name of a built-in spec (paper, demo, tiny). ``check_models=False`` skips asking timm
        whether a model name other than the paper's exists (seconds: it imports torch): for reading where an
        experiment stands, whose runs were checked when they were added."""
        path = Path(spec)
        if path.is_file():
            text, where, base = path.read_text(), str(path), path.resolve().parent
        elif str(spec) in BUILTIN:
            text = resources.files("astroclass").joinpath(f"specs/{spec}.yaml").read_text()
            where, base = f"built-in spec {spec!r}", Path.cwd()
        else:
            raise AstroclassError(f"{spec}: no such spec file, and not a built-in spec ({', '.join(BUILTIN)})")
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AstroclassError(f"{where}: not valid YAML ({exc})") from None
        if data_overrides and isinstance(d, dict):
            unknown = sorted(set(data_overrides) - set(d.get("datasets") or {}))
            if unknown:
                raise AstroclassError(f"--data {unknown}: not datasets of {where} ({sorted(d.get('datasets') or {})})")
            d["datasets"] = {**d["datasets"], **{k: str(Path(v).resolve()) for k, v in data_overrides.items()}}
        return cls.from_dict(d, where, base, check_models)

    def expand(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order (datasets, models, setups, l2, maxnorm, optimisers, seeds, axes)."""
        extra_keys = sorted(self.axes)
        runs = []
        for ds, model, setup, l2, mn, opt, seed, *extra in itertools.product(
                self.datasets, self.models, self.setups, self.l2 or [None], self.maxnorm,  # type: ignore[list-item]
                self.optimizers or [None], self.seeds, *[self.axes[k] for k in extra_keys]):  # type: ignore[list-item]
            given = {**self.train, "model": model, "setup": setup, "maxnorm": mn, "seed": seed,
                     **dict(zip(extra_keys, extra))}
            given.update({k: v for k, v in (("l2", l2), ("optimizer", opt)) if v is not None})
            resolved = apply_recipe(given)
            if resolved.get("recipe", "paper") == "paper":
                resolved.setdefault("l2", PAPER_PRESET_L2)
            cfg = RunConfig(dataset=ds, **resolved).to_dict()
            runs.append(RunSpec(run_id(cfg), cfg))
        return runs

    def to_yaml(self) -> str:
        d = {"name": self.name, "datasets": {k: str(v) for k, v in self.datasets.items()}, "models": self.models,
             "setups": self.setups, "l2": self.l2, "maxnorm": self.maxnorm, "optimizers": self.optimizers,
             "seeds": self.seeds, "axes": self.axes, "train": self.train}
        d = {k: v for k, v in d.items() if v is not None}  # an axis left to the recipe stays unsaid
        return yaml.safe_dump(d, sort_keys=False)


def _list(d: dict, key: str) -> list:
    v = d[key]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _number(where: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AstroclassError(f"{where}: {key}: {v!r} is not a finite number")
    return float(v)
