"""``consume --metrics-port``: the supervisor's HTTP endpoint for Prometheus.

Serves the workers' counters (see :mod:`consumer.metrics`) and, read at scrape time, what only
Redis and the sink know: per simulation the stream length, lag and pending (entries), records
logged and persisted, the backlog (records) and health, per
consumer its pending count and idle time, dead letters per simulation, and the supervisor's
restarts per consumer. A scrape while Redis is away still answers, with ``simstream_redis_up 0``.

Gauges: ``simstream_redis_up``, ``simstream_stream_length``, ``simstream_stream_lag``,
``simstream_stream_pending`` (entries), ``simstream_stream_logged_records``,
``simstream_stream_persisted_records``, ``simstream_stream_backlog`` (records), ``simstream_stream_health``
(1 for the current verdict), ``simstream_consumer_pending``, ``simstream_consumer_idle_seconds``,
``simstream_dead_letters``. Counter: ``simstream_worker_restarts_total`` (label consumer).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from common.errors import ConfigurationError
from common.events import event
from common.keys import Keys
from common.settings import ConsumerSettings
from consumer.failures import Failure, read_failures
from consumer.ops.health import VERDICTS, HealthThresholds, current_failure, dead_letter_counts, verdict
from consumer.stream_status import StreamStatus, all_statuses

log = logging.getLogger(__name__)


class RedisStateCollector(Collector):
    """Gauges read from Redis and the sink on every scrape; restarts from the supervisor."""

    def __init__(self, client: redis.Redis, settings: ConsumerSettings,
                 restarts: Callable[[], dict[str, int]]) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.thresholds = HealthThresholds(claim_idle_ms=settings.claim_idle_ms,
                                           failing_after_ms=settings.failing_after_ms)
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("simstream_worker_restarts", "Worker restarts after a crash.",
                                       labels=["consumer"])
        for consumer, count in sorted(self.restarts().items()):
            restarts.add_metric([consumer], count)
        yield restarts
        up = GaugeMetricFamily("simstream_redis_up", "1 if Redis answered this scrape.")
        try:
            statuses = all_statuses(self.client, self.keys, self.settings.group)
        except redis.RedisError as exc:
            event(log, logging.DEBUG, "metrics.redis_unavailable", error=exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._stream_metrics(statuses, dead_letter_counts(self.settings.db_url),
                                        read_failures(self.client, self.keys) or {})

    def _stream_metrics(self, statuses: list[StreamStatus], letters: dict[str, int] | None,
                        failures: dict[str, list[Failure]]) -> Iterator[Metric]:
        per_stream = {name: GaugeMetricFamily(f"simstream_stream_{name}", text, labels=["simulation"])
                      for name, text in (("length", "Entries in the stream (each a batch of records)."),
                                         ("lag", "Entries not yet delivered to the group."),
                                         ("pending", "Entries delivered and not yet acknowledged."),
                                         ("logged_records", "Records the simulation's producers sent."),
                                         ("persisted_records", "Records in entries the group acknowledged."),
                                         ("backlog", "Records left to persist."))}
        health = GaugeMetricFamily("simstream_stream_health", "1 for the stream's current verdict.",
                                   labels=["simulation", "health"])
        consumer_pending = GaugeMetricFamily("simstream_consumer_pending", "Entries a consumer holds.",
                                             labels=["simulation", "consumer"])
        consumer_idle = GaugeMetricFamily("simstream_consumer_idle_seconds", "Since Redis last saw a consumer.",
                                          labels=["simulation", "consumer"])
        for status in statuses:
            sim = status.simulation_id
            for name, value in (("length", status.length), ("lag", status.lag), ("pending", status.pending),
                                ("logged_records", status.logged), ("persisted_records", status.persisted),
                                ("backlog", status.backlog)):
                per_stream[name].add_metric([sim], value)
            current = verdict(status, None if letters is None else letters.get(sim, 0), self.thresholds,
                              current_failure(failures.get(sim), self.thresholds))
            for name in VERDICTS:
                health.add_metric([sim, name], 1 if name == current else 0)
            for consumer in status.consumers:
                consumer_pending.add_metric([sim, consumer["name"]], consumer["pending"])
                consumer_idle.add_metric([sim, consumer["name"]], consumer["idle_ms"] / 1000)
        yield from (*per_stream.values(), health, consumer_pending, consumer_idle)
        if letters is not None:
            dead = GaugeMetricFamily("simstream_dead_letters", "Dead letters in the sink.", labels=["simulation"])
            for sim, count in sorted(letters.items(), key=lambda item: str(item[0])):
                dead.add_metric([str(sim)], count)
            yield dead


def serve_metrics(registry: CollectorRegistry, host: str, port: int):
    """Start the HTTP endpoint in a daemon thread; returns the server (call ``shutdown()``)."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                                 "choose another --metrics-port") from exc
    event(log, logging.INFO, "supervisor.metrics_serving", address=f"http://{host}:{server.server_port}/metrics")
    return server


def start_metrics_endpoint(supervisor, metrics_dir) -> Callable[[], None]:
    """Serve the workers' counters and the Redis gauges for ``supervisor``; returns a stop function."""
    from common.connections import redis_client

    settings = supervisor.settings
    registry = metrics_dir.registry()
    client = redis_client(settings.redis_url, socket_timeout_s=5.0)
    registry.register(RedisStateCollector(client, settings, supervisor.restarts_by_consumer))
    server = serve_metrics(registry, supervisor.metrics_host, supervisor.metrics_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        client.close()

    return stop
