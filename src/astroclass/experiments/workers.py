"""What a grid worker does: train a group of runs (fused, or one by one) and report each run as it ends.

A worker lives for many groups: it keeps its built (and compiled) models and its datasets in a
:class:`astroclass.training.WorkerCache`, so a later run of an architecture starts in about the time
it takes to build that run's initial weights. It is recycled (a fresh process) after
``max_groups`` groups or after an unexpected error, and it dies with its driver
(:func:`astroclass.parallel.exit_with`, as the decoding pools' workers do).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from astroclass.errors import AstroclassError, os_error_text
from astroclass.parallel import exit_with

AUTO_GROUP = 24
"""Most runs a driver hands one worker under ``fuse: auto`` (a paper grid cell); the worker trains them in
fused groups as large as the device's memory allows."""


@dataclass
class GroupJob:
    """Runs for one worker: (run id, config with the dataset's file path, output folder) each."""

    key: str
    runs: list[tuple[str, dict[str, Any], str]]
    device: str
    threads: int = 0
    share: int = 1
    """Workers on this worker's machine: an automatic memory budget is split between them."""
    device_share: int = 1
    """Workers that train on this job's device at once: each sizes fused groups and data on a GPU from its share
    of the device's memory."""
    fuse: str = "auto"
    """"auto", "off" or a number: the largest fused group the worker may form (see RunConfig.fuse)."""


def failed(error: str, history: list | None = None) -> dict[str, Any]:
    return {"result": {"status": "failed", "error": error}, "history": history or []}


def machine_failed(text: str) -> dict[str, Any]:
    """A run that could not finish for a reason of the machine's (a full disk), not its own."""
    return {**failed(text), "machine": text}


def execute_group(job: GroupJob, emit: Callable[[str, dict], None], heartbeat: Callable[[], None] | None,
                  cache) -> bool:
    """Train ``job``'s runs, calling ``emit(run id, {"result", "history"})`` once per run as it ends.
    Never raises; returns False after an unexpected error (the worker should then be recycled)."""
    import torch

    from astroclass.training import RunConfig, fused_group_size, train_group

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    cache.data.share = max(1, job.share)
    cache.data.device_share = max(1, job.device_share)
    reported: set[str] = set()

    def report(rid: str, outcome: dict) -> None:
        reported.add(rid)
        emit(rid, outcome)

    pending = []
    for rid, cfg, out in job.runs:
        try:
            pending.append((rid, RunConfig.from_dict({**cfg, "device": job.device}), out))
        except AstroclassError as exc:
            report(rid, failed(str(exc)))
    ok = True
    while pending:
        chunk, rest = pending[:1], pending[1:]
        try:
            limit = 1 if job.fuse == "off" else len(pending) if job.fuse == "auto" else int(job.fuse)
            size = fused_group_size(chunk[0][1], min(limit, len(pending)), job.fuse == "auto", cache,
                                    job.device_share)
            chunk, rest = pending[:size], pending[size:]
            train_group([c for _, c, _ in chunk], [o for _, _, o in chunk], progress=False,
                        on_finish=functools.partial(_report_run, report, [rid for rid, _, _ in chunk]),
                        heartbeat=heartbeat, cache=cache)
        except AstroclassError as exc:  # bad data or options: every run of the chunk fails the same way
            for rid, _, _ in chunk:
                if rid not in reported:
                    report(rid, failed(str(exc)))
        except Exception as exc:  # a bug or a resource problem: keep the grid going, keep the traceback
            ok = False
            cache.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            machine = os_error_text(exc)  # the machine's (a full disk): the driver stops the grid, no attempt used
            for rid, _, _ in chunk:
                if rid not in reported:
                    report(rid, machine_failed(machine) if machine else
                           failed(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            for rid, _, _ in rest:
                report(rid, machine_failed(machine) if machine else
                       failed("not trained: the worker stopped after an error in another run of its group"))
            rest = []
        pending = rest
    return ok


def _report_run(report: Callable[[str, dict], None], ids: list[str], i: int, result: dict, history: list) -> None:
    """on_finish of a fused group: run i of the chunk is done."""
    report(ids[i], {"result": result, "history": history})


def _send_run(conn, key: Any, rid: str, outcome: dict) -> None:
    try:
        conn.send(("run", key, rid, outcome))
    except OSError:  # the driver is gone (it stopped the grid, or was killed): nobody to tell
        raise SystemExit(0) from None


def worker_main(conn, parent_pid: int, max_groups: int) -> None:
    """A local worker process: receive GroupJobs, send ("run", key, run id, outcome) per finished run and
    ("done", key, more, None) per group, ``more`` saying whether it takes another group; it exits after
    ``max_groups`` groups, an unexpected error, or None."""
    from astroclass.training import WorkerCache

    exit_with(parent_pid)
    cache = WorkerCache()
    for n in range(max_groups):
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        ok = execute_group(job, functools.partial(_send_run, conn, job.key), None, cache)
        try:
            conn.send(("done", job.key, ok and n < max_groups - 1, None))
        except OSError:  # the driver is gone
            return
        if not ok:
            return
