"""Running a grid: claim runs from the store, hand them to an engine, record what comes back.

The experiment folder holds ``store.sqlite`` (the results store), ``spec.yaml`` (the spec as
last run) and ``runs/<run id>/`` (each run's config, history, checkpoint and predictions, moved there
from the attempt's own folder when the store records its result).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from astroclass.errors import AstroclassError
from astroclass.experiments.engines import make_engine
from astroclass.experiments.spec import GridSpec
from astroclass.experiments.store import Store, first_line, run_label
from astroclass.experiments.workers import AUTO_GROUP, GroupJob, failed
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
    fuse: str | None = None
    """auto, off or a group size; None: the spec's ``fuse`` run option (default auto)."""

    def __post_init__(self) -> None:
        for name in ("workers", "per_gpu", "threads", "max_attempts", "ray_num_cpus"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise AstroclassError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {v}")
        for name, v in (("lease", self.lease_s), ("heartbeat", self.heartbeat_s)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise AstroclassError(f"--{name} must be a positive number of seconds, got {v}")
        if self.heartbeat_s >= self.lease_s:
            raise AstroclassError(f"--lease must be a positive number of seconds longer than the heartbeat "
                                  f"({self.heartbeat_s:g} s), got {self.lease_s:g}")
        if self.keep not in KEEP_POLICIES:
            raise AstroclassError(f"--keep must be one of {KEEP_POLICIES}, got {self.keep!r}")


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


def attempt_dir(experiment: Path, rid: str, token: str) -> Path:
    """Where one attempt at a run writes its files; they move into ``runs/<id>/`` only when the store
    records that attempt's result (so a worker whose claim was lost never overwrites a recorded run)."""
    return experiment / "runs" / rid / f".attempt-{token}"


def drop_attempt(experiment: Path, rid: str, token: str) -> None:
    """Remove an attempt's folder, and the run's folder if that leaves it empty."""
    folder = attempt_dir(experiment, rid, token)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


def adopt_attempt(experiment: Path, rid: str, token: str, result: dict | None = None) -> None:
    """Make ``runs/<id>/`` hold exactly the attempt's files (stale files of earlier attempts removed,
    other attempts' folders too); ``result``: a result.json to write there (a failure the driver saw)."""
    final = experiment / "runs" / rid
    attempt = attempt_dir(experiment, rid, token)
    final.mkdir(parents=True, exist_ok=True)
    keep = {p.name for p in attempt.iterdir()} if attempt.is_dir() else set()
    for p in final.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()
    for name in sorted(keep):
        os.replace(attempt / name, final / name)
    if result is not None:
        atomic_write_text(final / "result.json", json.dumps(result, indent=2))
    for p in final.glob(".attempt-*"):
        shutil.rmtree(p, ignore_errors=True)


def run_grid(spec: GridSpec, experiment: str | Path, options: GridOptions | None = None,
             progress: bool = True) -> dict[str, int]:
    """Run every unfinished run of ``spec`` exactly once into the experiment's store; returns status counts.

    Runs of one (dataset, model, setup) cell are claimed together, under one lease, and trained fused by
    one worker (``options.fuse``, else the spec's ``fuse`` run option: auto, off or a group size)."""
    from astroclass.training import fuse_key

    options = options or GridOptions()  # its options are checked when it is made
    fuse = str(options.fuse or spec.train.get("fuse") or "auto")
    if fuse not in ("auto", "off") and not (fuse.isdigit() and int(fuse) >= 1):
        raise AstroclassError(f"--fuse must be auto, off or a group size >= 1, got {fuse!r}")
    experiment = Path(experiment)
    store, ids = prepare(spec, experiment)
    at_start = store.counts(ids)  # running: perhaps a dead runner's, to be claimed again
    engine = make_engine(options.engine, options.workers, options.per_gpu, options.threads, options.ray_address,
                         options.ray_num_cpus, runs=at_start["pending"] + at_start["running"] + at_start["failed"])
    gpu = any(slot.startswith("cuda") for slot in engine.slots)  # auto fuses on GPUs only (fused_group_size)
    cap = 1 if fuse == "off" or (fuse == "auto" and not gpu) else AUTO_GROUP if fuse == "auto" else int(fuse)
    free = list(engine.slots)
    groups: dict[str, dict] = {}  # group token -> {"device", "runs": set of run ids not yet reported}
    held: dict[str, str] = {}  # run id -> token
    token_base = uuid.uuid4().hex[:8]
    display = _Display(progress, store, ids)
    last_beat = time.time()

    def record(rid: str, token: str, outcome: dict, driver_error: bool = False) -> None:
        result = outcome["result"]
        try:
            recorded = store.finish(rid, token, result, outcome["history"],
                                    accept=lambda: adopt_attempt(experiment, rid, token,
                                                                 result if driver_error else None))
        except OSError as exc:  # the files could not be moved into place: nothing was recorded
            recorded = store.fail(rid, token, f"could not move the run's files into {experiment / 'runs' / rid} "
                                              f"({exc})")
            result = {"status": "failed", "error": str(exc)}
        if not recorded:
            drop_attempt(experiment, rid, token)
        elif result.get("status") == "done":
            apply_keep_policy(store, experiment, rid, options.keep)
        held.pop(rid, None)
        display.finished(rid, result, recorded)

    try:
        while True:
            while free:
                c = store.counts(ids)
                todo = c["pending"] + c["failed"]  # failed runs may have attempts left
                # the runs left, spread over the free slots: a cell splits evenly over idle workers
                limit = max(1, min(cap, -(-todo // len(free))))
                token = f"{token_base}-{uuid.uuid4().hex[:8]}"
                claimed = store.claim_group(ids, options.max_attempts, options.lease_s, token, device=free[0],
                                            limit=limit, group_key=fuse_key)
                if not claimed:
                    break
                device = free.pop(0)
                runs = []
                for rid, cfg in claimed:
                    cfg = {**cfg, "dataset": str(spec.datasets[cfg["dataset"]])}
                    runs.append((rid, cfg, str(attempt_dir(experiment, rid, token))))
                    held[rid] = token
                    display.started(rid, cfg)
                engine.submit(GroupJob(token, runs, device, fuse=fuse))
                groups[token] = {"device": device, "runs": {rid for rid, _ in claimed}}
            if not groups:
                break
            machine = None
            for kind, token, rid, outcome in engine.wait(timeout=options.heartbeat_s):
                group = groups[token]
                if kind == "run" and outcome.get("machine"):  # a full disk: not the run's fault, no attempt used
                    group["runs"].discard(rid)
                    store.release({rid: token})
                    drop_attempt(experiment, rid, token)
                    held.pop(rid, None)
                    machine = outcome["machine"]
                    continue
                if kind == "run":
                    group["runs"].discard(rid)
                    record(rid, token, outcome)
                    continue
                why = "worker process died (killed, or out of memory)" if kind == "lost" else \
                    "the worker ended the group without a result for this run"
                for left in sorted(group["runs"]):
                    record(left, token, failed(why), driver_error=True)
                free.append(group["device"])
                del groups[token]
            if machine:
                raise AstroclassError(f"{machine}. The grid stopped; its unfinished runs are pending again (no "
                                      f"attempt used): `grid run` continues them")
            if time.time() - last_beat >= options.heartbeat_s and held:
                lost = store.heartbeat(held, options.lease_s)
                for rid in lost:
                    display.note(f"lost the lease of run {rid} (another runner took it over); its result will "
                                 f"not be recorded here")
                last_beat = time.time()
    except BaseException:
        engine.shutdown(kill=True)
        try:
            store.release(held)
            for rid, token in held.items():
                drop_attempt(experiment, rid, token)
        except (AstroclassError, sqlite3.Error):  # the store cannot be written (a full disk): leases expire
            pass
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
            line = (f"done   {rid} {name}: val acc {result['val']['accuracy']:.3f}, test acc "
                    f"{result['test']['accuracy']:.3f}")
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
