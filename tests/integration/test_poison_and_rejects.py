"""Bad input never stalls a batch: it lands in dead_letters with the reason, the rest commits."""

from __future__ import annotations

import msgpack
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from common import schema
from common.codec import RECORD_FORMAT, describe
from common.connections import create_sink_engine, ensure_schema
from common.keys import Keys
from consumer.ops.cli import cli
from consumer.ops.dead_letters import list_dead_letters, purge_dead_letters, retry_dead_letters
from producer import RedisBufferedDataLogger
from tests.helpers import assert_rows_match, drain_with_worker, produce_workload

WORKER_NAME = "test-worker"


def dead_letters_by_entry(engine):
    with engine.connect() as connection:
        return {row.entry_id: row for row in connection.execute(select(schema.dead_letters))}


def test_poison_entries_are_dead_lettered_with_their_reason_and_good_rows_commit(
        redis_server, sqlite_url, sink_engine, simulation_id, namespace):
    # Given: good records, and between them every kind of bad entry
    client, keys = redis_server.client(), Keys(namespace)
    stream = keys.stream(simulation_id)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    expected = produce_workload(logger, steps=5, agents=3)
    logger.flush_all_buffers()
    poison = {
        "not valid msgpack": b"\xc1\xc1garbage",
        "unknown record kind": msgpack.packb([RECORD_FORMAT, "spaceship", "p", 1, {}]),
        "unknown format version": msgpack.packb([RECORD_FORMAT + 7, "agent", "p", 2, {}]),
        "'birth_time' must be a single value": msgpack.packb([RECORD_FORMAT, "agent", "p", 3, {
            "agent_id": "x", "birth_time": ["yesterday"], "agent_type": "t", "position_x": 0.0,
            "position_y": 0.0, "initial_resources": 1.0, "starting_health": 1.0}]),
        "'agent_id' is required": msgpack.packb([RECORD_FORMAT, "agent_action", "p", 4, {
            "step_number": 1, "action_type": "move"}]),
        "must be a JSON value": msgpack.packb([RECORD_FORMAT, "agent_action", "p", 6, {
            "step_number": 1, "agent_id": "x", "action_type": "move", "details": {"blob": b"\x00"}}]),
    }
    poison_ids = {client.xadd(stream, {b"r": payload}).decode(): reason for reason, payload in poison.items()}
    foreign_id = client.xadd(stream, {b"something": b"else"}).decode()
    trimmed_id = client.xadd(stream, {b"r": msgpack.packb([RECORD_FORMAT, "agent", "p", 5, {}])}).decode()
    # the trimmed entry was delivered to our worker, then deleted before it was persisted
    client.xgroup_create(stream, "simstream", id="0")
    client.xreadgroup("simstream", WORKER_NAME, {stream: ">"})
    client.xdel(stream, trimmed_id)
    late_id = client.xadd(stream, {b"r": b"\xc1"}).decode()
    expected_more = produce_workload(logger, steps=5, agents=3, first_step=6)
    logger.close()

    # When: a worker drains the stream
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: each bad entry is a dead letter saying why, with its raw bytes; every good row is there
    letters = dead_letters_by_entry(sink_engine)
    for entry_id, reason in poison_ids.items():
        assert reason in letters[entry_id].error
        assert letters[entry_id].raw is not None and letters[entry_id].simulation_id == simulation_id
        assert letters[entry_id].delivery_count == 2  # read by the test above, then by the worker's replay
    assert letters[late_id].delivery_count == 1  # rejected on its first read
    assert letters[next(i for i, r in poison_ids.items() if r == "not valid msgpack")].error.endswith(
        "(FormatError: Invalid msgpack format)")
    assert "no 'r' field" in letters[foreign_id].error
    assert "trimmed" in letters[trimmed_id].error and letters[trimmed_id].raw is None
    assert len(letters) == len(poison) + 3
    listed = CliRunner().invoke(cli, ["dlq", "list", "--db", sqlite_url, "--limit", "100"]).output
    assert "deliveries=None" not in listed and ": )" not in listed
    assert "deliveries=1 " in listed and "deliveries=2 " in listed
    for table, rows in expected_more.items():
        expected[table].update(rows)
    assert_rows_match(sink_engine, simulation_id, expected)
    assert not client.exists(stream)  # everything acked, so the finished simulation was removed


