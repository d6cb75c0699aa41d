"""The SQL sink on a real PostgreSQL: idempotent inserts, lost connections, concurrent start-up."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, func, inspect, select

from common import schema
from common.codec import make_encoder
from common.connections import create_sink_engine, ensure_schema
from common.errors import DatabaseUnavailable
from consumer.sink import Sink
from consumer.stream_reader import Entry

STREAM = "test:{sim-pg}:stream"


def action_entries(count: int, is_defending: object = False) -> list[Entry]:
    """``count`` agent actions and one agent state, as stream entries of producer ``p``."""
    encode = make_encoder()
    entries = [Entry(f"1-{seq}".encode(), encode("agent_action", "p", seq, {
        "step_number": 1, "agent_id": f"a{seq}", "action_type": "move", "reward": 0.5}))
        for seq in range(1, count + 1)]
    state = {"step_number": 1, "agent_id": "a1", "position_x": 1.0, "position_y": 2.0, "resource_level": 3.0,
             "current_health": 9.0, "starting_health": 10.0, "starvation_counter": 0,
             "is_defending": is_defending, "total_reward": 0.5, "age": 1}
    entries.append(Entry(f"1-{count + 1}".encode(), encode("agent_state", "p", count + 1, state)))
    return entries


def count_rows(engine, table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def pg_sink(postgres_url):
    engine = create_sink_engine(postgres_url)
    ensure_schema(engine)
    yield Sink(engine)
    engine.dispose()


def test_a_replayed_batch_writes_no_second_row_on_postgresql(pg_sink):
    # Given: a batch committed once
    entries = action_entries(50, is_defending=1)
    first = pg_sink.write(STREAM, "sim-pg", entries)

    # When: the same entries are delivered again (a crash between commit and ack)
    pg_sink.write(STREAM, "sim-pg", entries)

    # Then: each row is there once, and an int flag landed in the boolean column
    assert first.rows_by_table == {"agent_actions": 50, "agent_states": 1} and first.dead_letters == 0
    assert count_rows(pg_sink.engine, schema.agent_actions) == 50
    with pg_sink.engine.connect() as connection:
        assert connection.execute(select(schema.agent_states.c.is_defending)).scalar_one() is True


def test_a_connection_lost_mid_batch_is_database_unavailable_and_commits_nothing(pg_sink, postgres_schema):
    # Given: the server cuts the sink's connection just before the batch's first insert
    cut = []

    def cut_once(*_args) -> None:
        if not cut:
            cut.append(postgres_schema.terminate_connections())

    event.listen(pg_sink.engine, "before_cursor_execute", cut_once)
    entries = action_entries(20)

    # When: the batch is written
    with pytest.raises(DatabaseUnavailable):
        pg_sink.write(STREAM, "sim-pg", entries)

    # Then: nothing was committed, and the retry (what the worker does) commits each row once
    assert cut == [1]
    assert count_rows(pg_sink.engine, schema.agent_actions) == 0
    pg_sink.write(STREAM, "sim-pg", entries)
    assert count_rows(pg_sink.engine, schema.agent_actions) == 20


def test_a_row_postgresql_rejects_is_dead_lettered_alone(pg_sink):
    # Given: a batch in which one text value holds a NUL byte, which PostgreSQL refuses
    encode = make_encoder()
    entries = action_entries(9)
    entries.append(Entry(b"2-1", encode("agent_action", "p", 99, {
        "step_number": 1, "agent_id": "bad\x00id", "action_type": "move"})))

    # When: it is written
    result = pg_sink.write(STREAM, "sim-pg", entries)

    # Then: the other rows commit, and the bad one is a dead letter with its raw bytes
    assert result.isolated_by_database == 1
    assert count_rows(pg_sink.engine, schema.agent_actions) == 9
    with pg_sink.engine.connect() as connection:
        [letter] = connection.execute(select(schema.dead_letters)).all()
    assert letter.entry_id == "2-1" and letter.raw == entries[-1].payload


def test_consumers_starting_together_create_the_schema_without_colliding(postgres_url):
    # Given: six consumers starting at once on an empty schema
    errors, engines = [], [create_sink_engine(postgres_url) for _ in range(6)]
    start = threading.Barrier(len(engines))

    def start_consumer(engine) -> None:
        start.wait()
        try:
            ensure_schema(engine)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    # When: each creates the schema
    threads = [threading.Thread(target=start_consumer, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then: none failed, and every table exists
    assert errors == []
    assert set(schema.metadata.tables) <= set(inspect(engines[0]).get_table_names())
    for engine in engines:
        engine.dispose()
