"""Progress and messages, wherever astroclass runs.

Messages go through Python's ``logging`` under the ``astroclass`` logger, so users can route them (a file, a
cluster log, silence). In a terminal a long loop shows a rich progress bar; anywhere else (Jupyter, a batch job,
``nohup``, output piped to a file) it says where it is in plain lines: when it starts, every ``every`` seconds,
and when it ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

logger = logging.getLogger("astroclass")
"""The logger every astroclass message goes through."""

PLAIN_EVERY = 30.0
"""Seconds between the plain progress lines of a long loop, where no progress bar can be drawn."""


def say(message: str) -> None:
    """One message (an epoch's line, a choice made): INFO under the ``astroclass`` logger."""
    logger.info(message)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (a notebook's, a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_messages() -> None:
    """Show astroclass' messages on stderr, as plain lines, unless the ``astroclass`` logger has handlers of the
    program's own (which then decide where they go): the command line and ``fit(progress=True)`` call this."""
    if logger.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # shown once, here; a program routing them configures this logger


def _bar_drawable() -> bool:
    """Whether a live progress bar can be drawn: a terminal, and not a notebook (whose bar needs ipywidgets)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.is_terminal and not console.is_jupyter


class Bar:
    """``with Bar(enabled, total, "decoding") as bar: bar.advance(n)``; also usable without ``with``. Nothing at
    all when not ``enabled`` (tests, workers); a rich bar in a terminal; plain lines elsewhere, timed by
    ``clock``."""

    def __init__(self, enabled: bool, total: int, description: str,
                 clock: Callable[[], float] = time.monotonic, every: float = PLAIN_EVERY):
        self._p = None
        self._plain = False
        self.done, self.total, self.description = 0, total, description
        if enabled and total > 1:
            if _bar_drawable():
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TimeRemainingColumn(), transient=True)
                self._p.start()
                self._task = self._p.add_task(description, total=total)
            else:
                self._plain, self._clock, self._every = True, clock, every
                self._start = self._last = clock()
                say(f"{description}: 0/{total}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._p is not None:
            self._p.advance(self._task, n)
        elif self._plain and self.done < self.total and self._clock() - self._last >= self._every:
            self._last = self._clock()
            say(f"{self.description}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{self._last - self._start:.0f} s")

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
        if self._plain:
            self._plain = False
            say(f"{self.description}: {self.done}/{self.total} in {self._clock() - self._start:.0f} s")

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
