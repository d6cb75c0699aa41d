"""``producer.agentfarm.install()`` against a stand-in of the reference simulation's database package.

The stand-in (``tests/agentfarm_standin``) holds ORM models of the reference's current schema and
its logger's behaviour. The same scripted run goes once through it as it is (the oracle: rows
written by the models directly) and once with simstream installed (rows through Redis and a
consumer into the simulation's own file); the two files must hold the same rows, column by
column and type by type (SQLite ``typeof``).
"""

from __future__ import annotations

import datetime
import importlib
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.helpers import start_worker

STANDIN = Path(__file__).resolve().parents[1] / "agentfarm_standin"
TABLES = ("experiments", "simulations", "simulation_config", "agents", "agent_states", "resource_states",
          "simulation_steps", "agent_actions", "health_incidents")
SURROGATE_OR_CLOCK = {"action_id", "incident_id", "config_id", "record_key", "timestamp", "simulation_db_path"}


@pytest.fixture
def farm(monkeypatch):
    """The stand-in ``farm.database`` package, imported fresh, removed from sys.modules after."""
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in [n for n in sys.modules if n == "farm" or n.startswith("farm.")]:
        monkeypatch.delitem(sys.modules, name)
    yield importlib.import_module("farm.database.database"), importlib.import_module("farm.database.validation")
    for name in [n for n in sys.modules if n == "farm" or n.startswith("farm.")]:
        del sys.modules[name]


def scripted_run(farm, folder: Path, simulation_id: str):
    """What the reference simulation's loop does with its database: records, a rollback, deaths
    through the database, the end through update_simulation_record and close; no logger close()."""
    database_module, validation = farm
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"simulation_{simulation_id}.db"
    db = database_module.SimulationDatabase(str(path), simulation_id=simulation_id)
    db.add_simulation_record(simulation_id, datetime.datetime(2026, 1, 1), "running", {"steps": 6})
    db.save_configuration({"steps": 6})
    logger = db.logger
    agents = [f"agent_{i:010x}" for i in range(6)]
    logger.log_agents_batch([
        {"simulation_id": simulation_id, "agent_id": a, "birth_time": 0, "agent_type": ("system", "control")[i % 2],
         "position": (i, i + 0.5), "initial_resources": 5 if i % 2 else 5.5, "starting_health": 10.0,
         "genome_id": f"::{i}", "generation": 0,
         "action_weights": {"move": 0.25, "gather": 0.75} if i % 3 else None} for i, a in enumerate(agents)])
    resources = [f"resource_{r:010x}" for r in range(4)]
    for r, resource_id in enumerate(resources):
        logger.log_resource(resource_id, 10 + r, (r, r * 0.5))
    alive = list(agents)
    for step in range(1, 7):
        for i, agent_id in enumerate(alive):
            learned = (step + i) % 2 == 0
            logger.log_agent_action(step, agent_id, ("move", "gather", "share")[(step + i) % 3],
                                    action_target_id=resources[i % 4] if i % 2 else None,
                                    reward=0.125 * step if i % 3 else None, details={"dx": i - 2} if i % 2 else None,
                                    module_type="dqn" if learned else None,
                                    module_id=140576688243984 + i if learned else None,
                                    action_taken=step % 4 if learned else None)
            if (step + i) % 4 == 0:
                logger.log_health_incident(step, agent_id, 10.0, 9.5, "starvation", {"drop": 0.5} if i % 2 else None)
        if step == 3:  # a birth rolled back, as the environment does it: logger first, then the file
            child = "agent_child00001"
            logger.log_agents_batch([{"simulation_id": simulation_id, "agent_id": child, "birth_time": 3,
                                      "agent_type": "system", "position": (1.0, 1.0), "initial_resources": 2.0,
                                      "starting_health": 10.0, "genome_id": "::0:1", "generation": 1}])
            logger.log_agent_action(3, child, "reproduce")
            assert logger.discard_pending_agents([child]) == 1
            db._execute_in_transaction(lambda session: session.execute(
                sqlite_delete_agent(), {"simulation_id": simulation_id, "agent_id": child}))
        if step == 4:
            db.update_agent_death(alive[1], 4, cause="unknown")
            alive.remove(alive[1])
        states = [(a, i, i * 0.5, 3 if i % 2 else 2.5, 9.0, 10.0, step % 3, i % 2, 0.25 * step, step)
                  for i, a in enumerate(alive)]
        logger.log_step(step, states, [(rid, 9.5 - step * 0.5, r, r * 0.5) for r, rid in enumerate(resources)],
                        {"total_agents": len(alive), "births": 0, "deaths": int(step == 4),
                         "average_agent_age": 0 if step == 1 else step + 0.57,
                         "agent_type_counts": {"system": 3, "control": len(alive) - 3},
                         "resource_distribution_entropy": 1.25, "average_reward": 0.5})
        logger.flush_if_needed()
    logger.flush_all_buffers()
    db.update_simulation_record(simulation_id, status="completed", end_time=datetime.datetime(2026, 1, 2),
                                results_summary={"total_steps": 6})
    db.close()
    return path, validation.validate_simulation_database(str(path), simulation_id=simulation_id)


