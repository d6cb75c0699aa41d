"""Outages really caused: Redis killed and restarted, replies lost, the database locked.

After each, every produced row is compared with SQL one by one: none lost, none doubled.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from common import schema
from common.keys import Keys
from producer import RedisBufferedDataLogger
from tests.helpers import FAST, LEFTOVERS, assert_rows_match, produce_workload, stream_records, wait_for
from tests.log_events import events_named
from tests.proxy import ReplyDroppingProxy


def merge(into: dict[str, Counter], part: dict[str, Counter]) -> dict[str, Counter]:
    for table, rows in part.items():
        into.setdefault(table, Counter()).update(rows)
    return into


def quick_logger(url, namespace, simulation_id, tmp_path, **options) -> RedisBufferedDataLogger:
    """A producer that gives up on Redis quickly and retries its journal often (test timing)."""
    settings = {"batch_size": 300, "spill_after_s": 0.3, "journal_retry_interval_s": 0.2,
                "journal_dir": str(tmp_path / "journal"), "close_timeout_s": 30.0, **options}
    return RedisBufferedDataLogger(simulation_id, url, namespace=namespace, **settings)


def records_added(client, namespace, simulation_id) -> int:
    """Records the stream took, each counted once (the append script's count)."""
    return int(client.hget(Keys(namespace).meta(simulation_id), "records_added") or 0)


def rows_in(engine, table) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(table.c.simulation_id)).all())


def test_redis_killed_mid_run_and_restarted_on_its_aof_loses_and_doubles_nothing(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a simulation logging while two consumers persist
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    consumers = cli.start("consume", "--processes", "2", "--batch-size", "200", "--log-json", *FAST)
    expected = produce_workload(logger, steps=20, agents=10)
    logger.flush_all_buffers()
    wait_for(lambda: len(events_named(cli.output(consumers), "worker.stream_discovered")) == 2,
             what="consumers at work")

    # When: Redis is SIGKILLed and stays down for seconds while the simulation keeps logging
    redis_server.kill()
    during = produce_workload(logger, steps=20, agents=10, first_step=21)
    time.sleep(2.5)
    report_during_outage = logger.flush_all_buffers()
    redis_server.restart()
    after = produce_workload(logger, steps=20, agents=10, first_step=41)
    report = logger.close()

    # Then: the outage went to the journal, which was replayed; every row is there exactly once
    stats = logger.producer.stats()
    assert report_during_outage.journaled > 0 and report_during_outage.nothing_lost
    assert stats["journaled"] > 0 and stats["replayed"] >= stats["journaled"]
    assert report.all_in_redis and report.complete, report
    assert not list((tmp_path / "journal").glob("*.journal"))
    consumers.terminate()
    assert consumers.wait(60) == 0, cli.output(consumers)
    assert cli.run("consume", "--drain", *FAST, *LEFTOVERS).returncode == 0
    assert_rows_match(sink_engine, simulation_id, merge(merge(expected, during), after))


def test_an_xadd_whose_reply_was_lost_is_retried_without_a_duplicate_row(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a producer talking to Redis through a proxy that can lose a reply
    proxy = ReplyDroppingProxy(redis_server.port)
    logger = quick_logger(proxy.url, namespace, simulation_id, tmp_path)
    expected = produce_workload(logger, steps=2, agents=5)
    logger.flush_all_buffers()

    # When: Redis applies a batch of XADDs but the reply is lost, so the producer sends it again
    proxy.drop_next_reply()
    more = produce_workload(logger, steps=3, agents=5, first_step=3)
    report = logger.close()
    resent = logger.producer._sender.stats.failed_attempts
    client = redis_server.client()
    in_stream = stream_records(client, Keys(namespace).stream(simulation_id), simulation_id)

    # Then: the append was sent again, yet the stream holds each record once, and each row is written once
    assert proxy.dropped == 1 and report.all_in_redis
    assert resent >= 1, "the lost reply caused no resend; the test proved nothing"
    assert sorted(record.seq for record in in_stream) == list(range(1, report.logged + 1))
    assert records_added(client, namespace, simulation_id) == report.logged
    assert cli.run("consume", "--drain", *FAST).returncode == 0
    assert_rows_match(sink_engine, simulation_id, merge(expected, more))
    proxy.close()


@pytest.mark.parametrize("resend_with", ["next producer", "replay-journal command"])
def test_a_simulation_closed_during_an_outage_leaves_a_journal_that_is_sent_later(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path, resend_with):
    # Given: Redis is down when the simulation ends
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    expected = produce_workload(logger, steps=5, agents=4)
    logger.flush_all_buffers()
    redis_server.kill()
    expected = merge(expected, produce_workload(logger, steps=5, agents=4, first_step=6))

    # When: it closes with a short timeout
    report = logger.close(timeout_s=1.0)

    # Then: close says the rest is in the journal, and that it is not complete in Redis
    assert report.journaled > 0 and report.nothing_lost and not report.complete, report
    journals = list((tmp_path / "journal").glob("*.journal"))
    assert len(journals) == 1 and str(journals[0]) == report.journal_path

    # When: Redis is back and the journal is sent
    redis_server.restart()
    if resend_with == "next producer":
        quick_logger(redis_server.url, namespace, simulation_id, tmp_path).close()
    else:
        replayed = cli.run("replay-journal", str(tmp_path / "journal"))
        assert replayed.returncode == 0 and "simulation marked complete" in replayed.stdout, replayed.stderr

    # Then: the journal is gone, the simulation completes, and every row is there exactly once
    assert not list((tmp_path / "journal").glob("*.journal"))
    assert cli.run("consume", "--drain", *FAST).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)
    with sink_engine.connect() as connection:
        status = connection.execute(select(schema.simstream_simulations.c.status)).scalar_one()
    assert status == "completed"


def test_backpressure_spills_to_the_journal_instead_of_growing_redis(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a producer with a high-water mark of 500 unpersisted entries and no consumer running
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path,
                          high_water_records=500, low_water_records=200)
    client, stream = redis_server.client(), Keys(namespace).stream(simulation_id)

    # When: it logs far more than that
    expected = produce_workload(logger, steps=40, agents=10)
    report = logger.flush_all_buffers()

    # Then: Redis holds about the mark (plus one batch), the rest waits in the journal, nothing trimmed
    assert report.journaled > 0 and report.nothing_lost
    in_redis = records_added(client, namespace, simulation_id)
    assert in_redis <= 500 + 300 and in_redis + report.journaled == report.logged

    # When: consumers start and catch up
    consumers = cli.start("consume", *FAST)
    report = logger.close()

    # Then: the journal drains into Redis, and every row lands once
    assert report.all_in_redis and report.complete, report
    consumers.terminate()
    consumers.wait(60)
    assert cli.run("consume", "--drain", *FAST, *LEFTOVERS).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)


