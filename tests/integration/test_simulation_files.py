"""A simulation's own file under the consumers: unusable schemas, and a file replaced mid-run."""

from __future__ import annotations

import os
import sqlite3

from consumer.stream_status import stream_status
from common.keys import Keys
from consumer.ops.health import SINK_UNUSABLE, HealthThresholds, verdict
from producer import RedisBufferedDataLogger
from tests.helpers import start_worker, wait_for


def agent_ids(path) -> list[str]:
    """The agents in the file; none while the consumer is still creating its tables."""
    connection = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in connection.execute("SELECT agent_id FROM agents"))
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


def log_agent(logger, agent_id: str) -> None:
    logger.log_agent(agent_id, 0, "system", (1.0, 2.0), 5.0, 10.0)


def test_a_shared_database_it_cannot_use_is_one_line_and_exit_code_2(cli, tmp_path):
    # Given: a database made by an earlier simstream, whose resource ids were integers
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE resource_states (id INTEGER PRIMARY KEY, simulation_id VARCHAR(200), "
                       "step_number INTEGER, resource_id INTEGER, amount FLOAT, position_x FLOAT, "
                       "position_y FLOAT, record_key VARCHAR(64) NOT NULL UNIQUE)")
    connection.close()
    # When: consumers start on it
    result = cli.run("consume", "--drain", "--db", f"sqlite:///{path}", timeout=60)
    # Then: exit 2, one line naming the table, the column and how to migrate
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "resource_states" in lines[0] and "resource_id" in lines[0] and "ALTER TABLE" in lines[0]


def test_a_per_simulation_file_it_cannot_use_holds_that_simulation_only(redis_server, tmp_path, namespace):
    # Given: two simulations in their own files; one file has an agents table of another shape
    folder = tmp_path / "runs"
    folder.mkdir()
    connection = sqlite3.connect(folder / "simulation_bad.db")
    connection.execute("CREATE TABLE agents (agent_id INTEGER PRIMARY KEY, simulation_id VARCHAR(64))")
    connection.close()
    loggers = {sim: RedisBufferedDataLogger(sim, redis_server.url, namespace=namespace, layout="agentfarm")
               for sim in ("bad", "good")}
    for sim, logger in loggers.items():
        log_agent(logger, f"{sim}-a1")
        logger.close()

    # When: a consumer runs
    worker, thread = start_worker(redis_server.url, f"sqlite:///{folder}/simulation_{{simulation_id}}.db", namespace)
    try:
        # Then: the good simulation is persisted; the bad one waits in Redis, and status says why
        wait_for(lambda: (folder / "simulation_good.db").exists() and agent_ids(folder / "simulation_good.db"),
                 what="the good simulation persisted")
        client, keys = redis_server.client(), Keys(namespace)
        wait_for(lambda: stream_status(client, keys, "simstream", "bad").sink_problem, what="the reason published")
        status = stream_status(client, keys, "simstream", "bad")
        assert "agents" in status.sink_problem and "agent_id" in status.sink_problem
        assert verdict(status, 0, HealthThresholds()) == SINK_UNUSABLE
        assert status.backlog > 0 and not status.persisted_all
    finally:
        worker.request_stop()
        thread.join(30)


def test_a_file_replaced_under_a_running_consumer_gets_the_rows_sent_after(redis_server, tmp_path, namespace,
                                                                           simulation_id):
    folder = tmp_path / "out"
    path = folder / f"simulation_{simulation_id}.db"
    worker, thread = start_worker(redis_server.url, f"sqlite:///{folder}/simulation_{{simulation_id}}.db", namespace)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, layout="agentfarm")
    try:
        # Given: a first row persisted into the simulation's file
        log_agent(logger, "first")
        logger.flush_all_buffers()
        wait_for(lambda: path.exists() and agent_ids(path) == ["first"], what="the first row")
        # When: the simulation removes its file (a rerun does) and the producer sends more
        os.remove(path)
        log_agent(logger, "second")
        logger.flush_all_buffers(wait_persisted=True, timeout_s=30)
        # Then: the consumer noticed, made the file anew and wrote the new row into it
        assert agent_ids(path) == ["second"]
    finally:
        logger.close()
        worker.request_stop()
        thread.join(30)
