"""A database that refuses writes is ``sink-failing`` in ``status``, ``--json`` and the metrics,
with its error; nothing is acknowledged meanwhile, and everything lands once it takes writes again.

The refusal is real and holds for a superuser's process too: the consumers log in as their own
PostgreSQL role, owner of the tables, whose INSERT and UPDATE rights the test revokes and grants
back (a superuser role would bypass the revoke). Skipped, saying why, where no PostgreSQL answers.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from consumer.ops.embedded_redis import free_port
from consumer.worker import consumer_name
from producer import RedisBufferedDataLogger
from tests.conftest import Cli
from tests.e2e.test_metrics_and_progress import scrape, try_scrape
from tests.helpers import (assert_rows_match, dead_letter_count, persisted_identities, produce_workload,
                           total_expected, wait_for)
from tests.log_events import events_named

pytestmark = pytest.mark.newest_redis

FAILING_AFTER = ("--failing-after-ms", "500")


@pytest.fixture
def writer_role(postgres_schema) -> str:
    """A login role the consumers use, allowed to create tables in the test's schema (it owns them)."""
    role = f"{postgres_schema.name}_writer"
    postgres_schema.admin(f'CREATE ROLE "{role}" LOGIN',
                          f'GRANT USAGE, CREATE ON SCHEMA "{postgres_schema.name}" TO "{role}"')
    yield role
    postgres_schema.terminate_connections()
    postgres_schema.admin(f'DROP OWNED BY "{role}" CASCADE', f'DROP ROLE "{role}"')


def status_of(cli: Cli, simulation_id: str) -> dict:
    result = cli.run("status", "--json", *FAILING_AFTER)
    assert result.returncode == 0, result.stderr
    [stream] = [s for s in json.loads(result.stdout)["streams"] if s["simulation_id"] == simulation_id]
    return stream


def merged(*parts: dict[str, Counter]) -> dict[str, Counter]:
    total: dict[str, Counter] = {}
    for part in parts:
        for table, rows in part.items():
            total.setdefault(table, Counter()).update(rows)
    return total


def test_a_database_refusing_writes_is_sink_failing_acks_nothing_and_everything_lands_after(
        redis_server, postgres_schema, writer_role, namespace, simulation_id, tmp_path):
    # Given: consumers writing to PostgreSQL as their own role, caught up with a running simulation
    role_url = make_url(postgres_schema.url).set(username=writer_role).render_as_string(hide_password=False)
    cli = Cli({**os.environ, "SIMSTREAM_REDIS_URL": redis_server.url, "SIMSTREAM_DB_URL": role_url,
               "SIMSTREAM_NAMESPACE": namespace, "PYTHONUNBUFFERED": "1"}, tmp_path)
    engine = create_engine(postgres_schema.url)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=500)
    port = free_port()
    consumer = cli.start("consume", "--block-ms", "100", "--metrics-port", str(port), "--log-json", *FAILING_AFTER)
    try:
        first = produce_workload(logger, steps=4, agents=3)
        logger.flush_all_buffers()
        wait_for(lambda: try_scrape(port), what="the consumers and their metrics endpoint")
        wait_for(lambda: persisted_identities(engine, simulation_id) == first, timeout_s=60,
                 what="the first part persisted")
        assert status_of(cli, simulation_id)["health"] == "ok"

        # When: the database stops taking the consumers' writes, and the simulation goes on
        tables = f'ALL TABLES IN SCHEMA "{postgres_schema.name}"'
        postgres_schema.admin(f'REVOKE INSERT, UPDATE ON {tables} FROM "{writer_role}"')
        second = produce_workload(logger, steps=4, agents=3, first_step=5)
        logger.flush_all_buffers()

        # Then: status says sink-failing, with the database's own error and the consumer retrying
        stream = wait_for(lambda: (s := status_of(cli, simulation_id))["health"] == "sink-failing" and s,
                          timeout_s=60, what="sink-failing")
        assert stream["failing"]["what"] == "sink" and stream["failing"]["for_ms"] >= 500
        assert "permission denied" in stream["failing"]["error"]
        assert stream["failing"]["consumers"] == [consumer_name(0)]
        # ... nothing of the second part is acknowledged, and nothing of it is in SQL or dead letters
        assert stream["backlog"] == total_expected(second) and stream["pending"] > 0
        assert persisted_identities(engine, simulation_id) == first and dead_letter_count(engine) == 0
        # ... the table says it too, and so does the metrics endpoint, with the time spent retrying
        table = cli.run("status", *FAILING_AFTER).stdout
        assert "sink-failing" in table and "permission denied" in table
        samples = scrape(port)
        health = {labels["health"]: value for labels, value in samples["simstream_stream_health"]
                  if labels["simulation"] == simulation_id}
        assert health["sink-failing"] == 1 and sum(health.values()) == 1
        retrying = [value for labels, value in samples["simstream_retry_seconds_total"] if labels["what"] == "sink"]
        assert sum(retrying) > 0

        # When: the database takes writes again
        postgres_schema.admin(f'GRANT INSERT, UPDATE ON {tables} TO "{writer_role}"')

        # Then: everything lands exactly once, and the stream is healthy again
        everything = merged(first, second)
        wait_for(lambda: persisted_identities(engine, simulation_id) == everything, timeout_s=60,
                 what="everything persisted")
        assert_rows_match(engine, simulation_id, everything)
        assert dead_letter_count(engine) == 0
        stream = wait_for(lambda: (s := status_of(cli, simulation_id))["backlog"] == 0 and s, what="no backlog")
        assert stream["health"] == "ok" and stream["failing"] is None
        assert consumer.poll() is None and not events_named(cli.output(consumer), "supervisor.worker_died")
    finally:
        logger.close()
        cli.cleanup()
        engine.dispose()
