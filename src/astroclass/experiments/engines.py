"""Engines execute groups of runs; the driver (:mod:`astroclass.experiments.runner`) alone writes the store.

Both engines offer the same interface: ``slots`` (device names, one per concurrent group),
``submit(job)`` with a :class:`~astroclass.experiments.workers.GroupJob`, and ``wait(timeout)`` →
events ``(kind, group key, run id, outcome)``: ``"run"`` when a run of the group ended (its outcome:
``{"result", "history"}``), ``"done"`` when the group is over, ``"lost"`` when its worker died (the
runs it had not reported get no outcome).

* ``local``: long-lived worker processes on this machine (spawned, so every worker has a clean
  torch), one per slot. On a GPU machine each GPU gets ``per_gpu`` slots; on a CPU machine each core
  one, as far as memory allows (:func:`default_cpu_workers`). Workers keep their models and datasets
  between groups (:mod:`astroclass.experiments.workers`).
* ``ray``: one Ray actor per slot, with its CPU share and a GPU fraction (1/``per_gpu``), on a
  cluster (``address``) or a local Ray instance; actors keep their caches the same way. The nodes need
  not share storage with the driver: datasets travel through Ray's object store to a per-node cache
  (verified by hash), and each run's files travel back to the driver's experiment folder.

A local CPU worker's runs get ``cores // workers`` threads, fixed for the engine's life: on a CPU a run's numbers
depend (at the rounding level, then through training) on its thread count, so the same grid on the same machine
gives every run the same count wherever it falls in the schedule. Slots are never more than the runs to do (on
either engine), so a grid of one run still has every core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.experiments.workers import GroupJob, execute_group, failed, worker_main
from astroclass.fileio import atomic_output
from astroclass.parallel import host_available_memory, usable_cores

ENGINES = ("local", "ray")
MAX_GROUPS_PER_WORKER = 50
"""A worker is recycled (a fresh process) after this many groups, so nothing it accumulates lives forever."""
CPU_WORKER_MEMORY = 2 * 2**30
"""Host memory a CPU worker is counted to need besides its images (peak of one training run of the paper's
backbones at 76 px and batch 32: 1.3-1.7 GiB)."""


def default_cpu_workers(cores: int, available: int) -> int:
    """Local CPU workers by default: one per core, one thread each, as far as half of ``available`` bytes allows
    at :data:`CPU_WORKER_MEMORY` each (the other half is the workers' budget for images in memory,
    training.data.memory_budget).

    Small convolutions keep two threads busy far less than two processes of one thread each: on a 2-core CPU a
    grid cell of tiny runs trained 1.5-1.7x as fast on two single-thread workers as one run at a time with both
    cores, and an InceptionV3 grid at 76 px took 0.77x the time (benchmarks/bench_grid.py, benchmarks/README.md)."""
    return max(1, min(cores, available // (2 * CPU_WORKER_MEMORY)))


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class _Worker:
    """One local worker process and its end of the pipe."""

    def __init__(self, ctx, max_groups: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, os.getpid(), max_groups), daemon=True)
        self.process.start()
        child.close()
        self.job: GroupJob | None = None
        self.asked_to_stop = False

    def alive(self) -> bool:
        return self.process.is_alive()

    def ask_to_stop(self) -> None:
        """Tell an idle worker to exit (it ends its process by itself; :meth:`stop` waits for that)."""
        if self.alive() and not self.asked_to_stop:
            self.asked_to_stop = True
            try:
                self.conn.send(None)
            except OSError:
                pass

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.ask_to_stop()
        self.process.join(timeout=None if kill else 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def local_slots(workers: int | None = None, per_gpu: int = 1, runs: int | None = None) -> list[str]:
    """The local engine's slots (a device name per concurrent group): ``per_gpu`` per GPU, else
    :func:`default_cpu_workers`; ``workers`` caps or sets their number, and so do ``runs`` (the runs to do)."""
    gpus = _gpu_count()
    if gpus:
        slots = [f"cuda:{g}" for g in range(gpus) for _ in range(max(1, per_gpu))]
        slots = slots[:workers] if workers else slots
    else:
        slots = ["cpu"] * max(1, workers or default_cpu_workers(usable_cores(), host_available_memory()))
    return slots[:max(1, runs)] if runs is not None else slots


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None, per_gpu: int = 1, threads: int | None = None,
                 max_groups: int = MAX_GROUPS_PER_WORKER, runs: int | None = None):
        self.slots = local_slots(workers, per_gpu, runs)
        self.threads = threads if threads is not None else max(1, usable_cores() // len(self.slots))
        self.max_groups = max_groups
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []

    def submit(self, job: GroupJob) -> None:
        import multiprocessing

        job.threads, job.share, job.device_share = self.threads, len(self.slots), self.slots.count(job.device)
        while self._idle and not self._idle[-1].alive():
            self._idle.pop().stop()
        worker = self._idle.pop() if self._idle else _Worker(multiprocessing.get_context("spawn"), self.max_groups)
        try:
            worker.conn.send(job)
        except OSError:  # it exited (recycled) just now: a fresh one takes the job
            worker.stop(kill=True)
            worker = _Worker(multiprocessing.get_context("spawn"), self.max_groups)
            worker.conn.send(job)
        worker.job = job
        self._busy.append(worker)

    def wait(self, timeout: float) -> list[tuple[str, str, str | None, Any]]:
        from multiprocessing.connection import wait as mp_wait

        if not self._busy:
            return []
        ready = set(mp_wait([w.conn for w in self._busy] + [w.process.sentinel for w in self._busy], timeout))
        events = []
        for w in list(self._busy):
            if w.conn not in ready and w.process.sentinel not in ready:
                continue
            try:
                while w.conn.poll():
                    kind, key, rid, outcome = w.conn.recv()
                    events.append((kind, key, rid, outcome))
                    if kind == "done":  # its third field says whether the worker takes another group
                        self._busy.remove(w)
                        w.job = None
                        if rid:
                            self._idle.append(w)
                        else:
                            w.stop()  # recycled: it exits by itself
                        break
            except (EOFError, OSError):
                pass
            if w.job is not None and not w.alive():
                events.append(("lost", w.job.key, None, None))
                self._busy.remove(w)
                w.stop(kill=True)
        return events

    def shutdown(self, kill: bool = False) -> None:
        for w in self._busy:
            w.stop(kill=True)
        if not kill:  # all at once: each process's exit (about a second with torch loaded) overlaps the others'
            for w in self._idle:
                w.ask_to_stop()
        for w in self._idle:
            w.stop(kill=kill)
        self._busy, self._idle = [], []


SHIP_CHUNK = 64 << 20
"""Bytes per object when a dataset file travels to the Ray nodes through the object store."""


@dataclass(frozen=True)
class Shipment:
    """A dataset file as the driver hands it to Ray nodes: its path as the driver names it, its content hash
    (a node that sees a file of that hash at that path, e.g. on shared storage, uses it directly), and its
    bytes as object-store chunks with their sha256 (a node without it assembles and verifies a copy in its
    dataset cache, once)."""

    driver_path: str
    content_hash: str
    sha256: str
    size: int
    chunks: tuple


def dataset_cache() -> Path:
    """Where a node keeps the datasets it received: ``$ASTROCLASS_CACHE/datasets`` (default
    ``~/.cache/astroclass/datasets``), by content hash."""
    root = os.environ.get("ASTROCLASS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "astroclass")
    return Path(root) / "datasets"


def _declared_hash(path: Path) -> str | None:
    from astroclass.data.prepared import read_content_hash

    try:
        return read_content_hash(path)
    except AstroclassError:
        return None


def ship_dataset(ray: Any, path: str) -> Shipment:
    """Put a dataset file into the object store, chunk by chunk (the driver never holds it whole)."""
    from astroclass.shipping import put_file

    digest = _declared_hash(Path(path))
    if digest is None:
        raise AstroclassError(f"{path}: not a readable prepared dataset")
    sha256, size, chunks = put_file(ray, path, SHIP_CHUNK)
    return Shipment(path, digest, sha256, size, chunks)


def receive_dataset(ray: Any, s: Shipment) -> str:
    """The path of the shipped dataset on this node: the driver's file if this node sees it (same host, or
    shared storage) with the same content hash, else the node's cached copy, assembled from the object store
    and checked against the driver's sha256 the first time (one actor does it; the others wait for it)."""
    import fcntl

    if Path(s.driver_path).is_file() and _declared_hash(Path(s.driver_path)) == s.content_hash:
        return s.driver_path
    cache = dataset_cache()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{s.content_hash}.h5"
    with open(cache / f"{s.content_hash}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == s.size:
            return str(target)
        from astroclass.shipping import assemble

        assemble(ray, s.chunks, target, s.sha256, s.driver_path)
    return str(target)


class _GroupActor:
    """The Ray engine's worker: one actor process, its caches kept between groups. It needs nothing of the
    driver's file system: datasets come as :class:`Shipment` s, the runs write into a local folder, and each
    run's files go back to the driver through the object store."""

    def __init__(self):
        from astroclass.training import WorkerCache

        self.cache = WorkerCache()

    def run_group(self, job: GroupJob, shipments: dict[str, Shipment]) -> tuple[list[tuple[str, dict]], bool]:
        import dataclasses
        import shutil
        import tempfile

        import ray

        outcomes: list[tuple[str, dict]] = []
        local = Path(tempfile.mkdtemp(prefix="astroclass-ray-"))
        try:
            try:
                paths = {d: receive_dataset(ray, s) for d, s in shipments.items()}
            except (AstroclassError, OSError) as exc:
                return [(rid, failed(f"dataset not available on this Ray node: {exc}")) for rid, _, _ in job.runs], True
            runs = [(rid, {**cfg, "dataset": paths[cfg["dataset"]]}, str(local / rid)) for rid, cfg, _ in job.runs]

            def emit(rid: str, outcome: dict) -> None:
                folder = local / rid
                files = {p.name: ray.put(p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()} \
                    if folder.is_dir() else {}
                shutil.rmtree(folder, ignore_errors=True)
                outcomes.append((rid, {**outcome, "files": files}))

            ok = execute_group(dataclasses.replace(job, runs=runs), emit, None, self.cache)
            return outcomes, ok
        finally:
            shutil.rmtree(local, ignore_errors=True)


class RayEngine:
    """Groups on Ray actors, across the nodes of a cluster that need not share a file system with the
    driver: each dataset reaches a node once (:func:`ship_dataset`, :func:`receive_dataset`) and each
    run's files come back to the driver, which alone writes the experiment folder."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, per_gpu: int = 1,
                 threads: int | None = None, num_cpus: int | None = None, max_groups: int = MAX_GROUPS_PER_WORKER,
                 runs: int | None = None):
        from astroclass.extras import require

        ray = self.ray = require("ray", "the ray engine (grid run --engine ray)")
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise AstroclassError(f"could not start or reach Ray at {address or 'a local instance'} "
                                      f"({exc})") from None
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        n = workers or (gpus * max(1, per_gpu) if gpus else cpus)
        if runs is not None:  # no more actors than runs to do: a small grid's runs get the cluster's cores
            n = min(n, max(1, runs))
        self.slots = ["cuda" if gpus else "cpu"] * max(1, n)
        node_cpus = [int(nd["Resources"]["CPU"]) for nd in ray.nodes()
                     if nd.get("Alive") and nd.get("Resources", {}).get("CPU", 0) > 0] or [cpus]
        self.per_node = -(-len(self.slots) // len(node_cpus))  # actors per node, about
        self.per_device = max(1, per_gpu) if gpus else self.per_node  # actors that may share one GPU (its fraction)
        # an actor's threads (and CPUs asked of Ray): the smallest node's share, so every node fits its actors
        self.threads = threads if threads is not None else max(1, min(node_cpus) // self.per_node)
        self.max_groups = max_groups
        self._actor_cls = ray.remote(num_cpus=1 if gpus else self.threads,
                                     num_gpus=1.0 / max(1, per_gpu) if gpus else 0)(_GroupActor)
        self._idle: list[tuple[Any, int]] = []  # (actor, groups run)
        self._refs: dict[Any, tuple[Any, int, GroupJob]] = {}
        self._shipped: dict[str, Shipment] = {}

    def submit(self, job: GroupJob) -> None:
        job.threads, job.share, job.device_share = self.threads, self.per_node, self.per_device
        for _, cfg, _ in job.runs:
            if cfg["dataset"] not in self._shipped:
                self._shipped[cfg["dataset"]] = ship_dataset(self.ray, cfg["dataset"])
        shipments = {cfg["dataset"]: self._shipped[cfg["dataset"]] for _, cfg, _ in job.runs}
        actor, used = self._idle.pop() if self._idle else (self._actor_cls.remote(), 0)
        self._refs[actor.run_group.remote(job, shipments)] = (actor, used + 1, job)

    def wait(self, timeout: float) -> list[tuple[str, str, str | None, Any]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        events: list[tuple[str, str, str | None, Any]] = []
        for ref in ready:
            actor, used, job = self._refs.pop(ref)
            try:
                outcomes, ok = self.ray.get(ref)
                out_dirs = {rid: Path(out) for rid, _, out in job.runs}
                for rid, outcome in outcomes:  # the run's files into its attempt folder, here at the driver
                    files = outcome.pop("files", {})
                    if files:
                        out_dirs[rid].mkdir(parents=True, exist_ok=True)
                    for name, file_ref in files.items():
                        with atomic_output(out_dirs[rid] / name) as tmp:
                            tmp.write_bytes(self.ray.get(file_ref))
            except Exception:  # the actor died, or Ray itself failed
                events.append(("lost", job.key, None, None))
                self.ray.kill(actor)
                continue
            events.extend(("run", job.key, rid, outcome) for rid, outcome in outcomes)
            events.append(("done", job.key, ok, None))
            if ok and used < self.max_groups:
                self._idle.append((actor, used))
            else:
                self.ray.kill(actor)
        return events

    def shutdown(self, kill: bool = False) -> None:
        for ref, (actor, _, _) in list(self._refs.items()):
            self.ray.cancel(ref, force=True)
            self.ray.kill(actor)
        for actor, _ in self._idle:
            self.ray.kill(actor)
        self._refs.clear()
        self._idle.clear()
        self._shipped.clear()


def make_engine(name: str, workers: int | None = None, per_gpu: int = 1, threads: int | None = None,
                address: str | None = None, num_cpus: int | None = None, runs: int | None = None):
    """``runs``: the runs to do (the local engine has no more slots than that)."""
    if name == "local":
        return LocalEngine(workers, per_gpu, threads, runs=runs)
    if name == "ray":
        return RayEngine(address, workers, per_gpu, threads, num_cpus, runs=runs)
    raise AstroclassError(f"unknown engine {name!r}; choose from {ENGINES}")
