"""What each worker is retrying now, published in Redis so that ``simstream status`` tells the truth.

A worker that cannot commit a simulation's batch (the database refuses, is full, unreachable) or
cannot reach its stream (the master holding it is down, failing over) retries, and nothing is
acknowledged meanwhile. Seen from Redis alone that looks like a stream whose consumers are alive
but slow; so every worker keeps, per simulation, what it is retrying (``sink`` or ``redis``),
since when, and the last error, and publishes it in one hash (:attr:`common.keys.Keys.failing`;
field: the consumer's name, value: JSON ``{simulation: {what, since, seen, error}}``): at most once
a second while something fails, at once when it clears, and its own field is removed when nothing
does. ``status`` and the metrics endpoint read it (:func:`read_failures`); a failure re-confirmed
lately (``seen``) that has lasted longer than ``failing_after_ms`` (``since``) makes the verdict
``sink-failing`` or ``redis-failing``. Times are wall-clock seconds of the worker's machine.

Publishing is best effort: when Redis itself is what fails, the hash may be out of reach too
(``status`` then reports ``redis-failing`` from its own failed reads of the stream). The time spent
retrying is counted in ``simstream_retry_seconds_total`` (labels consumer, what).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from common.events import event
from common.failover import REDIS_ERRORS
from common.keys import Keys
from consumer.metrics import WorkerMetrics

log = logging.getLogger(__name__)

SINK, REDIS = "sink", "redis"
_PUBLISH_EVERY_S = 1.0
_UNPUBLISHED_PAUSE_S = 5.0
_KEY_TTL_S = 86_400  # reports of consumers that vanished while failing do not linger forever
_ERROR_CHARS = 500


@dataclass
class Failure:
    """One consumer retrying one simulation: what fails, since when, last seen, the last error."""

    what: str
    since: float
    seen: float
    error: str
    consumer: str = ""


class FailureTracker:
    """A worker's failures, per simulation and kind, published for ``status`` (module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys, consumer: str, metrics: WorkerMetrics) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.metrics = metrics
        self._failing: dict[tuple[str, str], Failure] = {}
        self._published_at = 0.0
        self._paused_until = 0.0
        self._dirty = True  # a restarted worker withdraws what it reported before
        self._accounted_at = time.monotonic()

    def note(self, simulation_id: str, what: str, exc: BaseException) -> None:
        """``simulation_id``'s ``what`` (SINK or REDIS) failed again with ``exc``; it is retried."""
        self._account()
        now = time.time()
        error = " ".join(str(exc).split())[:_ERROR_CHARS]
        failure = self._failing.get((simulation_id, what))
        self._dirty = True
        if failure is None:
            self._failing[(simulation_id, what)] = Failure(what, now, now, error)
            self.publish(force=True)
            return
        failure.seen, failure.error = now, error
        self.publish()

    def clear(self, simulation_id: str, what: str) -> None:
        """``simulation_id``'s ``what`` works again."""
        if (simulation_id, what) in self._failing:
            self._account()
            del self._failing[(simulation_id, what)]
            self._dirty = True
            self.publish(force=True)

    def clear_all(self, what: str) -> None:
        """Every simulation's ``what`` works again (a single Redis server answered a whole tick)."""
        for simulation_id, kind in [key for key in self._failing if key[1] == what]:
            self.clear(simulation_id, kind)

    def publish(self, force: bool = False) -> None:
        """Write this consumer's failures to Redis if they changed: at once with ``force``, else
        at most once a second (the worker calls this every tick, so nothing stays unwritten).

        After a failed attempt nothing is tried for ``_UNPUBLISHED_PAUSE_S``, forced or not: the
        hash's master may be the one that fails, and a worker must not wait on it every tick.
        """
        now = time.monotonic()
        if not self._dirty or now < self._paused_until or (not force and now - self._published_at < _PUBLISH_EVERY_S):
            return
        self._published_at = now
        try:
            if not self._failing:
                self.client.hdel(self.keys.failing, self.consumer)
            else:
                report = {sim: {**asdict(f), "consumer": self.consumer} for (sim, _), f in self._failing.items()}
                self.client.hset(self.keys.failing, self.consumer, json.dumps(report))
                self.client.expire(self.keys.failing, _KEY_TTL_S)
            self._dirty = False
        except REDIS_ERRORS as exc:
            self._paused_until = now + _UNPUBLISHED_PAUSE_S
            event(log, logging.DEBUG, "worker.failure_report_unpublished", consumer=self.consumer, error=exc)

    def _account(self) -> None:
        """Add the time since the last call to ``simstream_retry_seconds_total`` for each kind failing."""
        now = time.monotonic()
        elapsed, self._accounted_at = now - self._accounted_at, now
        for what in {kind for _, kind in self._failing}:
            self.metrics.retrying(what, elapsed)


def read_failures(client: redis.Redis, keys: Keys) -> dict[str, list[Failure]] | None:
    """Every consumer's published failures, per simulation; None if Redis did not answer."""
    try:
        published = client.hgetall(keys.failing)
    except REDIS_ERRORS as exc:
        event(log, logging.DEBUG, "health.failures_unknown", error=exc)
        return None
    found: dict[str, list[Failure]] = {}
    for consumer, value in published.items():
        try:
            report: dict[str, Any] = json.loads(value)
            for simulation_id, failure in report.items():
                found.setdefault(simulation_id, []).append(Failure(**failure))
        except (ValueError, TypeError) as exc:
            event(log, logging.DEBUG, "health.failure_report_unreadable", consumer=consumer, error=exc)
    return found
