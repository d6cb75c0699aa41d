"""Every record kind goes through a real Redis and a real worker into its table, every field intact."""

from __future__ import annotations

import json

from sqlalchemy import select

from common import schema
from common.codec import describe
from producer import RedisBufferedDataLogger
from tests.helpers import drain_with_worker


def rows(engine, table, simulation_id):
    with engine.connect() as connection:
        query = select(table).where(table.c.simulation_id == simulation_id)
        return [dict(row._mapping) for row in connection.execute(query)]


def test_every_record_kind_round_trips_with_every_field(redis_server, sqlite_url, sink_engine,
                                                        simulation_id, namespace):
    # Given: one call of every logger method, with every optional argument set
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     experiment_id="exp-1", parameters={"agents": 1})
    logger.log_agent("a1", 0, "system", (1.0, 2.0), 5.0, 10.0, genome_id="g1", generation=2,
                     action_weights={"move": 0.7, "eat": 0.3})
    logger.log_agents_batch([{"agent_id": "a2", "birth_time": 3, "agent_type": "independent",
                              "position": (3.0, 4.0), "initial_resources": 6.0, "starting_health": 11.0,
                              "simulation_id": simulation_id}])
    logger.log_agent_action(1, "a1", "attack", action_target_id="a2", reward=0.25, details={"dx": 1},
                            module_type="dqn", module_id="m1", action_taken=3, action_taken_mapped="attack")
    logger.log_health_incident(1, "a2", 11.0, 7.5, "combat", {"by": "a1"})
    logger.log_step(1, [("a1", 1.5, 2.5, 4.0, 9.0, 10.0, 1, True, 0.25, 1)],
                    [("resource_7", 42.0, 8.0, 9.0)],
                    {"total_agents": 2, "births": 1, "deaths": 0, "current_max_generation": 2,
                     "average_agent_age": 0.5, "agent_type_counts": {"system": 1, "independent": 1},
                     "total_resources": 42.0, "average_agent_resources": 5.5, "resource_efficiency": 0.9,
                     "resource_distribution_entropy": 0.1, "average_agent_health": 9.5,
                     "average_reward": 0.25, "genetic_diversity": 0.3, "dominant_genome_ratio": 0.6,
                     "resources_consumed": 1.5})
    logger.log_resource("resource_8", 30.0, (5.0, 6.0))
    logger.log_interaction_edge(1, "agent", "a1", "agent", "a2", "attack", action_type="attack",
                                details={"damage": 3.5})
    logger.log_reproduction_event(1, "a1", "a3", True, 5.0, 2.0, 3.0, None, 2, 3, (1.0, 2.0))
    report = logger.close()
    assert report.all_in_redis and report.complete

    # When: a worker drains the stream
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: every table holds exactly the logged values
    assert worker.stats.dead_lettered == 0
    [simulation] = rows(sink_engine, schema.simstream_simulations, simulation_id)
    assert simulation["experiment_id"] == "exp-1" and simulation["parameters"] == {"agents": 1}
    assert simulation["status"] == "completed" and simulation["end_time"] >= simulation["start_time"] > 0

    agents = {row["agent_id"]: row for row in rows(sink_engine, schema.agents, simulation_id)}
    assert agents["a1"] == {"simulation_id": simulation_id, "agent_id": "a1", "birth_time": 0,
                            "death_time": None, "agent_type": "system", "position_x": 1.0,
                            "position_y": 2.0, "initial_resources": 5.0, "starting_health": 10.0,
                            "genome_id": "g1", "generation": 2,
                            "action_weights": {"move": 0.7, "eat": 0.3}}
    assert agents["a2"]["agent_type"] == "independent" and agents["a2"]["generation"] == 0

    [action] = rows(sink_engine, schema.agent_actions, simulation_id)
    assert {k: v for k, v in action.items() if k not in ("action_id", "record_key")} == {
        "simulation_id": simulation_id, "step_number": 1, "agent_id": "a1", "action_type": "attack",
        "action_target_id": "a2", "reward": 0.25, "module_type": "dqn", "module_id": "m1",
        "details": json.dumps({"dx": 1, "action_taken": 3, "action_taken_mapped": "attack"})}
    assert action["record_key"].startswith(logger.producer.producer_id + ":")

    [incident] = rows(sink_engine, schema.health_incidents, simulation_id)
    assert (incident["agent_id"], incident["health_before"], incident["health_after"], incident["cause"],
            json.loads(incident["details"])) == ("a2", 11.0, 7.5, "combat", {"by": "a1"})

    [state] = rows(sink_engine, schema.agent_states, simulation_id)
    assert state == {"id": f"{simulation_id}:a1-1", "simulation_id": simulation_id, "step_number": 1,
                     "agent_id": "a1", "position_x": 1.5, "position_y": 2.5, "position_z": None,
                     "resource_level": 4.0, "current_health": 9.0, "starting_health": 10.0,
                     "starvation_counter": 1, "is_defending": True, "total_reward": 0.25, "age": 1}

    resources = sorted((r["step_number"], r["resource_id"], r["amount"], r["position_x"], r["position_y"])
                       for r in rows(sink_engine, schema.resource_states, simulation_id))
    assert resources == [(0, "resource_8", 30.0, 5.0, 6.0), (1, "resource_7", 42.0, 8.0, 9.0)]

    [step] = rows(sink_engine, schema.simulation_steps, simulation_id)
    assert step["agent_type_counts"] == {"system": 1, "independent": 1}
    assert (step["total_agents"], step["births"], step["current_max_generation"], step["resources_consumed"],
            step["dominant_genome_ratio"]) == (2, 1, 2, 1.5, 0.6)

    [interaction] = rows(sink_engine, schema.interactions, simulation_id)
    assert (interaction["source_id"], interaction["target_id"], interaction["interaction_type"],
            interaction["action_type"], interaction["details"]) == ("a1", "a2", "attack", "attack", {"damage": 3.5})

    [event] = rows(sink_engine, schema.reproduction_events, simulation_id)
    assert {k: v for k, v in event.items() if k not in ("event_id", "record_key")} == {
        "simulation_id": simulation_id, "step_number": 1, "parent_id": "a1", "offspring_id": "a3",
        "success": True, "parent_resources_before": 5.0, "parent_resources_after": 2.0,
        "offspring_initial_resources": 3.0, "failure_reason": None, "parent_generation": 2,
        "offspring_generation": 3, "parent_position_x": 1.0, "parent_position_y": 2.0}


