"""An agent row and its death commute in the sink, on SQLite and on PostgreSQL, replays included."""

from __future__ import annotations

import itertools
import uuid

import pytest
from sqlalchemy import select

from common import schema
from common.codec import make_encoder
from common.connections import create_sink_engine, ensure_schema
from consumer.sink import Sink
from consumer.stream_reader import Entry

AGENT = {"agent_id": "a1", "birth_time": 2, "agent_type": "system", "position_x": 1.0, "position_y": 2.0,
         "initial_resources": 5.0, "starting_health": 10.0, "genome_id": "g1", "generation": 1,
         "action_weights": {"move": 1.0}}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, sqlite_url):
    # PostgreSQL: the test's own schema (postgres_url skips, saying why, where none answers)
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_sink_engine(url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def entries(*records):
    encode, ids = make_encoder(), itertools.count(1)
    producer = uuid.uuid4().hex[:8]
    return [Entry(f"{next(ids)}-0".encode(), encode(kind, producer, seq, fields))
            for seq, (kind, fields) in enumerate(records, start=1)]


@pytest.mark.parametrize("death_first", [True, False])
def test_agent_row_and_death_commute_and_survive_replays(engine, death_first):
    simulation_id = f"sim-{uuid.uuid4().hex[:8]}"
    sink = Sink(engine)
    agent, death = ("agent", AGENT), ("agent_death", {"agent_id": "a1", "death_time": 9})
    first, second = (death, agent) if death_first else (agent, death)
    # Given / When: two separate transactions in either order, then both delivered again
    sink.write("stream", simulation_id, entries(first))
    sink.write("stream", simulation_id, entries(second))
    sink.write("stream", simulation_id, entries(agent, death, agent))
    # Then: one complete row, death_time kept
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(
            select(schema.agents).where(schema.agents.c.simulation_id == simulation_id))]
    assert rows == [{"simulation_id": simulation_id, "death_time": 9, **AGENT}]
