"""A rich progress bar that is nothing at all when progress display is off (tests, workers)."""

from __future__ import annotations


class Bar:
    """``with Bar(enabled, total, "decoding") as bar: bar.advance(n)``; also usable without ``with``."""

    def __init__(self, enabled: bool, total: int, description: str):
        self._p = None
        if enabled and total > 1:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeRemainingColumn(), transient=True)
            self._p.start()
            self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