def test_the_same_entries_added_twice_write_nothing_new(redis_server, sqlite_url, sink_engine,
                                                       simulation_id, namespace):
    # Given: a simulation whose every entry is in the stream twice, as after XADDs retried
    # because their replies were lost
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    for step in range(1, 4):
        logger.log_agent_action(step, "a1", "move", details={"step": step})
        logger.log_resource(step, 1.0, (0.0, 0.0))
        logger.log_step(step, [("a1", 1.0, 1.0, 1.0, 1.0, 1.0, 0, False, 0.0, step)], [], {})
    logger.close()
    client = redis_server.client()
    stream = f"{namespace}:{{{simulation_id}}}:stream"
    entries = client.xrange(stream)
    for _, fields in entries:
        client.xadd(stream, fields)
    assert client.xlen(stream) == 2 * len(entries)
    assert sum(describe(fields[b"r"]).records for _, fields in entries) == 14  # 12 records + the start and end

    # When: a worker drains the stream
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: one row per record
    counts = {t.name: len(rows(sink_engine, t, simulation_id)) for t in schema.DATA_TABLES}
    assert counts == {"simstream_simulations": 1, "agents": 0, "agent_states": 3, "resource_states": 3,
                      "simulation_steps": 3, "agent_actions": 3, "health_incidents": 0,
                      "interactions": 0, "reproduction_events": 0}
    assert worker.stats.dead_lettered == 0


def test_a_resumed_simulation_keeps_what_its_first_producer_recorded(redis_server, sqlite_url, sink_engine,
                                                                     namespace, simulation_id):
    # Given: a simulation started with an experiment and parameters, then resumed by a producer without them
    from producer import StreamProducer

    StreamProducer(simulation_id, redis_server.url, namespace=namespace, experiment_id="exp-1",
                   parameters={"agents": 30}).close()
    StreamProducer(simulation_id, redis_server.url, namespace=namespace).close()

    # When: a worker persists both (in either order the upserts must agree)
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: one simulations row, with the first producer's experiment and parameters, completed
    [row] = rows(sink_engine, schema.simstream_simulations, simulation_id)
    assert row["experiment_id"] == "exp-1" and row["parameters"] == {"agents": 30}
    assert row["status"] == "completed" and row["end_time"] is not None


def test_acknowledging_counts_each_entrys_records_once_and_never_remakes_a_removed_meta_hash(
        redis_server, namespace, simulation_id):
    from common.keys import Keys
    from common.stream_append import ACKED_FIELD_PREFIX
    from consumer.stream_reader import StreamReader

    # Given: three entries delivered to a consumer, holding 250, 3 and 0 records (a trimmed one)
    client, keys = redis_server.client(), Keys(namespace)
    stream, meta = keys.stream(simulation_id), keys.meta(simulation_id)
    ids = [client.xadd(stream, {b"r": b"x"}) for _ in range(3)]
    client.xgroup_create(stream, "simstream", id="0")
    client.xreadgroup("simstream", "c0", {stream: ">"})
    reader = StreamReader(client, "simstream", "c0")
    acked = f"{ACKED_FIELD_PREFIX}simstream".encode()

    # When: they are acknowledged, then acknowledged again (a replay after a crash before the ack
    # was known, or a retried ack)
    first = reader.ack(stream, meta, {ids[0]: 250, ids[1]: 3, ids[2]: 0})
    again = reader.ack(stream, meta, {ids[0]: 250, ids[1]: 3})

    # Then: their records are counted once
    assert (first, again) == (253, 0)
    assert client.hget(meta, acked) == b"253" and client.xpending(stream, "simstream")["pending"] == 0

    # When: the finished simulation's keys are removed, and a late ack of its entries arrives
    client.delete(stream, meta)
    late = reader.ack(stream, meta, {ids[0]: 250})

    # Then: it counts nothing and leaves nothing behind
    assert late == 0 and not client.exists(meta)
