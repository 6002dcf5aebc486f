"""Order-preserving parallel map over worker processes, in chunks, with a progress callback; the cores and
memory this process may use (its affinity mask and, in a container, its cgroup's limits)."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CGROUP = Path("/sys/fs/cgroup")
"""Where the process's cgroup limits are read (v2: cpu.max, memory.max; v1: the cpu and memory controllers)."""


def exit_with(pid: int) -> None:
    """End this process (from a watcher thread) as soon as process ``pid`` ends.

    For grid workers and decoding-pool workers alike. (The parent-death signal would not do for a pool
    worker: its parent is the forkserver, which itself waits for its children, each holding its keep-alive
    pipe, so killing the driver would leave forkserver and workers blocked for ever.)"""
    import threading

    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+: readable when the process ends
    except ProcessLookupError:
        os._exit(3)
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:
            import select

            select.select([fd], [], [])
        else:
            import time

            from astroclass.fileio import pid_alive

            while pid_alive(pid):
                time.sleep(1)
        os._exit(3)

    threading.Thread(target=watch, name="astroclass-exit-with-driver", daemon=True).start()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _cgroup_cpus() -> float | None:
    """CPUs the cgroup's quota allows (a container's ``--cpus``), or None where there is none."""
    v2 = _read(CGROUP / "cpu.max")  # "max 100000" or "150000 100000"
    quota, period = (v2.split(" ", 1) + [""])[:2] if v2 is not None else \
        (_read(CGROUP / "cpu" / "cpu.cfs_quota_us") or "", _read(CGROUP / "cpu" / "cpu.cfs_period_us") or "")
    # no quota: "max" (v2), -1 (v1)
    return int(quota) / int(period) if quota.isdigit() and period.isdigit() and int(period) else None


def _cgroup_memory_left() -> int | None:
    """Bytes the cgroup's memory limit leaves (reclaimable page cache counted as free), or None without a limit."""
    for limit_f, usage_f, stat_f, inactive in (("memory.max", "memory.current", "memory.stat", "inactive_file"),
                                               ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                                "memory/memory.stat", "total_inactive_file")):
        limit, usage = _read(CGROUP / limit_f), _read(CGROUP / usage_f)
        if limit is None or usage is None:
            continue
        if not limit.isdigit() or int(limit) >= 2**60 or not usage.isdigit():  # "max", or v1's huge "no limit"
            return None
        cache = 0
        for line in (_read(CGROUP / stat_f) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == inactive and value.isdigit():
                cache = int(value)
        return max(0, int(limit) - max(0, int(usage) - cache))
    return None


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, within its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, math.ceil(quota))  # 1.5 CPUs: 2 threads
    return max(1, cores)


def host_available_memory() -> int:
    """Bytes of RAM available for new work: the machine's (Linux: MemAvailable), within its cgroup's limit (a
    container's memory limit, which the machine's figure does not show)."""
    available = None
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    if available is None:
        available = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    left = _cgroup_memory_left()
    return available if left is None else min(available, left)


def _run_chunk(args: tuple[Callable, list, tuple]) -> list:
    fn, chunk, extra = args
    return [fn(item, *extra) for item in chunk]


def parallel_map(fn: Callable, items: Sequence, extra: tuple = (), workers: int | None = None, chunk: int = 16,
                 progress: Callable[[int], None] | None = None) -> list[Any]:
    """``[fn(item, *extra) for item in items]`` in ``workers`` processes (default: all cores).

    ``fn`` must be a module-level function. Results keep the order of ``items``, so the output
    does not depend on the number of workers.
    """
    return list(parallel_imap(fn, items, extra, workers, chunk, progress))


def parallel_imap(fn: Callable, items: Sequence, extra: tuple = (), workers: int | None = None, chunk: int = 16,
                  progress: Callable[[int], None] | None = None, ahead: int = 4) -> Iterator[Any]:
    """``fn(item, *extra)`` for each item, in ``workers`` processes, yielded in the order of ``items``.

    At most ``ahead`` chunks per worker are in flight, so however many items there are, only a bounded
    number of results waits in memory for the caller (a slow consumer holds the workers back)."""
    workers = max(1, workers or usable_cores())
    starts = range(0, len(items), chunk)
    if workers == 1 or len(items) <= chunk:
        for i in starts:
            ch = list(items[i:i + chunk])
            yield from _run_chunk((fn, ch, extra))
            if progress:
                progress(len(ch))
        return
    with process_pool(workers) as pool:
        pending: deque = deque()
        todo = iter(starts)

        def submit() -> None:
            i = next(todo, None)
            if i is not None:
                ch = list(items[i:i + chunk])
                pending.append((len(ch), pool.submit(_run_chunk, (fn, ch, extra))))

        for _ in range(workers * ahead):
            submit()
        try:
            while pending:
                n, fut = pending.popleft()
                res = fut.result()
                submit()
                yield from res
                if progress:
                    progress(n)
        finally:
            for _, fut in pending:
                fut.cancel()


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` processes, each ending when this process ends, started (with its first task)
    without re-running the caller's script (see :func:`_main_script_hidden`)."""
    # forkserver (spawn where unavailable): never fork a parent whose threads (torch, GalSim, BLAS)
    # may hold locks, which can deadlock the child
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with,
                             initargs=(os.getpid(),)) as pool:
        with _main_script_hidden():  # the workers start here
            for f in [pool.submit(os.getpid) for _ in range(workers)]:
                f.result()
        yield pool


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start worker processes without re-running the caller's script in them.

    forkserver and spawn children import the parent's ``__main__`` file, so a script calling astroclass
    without an ``if __name__ == "__main__":`` guard would run again in every worker (and fail). The
    workers here run only astroclass functions, which they import by name, so while they start the
    script's path is not handed on."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