def test_a_row_the_database_rejects_is_isolated_and_can_be_redriven(redis_server, sqlite_url, sink_engine,
                                                                   simulation_id, namespace):
    # Given: a database that refuses one particular row
    engine = create_sink_engine(sqlite_url)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON agent_actions "
                                "WHEN NEW.action_type = 'forbidden' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    for i in range(60):
        logger.log_agent_action(1, f"a{i}", "forbidden" if i == 37 else "move")
    logger.close()

    # When: a worker persists the batch holding it
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace, batch_size=1000)

    # Then: the batch was split until the row stood alone; it is dead-lettered, the other 59 committed
    with sink_engine.connect() as connection:
        agents = sorted(r.agent_id for r in connection.execute(select(schema.agent_actions.c.agent_id)))
    assert len(agents) == 59 and "a37" not in agents
    [letter] = dead_letters_by_entry(sink_engine).values()
    assert "database rejected the row" in letter.error and "refused" in letter.error
    assert worker.stats.dead_lettered == 1

    # When: the cause is fixed and the dead letter re-driven
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse"))
    result = retry_dead_letters(engine, redis_server.client(), Keys(namespace))
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: the row lands, once, and the dead letter is gone
    assert result.redriven == 1
    with sink_engine.connect() as connection:
        agents = [r.agent_id for r in connection.execute(select(schema.agent_actions.c.agent_id))]
    assert sorted(agents) == sorted(f"a{i}" for i in range(60))
    assert list_dead_letters(engine) == []


def test_entries_delivered_too_often_are_dead_lettered_by_redis_delivery_count(
        redis_server, sqlite_url, sink_engine, simulation_id, namespace):
    # Given: entries our worker received four times without ever acknowledging them
    # (as after a worker that crashed on them again and again)
    client, keys = redis_server.client(), Keys(namespace)
    stream = keys.stream(simulation_id)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    for i in range(5):
        logger.log_agent_action(1, f"a{i}", "move")
    logger.flush_all_buffers()
    client.xgroup_create(stream, "simstream", id="0")
    [[_, delivered]] = client.xreadgroup("simstream", WORKER_NAME, {stream: ">"})
    for _ in range(3):
        client.xreadgroup("simstream", WORKER_NAME, {stream: "0"})
    logger.close()

    # When: the worker restarts with a limit of 3 deliveries
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace, max_deliveries=3)

    # Then: each over-delivered entry is a dead letter, whole, that says so; later entries are rows
    letters = dead_letters_by_entry(sink_engine).values()
    assert sorted(letter.entry_id for letter in letters) == sorted(entry_id.decode() for entry_id, _ in delivered)
    assert sum(describe(letter.raw).records for letter in letters) == 6  # the simulation start record, five actions
    assert worker.stats.dead_lettered == 6  # counted in records
    assert all("delivered 5 times (limit 3)" in letter.error and letter.delivery_count == 5 for letter in letters)
    with sink_engine.connect() as connection:
        assert connection.execute(select(schema.agent_actions)).all() == []
    assert purge_dead_letters(create_engine(sqlite_url), simulation_id) == len(delivered)


def test_dlq_commands_list_retry_and_purge(cli, redis_server, sqlite_url, simulation_id, namespace):
    # Given: one dead letter in the sink
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    logger.flush_all_buffers()
    redis_server.client().xadd(Keys(namespace).stream(simulation_id), {b"r": b"\xc1"})
    logger.close()
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # When / Then: list shows it with its reason, retry re-drives it (it fails again), purge removes it
    listed = cli.run("dlq", "list")
    assert listed.returncode == 0 and "not valid msgpack" in listed.stdout and "1 dead letter(s)" in listed.stdout
    retried = cli.run("dlq", "retry", "--simulation", simulation_id)
    assert retried.returncode == 0 and "re-driven: 1" in retried.stdout
    drain_with_worker(redis_server.url, sqlite_url, namespace)
    assert "1 dead letter(s)" in cli.run("dlq", "list").stdout
    purged = cli.run("dlq", "purge", "--yes")
    assert purged.returncode == 0 and "purged: 1" in purged.stdout
    assert "0 dead letter(s)" in cli.run("dlq", "list").stdout
