"""Prediction parts over a Ray cluster (``astroclass predict --engine ray``).

The driver keeps the work folder and writes the output (:func:`astroclass.classify.run_job`); the nodes need
nothing of its file system. The checkpoint and every file a part reads (survey images, image files, prepared
datasets) travel through the object store once per file, chunk by chunk, and each node keeps what it received
in its cache (``$ASTROCLASS_CACHE/files``, by sha256), verified; a node that sees the driver's file itself
(the same host, or shared storage) reads it there. Each actor loads the model once and classifies part after
part; parts come back in any order and are saved as they come, so a killed prediction resumes without redoing
them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.errors import AstroclassError

IN_FLIGHT = 2
"""Parts handed to each actor at a time (one classified while the next is received)."""


@dataclass(frozen=True)
class FileShipment:
    """A file as the driver hands it to the nodes: its path there, its sha256 and size, its bytes as chunks."""

    driver_path: str
    sha256: str
    size: int
    chunks: tuple


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ship_file(ray: Any, path: str) -> FileShipment:
    """Put a file into the object store, chunk by chunk (the driver never holds it whole)."""
    from astroclass.shipping import put_file

    return FileShipment(path, *put_file(ray, path))


def file_cache() -> Path:
    root = os.environ.get("ASTROCLASS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "astroclass")
    return Path(root) / "files"


_SEEN: dict[tuple[str, str], str] = {}


def receive_file(ray: Any, s: FileShipment) -> str:
    """The shipped file's path on this node: the driver's own if this node sees it with the same bytes, else the
    node's cached copy, assembled and checked against the sha256 the first time (one actor does it; others on
    the node wait for it). The copy keeps the file's name, so its format is still told by its extension."""
    import fcntl

    from astroclass.shipping import assemble

    key = (s.driver_path, s.sha256)
    if key in _SEEN:
        return _SEEN[key]
    p = Path(s.driver_path)
    if p.is_file() and p.stat().st_size == s.size and _sha256(p) == s.sha256:
        _SEEN[key] = s.driver_path
        return s.driver_path
    folder = file_cache() / s.sha256
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / p.name
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target.is_file() and target.stat().st_size == s.size):
            assemble(ray, s.chunks, target, s.sha256, s.driver_path)
    _SEEN[key] = str(target)
    return str(target)


def part_files(part: Any) -> list[str]:
    """The files a part reads."""
    from astroclass.classify import FilesPart, H5Part
    from astroclass.data.sky import SkyPart

    if isinstance(part, SkyPart):
        return sorted({im.path for im in part.images})
    if isinstance(part, H5Part):
        return [part.path]
    if isinstance(part, FilesPart):
        return list(dict.fromkeys(part.paths))
    raise TypeError(f"not a prediction part: {type(part).__name__}")


def relocate(part: Any, where: dict[str, str]) -> Any:
    """The part reading each file at ``where[driver path]`` (files not in ``where`` keep their path)."""
    from astroclass.classify import FilesPart, H5Part
    from astroclass.data.sky import SkyPart

    if isinstance(part, SkyPart):
        return dataclasses.replace(part, images=tuple(dataclasses.replace(im, path=where.get(im.path, im.path))
                                                      for im in part.images))
    if isinstance(part, H5Part):
        return dataclasses.replace(part, path=where.get(part.path, part.path))
    if isinstance(part, FilesPart):
        return dataclasses.replace(part, paths=[where.get(p, p) for p in part.paths])
    raise TypeError(f"not a prediction part: {type(part).__name__}")


class _PredictActor:
    """One Ray actor: the model, loaded once, and the files its node received."""

    def __init__(self, checkpoint: FileShipment, device: str, amp: str, threads: int):
        import ray
        import torch

        from astroclass.predict import load

        torch.set_num_threads(max(1, threads))
        self.clf = load(receive_file(ray, checkpoint), device, amp)

    def predict(self, part: Any, files: dict[str, FileShipment], tta: bool, embed: str | None = None
                ) -> tuple[int, np.ndarray, list[str], dict]:
        import ray

        from astroclass.classify import predict_parts

        local = {path: receive_file(ray, s) for path, s in files.items()}
        back = {v: k for k, v in local.items() if v != k}
        _, probs, errors, extra = next(predict_parts(self.clf, [relocate(part, local)], tta, workers=0, embed=embed))
        for local_path, driver_path in back.items():  # errors name the driver's files
            errors = [e.replace(local_path, driver_path) for e in errors]
        return part.index, probs, errors, extra


def predict_parts_ray(clf: Any, job: Any, parts: Sequence[Any], tta: bool, address: str | None = None,
                      embed: str | None = None) -> Iterator[tuple[Any, np.ndarray, list[str], dict]]:
    """(part, probabilities (with ``embed``, that layer's representation), errors, extra columns) for each part,
    in the order they finish on the cluster."""
    from astroclass.extras import require

    if not parts:
        return
    ray = require("ray", "predict --engine ray")
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            raise AstroclassError(f"could not start or reach Ray at {address or 'a local instance'} ({exc})") from None
        started = True
    try:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        node_cpus = [int(nd["Resources"]["CPU"]) for nd in ray.nodes()
                     if nd.get("Alive") and nd.get("Resources", {}).get("CPU", 0) > 0] or [1]
        threads = 1 if gpus else max(1, min(node_cpus))
        n_actors = min(len(parts), gpus if gpus else max(1, sum(c // threads for c in node_cpus)))
        actor_cls = ray.remote(num_cpus=1 if gpus else threads, num_gpus=1 if gpus else 0)(_PredictActor)
        checkpoint = ship_file(ray, str(clf.path))
        actors = [actor_cls.remote(checkpoint, "cuda" if gpus else "cpu", clf.amp_setting, threads)
                  for _ in range(n_actors)]
        shipped: dict[str, FileShipment] = {}
        todo = list(parts)
        by_index = {p.index: p for p in parts}
        pending: dict[Any, Any] = {}  # ref → actor

        def submit(actor: Any) -> None:
            part = todo.pop(0)
            files = {}
            for f in part_files(part):
                if f not in shipped and Path(f).is_file():
                    shipped[f] = ship_file(ray, f)
                if f in shipped:
                    files[f] = shipped[f]
            pending[actor.predict.remote(part, files, tta, embed)] = actor

        for actor in actors:
            for _ in range(IN_FLIGHT):
                if todo:
                    submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor = pending.pop(ref)
            try:
                index, probs, errors, extra = ray.get(ref)
            except Exception as exc:
                raise AstroclassError(f"a Ray actor failed while classifying: {type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:300]}") from None
            if todo:
                submit(actor)
            yield by_index[index], probs, errors, extra
    finally:
        if started:
            ray.shutdown()
