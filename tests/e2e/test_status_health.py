"""``simstream status --json`` through real runs: healthy, a stopped consumer, a poison entry."""

from __future__ import annotations

import json
import signal

from common.keys import Keys
from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, produce_workload, total_expected, wait_for

NEVER_STUCK = ("--stuck-after-ms", "3600000", "--claim-idle-ms", "3600000")


def status_of(cli, simulation_id: str, *options: str) -> dict:
    result = cli.run("status", "--json", *options)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [stream] = [s for s in report["streams"] if s["simulation_id"] == simulation_id]
    return stream


def caught_up(cli, simulation_id: str, logged: int):
    """The stream once its group has persisted all ``logged`` records (None before)."""
    stream = status_of(cli, simulation_id, *NEVER_STUCK)
    done = stream["group_exists"] and stream["backlog"] == 0 and stream["logged"] >= logged
    return stream if done else None


def stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def new_logger(redis_server, namespace, simulation_id) -> RedisBufferedDataLogger:
    return RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=500)


def test_a_healthy_run_is_ok_with_every_record_persisted(cli, redis_server, sink_engine, namespace,
                                                         simulation_id):
    # Given: a running simulation and a consumer keeping up with it
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=20, agents=5)
    logger.flush_all_buffers()
    consumer = cli.start("consume", *FAST)

    # When: the consumer has caught up
    stream = wait_for(lambda: caught_up(cli, simulation_id, total_expected(expected)), what="catch-up")

    # Then: ok, every record persisted, no dead letters, the consumer seen and holding nothing
    assert stream["health"] == "ok" and stream["state"] == "running"
    assert stream["persisted"] == stream["logged"] and stream["lag"] == stream["pending"] == 0
    assert stream["acknowledged"] == stream["entries_added"]  # entries, each a batch of records
    assert stream["dead_letters"] == 0 and stream["oldest_pending_idle_ms"] is None
    [member] = stream["consumers"]
    assert member["pending"] == 0 and member["idle_ms"] < 3_600_000
    assert_rows_match(sink_engine, simulation_id, expected)
    stop(consumer)
    logger.close()


def test_a_stopped_consumer_makes_the_stream_lagging_then_stuck(cli, redis_server, sink_engine, namespace,
                                                                 simulation_id):
    # Given: a consumer that persisted the first part of a run, then stopped
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=5, agents=3)
    logger.flush_all_buffers()
    consumer = cli.start("consume", *FAST)
    wait_for(lambda: caught_up(cli, simulation_id, total_expected(expected)), what="catch-up")
    stop(consumer)

    # When: the simulation goes on logging
    more = produce_workload(logger, steps=5, agents=3, first_step=6)
    logger.flush_all_buffers()

    # Then: with the consumer counted as recently seen, the backlog makes it lagging ...
    stream = status_of(cli, simulation_id, "--lag-threshold", "0", *NEVER_STUCK)
    assert stream["health"] == "lagging" and stream["backlog"] == total_expected(more) and stream["pending"] == 0
    assert stream["lag"] == stream["backlog_entries"] > 0  # the entries holding those records
    assert stream["consumers"][0]["pending"] == 0
    # ... within the lag threshold it is ok ...
    assert status_of(cli, simulation_id, "--lag-threshold", str(stream["backlog"]),
                     *NEVER_STUCK)["health"] == "ok"
    # ... and once nobody has been seen for longer than --stuck-after-ms, stuck
    assert status_of(cli, simulation_id, "--stuck-after-ms", "50")["health"] == "stuck"

    # When: a consumer comes back
    consumer = cli.start("consume", *FAST)
    for table, rows in more.items():
        expected[table].update(rows)

    # Then: it catches up and the stream is ok again
    stream = wait_for(lambda: caught_up(cli, simulation_id, total_expected(expected)), what="catch-up")
    assert stream["health"] == "ok" and stream["persisted"] == stream["logged"]
    assert_rows_match(sink_engine, simulation_id, expected)
    stop(consumer)
    logger.close()


def test_a_poison_entry_shows_as_dead_letters(cli, redis_server, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a running simulation with one entry that is not msgpack
    logger = new_logger(redis_server, namespace, simulation_id)
    expected = produce_workload(logger, steps=3, agents=2)
    logger.flush_all_buffers()
    redis_server.client().xadd(Keys(namespace).stream(simulation_id), {b"r": b"\xc1"})
    consumer = cli.start("consume", *FAST)

    # When: the consumer has been through everything
    stream = wait_for(lambda: caught_up(cli, simulation_id, total_expected(expected)), what="catch-up")

    # Then: the verdict is dead-letters, with the count from the sink
    assert stream["health"] == "dead-letters" and stream["dead_letters"] == 1
    assert_rows_match(sink_engine, simulation_id, expected)
    table = cli.run("status", *NEVER_STUCK)
    assert table.returncode == 0 and "dead-letters" in table.stdout and simulation_id in table.stdout
    # without a reachable sink the count is unknown, not zero, and the verdict cannot say dead-letters
    blind = status_of(cli, simulation_id, "--db", str(tmp_path / "absent.db"), *NEVER_STUCK)
    assert blind["dead_letters"] is None and blind["health"] == "ok"
    text = cli.run("status", *NEVER_STUCK, extra_env={"SIMSTREAM_DB_URL": ""})
    assert "dead letters: unknown" in text.stdout, text.stdout
    assert not (tmp_path / "absent.db").exists()

    # When: the simulation finishes and its stream is removed from Redis
    logger.close()
    wait_for(lambda: not redis_server.client().exists(Keys(namespace).stream(simulation_id)), what="removal")

    # Then: status still lists it, from the sink, because its dead letters need attention
    stream = status_of(cli, simulation_id)
    assert stream["state"] == "removed" and stream["health"] == "dead-letters" and stream["dead_letters"] == 1
    stop(consumer)


def test_watch_reprints_until_interrupted(cli, redis_server, namespace, simulation_id):
    # Given: a registered simulation
    logger = new_logger(redis_server, namespace, simulation_id)
    produce_workload(logger, steps=1, agents=1)
    logger.flush_all_buffers()

    # When: status --watch --json runs with its output going to a file, then gets Ctrl-C
    watcher = cli.start("status", "--watch", "0.2", "--json")
    wait_for(lambda: cli.output(watcher).count("\n") >= 3, what="three refreshes")
    watcher.send_signal(signal.SIGINT)

    # Then: it stops cleanly, having printed one JSON report per line
    assert watcher.wait(20) == 0
    reports = [json.loads(line) for line in cli.output(watcher).splitlines() if line.startswith("{")]
    assert len(reports) >= 3 and all(r["streams"][0]["simulation_id"] == simulation_id for r in reports)
    logger.close()
