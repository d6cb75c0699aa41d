"""Bounded soak runs: many records, random SIGKILLs, a Redis restart, and a flat memory line.

Each run stops by itself (bounded record counts, every wait has a deadline) and talks only to the
test's own Redis on 127.0.0.1. Rows are compared one by one with what was produced.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import psutil
import pytest

from common.keys import Keys
from consumer.stream_status import stream_status
from producer import RedisBufferedDataLogger
from tests.e2e.test_crash_and_replay import worker_pids
from tests.helpers import FAST, LEFTOVERS, assert_rows_match, produce_workload, total_expected, wait_for


# Long runs go on the newest Redis only; the shorter fault tests cover every version.
NEWEST_REDIS = pytest.mark.newest_redis
AGENTS = 50  # 50 agents, 5 resources: 156 records per step


def merge(into: dict[str, Counter], part: dict[str, Counter]) -> dict[str, Counter]:
    for table, rows in part.items():
        into.setdefault(table, Counter()).update(rows)
    return into


def soak_logger(redis_server, namespace, simulation_id, tmp_path) -> RedisBufferedDataLogger:
    return RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=2000,
                                   spill_after_s=0.3, journal_retry_interval_s=0.2,
                                   journal_dir=str(tmp_path / "journal"), close_timeout_s=60.0)


def unpersisted(redis_server, namespace, simulation_id) -> int:
    status = stream_status(redis_server.client(), Keys(namespace), "simstream", simulation_id)
    return status.lag + status.pending


@pytest.mark.slow
@NEWEST_REDIS
def test_soak_random_sigkills_and_a_redis_restart_lose_and_double_nothing(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a simulation producing over 200k records into two supervised workers
    rng = random.Random(20261127)
    logger = soak_logger(redis_server, namespace, simulation_id, tmp_path)
    supervisor = cli.start("consume", "--processes", "2", "--batch-size", "500", *FAST)
    wait_for(lambda: len(worker_pids(supervisor)) == 2, what="two workers")
    expected: dict[str, Counter] = {}
    steps_per_chunk, chunks, kills = 40, 33, 0

    # When: after every other chunk a random worker is SIGKILLed at a random moment, and Redis
    # itself is SIGKILLed half-way and restarted on its AOF while the simulation keeps logging
    for chunk in range(chunks):
        merge(expected, produce_workload(logger, steps=steps_per_chunk, agents=AGENTS,
                                         first_step=1 + chunk * steps_per_chunk))
        if chunk == chunks // 2:
            redis_server.kill()
        if chunk == chunks // 2 + 2:
            time.sleep(1.0)  # let the producer give up on Redis and spill to its journal
            redis_server.restart()
        if chunk % 2 == 0:
            time.sleep(rng.uniform(0.0, 0.3))
            pids = wait_for(lambda: worker_pids(supervisor), timeout_s=30, what="a live worker to kill")
            psutil.Process(rng.choice(pids)).send_signal(signal.SIGKILL)
            kills += 1
    report = logger.close()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(120) == 0, cli.output(supervisor)[-3000:]
    drained = cli.run("consume", "--processes", "2", "--drain", *FAST, *LEFTOVERS, timeout=300)

    # Then: every one of the records is in SQL exactly once
    assert total_expected(expected) >= 200_000
    assert kills == (chunks + 1) // 2 and logger.producer.stats()["journaled"] > 0
    assert report.all_in_redis and report.complete, report
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert_rows_match(sink_engine, simulation_id, expected)


@pytest.mark.slow
@NEWEST_REDIS
def test_redis_memory_stays_flat_over_a_million_records_when_consumers_keep_up(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: two consumers, and a simulation that never runs more than ~20k records ahead of them
    logger = soak_logger(redis_server, namespace, simulation_id, tmp_path)
    supervisor = cli.start("consume", "--processes", "2", "--batch-size", "1000", *FAST)
    client = redis_server.client()
    steps_per_chunk = 128  # about 20k records a chunk
    produced, step, memory_at_100k = 0, 1, None
    expected: dict[str, Counter] = {}

    # When: a million records flow through, the producer waiting whenever the backlog grows
    while produced < 1_000_000:
        merge(expected, produce_workload(logger, steps=steps_per_chunk, agents=AGENTS, first_step=step))
        step += steps_per_chunk
        logger.flush_all_buffers()
        produced = total_expected(expected)
        wait_for(lambda: unpersisted(redis_server, namespace, simulation_id) < 5_000, timeout_s=120,
                 interval_s=0.1, what="consumers to catch up")
        if memory_at_100k is None and produced >= 100_000:
            memory_at_100k = settled_memory(client)
    memory_at_1m = settled_memory(client)
    logger.close()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(120) == 0

    # Then: memory after 1M is within 2 MB of memory after 100k, and every row landed once
    assert memory_at_100k is not None
    assert memory_at_1m - memory_at_100k < 2 * 1024 * 1024, (memory_at_100k, memory_at_1m)
    assert cli.run("consume", "--drain", *FAST, *LEFTOVERS, timeout=300).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)


def settled_memory(client) -> int:
    """used_memory once the consumers' periodic trim has run over what they persisted."""
    time.sleep(1.5)  # one trim interval (1 s) and a little: trimming is periodic, not per batch
    return int(client.info("memory")["used_memory"])
