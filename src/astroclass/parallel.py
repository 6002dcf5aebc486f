"""Order-preserving parallel map over worker processes, in chunks, with a progress callback."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any


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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_available_memory() -> int:
    """Bytes of RAM available for new work on this machine (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


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
    # forkserver (spawn where unavailable): never fork a parent whose threads (torch, GalSim, BLAS)
    # may hold locks, which can deadlock the child
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with,
                             initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        todo = iter(starts)

        def submit() -> None:
            i = next(todo, None)
            if i is not None:
                ch = list(items[i:i + chunk])
                pending.append((len(ch), pool.submit(_run_chunk, (fn, ch, extra))))

        with _main_script_hidden():  # the workers start here, on the first submit
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
