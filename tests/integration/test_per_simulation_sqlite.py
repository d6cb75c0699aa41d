"""One SQLite file per simulation: ``--db 'sqlite:///runs/{simulation_id}.db'``."""

from __future__ import annotations

import msgpack
import pytest

from common.codec import FORMAT_VERSION
from common.errors import ConfigurationError, ExitCode
from common.keys import Keys
from common.settings import ConsumerSettings
from producer import RedisBufferedDataLogger
from tests.helpers import (PerSimulationEngines, assert_rows_match, dead_letter_count, drain_with_worker,
                           produce_workload)


@pytest.fixture
def template(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'runs'}/{{simulation_id}}.db"


def test_each_simulation_and_its_dead_letters_go_to_its_own_file(redis_server, template, namespace, simulation_id,
                                                                 tmp_path):
    # Given: two simulations, the second with one entry that cannot become a row
    other = simulation_id + "-b"
    expected = {}
    for sim in (simulation_id, other):
        logger = RedisBufferedDataLogger(sim, redis_server.url, namespace=namespace)
        expected[sim] = produce_workload(logger, steps=10, agents=4)
        logger.flush_all_buffers()
        if sim == other:
            redis_server.client().xadd(Keys(namespace).stream(sim), {b"r": msgpack.packb([FORMAT_VERSION, "spaceship"])})
        logger.close()

    # When: one worker drains both into the per-simulation template
    worker = drain_with_worker(redis_server.url, template, namespace)

    # Then: each file holds exactly its simulation's rows, and the dead letter is in the second's
    files = PerSimulationEngines(template)
    try:
        assert sorted(p.name for p in (tmp_path / "runs").glob("*.db")) == sorted([f"{simulation_id}.db", f"{other}.db"])
        for sim, rows in expected.items():
            assert_rows_match(files.for_simulation(sim), sim, rows)
        assert_rows_match(files.for_simulation(simulation_id), other, {t: type(c)() for t, c in expected[other].items()})
        assert dead_letter_count(files.for_simulation(other)) == 1
        assert dead_letter_count(files.for_simulation(simulation_id)) == 0
    finally:
        files.dispose()
    # and the worker closed each file's engine once its simulation was finished and removed
    assert worker.sinks is not None and worker.sinks.open_simulations == []


def test_a_template_is_only_for_sqlite_file_names():
    with pytest.raises(ConfigurationError, match="only for SQLite file names"):
        ConsumerSettings(db_url="postgresql+psycopg://u@h/{simulation_id}")
    with pytest.raises(ConfigurationError, match="only for SQLite file names"):
        ConsumerSettings(db_url="sqlite:///runs/{simulation_id}/sink.db")


def test_dlq_commands_on_a_template_ask_for_the_simulation(cli, template, simulation_id):
    # Given: a per-simulation sink
    cli.env["SIMSTREAM_DB_URL"] = template

    # When: dead letters are listed without naming a simulation, then naming one
    without = cli.run("dlq", "list")
    named = cli.run("dlq", "list", "--simulation", simulation_id)

    # Then: the first says what it needs in one line; the second reads that simulation's file
    assert without.returncode == ExitCode.BAD_CONFIGURATION
    assert "--simulation" in without.stderr and len(without.stderr.strip().splitlines()) == 1
    assert named.returncode == 0 and "0 dead letter(s)" in named.stdout, named.stderr


def test_consume_checks_the_templates_folder_before_starting(cli, tmp_path):
    # Given: a template whose folder cannot be created (a file stands where it should be)
    (tmp_path / "occupied").write_text("not a folder")
    template = f"sqlite:///{tmp_path / 'occupied'}/{{simulation_id}}.db"

    # When: consumers are started on it
    result = cli.run("consume", "--drain", "--db", template, timeout=60)

    # Then: they do not start; one line says which folder is the problem
    assert result.returncode == ExitCode.BAD_CONFIGURATION, result.stderr
    assert "occupied" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_status_counts_dead_letters_across_per_simulation_files(template, tmp_path):
    # Given: two simulations' own files, one holding two dead letters and the other none
    from sqlalchemy import insert

    from common import schema
    from common.connections import create_sink_engine, ensure_schema, simulation_db_url
    from consumer.ops.health import dead_letter_counts

    for simulation_id, letters in (("sim-a", 2), ("sim-b", 0)):
        engine = create_sink_engine(simulation_db_url(template, simulation_id))
        ensure_schema(engine)
        with engine.begin() as connection:
            for n in range(letters):
                connection.execute(insert(schema.dead_letters).values(
                    stream="s", entry_id=f"1-{n}", simulation_id=simulation_id, error="bad", created_at=0.0))
        engine.dispose()

    # When / Then: the template's dead letters are counted file by file, not reported unknown
    assert dead_letter_counts(template) == {"sim-a": 2}
    assert dead_letter_counts(f"sqlite:///{tmp_path / 'nowhere'}/{{simulation_id}}.db") is None
