"""``replica_acks``: a batch counts as sent only once WAIT confirms a replica has it.

A real master and replica (redis-server ``--replicaof``) on free 127.0.0.1 ports; the failover
itself is in tests/e2e/test_failover.py.
"""

from __future__ import annotations

import pytest
import redis

from consumer.ops.embedded_redis import EmbeddedRedis, free_port
from common.codec import describe
from common.errors import ConfigurationError
from common.journal import read_journal
from common.keys import Keys
from producer import StreamProducer
from tests.helpers import wait_for


@pytest.fixture
def replica(redis_server, tmp_path):
    """A replica of the test's Redis, in sync before the test starts."""
    with redis_server.client() as master:
        master.config_set("repl-diskless-sync-delay", 0)  # a full sync at once, not after 5 s
    server = EmbeddedRedis(tmp_path / "replica", port=free_port(), binary=redis_server.binary,
                           extra_args=("--replicaof", "127.0.0.1", str(redis_server.port))).start()
    with redis.Redis.from_url(server.url) as client:
        wait_for(lambda: client.info("replication").get("master_link_status") == "up", what="replica in sync")
    yield server
    server.kill()


def test_a_master_without_replicas_makes_replica_acks_a_configuration_error_at_start(redis_server, simulation_id,
                                                                                      tmp_path):
    # When: a producer asks for one replica's confirmation from a master that has none
    with pytest.raises(ConfigurationError) as refused:
        StreamProducer(simulation_id, redis_server.url, replica_acks=1, journal_dir=str(tmp_path))

    # Then: it is refused at once, in one line saying why
    assert "has 0 connected replica(s)" in str(refused.value) and "\n" not in str(refused.value)


def test_batches_count_as_sent_only_while_a_replica_confirms_them(redis_server, replica, namespace, simulation_id,
                                                                 tmp_path):
    # Given: a producer that waits for one replica, and a replica in sync (it confirms a write)
    with redis.Redis.from_url(redis_server.url) as master:
        wait_for(lambda: master.set("sync-probe", 1) and master.wait(1, 200) >= 1, what="the replica in sync")
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, replica_acks=1,
                              replica_wait_ms=200, spill_after_s=2.0, batch_size=50,
                              journal_retry_interval_s=0.2, journal_dir=str(tmp_path / "journal"))
    for step in range(100):
        producer.log("agent_action", step_number=step, agent_id="a1", action_type="move")

    # Then: while the replica confirms, everything counts as sent, and the replica has it
    first = producer.flush()
    stream = Keys(namespace).stream(simulation_id)
    with redis.Redis.from_url(replica.url) as client:
        assert first.all_in_redis and records_in(client, stream) >= first.logged

    # When: the replica is gone and the simulation goes on
    replica.kill()
    for step in range(100, 200):
        producer.log("agent_action", step_number=step, agent_id="a1", action_type="move")
    second = producer.flush(timeout_s=30)

    # Then: no later batch counts as sent (none was confirmed): they went to the journal instead
    assert second.in_redis == first.logged and second.journaled == second.logged - first.logged
    payloads, _ = read_journal(second.journal_path)
    assert sum(describe(payload).records for payload in payloads) == second.journaled
    # ... and the journal is not re-sent, whole, every retry while no replica could confirm it
    with redis.Redis.from_url(redis_server.url) as client:
        length = client.xlen(stream)
        wait_for(lambda: producer.stats()["failed_attempts"] >= 3, what="journal retries")
        assert client.xlen(stream) == length
    producer.close(timeout_s=1)


def records_in(client: redis.Redis, stream: str) -> int:
    """Records in a stream's entries (record batches), counted from their headers."""
    return sum(describe(fields[b"r"]).records for _, fields in client.xrange(stream))
