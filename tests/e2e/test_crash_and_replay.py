"""Real consumer processes, real signals: nothing lost, nothing doubled, counted row by row."""

from __future__ import annotations

import multiprocessing
import random
import signal
import time

import psutil
import pytest
import redis

from common.settings import ConsumerSettings
from consumer.worker import consumer_name, run_worker
from producer import RedisBufferedDataLogger
from tests.helpers import FAST, LEFTOVERS, assert_rows_match, dead_letter_count, produce_workload, wait_for
from tests.log_events import events_named, has_event


# Also on one SQLite file per simulation, PostgreSQL and a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.every_deployment


ENTRY_RECORDS = 10
"""Records per stream entry (a record batch): small, so that a run spans many entries and the
consumers' batches (``--batch-size``, in entries) many batches, as many as when an entry held one
record and the batch sizes below were ten times larger."""


def new_logger(redis_server, namespace, simulation_id) -> RedisBufferedDataLogger:
    return RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=500,
                                   entry_records=ENTRY_RECORDS)


def group_pending(redis_server, namespace, simulation_id) -> dict:
    client = redis_server.client()
    try:
        summary = client.xpending(f"{namespace}:{{{simulation_id}}}:stream", "simstream")
    except redis.ResponseError:  # NOGROUP: no consumer has created the group yet
        return {"pending": 0, "consumers": {}}
    return {"pending": summary["pending"],
            "consumers": {c["name"].decode(): c["pending"] for c in summary["consumers"]}}


def delivered_any(redis_server, namespace, simulation_id) -> bool:
    """True once the group has handed out at least one entry."""
    try:
        groups = redis_server.client().xinfo_groups(f"{namespace}:{{{simulation_id}}}:stream")
    except redis.ResponseError:
        return False
    return any(g["last-delivered-id"] not in (b"0-0", "0-0") for g in groups)


def worker_pids(supervisor) -> list[int]:
    """Live worker processes of a supervisor (not its resource tracker, not reaped corpses)."""
    pids = []
    for child in psutil.Process(supervisor.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue  # exited while we looked
    return pids


def test_three_consumers_share_one_simulation(cli, redis_server, sink_engine, namespace, simulation_id):
    # Given: three consumer processes started before the simulation
    logger = new_logger(redis_server, namespace, simulation_id)
    consumers = cli.start("consume", "--processes", "3", "--drain", "--batch-size", "20", "--log-json", *FAST)
    logger.flush_all_buffers()  # registers the simulation, so each worker finds its stream
    wait_for(lambda: len(events_named(cli.output(consumers), "worker.stream_discovered")) == 3, timeout_s=60,
             what="all three workers to start")

    # When: the simulation logs while they run, then closes
    expected = produce_workload(logger, steps=150, agents=20)
    assert logger.close().complete

    # Then: they drain and exit 0, every row is there once, and all three took part
    assert consumers.wait(120) == 0, cli.output(consumers)
    assert_rows_match(sink_engine, simulation_id, expected)
    assert dead_letter_count(sink_engine) == 0
    log_lines = cli.output(consumers)
    persisted_by = {line["consumer"]: line["persisted"] for line in events_named(log_lines, "worker.summary")}
    assert set(persisted_by) == {consumer_name(slot) for slot in range(3)}
    assert all(count > 0 for count in persisted_by.values()), log_lines
    # and once persisted, the simulation's keys are gone from Redis
    assert not redis_server.client().exists(f"{namespace}:{{{simulation_id}}}:stream")


@pytest.mark.parametrize("moment", ["after_read", "after_commit"])
def test_sigkill_at_the_dangerous_moment_then_restart_leaves_exact_rows(cli, redis_server, sink_engine, namespace,
                                                                         simulation_id, tmp_path, moment):
    # Given: a complete simulation in the stream, and a worker armed to SIGKILL itself at the 3rd batch
    # either after reading (rows not committed) or after committing (entries not acked)
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=60, agents=10)
    logger.close()
    once = tmp_path / "crashed"
    crash_env = {"SIMSTREAM_TEST_CRASH": f"{moment}:3", "SIMSTREAM_TEST_CRASH_ONCE_FILE": str(once)}

    # When: the supervisor runs it; it dies by SIGKILL and is restarted under the same name
    result = cli.run("consume", "--processes", "1", "--drain", "--batch-size", "10", "--log-json", *FAST,
                     extra_env=crash_env)

    # Then: the kill happened, the restarted worker replayed its pending entries, rows are exact
    assert once.exists(), "the worker was never killed"
    assert has_event(result.stderr, "supervisor.worker_died", exit=-9), result.stderr
    assert result.returncode == 0, result.stderr
    assert_rows_match(sink_engine, simulation_id, expected)
    assert group_pending(redis_server, namespace, simulation_id)["pending"] == 0


