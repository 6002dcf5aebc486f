"""Progress where no bar can be drawn (a notebook, a batch job, a log file): plain lines under the
``astroclass`` logger when a loop starts, every 30 s of a clock the test controls, and when it ends."""

from __future__ import annotations

import logging

from astroclass import progress


def test_plain_progress_lines_when_no_bar_can_be_drawn(monkeypatch):
    monkeypatch.setattr(progress, "_bar_drawable", lambda: False)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    progress.logger.addHandler(handler)
    monkeypatch.setattr(progress.logger, "level", logging.INFO)
    try:
        now = [0.0]
        with progress.Bar(True, 100, "classifying", clock=lambda: now[0]) as bar:
            for t, n in ((1, 10), (10, 10), (31, 10), (45, 10), (62, 10), (70, 50)):
                now[0] = t
                bar.advance(n)
        with progress.Bar(False, 100, "quiet") as bar:  # off: nothing at all
            bar.advance(100)
    finally:
        progress.logger.removeHandler(handler)
    assert seen == ["classifying: 0/100", "classifying: 30/100 (30%), 31 s", "classifying: 50/100 (50%), 62 s",
                    "classifying: 100/100 in 70 s"]
