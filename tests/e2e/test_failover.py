"""A Redis Cluster failover carried, not waited out.

A 3-master + 3-replica cluster (what ``redis-cli --cluster create --cluster-replicas 1`` builds,
with a 1 s ``cluster-node-timeout`` and ``cluster-require-full-coverage no``) carries three
simulations, one per master. The master holding one of them, and the simulation registry too, is
SIGKILLed mid-run. Its replica is held back from taking over (``cluster-replica-no-failover``)
until the simulations on the healthy masters have been seen flowing into SQL, then released; the
killed node is restarted afterwards and rejoins as the new master's replica. Producers confirm
each batch on a replica (``replica_acks=1``), so nothing they counted as sent dies with the
master. The producers and the same running consumer processes carry on, and every row of every
simulation is persisted exactly once within a bounded time after the last record.

Runs on the newest redis-server on PATH (>= 7); skipped, saying why, where there is none.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
import redis
from sqlalchemy import create_engine

from common.connections import create_sink_engine, ensure_schema
from consumer.ops.embedded_redis import server_version
from common.keys import Keys
from producer import RedisBufferedDataLogger
from tests.cluster import RedisClusterServers
from tests.conftest import REDIS_BINARIES, Cli
from tests.helpers import assert_rows_match, persisted_identities, produce_workload, wait_for
from tests.log_events import events_named

NEWEST = REDIS_BINARIES[-1] if REDIS_BINARIES and server_version(REDIS_BINARIES[-1][1])[0] >= 7 else None
pytestmark = pytest.mark.skipif(NEWEST is None, reason="needs redis-server >= 7 on PATH for a cluster with replicas")

STEPS, AGENTS = 8, 4


@pytest.fixture
def cluster(tmp_path):
    servers = RedisClusterServers(NEWEST[1], tmp_path / "cluster", replicas=1, node_timeout_ms=1000,
                                  extra_args=("--cluster-require-full-coverage", "no"),
                                  replica_args=("--cluster-replica-no-failover", "yes"))
    yield servers
    servers.stop()


def one_simulation_per_master(cluster: RedisClusterServers, keys: Keys, victim) -> dict[str, object]:
    """{simulation id: its master}: the first one on ``victim``, then one on each other master."""
    chosen: dict[object, str] = {}
    for n in range(300):
        sim = f"fo-{n}"
        chosen.setdefault(cluster.master_of(keys.stream(sim)), sim)
    ordered = [victim] + [master for master in chosen if master is not victim]
    return {chosen[master]: master for master in ordered}


def merge(into: dict[str, Counter], part: dict[str, Counter]) -> None:
    for table, rows in part.items():
        into.setdefault(table, Counter()).update(rows)


def persisted_all(engine, expected: dict[str, dict[str, Counter]]) -> bool:
    return all(persisted_identities(engine, sim) == {t: +rows for t, rows in want.items()}
               for sim, want in expected.items())


def test_a_master_killed_mid_run_fails_over_and_every_simulation_lands_exactly_once(cluster, tmp_path, namespace):
    # Given: three simulations, one per master; the first one's master also holds the registry
    keys = Keys(namespace)
    victim = cluster.master_of(keys.registry)
    simulations = one_simulation_per_master(cluster, keys, victim)
    [doomed, *healthy] = simulations
    survivor_url = next(node.url for node in cluster.nodes[:cluster.masters] if node is not victim)
    sink_url = f"sqlite:///{tmp_path / 'sink.db'}"
    cli = Cli({**os.environ, "SIMSTREAM_REDIS_URL": survivor_url, "SIMSTREAM_DB_URL": sink_url,
               "SIMSTREAM_NAMESPACE": namespace, "PYTHONUNBUFFERED": "1"}, tmp_path)
    loggers = {sim: RedisBufferedDataLogger(
        sim, survivor_url, namespace=namespace, batch_size=200, replica_acks=1, spill_after_s=1.0,
        journal_retry_interval_s=0.2, journal_dir=str(tmp_path / "journal"), close_timeout_s=60.0)
        for sim in simulations}
    consumers = cli.start("consume", "--processes", "2", "--block-ms", "100", "--claim-idle-ms", "3000",
                          "--claim-interval-ms", "500", "--log-json")
    wait_for(lambda: len(events_named(cli.output(consumers), "worker.started")) == 2, timeout_s=60,
             what="both consumers connected")  # one that connects after the kill exits: not this test's subject
    engine = create_engine(sink_url)
    ensure_schema(create_sink_engine(sink_url))  # so the test can count rows before consumers start
    try:
        expected = {sim: {} for sim in simulations}
        for sim, logger in loggers.items():
            merge(expected[sim], produce_workload(logger, steps=STEPS, agents=AGENTS))
            assert logger.flush_all_buffers().all_in_redis
        wait_for(lambda: persisted_all(engine, expected), timeout_s=60, what="the first part persisted")

        # When: the master of the first simulation (and of the registry) is SIGKILLed mid-run
        cluster.kill(victim)
        for sim, logger in loggers.items():
            merge(expected[sim], produce_workload(logger, steps=STEPS, agents=AGENTS, first_step=STEPS + 1))
        healthy_reports = [loggers[sim].flush_all_buffers() for sim in healthy]

        # Then: while it has no master, the simulations on the healthy masters keep flowing into SQL
        assert all(report.all_in_redis for report in healthy_reports), healthy_reports
        wait_for(lambda: persisted_all(engine, {sim: expected[sim] for sim in healthy}), timeout_s=60,
                 what="the healthy masters' simulations persisted while one master is down")
        assert persisted_identities(engine, doomed) != expected[doomed]  # the doomed one did wait

        # When: its replica may take over, and the simulations go on and finish
        successor = cluster.replica_of(victim)
        with redis.Redis.from_url(successor.url) as replica:
            replica.config_set("cluster-replica-no-failover", "no")
        promoted = cluster.wait_for_new_master(keys.stream(doomed), victim)
        cluster.restart(victim)  # back as the new master's replica: replica_acks=1 can be met again
        for sim, logger in loggers.items():
            merge(expected[sim], produce_workload(logger, steps=STEPS, agents=AGENTS, first_step=2 * STEPS + 1))
        reports = {sim: logger.close() for sim, logger in loggers.items()}
        last_record_at = time.monotonic()

        # Then: every producer got everything into Redis, the doomed one through its journal
        assert promoted is successor
        assert all(report.all_in_redis and report.complete for report in reports.values()), reports
        assert loggers[doomed].producer.stats()["journaled"] > 0
        assert all(loggers[sim].producer.stats()["journaled"] == 0 for sim in healthy)
        assert all(logger.producer.stats()["sender_restarts"] == 0 for logger in loggers.values())
        # ... the same consumers persist every row of every simulation exactly once, in bounded time
        wait_for(lambda: persisted_all(engine, expected), timeout_s=60, what="every simulation persisted")
        assert time.monotonic() - last_record_at < 60
        for sim, rows in expected.items():
            assert_rows_match(engine, sim, rows)
        # ... no worker was restarted, and every finished simulation has left Redis
        assert consumers.poll() is None
        log = cli.output(consumers)
        assert len(events_named(log, "worker.started")) == 2 and not events_named(log, "supervisor.worker_died")
        assert events_named(log, "worker.stream_set_aside")  # the doomed stream was set aside, the others served
        wait_for(lambda: json.loads(cli.run("status", "--json").stdout)["streams"] == [], timeout_s=30,
                 what="finished simulations removed from Redis")
        consumers.send_signal(signal.SIGTERM)
        assert consumers.wait(60) == 0
    finally:
        cli.cleanup()
        engine.dispose()