def sqlite_delete_agent():
    from sqlalchemy import text
    return text("DELETE FROM agents WHERE simulation_id = :simulation_id AND agent_id = :agent_id")


def rows_with_types(path: Path, table: str) -> Counter:
    connection = sqlite3.connect(path)
    try:
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")
                   if row[1] not in SURROGATE_OR_CLOCK and not (table == "resource_states" and row[1] == "id")]
        select = ", ".join(f'"{c}", typeof("{c}")' for c in columns)
        return Counter(connection.execute(f"SELECT {select} FROM {table}").fetchall())
    finally:
        connection.close()


def test_a_run_through_install_leaves_the_file_its_own_logger_would(farm, redis_server, tmp_path, namespace,
                                                                    simulation_id):
    from producer.agentfarm import install

    # Given: the run once as it is (the oracle), and a consumer reading the simulation's own files
    oracle_path, oracle_seen = scripted_run(farm, tmp_path / "own", simulation_id)
    template = f"sqlite:///{tmp_path / 'through'}/simulation_{{simulation_id}}.db"
    worker, thread = start_worker(redis_server.url, template, namespace, name="consumer-0")

    # When: the same run with simstream installed (the simulation never closes the logger)
    with install(redis_server.url, namespace=namespace, validation_wait_s=60) as installation:
        path, seen_by_validation = scripted_run(farm, tmp_path / "through", simulation_id)
        assert installation.logger_for(simulation_id) is not None
    worker.request_stop()
    thread.join(30)

    # Then: the post-run validation read every row (it waited for the consumer), the simulation
    # is complete in Redis, and every table holds the oracle's rows, value for value, type for type
    assert seen_by_validation == oracle_seen
    for table in TABLES:
        assert rows_with_types(path, table) == rows_with_types(oracle_path, table), table
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert connection.execute("SELECT agent_id FROM simstream_retracted_agents").fetchall() == [("agent_child00001",)]
    assert connection.execute("SELECT status FROM simstream_simulations").fetchall() == [("completed",)]
    connection.close()
    client = redis_server.client()
    meta = client.hgetall(f"{namespace}:{{{simulation_id}}}:meta")
    assert meta == {} or meta.get(b"complete") == b"1"  # removed once persisted, or still marked complete


def test_uninstall_puts_the_references_own_logger_back(farm, redis_server, namespace):
    from producer.agentfarm import AgentFarmDataLogger, install

    database_module, _ = farm
    own = (database_module.DataLogger, database_module.SimulationDatabase.update_agent_death)
    installation = install(redis_server.url, namespace=namespace)
    assert database_module.DataLogger is not own[0]
    installation.uninstall()
    assert (database_module.DataLogger, database_module.SimulationDatabase.update_agent_death) == own
    assert not issubclass(database_module.DataLogger, AgentFarmDataLogger)


