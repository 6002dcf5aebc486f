"""Engines execute groups of runs; the driver (:mod:`astroclass.experiments.runner`) alone writes the store.

Both engines offer the same interface: ``slots`` (device names, one per concurrent group),
``submit(job)`` with a :class:`~astroclass.experiments.workers.GroupJob`, and ``wait(timeout)`` →
events ``(kind, group key, run id, outcome)``: ``"run"`` when a run of the group ended (its outcome:
``{"result", "history"}``), ``"done"`` when the group is over, ``"lost"`` when its worker died (the
runs it had not reported get no outcome).

* ``local``: long-lived worker processes on this machine (spawned, so every worker has a clean
  torch), one per slot. On a GPU machine each GPU gets ``per_gpu`` slots. Workers keep their
  models and datasets between groups (:mod:`astroclass.experiments.workers`).
* ``ray``: one Ray actor per slot, with its CPU share and a GPU fraction (1/``per_gpu``), on a
  cluster (``address``) or a local Ray instance; actors keep their caches the same way.
"""

from __future__ import annotations

import os
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.experiments.workers import GroupJob, execute_group, worker_main

ENGINES = ("local", "ray")
MAX_GROUPS_PER_WORKER = 50
"""A worker is recycled (a fresh process) after this many groups, so nothing it accumulates lives forever."""


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

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        elif self.alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=None if kill else 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None, per_gpu: int = 1, threads: int | None = None,
                 max_groups: int = MAX_GROUPS_PER_WORKER):
        gpus = _gpu_count()
        cores = os.cpu_count() or 1
        if gpus:
            self.slots = [f"cuda:{g}" for g in range(gpus) for _ in range(max(1, per_gpu))]
            if workers:
                self.slots = self.slots[:workers]
        else:
            self.slots = ["cpu"] * max(1, workers or 1)
        self.threads = threads if threads is not None else max(1, cores // len(self.slots))
        self.max_groups = max_groups
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []

    def submit(self, job: GroupJob) -> None:
        import multiprocessing

        job.threads = self.threads
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
        for w in self._idle:
            w.stop(kill=kill)
        self._busy, self._idle = [], []


class _GroupActor:
    """The Ray engine's worker: one actor process, its caches kept between groups."""

    def __init__(self):
        from astroclass.training import WorkerCache

        self.cache = WorkerCache()

    def run_group(self, job: GroupJob) -> tuple[list[tuple[str, dict]], bool]:
        outcomes: list[tuple[str, dict]] = []
        ok = execute_group(job, lambda rid, outcome: outcomes.append((rid, outcome)), None, self.cache)
        return outcomes, ok


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, per_gpu: int = 1,
                 threads: int | None = None, num_cpus: int | None = None, max_groups: int = MAX_GROUPS_PER_WORKER):
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
        self.slots = ["cuda" if gpus else "cpu"] * max(1, n)
        self.threads = threads if threads is not None else max(1, cpus // len(self.slots))
        self.max_groups = max_groups
        self._actor_cls = ray.remote(num_cpus=1 if gpus else self.threads,
                                     num_gpus=1.0 / max(1, per_gpu) if gpus else 0)(_GroupActor)
        self._idle: list[tuple[Any, int]] = []  # (actor, groups run)
        self._refs: dict[Any, tuple[Any, int, GroupJob]] = {}

    def submit(self, job: GroupJob) -> None:
        job.threads = self.threads
        actor, used = self._idle.pop() if self._idle else (self._actor_cls.remote(), 0)
        self._refs[actor.run_group.remote(job)] = (actor, used + 1, job)

    def wait(self, timeout: float) -> list[tuple[str, str, str | None, Any]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        events: list[tuple[str, str, str | None, Any]] = []
        for ref in ready:
            actor, used, job = self._refs.pop(ref)
            try:
                outcomes, ok = self.ray.get(ref)
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


def make_engine(name: str, workers: int | None = None, per_gpu: int = 1, threads: int | None = None,
                address: str | None = None, num_cpus: int | None = None):
    if name == "local":
        return LocalEngine(workers, per_gpu, threads)
    if name == "ray":
        return RayEngine(address, workers, per_gpu, threads, num_cpus)
    raise AstroclassError(f"unknown engine {name!r}; choose from {ENGINES}")
