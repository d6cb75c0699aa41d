"""Servers that are not there when simstream starts: the simulation goes on, the CLI says what to do."""

from __future__ import annotations

import time

from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, produce_workload

LOG_CALL_BOUND_S = 1.0  # far above a log() call's microseconds, far below the outage it rides out


class TimedLogger:
    """Wraps a logger's ``log_*`` methods and keeps the longest single call."""

    def __init__(self, logger: RedisBufferedDataLogger) -> None:
        self._logger = logger
        self.longest_call_s = 0.0

    def __getattr__(self, name: str):
        method = getattr(self._logger, name)
        if not name.startswith("log_"):
            return method

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.longest_call_s = max(self.longest_call_s, time.perf_counter() - started)
        return timed


def test_a_producer_started_while_redis_is_down_keeps_the_simulation_running_and_loses_nothing(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: Redis is down before the simulation starts
    redis_server.kill()

    # When: the simulation starts its logger and logs for longer than the producer waits for Redis
    logger = TimedLogger(RedisBufferedDataLogger(
        simulation_id, redis_server.url, namespace=namespace, batch_size=300, spill_after_s=0.3,
        journal_retry_interval_s=0.2, journal_dir=str(tmp_path / "journal"), close_timeout_s=30.0))
    expected = produce_workload(logger, steps=20, agents=10)
    time.sleep(1.0)
    during = logger.flush_all_buffers()

    # Then: no call blocked or raised, and every record waits in the journal
    assert logger.longest_call_s < LOG_CALL_BOUND_S, logger.longest_call_s
    assert during.nothing_lost and during.journaled == during.logged > 0, during

    # When: Redis comes up and the simulation ends
    redis_server.restart()
    report = logger.close()

    # Then: the journal went to Redis, and every row lands exactly once
    assert report.all_in_redis and report.complete, report
    assert not list((tmp_path / "journal").glob("*.journal"))
    assert cli.run("consume", "--drain", *FAST).returncode == 0
    assert_rows_match(sink_engine, simulation_id, expected)


def test_an_unreachable_database_is_one_line_that_says_what_to_check(cli):
    # Given: a PostgreSQL URL where nothing listens
    result = cli.run("consume", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")

    # Then: one line naming the database, the could-not-connect exit code, no traceback
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "127.0.0.1:1" in result.stderr or "none" in result.stderr, result.stderr