def test_a_database_that_logs_nothing_sends_nothing_and_an_in_memory_one_is_refused(farm, redis_server, tmp_path,
                                                                                   namespace, simulation_id):
    from common.errors import ConfigurationError
    from producer.agentfarm import install

    database_module, _ = farm
    with install(redis_server.url, namespace=namespace):
        # An analysis script opening a file and closing it: no producer, nothing in Redis
        db = database_module.SimulationDatabase(str(tmp_path / "old.db"), simulation_id=simulation_id)
        db.close()
        assert redis_server.client().keys(f"{namespace}:*") == []
        with pytest.raises(ConfigurationError, match="use_in_memory_db = False"):
            database_module.SimulationDatabase(":memory:", simulation_id=simulation_id)


def test_install_without_the_simulation_installed_is_one_clear_line(monkeypatch):
    from common.errors import ConfigurationError
    from producer.agentfarm import install

    monkeypatch.setitem(sys.modules, "farm", None)  # import farm... raises ImportError
    with pytest.raises(ConfigurationError, match="AgentFarm is not importable here") as raised:
        install()
    assert "\n" not in str(raised.value)


def test_consumers_first_create_exactly_the_references_empty_tables(farm, tmp_path):
    from consumer.sink_pool import SinkPool

    # Given: consumers that reach a simulation's file before the simulation does
    pool = SinkPool(f"sqlite:///{tmp_path / 'first'}/simulation_{{simulation_id}}.db")
    pool.for_simulation("sim-1", "agentfarm")
    pool.close()
    # and the file the reference's own models create
    models = importlib.import_module("farm.database.models")
    engine = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    models.Base.metadata.create_all(engine)
    engine.dispose()

    # Then: its tables are the reference's, plus simstream's own, and the reference's columns
    # are all there, in order, with simstream's record_key last where it adds one
    def tables(path):
        connection = sqlite3.connect(path)
        found = {name: [(c[1], c[2], c[3], c[5]) for c in connection.execute(f"PRAGMA table_info({name})")]
                 for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        connection.close()
        return found

    ours, reference = tables(tmp_path / "first" / "simulation_sim-1.db"), tables(tmp_path / "models.db")
    assert set(ours) - set(reference) == {"simstream_simulations", "simstream_retracted_agents", "dead_letters"}
    for name, columns in reference.items():
        extra = [("record_key", "VARCHAR(64)", 0, 0)] if name in ("agent_actions", "resource_states",
                                                                   "health_incidents") else []
        assert ours[name] == columns + extra, name


def test_a_retraction_committed_before_its_agent_row_still_holds(tmp_path):
    from common.codec import make_encoder
    from consumer.sink_pool import SinkPool
    from consumer.stream_reader import Entry

    encode = make_encoder()
    agent = {"agent_id": "a9", "birth_time": 3, "agent_type": "system", "position_x": 1.0, "position_y": 1.0,
             "initial_resources": 2.0, "starting_health": 10.0}
    pool = SinkPool(f"sqlite:///{tmp_path}/simulation_{{simulation_id}}.db")
    # When: the retraction commits first, then the agent row arrives (another consumer, a replay)
    pool.write("s1", "agentfarm", "stream", [Entry(b"2-0", encode("agent_retraction", "p", 2, {"agent_id": "a9"}))], [])
    pool.write("s1", "agentfarm", "stream", [Entry(b"1-0", encode("agent", "p", 1, agent))], [])
    pool.write("s1", "agentfarm", "stream", [Entry(b"1-0", encode("agent", "p", 1, agent))], [])
    pool.close()
    # Then: no agent row, as after the reference's own rollback
    connection = sqlite3.connect(tmp_path / "simulation_s1.db")
    assert connection.execute("SELECT count(*) FROM agents").fetchone()[0] == 0
    connection.close()
