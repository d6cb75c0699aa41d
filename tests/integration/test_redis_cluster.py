"""A real 3-master Redis Cluster: detection, reads across slots, raw replies, retention, status."""

from __future__ import annotations

import json
import os

import redis
from redis.cluster import RedisCluster

from common.connections import redis_client
from common.keys import Keys
from consumer.ops.health import HealthThresholds
from consumer.ops.status_view import status_report
from consumer.stream_reader import StreamReader
from producer import RedisBufferedDataLogger
from tests.conftest import Cli
from tests.helpers import assert_rows_match, dead_letter_count, drain_with_worker, produce_workload


def simulations_on_every_node(cluster: RedisCluster, keys: Keys, prefix: str) -> list[str]:
    """Simulation ids whose streams live on each of the cluster's masters, two per node."""
    found: dict[str, list[str]] = {}
    for n in range(200):
        sim = f"{prefix}-{n}"
        node = cluster.get_node_from_key(keys.stream(sim)).name
        if len(found.setdefault(node, [])) < 2:
            found[node].append(sim)
    assert len(found) == 3
    return [sim for sims in found.values() for sim in sims]


def test_any_nodes_address_gives_the_cluster_client_and_a_plain_server_the_plain_one(redis_cluster, redis_server):
    for node in redis_cluster.nodes:
        assert isinstance(redis_client(node.url), RedisCluster)
    assert type(redis_client(redis_server.url)) is redis.Redis


def test_one_worker_persists_simulations_spread_over_every_node(redis_cluster, sqlite_url, sink_engine, namespace,
                                                                tmp_path):
    # Given: six simulations whose keys live on all three masters, logged through one node's address
    cluster, keys = redis_cluster.client(), Keys(namespace)
    simulations = simulations_on_every_node(cluster, keys, "spread")
    expected = {}
    for sim in simulations:
        logger = RedisBufferedDataLogger(sim, redis_cluster.url, namespace=namespace, batch_size=300)
        expected[sim] = produce_workload(logger, steps=15, agents=4)
        logger.close()
    cli = Cli({**os.environ, "SIMSTREAM_REDIS_URL": redis_cluster.nodes[2].url, "SIMSTREAM_NAMESPACE": namespace},
              tmp_path)
    status = json.loads(cli.run("status", "--json").stdout)

    # When: one worker, given another node's address, drains them all
    worker = drain_with_worker(redis_cluster.nodes[1].url, sqlite_url, namespace, batch_size=100)

    # Then: status saw all six complete streams; every row is there once; Redis is left empty
    assert sorted(s["simulation_id"] for s in status["streams"]) == sorted(simulations)
    assert all(s["complete"] and s["length"] > 0 for s in status["streams"])
    for sim, rows in expected.items():
        assert_rows_match(sink_engine, sim, rows)
    assert worker.stats.dead_lettered == 0 and dead_letter_count(sink_engine) == 0
    assert cluster.smembers(keys.registry) == set()
    assert not any(cluster.exists(keys.stream(sim)) or cluster.exists(keys.meta(sim)) for sim in simulations)


def test_raw_replies_on_a_cluster_surface_entries_trimmed_before_they_were_persisted(redis_cluster, namespace):
    # Given: one consumer read three entries from each of three streams on three nodes in one call,
    # then the middle entry of each was deleted before it was persisted
    cluster, keys = redis_cluster.client(), Keys(namespace)
    streams = [keys.stream(sim) for sim in simulations_on_every_node(cluster, keys, "raw")[::2]]
    reader = StreamReader(redis_client(redis_cluster.url), "simstream", "reader-1")
    for stream in streams:
        reader.ensure_group(stream)
        for _ in range(3):
            cluster.xadd(stream, {b"r": b"payload"})
    new = reader.read_new(streams, count=10, block_ms=50)
    deleted = {stream: entries[1].entry_id for stream, entries in new.items()}
    for stream, entry_id in deleted.items():
        cluster.xdel(stream, entry_id)

    # When: it re-reads its own pending entries, and another consumer claims one stream's
    pending = {stream: reader.read_own_pending(stream, b"0", 10) for stream in streams}
    other = StreamReader(redis_client(redis_cluster.nodes[2].url), "simstream", "reader-2")
    claim = other.claim_stale(streams[0], 0, b"0-0", 10)

    # Then: the one read spanned every slot; each deleted entry surfaces with no payload
    assert {stream: len(entries) for stream, entries in new.items()} == {stream: 3 for stream in streams}
    for stream, entries in pending.items():
        assert [e.entry_id for e in entries if e.payload is None] == [deleted[stream]]
    assert len(claim.entries) == 2 and all(e.payload == b"payload" for e in claim.entries)
    assert claim.gone_ids == [deleted[streams[0]]] or claim.unnamed_gone  # Redis 7 names it, 6.2 cannot


def test_status_shows_a_stream_whose_master_is_down_as_redis_failing_and_reads_the_others(redis_cluster, namespace):
    # Given: a simulation on each master, the registry on one of them
    cluster, keys = redis_cluster.client(), Keys(namespace)
    simulations = simulations_on_every_node(cluster, keys, "down")[::2]
    for sim in simulations:
        logger = RedisBufferedDataLogger(sim, redis_cluster.url, namespace=namespace)
        logger.log_agent("a1", 0, "system", (0.0, 0.0), 1.0, 1.0)
        assert logger.close().all_in_redis
    registry_port = cluster.get_node_from_key(keys.registry).port
    [doomed] = [sim for sim in simulations if cluster.get_node_from_key(keys.stream(sim)).port != registry_port][:1]
    doomed_port = cluster.get_node_from_key(keys.stream(doomed)).port
    survivor = next(node for node in redis_cluster.nodes if node.port != doomed_port)

    # When: the master holding one simulation is SIGKILLed, and status asks a surviving node
    next(node for node in redis_cluster.nodes if node.port == doomed_port).kill()
    report = status_report(redis_client(survivor.url), keys, "simstream", None, HealthThresholds())

    # Then: that stream is redis-failing with the error status met; the others are read as usual
    streams = {s["simulation_id"]: s for s in report["streams"]}
    assert set(streams) == set(simulations)
    assert streams[doomed]["health"] == "redis-failing"
    assert streams[doomed]["failing"]["what"] == "redis" and "ConnectionError" in streams[doomed]["failing"]["error"]
    for sim in set(simulations) - {doomed}:
        assert streams[sim]["exists"] and streams[sim]["complete"] and streams[sim]["health"] != "redis-failing"