def test_backpressure_slow_throttles_the_simulation_and_keeps_every_record(redis_server, namespace,
                                                                         simulation_id, tmp_path):
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path, backpressure="slow",
                          high_water_records=200, low_water_records=100, batch_size=100)
    produce_workload(logger, steps=10, agents=10)
    logger.flush_all_buffers()
    assert logger.producer._sender.throttle  # the simulation is being slowed
    report = logger.close()
    assert report.all_in_redis and report.journaled == 0
    assert records_added(redis_server.client(), namespace, simulation_id) == report.logged


def test_a_locked_sqlite_database_delays_but_loses_and_doubles_nothing(
        cli, redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a complete simulation in Redis
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    expected = produce_workload(logger, steps=30, agents=10)
    logger.close()
    assert cli.run("consume", "--drain", *FAST).returncode == 0  # creates the schema
    more_logger = quick_logger(redis_server.url, namespace, simulation_id + "-b", tmp_path)
    more = produce_workload(more_logger, steps=30, agents=10)
    more_logger.close()

    # When: another process holds the database's write lock for 3 seconds while consumers run
    locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    locker.execute("BEGIN EXCLUSIVE")
    consumers = cli.start("consume", "--drain", *FAST)
    time.sleep(3)
    assert consumers.poll() is None and rows_in(sink_engine, schema.agent_actions) == 600  # waited
    locker.rollback()
    locker.close()

    # Then: once the lock is gone, everything commits, once
    assert consumers.wait(60) == 0, cli.output(consumers)
    assert_rows_match(sink_engine, simulation_id, expected)
    assert_rows_match(sink_engine, simulation_id + "-b", more)


def test_redis_connections_cut_mid_batch_are_reopened_and_nothing_is_lost(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a large complete simulation and two consumers at work on it
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    expected = produce_workload(logger, steps=400, agents=20)
    logger.close()
    consumers = cli.start("consume", "--processes", "2", "--drain", "--batch-size", "1", "--log-json", *FAST)

    # When: every client connection is killed again and again while they work
    client = redis_server.client()
    killed = 0
    deadline = time.monotonic() + 60
    while consumers.poll() is None and time.monotonic() < deadline:
        killed += client.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.15)

    # Then: they reconnect, replay their own pending entries and finish with every row once
    assert killed > 0
    assert consumers.wait(60) == 0, cli.output(consumers)
    assert events_named(cli.output(consumers), "worker.transient_error")
    assert_rows_match(sink_engine, simulation_id, expected)


def test_a_redis_restarted_empty_is_handled_without_crash_loop(cli, redis_binary, sink_engine, namespace,
                                                             simulation_id, tmp_path):
    # Given: a Redis without persistence, and a consumer that has persisted the first part
    from tests.conftest import RedisServer

    server = RedisServer(redis_binary, tmp_path / "volatile", appendonly=False)
    cli.env["SIMSTREAM_REDIS_URL"] = server.url
    try:
        logger = quick_logger(server.url, namespace, simulation_id, tmp_path)
        consumers = cli.start("consume", "--log-json", *FAST)
        wait_for(lambda: events_named(cli.output(consumers), "worker.started"), what="the consumer to start")
        expected = produce_workload(logger, steps=20, agents=5)
        logger.flush_all_buffers()
        wait_for(lambda: rows_in(sink_engine, schema.agent_actions) == 200, what="the first part persisted")

        # When: Redis restarts empty (no AOF: the stream, its group and the registry are gone)
        server.kill()
        server.restart()
        expected = merge(expected, produce_workload(logger, steps=20, agents=5, first_step=21))
        logger.close()

        # Then: the consumer re-creates the group and persists the rest; it never died
        wait_for(lambda: rows_in(sink_engine, schema.agent_actions) == 400, what="the second part persisted")
        consumers.terminate()
        assert consumers.wait(60) == 0
        output = cli.output(consumers)
        assert events_named(output, "worker.group_missing") and not events_named(output, "supervisor.worker_died")
        assert_rows_match(sink_engine, simulation_id, expected)
    finally:
        server.stop()


def test_a_left_journal_replayed_by_a_running_producer_does_not_mark_the_simulation_complete(
        redis_server, namespace, simulation_id, tmp_path):
    # Given: a simulation closed during an outage, its journal holding the completion marker
    first = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    redis_server.kill()
    produce_workload(first, steps=3, agents=3)
    assert first.close(timeout_s=1.0).journaled > 0

    # When: Redis is back and the simulation resumes with a new producer, which replays the journal
    redis_server.restart()
    second = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    produce_workload(second, steps=3, agents=3, first_step=4)
    second.flush_all_buffers()
    meta = Keys(namespace).meta(simulation_id)

    # Then: the journal is in Redis, but the simulation is not complete until the running producer closes
    assert not list((tmp_path / "journal").glob("*.journal"))
    assert redis_server.client().hget(meta, "complete") is None
    assert second.close().complete
    assert redis_server.client().hget(meta, "complete") == b"1"


def test_a_journal_replay_killed_half_way_is_sent_again_without_a_duplicate_row(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a journal of several batches, left by a simulation closed while Redis was down
    logger = quick_logger(redis_server.url, namespace, simulation_id, tmp_path)
    redis_server.kill()
    expected = produce_workload(logger, steps=20, agents=10)
    assert logger.close(timeout_s=1.0).journaled > 600
    redis_server.restart()
    journals = str(tmp_path / "journal")

    # When: the replay is SIGKILLed right after its first batch reached Redis, then run again
    killed = cli.run("replay-journal", journals, "--batch-size", "300",
                     extra_env={"SIMSTREAM_TEST_CRASH": "journal_mid_replay:1"})
    stream_after_kill = records_added(redis_server.client(), namespace, simulation_id)
    again = cli.run("replay-journal", journals)

    # Then: the kill left the journal and part of it in Redis; the second replay sent all of it,
    # and every row is written exactly once
    assert killed.returncode == -9 and 0 < stream_after_kill < logger.producer.stats()["logged"]
    assert again.returncode == 0 and "simulation marked complete" in again.stdout, again.stderr
    assert not list((tmp_path / "journal").glob("*.journal"))
    assert cli.run("consume", "--drain", *FAST).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)
