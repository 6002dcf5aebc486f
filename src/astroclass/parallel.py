"""Order-preserving parallel map over worker processes, in chunks, with a progress callback."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _run_chunk(args: tuple[Callable, list, tuple]) -> list:
    fn, chunk, extra = args
    return [fn(item, *extra) for item in chunk]


def parallel_map(fn: Callable, items: Sequence, extra: tuple = (), workers: int | None = None, chunk: int = 16,
                 progress: Callable[[int], None] | None = None) -> list[Any]:
    """``[fn(item, *extra) for item in items]`` in ``workers`` processes (default: all cores).

    ``fn`` must be a module-level function. Results keep the order of ``items``, so the output
    does not depend on the number of workers.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    chunks = [list(items[i:i + chunk]) for i in range(0, len(items), chunk)]
    results: list[Any] = []
    if workers == 1 or len(items) <= chunk:
        for ch in chunks:
            results.extend(_run_chunk((fn, ch, extra)))
            if progress:
                progress(len(ch))
        return results
    # forkserver (spawn where unavailable): never fork a parent whose threads (torch, GalSim, BLAS)
    # may hold locks, which can deadlock the child
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for ch, res in zip(chunks, pool.map(_run_chunk, [(fn, ch, extra) for ch in chunks])):
            results.extend(res)
            if progress:
                progress(len(ch))
    return results
