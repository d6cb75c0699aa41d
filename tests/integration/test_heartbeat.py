"""A simulation's heartbeat: written by producers and journal replays, read to judge it abandoned."""

from __future__ import annotations

from common.codec import make_encoder
from common.heartbeat import HEARTBEAT_FIELD, server_time_ms
from common.journal import Journal, journal_path, replay_journal
from common.keys import Keys
from consumer.stream_status import stream_status
from producer import StreamProducer
from tests.helpers import wait_for

MINUTE_MS = 60_000


def status(client, keys: Keys, simulation_id: str):
    return stream_status(client, keys, "simstream", simulation_id)


def test_an_idle_producer_keeps_its_simulation_alive_and_a_stale_heartbeat_is_abandoned(
        redis_server, namespace, simulation_id):
    # Given: a live producer that has sent its first batch and then logs nothing
    client, keys = redis_server.client(), Keys(namespace)
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, heartbeat_interval_s=0.05)
    producer.flush()
    first = int(client.hget(keys.meta(simulation_id), HEARTBEAT_FIELD))

    # When / Then: while idle, its sender refreshes the heartbeat by itself
    wait_for(lambda: int(client.hget(keys.meta(simulation_id), HEARTBEAT_FIELD)) > first, what="an idle heartbeat")
    assert not status(client, keys, simulation_id).abandoned(MINUTE_MS)
    producer.close()

    # Given: a simulation whose heartbeat is ten minutes old and that never completed
    client.hdel(keys.meta(simulation_id), "complete")
    old = server_time_ms(client, keys.meta(simulation_id)) - 10 * MINUTE_MS
    client.hset(keys.meta(simulation_id), HEARTBEAT_FIELD, old)

    # Then: it is abandoned past a 1-minute setting, not past a 1-hour one; once complete, never
    stale = status(client, keys, simulation_id)
    assert stale.producer_idle_ms >= 10 * MINUTE_MS
    assert stale.abandoned(MINUTE_MS) and not stale.abandoned(60 * MINUTE_MS)
    client.hset(keys.meta(simulation_id), "complete", 1)
    assert not status(client, keys, simulation_id).abandoned(MINUTE_MS)


def test_a_journal_replay_refreshes_the_heartbeat(redis_server, namespace, simulation_id, tmp_path):
    # Given: an abandoned simulation (heartbeat ten minutes old), and a journal its producer left
    client, keys = redis_server.client(), Keys(namespace)
    meta = keys.meta(simulation_id)
    client.hset(meta, HEARTBEAT_FIELD, server_time_ms(client, meta) - 10 * MINUTE_MS)
    client.sadd(keys.registry, simulation_id)
    assert status(client, keys, simulation_id).abandoned(MINUTE_MS)
    encode = make_encoder()
    journal = Journal(journal_path(tmp_path, simulation_id, "p1"))
    journal.append([encode("agent_action", "p1", seq, {"step_number": seq, "agent_id": "a", "action_type": "move"})
                    for seq in (1, 2, 3)])

    # When: the journal is replayed
    result = replay_journal(client, keys, journal.path)

    # Then: the simulation is alive again, and the replay reports its last entry
    revived = status(client, keys, simulation_id)
    assert not revived.abandoned(MINUTE_MS) and revived.length == 3
    assert result.records == 3 and result.last_entry_id == revived.last_generated_id


def test_a_stream_without_heartbeat_is_judged_by_its_newest_entry(redis_server, namespace, simulation_id):
    # Given: a stream written by an older producer (no heartbeat), its newest entry ten minutes old
    client, keys = redis_server.client(), Keys(namespace)
    now = server_time_ms(client, keys.meta(simulation_id))
    client.xadd(keys.stream(simulation_id), {b"r": b"x"}, id=f"{now - 10 * MINUTE_MS}-1")
    client.sadd(keys.registry, simulation_id)

    # Then: abandoned past a 1-minute setting
    assert status(client, keys, simulation_id).abandoned(MINUTE_MS)

    # When: a newer entry arrives
    client.xadd(keys.stream(simulation_id), {b"r": b"y"})

    # Then: it is alive
    assert not status(client, keys, simulation_id).abandoned(MINUTE_MS)
