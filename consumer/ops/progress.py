"""Progress while waiting: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from consumer.stream_status import all_statuses

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
        self._last_printed: tuple[int, int] | None = None
        self._first_done: int | None = None  # what was already done before we started watching

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
        rate = f"{self._rate(done):,.0f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=min(done, total) if total else done,
                                  total=total or None, rate=rate)
        elif time.monotonic() - self._last_line >= _PLAIN_INTERVAL_S:
            self._print_line(done, total, rate)

    def _rate(self, done: int) -> float:
        """Records per second since the first update."""
        if self._first_done is None:
            self._first_done = done
        return (done - self._first_done) / max(time.monotonic() - self._started, 1e-6)

    def _print_line(self, done: int, total: int, rate: str) -> None:
        self._last_line = time.monotonic()
        self._last_printed = (done, total)
        share = f" ({100 * done / total:.0f}%)" if total else ""
        speed = self._rate(done)
        eta = f", eta {(total - done) / speed:.0f}s" if total > done and speed > 0 else ""
        print(f"{self.label} {done}/{total}{share}, {rate} rec/s{eta}", file=self.stream, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        else:
            done, total = self._last
            if self._last_printed != (done, total):
                self._print_line(done, total, f"{self._rate(done):,.0f}")


class DrainProgress:
    """``consume --drain`` progress: records persisted of logged, over every simulation, read
    from Redis by the supervisor (not from the workers) every ``interval_s`` in a daemon thread.

    A simulation removed from Redis once finished counts as fully persisted. Persisted counts the
    records in acknowledged entries (``StreamStatus.persisted``, see :mod:`consumer.stream_status`), so a
    dead letter counts as done; a stream of producers before record batches counts its entries.
    """

    def __init__(self, client, keys, group: str, interval_s: float = 1.0, stream=None) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.interval_s = interval_s
        self.stream = stream
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simstream-progress", daemon=True)

    def start(self) -> DrainProgress:
        """Begin showing progress."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Show the last sample and stop."""
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> tuple[int, int]:
        """(persisted, logged) summed over every simulation seen so far."""
        try:
            statuses = all_statuses(self.client, self.keys, self.group)
        except redis.RedisError:
            return self._totals()  # Redis away: keep the last numbers, the workers will say why
        current = {s.simulation_id: (min(s.persisted, s.logged), s.logged) for s in statuses}
        for simulation_id, (_, logged) in self._seen.items():
            if simulation_id not in current:
                current[simulation_id] = (logged, logged)  # finished and removed
        self._seen = current
        return self._totals()

    def _totals(self) -> tuple[int, int]:
        return sum(done for done, _ in self._seen.values()), sum(total for _, total in self._seen.values())

    def _run(self) -> None:
        with ProgressDisplay("persisted", self.stream) as display:
            display.update(*self.sample())  # at once: a simulation drained before a later sample still counts
            while not self._stop.wait(self.interval_s):
                display.update(*self.sample())
            display.update(*self.sample())


def start_drain_progress(settings) -> Callable[[], None]:
    """Show ``--drain`` progress for ``settings``' namespace and group; returns a stop function."""
    from common.connections import redis_client
    from common.keys import Keys

    client = redis_client(settings.redis_url, socket_timeout_s=5.0)
    progress = DrainProgress(client, Keys(settings.namespace), settings.group).start()

    def stop() -> None:
        progress.stop()
        client.close()

    return stop
