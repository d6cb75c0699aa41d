"""Every ``simstream`` command, run with URLs that carry passwords, failing and succeeding: no
password appears in anything printed (stdout, stderr, log lines at DEBUG, JSON logs, the
supervisor's summary, metrics, bench reports) nor in the producer's own log lines.

The database is PostgreSQL with a password in its URL; where no PostgreSQL answers, SQLite (the
test then warns that only Redis passwords were at stake). ``simstream redis`` takes no URL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from consumer.ops.embedded_redis import free_port
from producer import RedisBufferedDataLogger, StreamProducer
from tests.conftest import REDIS_BINARIES
from tests.helpers import assert_rows_match, produce_workload, wait_for
from tests.postgres import PostgresSchema, server_url
from tests.secure_redis import AclUser, SecuredRedis, leaks, new_password

pytestmark = pytest.mark.timeout(240)

APP_USER = "simstream-app"


@dataclass
class Sink:
    """A database URL (with a password where the engine takes one) and one nothing answers at."""

    url: str
    dead_url: str | None = None
    password: str | None = None


@pytest.fixture
def sink(tmp_path) -> Sink:
    """PostgreSQL with a password in its URL; SQLite (no password to hide) where no PostgreSQL answers."""
    server, reason = server_url()
    if server is None:
        warnings.warn(f"database URLs carry no password in this run: {reason}")
        yield Sink(f"sqlite:///{tmp_path / 'sink.db'}")
        return
    schema = PostgresSchema(server)
    password = new_password()  # trust authentication accepts it; it still travels in every URL
    url = make_url(schema.url).set(password=password)
    yield Sink(url.render_as_string(hide_password=False),
               url.set(port=free_port()).render_as_string(hide_password=False), password)
    schema.drop()


@pytest.fixture
def redis_password() -> str:
    return new_password()


@pytest.fixture
def secured_redis(tmp_path, redis_password):
    binary = REDIS_BINARIES[-1][1]
    server = SecuredRedis(tmp_path / "redis", binary, [AclUser(APP_USER, redis_password, ("~*", "&*", "+@all"))])
    yield server.start()
    server.stop()


class Runner:
    """Runs ``simstream`` commands and keeps everything they printed, by label."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.printed: dict[str, str] = {}

    def popen(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.PIPE
        process = subprocess.Popen([sys.executable, "-m", "consumer", *args], env=self.env, cwd=self.cwd, text=True,
                                   stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE)
        if log:
            out.close()
        return process

    def run_all(self, expected: dict[tuple[str, ...], int], timeout_s: float = 120) -> None:
        """Run ``expected``'s commands side by side; each must exit with its code."""
        started = {args: self.popen(*args) for args in expected}
        for args, process in started.items():
            stdout, stderr = process.communicate(timeout=timeout_s)
            self.printed[" ".join(args)] = stdout + stderr
            assert process.returncode == expected[args], (args, stdout, stderr)


def test_no_command_prints_a_password(secured_redis, redis_password, sink, tmp_path, simulation_id, namespace,
                                      caplog):
    caplog.set_level(logging.DEBUG)
    wrong_password = new_password()
    secrets_given = [redis_password, wrong_password] + ([sink.password] if sink.password else [])
    port = secured_redis.port
    good = secured_redis.url_for(APP_USER, redis_password)
    wrong = secured_redis.url_for(APP_USER, wrong_password)
    good_as_query = f"redis://{APP_USER}@127.0.0.1:{port}/0?password={quote(redis_password, safe='')}"
    wrong_as_query = f"redis://{APP_USER}@127.0.0.1:{port}/0?password={quote(wrong_password, safe='')}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIMSTREAM_")}
    runner = Runner({**env, "SIMSTREAM_NAMESPACE": namespace, "PYTHONUNBUFFERED": "1"}, tmp_path)

    # Given: a simulation in Redis, and a journal left by a producer whose Redis refused its password
    logger = RedisBufferedDataLogger(simulation_id, good, namespace=namespace)
    expected = produce_workload(logger, steps=5, agents=3)
    assert logger.close().all_in_redis
    journal_dir = tmp_path / "journal"
    stranded = StreamProducer(f"{simulation_id}-late", wrong, namespace=namespace, journal_dir=str(journal_dir),
                              spill_after_s=0.2, close_timeout_s=1.0)
    stranded.log("agent_action", step_number=1, agent_id="a1", action_type="move")
    assert stranded.close().journaled >= 1

    # When: every command fails, side by side (wrong password, nothing listening, bad URL, stray argument)
    failing = {
        ("status", "--redis-url", wrong): 3,
        ("status", "--json", "--redis-url", wrong_as_query): 3,
        ("status", good): 2,
        ("status", "--redis-url", f"http://{APP_USER}:{quote(redis_password, safe='')}@127.0.0.1/0"): 2,
        ("consume", "--drain", "--redis-url", wrong, "--db", sink.url): 3,
        ("demo", "--agents", "2", "--steps", "2", "--redis-url", wrong, "--db", str(tmp_path / "demo-fail.db")): 3,
        ("dlq", "retry", "--redis-url", wrong, "--db", sink.url): 3,
        ("replay-journal", str(tmp_path), "--redis-url", wrong): 3,
        ("consume", "--redis-url", good, "--db", f"oracle://scott:{quote(redis_password, safe='')}@db/x"): 2,
    }
    if sink.dead_url:
        failing |= {("consume", "--drain", "--redis-url", good, "--db", sink.dead_url): 3,
                    ("dlq", "list", "--db", sink.dead_url): 3,
                    ("bench", "--records", "1000", "--consumers", "1", "--out", str(tmp_path / "b0"),
                     "--db", sink.dead_url): 3}
    runner.run_all(failing)

    # ... and succeeds: status, dlq, replay-journal, consume (JSON logs at DEBUG; then plain logs at
    # DEBUG with metrics, stopped by SIGTERM for the supervisor's summary), demo, bench
    runner.run_all({("status", "--redis-url", good, "--db", sink.url): 0,
                    ("status", "--json", "--redis-url", good_as_query, "--db", sink.dead_url or sink.url): 0,
                    ("replay-journal", str(journal_dir), "--redis-url", good): 0})
    runner.run_all({("consume", "--drain", "--processes", "2", "--log-json", "--log-level", "DEBUG",
                     "--redis-url", good, "--db", sink.url): 0})
    assert_rows_match(create_engine(sink.url), simulation_id, expected)
    runner.run_all({("dlq", "list", "--db", sink.url): 0, ("dlq", "list", "--json", "--db", sink.url): 0,
                    ("dlq", "retry", "--redis-url", good, "--db", sink.url): 0,
                    ("dlq", "purge", "--yes", "--db", sink.url): 0})
    runner.printed["metrics"], runner.printed["consume with metrics"] = _consume_with_metrics(runner, good, sink.url,
                                                                                             tmp_path)
    successes = {("demo", "--agents", "3", "--steps", "3", "--consumers", "1", "--redis-url", good,
                  "--db", sink.url if sink.password else str(tmp_path / "demo.db")): 0}
    if sink.password:
        successes[("bench", "--records", "1000", "--consumers", "1", "--out", str(tmp_path / "bench"),
                   "--db", sink.url)] = 0
    runner.run_all(successes, timeout_s=180)
    for report in (tmp_path / "bench").glob("bench.*"):
        runner.printed[report.name] = report.read_text(errors="replace")
    runner.printed["producer log"] = caplog.text

    # Then: none of it holds a password (as given, URL-escaped, or its random core)
    assert any("***@" in text for text in runner.printed.values())  # the URLs were there, masked
    for label, text in runner.printed.items():
        for secret in secrets_given:
            assert not leaks(secret, text), f"a password is printed by: {label}"


def _consume_with_metrics(runner: Runner, redis_url: str, db_url: str, tmp_path: Path) -> tuple[str, str]:
    """Run `simstream consume` at DEBUG with a metrics endpoint; the page it served and everything it
    printed once stopped with SIGTERM (including the supervisor's summary)."""
    metrics_port = free_port()
    log = tmp_path / "consume-metrics.log"
    process = runner.popen("consume", "--processes", "2", "--log-level", "DEBUG", "--metrics-port", str(metrics_port),
                           "--redis-url", redis_url, "--db", db_url, log=log)
    try:
        page = wait_for(lambda: _scrape(metrics_port), timeout_s=60, what="the metrics endpoint")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    printed = log.read_text()
    assert "supervisor.summary" in printed
    return page, printed


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            page = response.read().decode()
    except OSError:
        return None
    return page if "simstream_redis_up" in page else None
