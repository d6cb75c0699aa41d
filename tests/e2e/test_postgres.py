"""Consumer processes writing to a real PostgreSQL in parallel, through cut connections."""

from __future__ import annotations

import time

from sqlalchemy import create_engine

from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, dead_letter_count, produce_workload, wait_for
from tests.log_events import events_in, events_named


def test_parallel_consumers_whose_connections_are_cut_write_every_row_once(
        cli, redis_server, postgres_schema, namespace, simulation_id):
    # Given: two complete simulations and three consumer processes writing to PostgreSQL
    cli.env["SIMSTREAM_DB_URL"] = postgres_schema.url
    expected = {}
    for sim in (simulation_id, simulation_id + "-b"):
        logger = RedisBufferedDataLogger(sim, redis_server.url, namespace=namespace, batch_size=500)
        expected[sim] = produce_workload(logger, steps=120, agents=15)
        logger.close()
    # one entry per transaction (up to 250 records), so commits are short enough to land between cuts
    consumers = cli.start("consume", "--processes", "3", "--drain", "--batch-size", "1", "--log-json", *FAST)
    wait_for(lambda: events_named(cli.output(consumers), "worker.started"), what="a consumer at work")

    # When: the server cuts every consumer connection again and again while they work
    cut = 0
    deadline = time.monotonic() + 90
    while consumers.poll() is None and time.monotonic() < deadline:
        cut += postgres_schema.terminate_connections()
        time.sleep(0.2)

    # Then: they retry, exit 0 once all is persisted, and every row is in PostgreSQL exactly once
    assert consumers.wait(60) == 0, cli.output(consumers)
    output = cli.output(consumers)
    retried = {line["event"] for line in events_in(output)} & {"worker.db_retry", "worker.transient_error"}
    assert cut > 0 and retried, output
    engine = create_engine(postgres_schema.url)
    try:
        for sim, rows in expected.items():
            assert_rows_match(engine, sim, rows)
        assert dead_letter_count(engine) == 0
    finally:
        engine.dispose()
