"""Running a grid: claim runs from the store, hand them to an engine, record what comes back.

The experiment folder holds ``store.sqlite`` (the results store), ``spec.yaml`` (the spec as
last run) and ``runs/<run id>/`` (each run's config, history, checkpoint and predictions).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from astroclass.errors import AstroclassError
from astroclass.experiments.engines import Job, make_engine
from astroclass.experiments.spec import GridSpec
from astroclass.experiments.store import Store, first_line, run_label
from astroclass.fileio import atomic_write_text

KEEP_POLICIES = ("best", "all", "none")


@dataclass
class GridOptions:
    engine: str = "local"
    workers: int | None = None
    per_gpu: int = 1
    threads: int | None = None
    max_attempts: int = 2
    lease_s: float = 120.0
    heartbeat_s: float = 5.0
    keep: str = "best"
    ray_address: str | None = None
    ray_num_cpus: int | None = None


def store_path(experiment: str | Path) -> Path:
    return Path(experiment) / "store.sqlite"


def open_experiment(experiment: str | Path, create: bool = True) -> Store:
    exp = Path(experiment)
    if create:
        try:
            exp.mkdir(parents=True, exist_ok=True)
            probe = exp / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise AstroclassError(f"{exp}: experiment folder is not writable ({exc.strerror or exc})") from None
    elif not store_path(exp).exists():
        raise AstroclassError(f"{exp}: no results store (store.sqlite) in this folder")
    return Store(store_path(exp), create=create)


def prepare(spec: GridSpec, experiment: str | Path) -> tuple[Store, list[str]]:
    """Open the store, check the datasets against it, add the spec's runs; returns (store, run ids)."""
    store = open_experiment(experiment)
    store.check_datasets(spec.datasets)
    runs = spec.expand()
    store.add_runs(runs)
    atomic_write_text(Path(experiment) / "spec.yaml", spec.to_yaml())
    return store, [r.id for r in runs]


def apply_keep_policy(store: Store, experiment: Path, rid: str, keep: str) -> None:
    """Delete checkpoints the policy does not keep (predictions and histories always stay).

    ``best`` keeps, in each (dataset, model, setup) cell, only the checkpoint of the done run
    with the highest validation accuracy (ties: the earliest run).
    """
    if keep == "all":
        return
    if keep == "none":
        (experiment / "runs" / rid / "checkpoint.pt").unlink(missing_ok=True)
        return
    run = store.runs(ids=[rid])[0]
    cell = store.runs(status="done", cell=(run["dataset"], run["model"], run["setup"]))
    best = max(cell, key=lambda r: r["metrics"].get("val", {}).get("accuracy", -1.0), default=None)
    for r in cell:
        if best is not None and r["id"] != best["id"]:
            (experiment / "runs" / r["id"] / "checkpoint.pt").unlink(missing_ok=True)


def run_grid(spec: GridSpec, experiment: str | Path, options: GridOptions = GridOptions(),
             progress: bool = True) -> dict[str, int]:
    """Run every unfinished run of ``spec`` exactly once into the experiment's store; returns status counts."""
    if options.keep not in KEEP_POLICIES:
        raise AstroclassError(f"--keep must be one of {KEEP_POLICIES}, got {options.keep!r}")
    if options.max_attempts < 1:
        raise AstroclassError(f"max attempts must be at least 1, got {options.max_attempts}")
    experiment = Path(experiment)
    store, ids = prepare(spec, experiment)
    engine = make_engine(options.engine, options.workers, options.per_gpu, options.threads, options.ray_address,
                         options.ray_num_cpus)
    free = list(engine.slots)
    held: dict[str, tuple[str, str]] = {}  # run id -> (token, device slot)
    token_base = uuid.uuid4().hex[:8]
    display = _Display(progress, store, ids)
    last_beat = time.time()
    try:
        while True:
            while free:
                claim = store.claim(ids, options.max_attempts, options.lease_s, f"{token_base}-{uuid.uuid4().hex[:8]}",
                                    device=free[0])
                if claim is None:
                    break
                rid, cfg, token = claim
                device = free.pop(0)
                cfg = {**cfg, "dataset": str(spec.datasets[cfg["dataset"]])}
                engine.submit(rid, Job(rid, cfg, str(experiment / "runs" / rid), device, 0))
                held[rid] = (token, device)
                display.started(rid, cfg)
            if not held:
                break
            for rid, outcome in engine.wait(timeout=options.heartbeat_s):
                token, device = held.pop(rid)
                free.append(device)
                recorded = store.finish(rid, token, outcome["result"], outcome["history"])
                if recorded and outcome["result"].get("status") == "done":
                    apply_keep_policy(store, experiment, rid, options.keep)
                display.finished(rid, outcome["result"], recorded)
            if time.time() - last_beat >= options.heartbeat_s and held:
                lost = store.heartbeat({r: t for r, (t, _) in held.items()}, options.lease_s)
                for rid in lost:
                    display.note(f"lost the lease of run {rid} (another runner took it over); its result will "
                                 f"not be recorded here")
                last_beat = time.time()
    except BaseException:
        store.release({r: t for r, (t, _) in held.items()})
        engine.shutdown()
        display.close()
        raise
    engine.shutdown()
    display.close()
    counts = store.counts(ids)
    store.close()
    return counts


class _Display:
    """Live progress of a grid: a bar over all runs, one line per finished run."""

    def __init__(self, enabled: bool, store: Store, ids: list[str]):
        self.enabled = enabled
        self.t0 = time.time()
        counts = store.counts(ids)
        self.total, self.done = len(ids), counts["done"]
        self._p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._p.start()
            self._task = self._p.add_task("grid", total=self.total, completed=self.done)
            if self.done:
                self._p.console.print(f"{self.done} of {self.total} runs already done; resuming")
        self.running: dict[str, str] = {}

    def _describe(self) -> str:
        return f"grid ({len(self.running)} running)"

    def started(self, rid: str, cfg: dict) -> None:
        self.running[rid] = run_label(cfg, Path(cfg["dataset"]).stem)
        if self._p is not None:
            self._p.update(self._task, description=self._describe())

    def finished(self, rid: str, result: dict, recorded: bool) -> None:
        name = self.running.pop(rid, rid)
        if result.get("status") == "done" and recorded:
            self.done += 1
            line = f"done   {rid} {name}: val acc {result['val']['accuracy']:.3f}, test acc {result['test']['accuracy']:.3f}"
        else:
            err = first_line(result.get("error") or "not recorded: lease lost")
            line = f"failed {rid} {name}: {err}"
        if self._p is not None:
            self._p.update(self._task, completed=self.done, description=self._describe())
            self._p.console.print(line)

    def note(self, text: str) -> None:
        if self._p is not None:
            self._p.console.print(text)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
