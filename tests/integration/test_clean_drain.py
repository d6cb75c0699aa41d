"""A stream another consumer removed once its simulation was persisted is the normal end of a
drain: the consumer that was reading it forgets it without a warning or a retry."""

from __future__ import annotations

import logging

from common.events import fields_of
from consumer.worker import Worker
from producer import RedisBufferedDataLogger
from tests.helpers import drain_with_worker, fast_settings, produce_workload


def test_a_stream_a_peer_removed_as_finished_is_forgotten_without_a_warning(
        redis_server, sqlite_url, namespace, simulation_id, caplog):
    # Given: a finished simulation, and a consumer that is tracking its stream
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    produce_workload(logger, steps=3, agents=2)
    assert logger.close().complete
    settings = fast_settings(redis_server.url, sqlite_url, namespace, discover_interval_ms=60_000)
    reader = Worker(settings, slot=1, name="reader")
    reader._connect()
    reader.discover_streams()
    reader.replay_own_pending()

    # When: another consumer persists everything and removes the simulation, then the reader reads on
    drain_with_worker(redis_server.url, sqlite_url, namespace)
    caplog.clear()
    caplog.set_level(logging.INFO)
    try:
        reader._run_step()
    finally:
        reader._teardown()

    # Then: the reader let go of the stream, said so at INFO, and neither warned nor counted a retry
    assert reader._streams == {} and reader.stats.retried == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(fields_of(r) == ("worker.stream_finished", {"consumer": "reader", "simulation": simulation_id})
               for r in caplog.records)
