"""The logger's semantics beyond signatures: deaths in any order and more than once, recalling
pending agents, and the reference's validation."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from common import schema
from producer import RedisBufferedDataLogger
from tests.helpers import stream_records as records_in_stream

AGENT_COLUMNS = {"birth_time": 0, "agent_type": "system", "position_x": 1.0, "position_y": 2.0,
                 "initial_resources": 5.0, "starting_health": 10.0, "genome_id": "g1", "generation": 1,
                 "action_weights": {"move": 1.0}}


def log_agent(logger: RedisBufferedDataLogger, agent_id: str = "a1") -> None:
    c = AGENT_COLUMNS
    logger.log_agent(agent_id, c["birth_time"], c["agent_type"], (c["position_x"], c["position_y"]),
                     c["initial_resources"], c["starting_health"], genome_id=c["genome_id"],
                     generation=c["generation"], action_weights=c["action_weights"])


def rows(engine, table, simulation_id):
    with engine.connect() as connection:
        query = select(table).where(table.c.simulation_id == simulation_id)
        return [dict(r._mapping) for r in connection.execute(query)]


def run_part(redis_server, namespace, simulation_id, body) -> None:
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    body(logger)
    assert logger.close().all_in_redis


def test_a_death_and_states_committed_before_their_agent_row_end_complete(
        redis_server, sqlite_url, sink_engine, simulation_id, namespace, worker):
    # Given: a consumer commits the agent's states, action and death before its agent row exists
    def before(logger):
        logger.log_step(1, [("a1", 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, 1)], [], {"total_agents": 1})
        logger.log_agent_action(2, "a1", "move")
        logger.update_agent_death("a1", 3, cause="combat")
    run_part(redis_server, namespace, simulation_id, before)
    worker.drain(slot=0)
    [placeholder] = rows(sink_engine, schema.agents, simulation_id)
    assert placeholder["death_time"] == 3 and placeholder["agent_type"] is None

    # When: another consumer commits the agent row afterwards, then the agent row and the death
    # are delivered once more (at-least-once)
    run_part(redis_server, namespace, simulation_id, log_agent)
    worker.drain(slot=1)
    run_part(redis_server, namespace, simulation_id,
             lambda logger: (log_agent(logger), logger.update_agent_death("a1", 3, cause="combat")))
    worker.drain(slot=2)

    # Then: one complete agent row, death_time kept, every dependent row present
    [agent] = rows(sink_engine, schema.agents, simulation_id)
    assert agent == {"simulation_id": simulation_id, "agent_id": "a1", "death_time": 3, **AGENT_COLUMNS}
    assert [s["id"] for s in rows(sink_engine, schema.agent_states, simulation_id)] == [f"{simulation_id}:a1-1"]
    assert len(rows(sink_engine, schema.agent_actions, simulation_id)) == 1
    deaths = rows(sink_engine, schema.health_incidents, simulation_id)
    assert len(deaths) == 2  # two deaths logged, each its own incident, as the reference would write
    assert {(d["step_number"], d["health_before"], d["health_after"], d["cause"], d["details"]) for d in deaths} == {
        (3, 0.0, 0.0, "combat", json.dumps({"final_state": "dead"}))}


def test_agent_row_then_death_gives_the_same_row(redis_server, sqlite_url, sink_engine, simulation_id, namespace,
                                                 worker):
    run_part(redis_server, namespace, simulation_id, log_agent)
    worker.drain(slot=0)
    run_part(redis_server, namespace, simulation_id, lambda logger: logger.update_agent_death("a1", 7))
    worker.drain(slot=1)
    [agent] = rows(sink_engine, schema.agents, simulation_id)
    assert agent == {"simulation_id": simulation_id, "agent_id": "a1", "death_time": 7, **AGENT_COLUMNS}
    [incident] = rows(sink_engine, schema.health_incidents, simulation_id)
    assert incident["cause"] == "starvation"


def stream_records(redis_server, namespace, simulation_id):
    client = redis_server.client()
    try:
        return records_in_stream(client, f"{namespace}:{{{simulation_id}}}:stream", simulation_id)
    finally:
        client.close()


def test_discard_pending_agents_drops_pending_actions_and_retracts_the_agents(
        redis_server, sqlite_url, sink_engine, simulation_id, namespace, worker):
    # Given: a sender that does not take records until flushed; three agents, their actions and
    # an incident logged; a1's action and a3's agent row already on their way (flushed)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     flush_interval_s=60.0, batch_size=100_000)
    for agent_id in ("a1", "a3"):
        log_agent(logger, agent_id)
    logger.log_agent_action(1, "a3", "move")
    assert logger.flush_all_buffers().all_in_redis
    log_agent(logger, "a2")
    logger.log_step(1, [(a, 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, 1) for a in ("a1", "a2")], [], {})
    for agent_id in ("a1", "a2", "a3"):
        logger.log_agent_action(1, agent_id, "gather")
    logger.log_health_incident(1, "a2", 9.0, 8.0, "starvation")

    # When: a2 and a3 (and an unknown id) are rolled back; then a1's rollback after the flush
    assert logger.discard_pending_agents(["a2", "a3", "nobody"]) == 3  # a2: action + incident; a3: action
    assert logger.flush_all_buffers().all_in_redis
    assert logger.discard_pending_agents([]) == 0
    assert logger.close().complete

    # Then: a2's agent row never left; a3's left before the rollback and is retracted in SQL;
    # what had left before the rollback (a3's first action, the states) is kept, as the reference
    # keeps what it had flushed; sequence numbers stay gapless
    records = stream_records(redis_server, namespace, simulation_id)
    assert [r.fields["agent_id"] for r in records if r.kind == "agent"] == ["a1", "a3"]
    assert sorted(r.fields["agent_id"] for r in records if r.kind == "agent_retraction") == ["a2", "a3", "nobody"]
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    worker.drain(slot=0)
    assert [a["agent_id"] for a in rows(sink_engine, schema.agents, simulation_id)] == ["a1"]
    actions = sorted((a["agent_id"], a["action_type"]) for a in rows(sink_engine, schema.agent_actions, simulation_id))
    assert actions == [("a1", "gather"), ("a3", "move")]
    assert rows(sink_engine, schema.health_incidents, simulation_id) == []
    assert sorted(s["agent_id"] for s in rows(sink_engine, schema.agent_states, simulation_id)) == ["a1", "a2"]


def test_validation_is_the_references_and_a_rejected_call_logs_nothing(redis_server, simulation_id, namespace):
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    logged = logger.producer.stats()["logged"]
    with pytest.raises(ValueError, match="step_number must be non-negative"):
        logger.log_agent_action(-1, "a1", "move")
    with pytest.raises(ValueError, match="step_number must be non-negative"):
        logger.log_interaction_edge(-1, "agent", "a1", "agent", "a2", "attack")
    with pytest.raises(ValueError, match="Missing required field 'starting_health' in agent data"):
        logger.log_agents_batch([{"agent_id": "a0", "birth_time": 0, "agent_type": "system", "position": (0, 0),
                                  "initial_resources": 1.0, "starting_health": 10.0},
                                 {"agent_id": "a1", "birth_time": 0, "agent_type": "system",
                                  "position": (0, 0), "initial_resources": 1.0}])
    with pytest.raises(ValueError, match="expected a tuple of 10 values"):
        logger.log_step(1, [("a1", 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, 1), ("a2", 1.0)], [], {})
    with pytest.raises(ValueError, match="simulation_steps has no column for: \\['not_a_metric'\\]"):
        logger.log_step(1, [("a1", 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, 1)], [(1, 2.0, 0.0, 0.0)],
                        {"not_a_metric": 1})
    assert logger.producer.stats()["logged"] == logged
    logger.close()


def test_where_the_reference_raises_the_logger_raises_the_same_type_with_one_clear_sentence(
        redis_server, simulation_id, namespace):
    from tests.reference_models import SimulationStepModel

    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    logged = logger.producer.stats()["logged"]
    state = ("a1", 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, 1)
    # the reference compares step_number with 0: a TypeError
    with pytest.raises(TypeError, match="^step_number must be an int, got str '3'$"):
        logger.log_agent_action("3", "a1", "move")
    with pytest.raises(TypeError, match="^step_number must be an int, got NoneType None$"):
        logger.log_interaction_edge(None, "agent", "a1", "agent", "a2", "attack")
    # the reference indexes position[0] and position[1]: TypeError for None, IndexError for one number
    with pytest.raises(TypeError, match=r"^position must be an \(x, y\) pair, got None$"):
        logger.log_agent("a1", 0, "system", None, 5.0, 10.0)
    with pytest.raises(TypeError, match=r"^position must be an \(x, y\) pair"):
        logger.log_agents_batch([{"agent_id": "a0", "birth_time": 0, "agent_type": "system", "position": (0, 0),
                                  "initial_resources": 1.0, "starting_health": 10.0},
                                 {"agent_id": "a1", "birth_time": 0, "agent_type": "system", "position": None,
                                  "initial_resources": 1.0, "starting_health": 10.0}])
    with pytest.raises(IndexError, match=r"^position must be an \(x, y\) pair, got \(1.0,\)$"):
        logger.log_resource(1, 5.0, (1.0,))
    with pytest.raises(TypeError, match=r"^parent_position must be an \(x, y\) pair"):
        logger.log_reproduction_event(1, "a1", None, False, 5.0, 5.0, None, "no room", 0, None, None)
    # the reference reads state[9] (IndexError) and builds SimulationStepModel(**metrics) (TypeError)
    with pytest.raises(IndexError, match="expected a tuple of 10 values"):
        logger.log_step(1, [state, ("a2", 1.0)], [], {})
    with pytest.raises(TypeError):
        SimulationStepModel(step_number=1, not_a_metric=1)
    with pytest.raises(TypeError, match="no column for: \\['not_a_metric'\\]"):
        logger.log_step(1, [state], [], {"not_a_metric": 1})

    # Then: none of the rejected calls logged anything
    assert logger.producer.stats()["logged"] == logged
    logger.close()
