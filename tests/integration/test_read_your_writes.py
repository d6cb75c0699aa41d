"""Read your writes: ``wait_persisted`` returns once the rows are committed, and not before."""

from __future__ import annotations

import time

import pytest

from common.errors import GroupMissing, PersistTimeout
from common.keys import Keys
from producer import RedisBufferedDataLogger
from tests.helpers import assert_rows_match, produce_workload, running_worker, wait_for


def test_wait_persisted_returns_once_the_rows_are_committed_and_not_before(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, monkeypatch):
    # Given: a producer whose group comes from SIMSTREAM_GROUP, and that group on its stream
    # (created as a consumer creates it), but no consumer running
    monkeypatch.setenv("SIMSTREAM_GROUP", "readers")
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=200)
    expected = produce_workload(logger, steps=5, agents=3)
    logger.flush_all_buffers()
    stream = Keys(namespace).stream(simulation_id)
    redis_server.client().xgroup_create(stream, "readers", id="0")
    logged = logger.producer.stats()["logged"]

    # When / Then: waiting for persistence times out, naming every record as not yet delivered
    with pytest.raises(PersistTimeout) as timeout:
        logger.flush_all_buffers(wait_persisted=True, timeout_s=0.5)
    assert timeout.value.backlog == logged
    message = str(timeout.value)
    assert f"{logged} records of this producer not yet persisted by consumer group 'readers'" in message
    assert f"{logged} not yet delivered" in message and "\n" not in message

    with running_worker(redis_server.url, sqlite_url, namespace, group="readers", trim_interval_ms=50):
        # When: a consumer of that group runs and the producer waits for its writes
        logger.flush_all_buffers(wait_persisted=True, timeout_s=60)
        # Then: every row is readable at once, no polling
        assert_rows_match(sink_engine, simulation_id, expected)

        # When: more is logged and waited for
        more = produce_workload(logger, steps=3, agents=3, first_step=6)
        logger.producer.wait_persisted(timeout_s=60)
        # Then: the new rows are there too
        for table, rows in more.items():
            expected[table].update(rows)
        assert_rows_match(sink_engine, simulation_id, expected)

        # When: the simulation is closed and retention removes its stream
        logger.close()
        wait_for(lambda: not redis_server.client().exists(stream), what="the finished stream's removal")
        # Then: a stream removed once persisted counts as persisted
        logger.producer.wait_persisted(timeout_s=5)


def test_without_a_consumer_group_wait_persisted_says_so_at_once(redis_server, namespace, simulation_id):
    # Given: a simulation no consumer has ever looked at
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, group_wait_s=0)
    produce_workload(logger, steps=2, agents=2)

    # When: the producer waits for persistence with a long timeout
    started = time.monotonic()
    with pytest.raises(GroupMissing) as missing:
        logger.flush_all_buffers(wait_persisted=True, timeout_s=120)

    # Then: it says at once that no group exists, in one line, instead of waiting out the timeout
    assert time.monotonic() - started < 60
    assert "no consumer group 'simstream'" in str(missing.value) and "simstream consume" in str(missing.value)
    assert "\n" not in str(missing.value)
    logger.close()


def test_wait_persisted_on_a_redis_cluster(redis_cluster, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: a consumer and a producer on a 3-master cluster, each given a different node's address
    with running_worker(redis_cluster.nodes[1].url, sqlite_url, namespace, trim_interval_ms=50):
        logger = RedisBufferedDataLogger(simulation_id, redis_cluster.nodes[2].url, namespace=namespace,
                                         batch_size=100)
        expected = produce_workload(logger, steps=4, agents=3)

        # When: the producer waits for its writes
        logger.flush_all_buffers(wait_persisted=True, timeout_s=60)

        # Then: every row is committed
        assert_rows_match(sink_engine, simulation_id, expected)
        logger.close()
