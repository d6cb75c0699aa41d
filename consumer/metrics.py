"""Prometheus metrics of a consumer run, and the run's totals for its shutdown summary.

Workers are separate processes, so they use prometheus_client's multiprocess mode: the
supervisor owns a private folder (``PROMETHEUS_MULTIPROC_DIR``, set for the workers it spawns,
deleted when it exits) where each worker's counters live in memory-mapped files. A worker that
dies keeps its counts there, so restarts do not reset the totals. The supervisor serves them
(``--metrics-port``) together with gauges it reads from Redis and the sink at scrape time:
lag, pending, consumers' idle time, dead letters, restarts.

Worker metrics (labels: consumer; records also table), in records unless named otherwise:
``simstream_records_persisted_total``, ``simstream_batches_total``,
``simstream_commit_seconds`` (histogram), ``simstream_dead_lettered_total`` (records),
``simstream_claimed_total`` (entries), ``simstream_retries_total``, and ``simstream_retry_seconds_total``
(labels consumer, what: ``sink`` or ``redis``), the time spent retrying a failing database or Redis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
_COMMIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Counter name (as exported, without _total) -> the summary field it feeds.
SUMMARY_FIELDS = {
    "simstream_records_persisted": "persisted",
    "simstream_dead_lettered": "dead_lettered",
    "simstream_claimed": "claimed",
    "simstream_retries": "retried",
    "simstream_batches": "batches",
}


@lru_cache(maxsize=1)
def _instruments() -> dict[str, Any]:
    """The worker's metrics, created once per process and registered nowhere (files only)."""
    return {
        "persisted": Counter("simstream_records_persisted", "Records written to the sink as rows.",
                             ["consumer", "table"], registry=None),
        "batches": Counter("simstream_batches", "Batches committed and acknowledged.", ["consumer"], registry=None),
        "commit": Histogram("simstream_commit_seconds", "Time to commit one batch to the sink.", ["consumer"],
                            buckets=_COMMIT_BUCKETS_S, registry=None),
        "dead_lettered": Counter("simstream_dead_lettered", "Records written to dead_letters.", ["consumer"],
                                 registry=None),
        "claimed": Counter("simstream_claimed", "Stream entries claimed from other consumers.", ["consumer"],
                           registry=None),
        "retries": Counter("simstream_retries", "Transient failures retried (Redis or database).", ["consumer"],
                           registry=None),
        "retry_seconds": Counter("simstream_retry_seconds", "Time spent retrying a failing sink or Redis.",
                                 ["consumer", "what"], registry=None),
    }


class WorkerMetrics:
    """What one worker records; does nothing unless its supervisor gave it a metrics folder."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.enabled = bool(os.environ.get(ENV_MULTIPROC_DIR))

    def batch_committed(self, rows_by_table: dict[str, int], dead_lettered: int, commit_s: float) -> None:
        """One batch committed: its rows per table, the records it dead-lettered, how long the commit took."""
        if not self.enabled:
            return
        metrics = _instruments()
        for table, rows in rows_by_table.items():
            metrics["persisted"].labels(self.consumer, table).inc(rows)
        metrics["batches"].labels(self.consumer).inc()
        metrics["commit"].labels(self.consumer).observe(commit_s)
        if dead_lettered:
            metrics["dead_lettered"].labels(self.consumer).inc(dead_lettered)

    def claimed(self, entries: int) -> None:
        """Stream entries taken over from other consumers."""
        if self.enabled and entries:
            _instruments()["claimed"].labels(self.consumer).inc(entries)

    def retried(self) -> None:
        """One transient failure that will be retried."""
        if self.enabled:
            _instruments()["retries"].labels(self.consumer).inc()

    def retrying(self, what: str, seconds: float) -> None:
        """``seconds`` more spent retrying ``what`` (``sink`` or ``redis``)."""
        if self.enabled and seconds > 0:
            _instruments()["retry_seconds"].labels(self.consumer, what).inc(seconds)


class MetricsDir:
    """The supervisor's private multiprocess folder; workers started while it is open use it."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="simstream-metrics-")
        self._previous = os.environ.get(ENV_MULTIPROC_DIR)
        os.environ[ENV_MULTIPROC_DIR] = self.path  # inherited by the workers spawned from now on

    def registry(self) -> CollectorRegistry:
        """A registry that reads every worker's files (live and dead) at each collection."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)
        return registry

    def totals(self) -> dict[str, int]:
        """Summary counts across every worker of the run: persisted, dead_lettered, claimed, ..."""
        totals = dict.fromkeys(SUMMARY_FIELDS.values(), 0)
        for family in self.registry().collect():
            field = SUMMARY_FIELDS.get(family.name)
            if field:
                totals[field] += int(sum(s.value for s in family.samples if s.name.endswith("_total")))
        return totals

    def close(self) -> None:
        """Delete the folder and restore the environment."""
        if self._previous is None:
            os.environ.pop(ENV_MULTIPROC_DIR, None)
        else:
            os.environ[ENV_MULTIPROC_DIR] = self._previous
        shutil.rmtree(self.path, ignore_errors=True)
