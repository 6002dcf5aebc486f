"""Engines execute runs; the driver (:mod:`astroclass.experiments.runner`) alone writes the store.

Both engines offer the same interface: ``slots`` (device names, one per concurrent run),
``submit(key, job)`` and ``wait(timeout)`` → finished ``(key, outcome)`` pairs.

* ``local``: a pool of worker processes on this machine (spawned, so every worker has a clean
  torch). On a GPU machine each GPU gets ``per_gpu`` slots: small-image runs are launch-bound,
  and several runs packed on one GPU raise its aggregate throughput.
* ``ray``: each run is a Ray task with its CPU share and a GPU fraction (1/``per_gpu``), on a
  cluster (``address``) or a local Ray instance.
"""

from __future__ import annotations

import os
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from astroclass.errors import AstroclassError

ENGINES = ("local", "ray")


@dataclass
class Job:
    """What a worker needs for one run."""

    run_id: str
    config: dict[str, Any]  # a RunConfig dict with the dataset's file path
    run_dir: str
    device: str
    threads: int


def execute_run(job: Job) -> dict[str, Any]:
    """Train one run in a worker; never raises: returns {"result": ..., "history": [...]}."""
    import torch

    from astroclass.training import GroupTrainer, RunConfig

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    cfg = dict(job.config)
    cfg["device"] = job.device
    trainer = None
    try:
        trainer = GroupTrainer([RunConfig.from_dict(cfg)], [job.run_dir], progress=False)
        result = trainer.run()[0].to_dict()
    except AstroclassError as exc:
        result = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # a bug or a resource problem: keep the grid going, keep the traceback
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
    return {"result": result, "history": trainer.runs[0].history if trainer is not None and hasattr(trainer, "runs") else []}


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None, per_gpu: int = 1, threads: int | None = None):
        gpus = _gpu_count()
        cores = os.cpu_count() or 1
        if gpus:
            self.slots = [f"cuda:{g}" for g in range(gpus) for _ in range(max(1, per_gpu))]
            if workers:
                self.slots = self.slots[:workers]
        else:
            self.slots = ["cpu"] * max(1, workers or 1)
        self.threads = threads if threads is not None else max(1, cores // len(self.slots))
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Any, str] = {}

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(max_workers=len(self.slots), mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def submit(self, key: str, job: Job) -> None:
        job.threads = self.threads
        self._futures[self._ensure_pool().submit(execute_run, job)] = key

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        if not self._futures:
            return []
        done, _ = futures_wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        broken = False
        for fut in done:
            key = self._futures.pop(fut)
            try:
                out.append((key, fut.result()))
            except BrokenProcessPool:
                broken = True
                out.append((key, {"result": {"status": "failed", "error": "worker process died (killed, or out of "
                                                                          "memory)"}, "history": []}))
            except Exception as exc:
                out.append((key, {"result": {"status": "failed", "error": f"{type(exc).__name__}: {exc}"},
                                  "history": []}))
        if broken:
            self._pool = None
        return out

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, per_gpu: int = 1,
                 threads: int | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise AstroclassError("the ray engine needs Ray: pip install 'astroclass[ray]' (or pip install ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise AstroclassError(f"could not start or reach Ray at {address or 'a local instance'} ({exc})") from None
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        self.gpu_fraction = 1.0 / max(1, per_gpu) if gpus else 0.0
        n = workers or (gpus * max(1, per_gpu) if gpus else cpus)
        self.slots = ["cuda" if gpus else "cpu"] * max(1, n)
        self.threads = threads if threads is not None else max(1, cpus // len(self.slots))
        self.cpus_per_run = 1 if gpus else self.threads
        self._remote = ray.remote(execute_run)
        self._refs: dict[Any, str] = {}

    def submit(self, key: str, job: Job) -> None:
        job.threads = self.threads
        ref = self._remote.options(num_cpus=self.cpus_per_run, num_gpus=self.gpu_fraction, max_retries=0).remote(job)
        self._refs[ref] = key

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                out.append((key, self.ray.get(ref)))
            except Exception as exc:  # the task's worker died, or Ray itself failed
                out.append((key, {"result": {"status": "failed", "error": f"ray: {type(exc).__name__}: {exc}"},
                                  "history": []}))
        return out

    def shutdown(self) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=True)
        self._refs.clear()


def make_engine(name: str, workers: int | None = None, per_gpu: int = 1, threads: int | None = None,
                address: str | None = None, num_cpus: int | None = None):
    if name == "local":
        return LocalEngine(workers, per_gpu, threads)
    if name == "ray":
        return RayEngine(address, workers, per_gpu, threads, num_cpus)
    raise AstroclassError(f"unknown engine {name!r}; choose from {ENGINES}")