def test_random_sigkills_during_a_run_lose_and_double_nothing(cli, redis_server, sink_engine, namespace,
                                                              simulation_id):
    # Given: two supervised workers consuming while the simulation runs
    rng = random.Random(1234)
    logger = new_logger(redis_server, namespace, simulation_id)
    supervisor = cli.start("consume", "--processes", "2", "--batch-size", "15", *FAST)
    wait_for(lambda: len(worker_pids(supervisor)) == 2, what="two workers")

    # When: workers are SIGKILLed at random moments while records stream in
    expected, kills = {}, 0
    for chunk in range(6):
        part = produce_workload(logger, steps=25, agents=15, first_step=1 + chunk * 25)
        for table, rows in part.items():
            expected.setdefault(table, rows.__class__()).update(rows)
        time.sleep(rng.uniform(0.05, 0.4))
        pids = worker_pids(supervisor)
        if pids:
            psutil.Process(rng.choice(pids)).send_signal(signal.SIGKILL)
            kills += 1
    logger.close()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, cli.output(supervisor)
    drained = cli.run("consume", "--processes", "2", "--drain", *FAST, *LEFTOVERS)

    # Then: after the kills, every row is there exactly once
    assert kills >= 4
    assert drained.returncode == 0, drained.stderr
    assert_rows_match(sink_engine, simulation_id, expected)


def test_another_consumer_claims_a_dead_consumers_entries(cli, redis_server, sqlite_url, sink_engine, namespace,
                                                          simulation_id, tmp_path, monkeypatch):
    # Given: a complete simulation, and a worker (slot 7) that read a batch and died by SIGKILL,
    # with nobody to restart it
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=30, agents=10)
    logger.close()
    monkeypatch.setenv("SIMSTREAM_TEST_CRASH", "after_read:2")
    settings = ConsumerSettings(redis_url=redis_server.url, db_url=sqlite_url, namespace=namespace,
                                batch_size=10, block_ms=100)
    doomed = multiprocessing.get_context("spawn").Process(target=run_worker, args=(settings, 7))
    doomed.start()
    doomed.join(60)
    monkeypatch.delenv("SIMSTREAM_TEST_CRASH")
    assert doomed.exitcode == -signal.SIGKILL
    dead_name = consumer_name(7)
    assert group_pending(redis_server, namespace, simulation_id)["consumers"].get(dead_name, 0) > 0

    # When: a different consumer runs with a short claim idle time
    result = cli.run("consume", "--processes", "1", "--drain", "--claim-idle-ms", "200",
                     "--claim-interval-ms", "100", "--log-json", *FAST)

    # Then: it claimed the dead consumer's entries and every row is there exactly once
    assert result.returncode == 0, result.stderr
    assert events_named(result.stderr, "worker.claimed"), result.stderr
    assert group_pending(redis_server, namespace, simulation_id)["consumers"].get(dead_name, 0) == 0
    assert_rows_match(sink_engine, simulation_id, expected)


def test_sigterm_mid_run_exits_zero_with_nothing_pending(cli, redis_server, sink_engine, namespace, simulation_id):
    # Given: two workers busy with a large backlog
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=300, agents=30)
    logger.close()
    supervisor = cli.start("consume", "--processes", "2", "--batch-size", "20", "--log-json", *FAST)
    wait_for(lambda: delivered_any(redis_server, namespace, simulation_id), what="consumers at work")

    # When: the supervisor gets SIGTERM mid-run
    supervisor.send_signal(signal.SIGTERM)

    # Then: every worker finishes its batch, commits, acks and exits 0; nothing is left pending
    assert supervisor.wait(60) == 0, cli.output(supervisor)
    assert group_pending(redis_server, namespace, simulation_id)["pending"] == 0
    assert events_named(cli.output(supervisor), "worker.summary")
    # and the rest is persisted by a later run, still one row per record
    assert cli.run("consume", "--drain", *FAST, *LEFTOVERS).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)
