"""Progress while waiting: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_PLAIN_INTERVAL_S = 2.0


class ProgressDisplay:
    """Shows ``done`` of ``total`` with rate and ETA; ``total`` may grow while we wait."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self._progress: Progress | None = None
        self._task = None
        self._started = time.monotonic()
        self._last_line = 0.0
        self._last = (0, 0)

    def __enter__(self) -> ProgressDisplay:
        if self.interactive:
            self._progress = Progress(TextColumn(f"{self.label}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]:>9} rec/s"), TimeRemainingColumn())
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None, rate="-")
        return self

    def update(self, done: int, total: int) -> None:
        """Record progress; prints at most every few seconds when not on a terminal."""
        self._last = (done, total)
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = f"{done / elapsed:,.0f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=min(done, total) if total else done,
                                  total=total or None, rate=rate)
        elif time.monotonic() - self._last_line >= _PLAIN_INTERVAL_S:
            self._print_line(done, total, rate)

    def _print_line(self, done: int, total: int, rate: str) -> None:
        self._last_line = time.monotonic()
        share = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"{self.label} {done}/{total}{share}, {rate} rec/s", file=self.stream, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        else:
            done, total = self._last
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._print_line(done, total, f"{done / elapsed:,.0f}")
