"""Producers that die or never close, and drains that start first: the real CLI and real processes.

A simulation whose producer stopped without completing it is ``abandoned`` once its heartbeat is
older than ``--abandoned-after-s``: status says so and ``consume --drain`` does not wait for it
once everything it sent is persisted. A new producer revives it. ``consume --drain`` started
before any simulation waits for the first one (``--wait-for-simulation-s``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, produce_workload, wait_for
from tests.log_events import events_named

ROOT = Path(__file__).resolve().parents[2]
SHORT = ("--abandoned-after-s", "1")

# A simulation program: logs a run, sends it to Redis, then either hangs (to be SIGKILLed) or ends
# without ever calling close() (atexit sends what is left; nothing marks the simulation complete).
PRODUCER_PROGRAM = """
import sys, time
from producer import RedisBufferedDataLogger
from tests.helpers import produce_workload
url, namespace, simulation_id, ending = sys.argv[1:5]
logger = RedisBufferedDataLogger(simulation_id, url, namespace=namespace, batch_size=200)
produce_workload(logger, steps=5, agents=3)
assert logger.flush_all_buffers().all_in_redis
print("flushed", flush=True)
if ending == "killed":
    time.sleep(600)
"""


class _Expected:
    """Stands in for a logger to compute the rows ``produce_workload`` makes (it logs nothing)."""

    def __init__(self, simulation_id: str) -> None:
        self.simulation_id = simulation_id

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def status_of(cli, simulation_id: str, *options: str) -> dict:
    result = cli.run("status", "--json", *options)
    assert result.returncode == 0, result.stderr
    [stream] = [s for s in json.loads(result.stdout)["streams"] if s["simulation_id"] == simulation_id]
    return stream


def merge(into: dict, more: dict) -> dict:
    for table, rows in more.items():
        into[table].update(rows)
    return into


@pytest.mark.parametrize("ending", ["killed", "ended without close"])
def test_an_abandoned_simulation_does_not_hold_up_drain_and_a_new_producer_revives_it(
        cli, redis_server, sink_engine, namespace, simulation_id, ending):
    # Given: a producer process that logged a run and then was SIGKILLed, or ended without close()
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER_PROGRAM, redis_server.url, namespace, simulation_id,
                                 ending.split()[0]], cwd=ROOT, env={**cli.env, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, text=True)
    try:
        assert producer.stdout.readline().strip() == "flushed"
        if ending == "killed":
            producer.kill()
        assert producer.wait(60) == (-9 if ending == "killed" else 0)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(10)
    expected = produce_workload(_Expected(simulation_id), steps=5, agents=3)

    # When: consume --drain runs with a short abandoned setting
    drained = cli.run("consume", "--drain", *FAST, *SHORT, timeout=120)

    # Then: it persisted every record and exited 0, though the simulation never completed
    assert drained.returncode == 0, drained.stderr
    assert_rows_match(sink_engine, simulation_id, expected)
    stream = status_of(cli, simulation_id, *SHORT)
    assert stream["state"] == "abandoned" and stream["abandoned"] and not stream["complete"]
    assert stream["backlog"] == 0 and stream["producer_idle_ms"] > 1000
    table = cli.run("status", *SHORT)
    assert table.returncode == 0 and "abandoned" in table.stdout, table.stdout
    assert status_of(cli, simulation_id)["state"] == "running"  # the default setting is minutes

    # When: a new producer of the same simulation logs more, while a consumer runs
    consumer = cli.start("consume", *FAST)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     heartbeat_interval_s=0.1)
    more = produce_workload(logger, steps=3, agents=3, first_step=6)

    # Then: the simulation is running again, and what arrives later is persisted
    wait_for(lambda: status_of(cli, simulation_id, *SHORT)["state"] == "running", what="the revival")
    logger.flush_all_buffers(wait_persisted=True, timeout_s=60)
    assert_rows_match(sink_engine, simulation_id, merge(expected, more))
    logger.close()
    consumer.terminate()
    assert consumer.wait(60) == 0, cli.output(consumer)


def test_drain_started_before_its_simulation_waits_for_it_and_drains_it(cli, redis_server, sink_engine,
                                                                         namespace, simulation_id):
    # Given: consume --drain started while no simulation exists
    consumers = cli.start("consume", "--drain", *FAST, "--wait-for-simulation-s", "120", "--log-json")
    wait_for(lambda: events_named(cli.output(consumers), "supervisor.waiting_for_simulation"),
             what="the drain to wait")

    # When: the simulation then runs and closes
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=200)
    expected = produce_workload(logger, steps=5, agents=3)
    assert logger.close().complete

    # Then: the drain persisted it and exited 0
    assert consumers.wait(120) == 0, cli.output(consumers)
    assert_rows_match(sink_engine, simulation_id, expected)


def test_drain_with_no_simulation_gives_up_after_its_wait_in_one_line(cli):
    # When: consume --drain waits briefly (set in the environment) in a namespace where no simulation appears
    result = cli.run("consume", "--drain", "--log-level", "WARNING",
                     extra_env={"SIMSTREAM_WAIT_FOR_SIMULATION_S": "0.5"})

    # Then: exit 1 with one line that says what to check
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("simstream: error: no simulation appeared in namespace") and "within 0.5s" in line

    # When: the flag says not to wait, overriding the environment: nothing to drain, exit 0
    assert cli.run("consume", "--drain", "--wait-for-simulation-s", "0",
                   extra_env={"SIMSTREAM_WAIT_FOR_SIMULATION_S": "0.5"}).returncode == 0
