"""The recent-state tiers on a real Redis: limits by rank, TTLs, compression, the STM->IM move,
reads across tiers, and the fallback to SQL once Redis no longer holds a step."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from common.errors import ConfigurationError
from common.recent_state import RecentStates
from common.tiers import RedisIMConfig, RedisSTMConfig, TierKeys, make_entry, pack_entry, unpack_entry
from producer import RedisBufferedDataLogger
from tests.helpers import wait_for

STM = RedisSTMConfig(ttl_s=300, memory_limit=5)
IM = RedisIMConfig(ttl_s=3000, memory_limit=8, compression_level=6)
AGENTS = ("a1", "a2")


def state(agent_id: str, step: int) -> tuple:
    return (agent_id, step * 1.5, 2.25, 3.0 + step, 9.5, 10.0, step % 3, step % 2 == 0, 0.125 * step, step)


def expected_entry(agent_id: str, step: int) -> dict:
    columns = ("agent_id", "position_x", "position_y", "resource_level", "current_health", "starting_health",
               "starvation_counter", "is_defending", "total_reward", "age")
    return make_entry(step, dict(zip(columns, state(agent_id, step))))


def run(redis_server, namespace, simulation_id, steps, stm=STM, im=IM, first=1, **options):
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     redis_stm_config=stm, redis_im_config=im, **options)
    for step in range(first, first + steps):
        logger.log_step(step, [state(agent_id, step) for agent_id in AGENTS], [], {"total_agents": 2})
    return logger


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def steps_in(client, timeline_key) -> list[int]:
    return [int(member) for member in client.zrange(timeline_key, 0, -1)]


def test_limits_trim_by_rank_and_moved_entries_land_compressed_in_im(redis_server, client, namespace, simulation_id):
    # Given: 20 steps for two agents with STM limit 5 and IM limit 8
    logger = run(redis_server, namespace, simulation_id, steps=20)
    assert logger.close().complete
    keys = TierKeys(namespace, STM, IM)
    for agent_id in AGENTS:
        stm_hash, stm_staged, stm_timeline = keys.stm_keys(simulation_id, agent_id)
        im_hash, im_timeline = keys.im_keys(simulation_id, agent_id)
        # Then: STM holds the 5 newest steps, IM the 8 before them, nothing twice, nothing else
        assert steps_in(client, stm_timeline) == list(range(16, 21))
        assert sorted(int(f) for f in client.hkeys(stm_hash)) == list(range(16, 21))
        assert sorted(int(f) for f in client.hkeys(stm_staged)) == list(range(16, 21))
        assert steps_in(client, im_timeline) == list(range(8, 16))
        assert sorted(int(f) for f in client.hkeys(im_hash)) == list(range(8, 16))
        for step in range(16, 21):
            assert unpack_entry(client.hget(stm_hash, step)) == expected_entry(agent_id, step)
        for step in range(8, 16):
            stored = client.hget(im_hash, step)
            # compression really applied: smaller than the entry, and it round-trips
            assert len(stored) < len(pack_entry(expected_entry(agent_id, step))) * 0.6
            assert unpack_entry(stored, compressed=True) == expected_entry(agent_id, step)


def test_ttls_are_set_and_refreshed_on_each_write(redis_server, client, namespace, simulation_id):
    logger = run(redis_server, namespace, simulation_id, steps=7)
    assert logger.flush_all_buffers().all_in_redis
    keys = TierKeys(namespace, STM, IM).all_keys(simulation_id, "a1")
    assert all(0 < client.ttl(key) <= STM.ttl_s for key in keys[:3])
    assert all(STM.ttl_s < client.ttl(key) <= IM.ttl_s for key in keys[3:])
    # When: the keys have aged, and the agent writes again
    for key in keys:
        client.expire(key, 10)
    logger.log_step(8, [state("a1", 8)], [], {})
    assert logger.close().complete
    # Then: every TTL is back to its tier's full value
    assert all(client.ttl(key) > STM.ttl_s - 30 for key in keys[:3])
    assert all(client.ttl(key) > IM.ttl_s - 30 for key in keys[3:])


def test_memory_per_agent_stays_bounded(redis_server, client, namespace, simulation_id):
    # Given: 40 steps written; When: 360 more, one batch carrying hundreds of steps of one agent
    logger = run(redis_server, namespace, simulation_id, steps=40)
    assert logger.flush_all_buffers().all_in_redis
    keys = TierKeys(namespace, STM, IM).all_keys(simulation_id, "a1")
    after_40 = sum(client.memory_usage(key, samples=0) for key in keys)
    for step in range(41, 400):
        logger.log_step(step, [state("a1", step)], [], {})
    assert logger.close().complete
    after_400 = sum(client.memory_usage(key, samples=0) for key in keys)
    assert [client.zcard(keys[2]), client.zcard(keys[4])] == [STM.memory_limit, IM.memory_limit]
    assert after_400 <= after_40 * 1.15, (after_40, after_400)  # a few more digits per step number


def test_reads_span_both_tiers_then_sql_and_fall_back_when_keys_expire(
        redis_server, client, sqlite_url, sink_engine, namespace, simulation_id, worker):
    # Given: 20 steps in Redis (5 in STM, 8 in IM) and all of them persisted to SQL
    short = RedisSTMConfig(ttl_s=2, memory_limit=5)
    brief = RedisIMConfig(ttl_s=3, memory_limit=8)
    logger = run(redis_server, namespace, simulation_id, steps=20, stm=short, im=brief)
    assert logger.close().complete
    worker.drain()
    reader = RecentStates(client, namespace, short, brief, engine=sink_engine)
    redis_only = RecentStates(client, namespace, short, brief)
    newest = [expected_entry("a1", step) for step in range(20, 0, -1)]

    # Then: recent_states crosses STM, IM and SQL in order, state_at finds every tier
    assert redis_only.recent_states(simulation_id, "a1", 10) == newest[:10]
    assert redis_only.recent_states(simulation_id, "a1", 18) == newest[:13]
    assert reader.recent_states(simulation_id, "a1", 18) == newest[:18]
    assert [reader.state_at(simulation_id, "a1", s) for s in (20, 9, 2)] == [newest[0], newest[11], newest[18]]
    assert redis_only.state_at(simulation_id, "a1", 2) is None

    # When: the tier keys expire
    keys = TierKeys(namespace, short, brief).all_keys(simulation_id, "a1")
    wait_for(lambda: client.exists(*keys) == 0, timeout_s=10, what="tier keys to expire")

    # Then: the same answers come from SQL, and Redis alone has none
    assert reader.recent_states(simulation_id, "a1", 10) == newest[:10]
    assert reader.state_at(simulation_id, "a1", 20) == newest[0]
    assert redis_only.recent_states(simulation_id, "a1", 10) == []


def test_evicted_tier_keys_fall_back_to_sql_and_volatile_ttl_never_evicts_the_stream(
        redis_server, client, sqlite_url, sink_engine, namespace, simulation_id, worker):
    # Given: tiers for many agents, and a stream not yet persisted
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     redis_stm_config=STM, redis_im_config=IM)
    agents = [f"agent-{a}" for a in range(200)]
    for step in range(1, 16):
        logger.log_step(step, [state(a, step) for a in agents], [], {})
    assert logger.flush_all_buffers().all_in_redis
    stream_length = client.xlen(f"{namespace}:{{{simulation_id}}}:stream")

    # When: Redis runs out of memory under volatile-ttl
    client.config_set("maxmemory-policy", "volatile-ttl")
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used - 300_000)
    try:
        wait_for(lambda: client.set("probe", b"x") and client.info("stats")["evicted_keys"] > 0,
                 timeout_s=10, what="eviction")
    finally:
        client.config_set("maxmemory", 0)

    # Then: only tier keys went; the stream is whole, and every read still answers, from SQL
    assert client.xlen(f"{namespace}:{{{simulation_id}}}:stream") == stream_length
    assert logger.close().complete
    worker.drain()
    reader = RecentStates(client, namespace, STM, IM, engine=sink_engine)
    for agent_id in agents:
        assert reader.recent_states(simulation_id, agent_id, 3) == [expected_entry(agent_id, s) for s in (15, 14, 13)]
        assert reader.state_at(simulation_id, agent_id, 1) == expected_entry(agent_id, 1)


def test_the_flag_off_writes_no_tier_keys(redis_server, client, namespace, simulation_id):
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace)
    assert logger.producer._sender.pipeline_extras is None
    logger.log_step(1, [state("a1", 1)], [], {})
    assert logger.close().complete
    assert [key for key in client.keys(f"{namespace}:*") if b":stm:" in key or b":im:" in key] == []


def test_tier_keys_share_the_simulations_cluster_slot_and_configs_are_validated():
    keys = TierKeys("ns", RedisSTMConfig(), RedisIMConfig())
    slots = {key_slot(key.encode()) for key in keys.all_keys("sim-1", "agent-{odd}:t:x")}
    assert slots == {key_slot(b"ns:{sim-1}:stream")}
    for bad in (dict(ttl_s=0), dict(memory_limit=-1), dict(namespace=""), dict(namespace="a{b}")):
        with pytest.raises(ConfigurationError):
            RedisSTMConfig(**bad)
    with pytest.raises(ConfigurationError):
        RedisIMConfig(compression_level=0)
    with pytest.raises(ConfigurationError):
        TierKeys("ns", RedisSTMConfig(namespace="x"), RedisIMConfig(namespace="x"))


def test_a_tier_that_lost_a_key_is_cleared_so_redis_never_answers_with_a_hole(
        redis_server, client, sqlite_url, sink_engine, namespace, simulation_id, worker):
    # Given: steps 1..20 persisted; STM holds 16..20, IM 8..15; then the STM timeline is evicted
    logger = run(redis_server, namespace, simulation_id, steps=20)
    assert logger.flush_all_buffers().all_in_redis
    keys = TierKeys(namespace, STM, IM).all_keys(simulation_id, "a1")
    stm_hash, _, stm_timeline, im_hash, im_timeline = keys
    client.delete(stm_timeline)
    reader = RecentStates(client, namespace, STM, IM, engine=None)
    # Then: Redis cannot vouch for the newest steps, so it does not answer (IM's 15..8 would be stale)
    assert reader.recent_states(simulation_id, "a1", 3) == []

    # When: the agent writes again
    logger.log_step(21, [state("a1", 21)], [], {})
    assert logger.close().complete
    worker.drain()

    # Then: the broken tiers were cleared and restarted; reads continue seamlessly from SQL
    assert steps_in(client, stm_timeline) == [21] and client.exists(im_hash, im_timeline) == 0
    assert sorted(int(f) for f in client.hkeys(stm_hash)) == [21]
    full = RecentStates(client, namespace, STM, IM, engine=sink_engine)
    assert full.recent_states(simulation_id, "a1", 4) == [expected_entry("a1", s) for s in (21, 20, 19, 18)]


def test_a_failing_tier_write_never_holds_up_the_stream(redis_server, client, namespace, simulation_id):
    # Given: a1's short-term keys taken by values of the wrong type
    keys = TierKeys(namespace, STM, IM)
    for key in keys.stm_keys(simulation_id, "a1"):
        client.set(key, b"not a hash or a sorted set")
    # When: both agents log
    logger = run(redis_server, namespace, simulation_id, steps=10)
    report = logger.close()
    # Then: every record is in the stream, nothing journaled, and a2's tiers are whole
    assert report.all_in_redis and report.journaled == 0 and logger.producer.stats()["failed_attempts"] == 0
    assert steps_in(client, keys.stm_keys(simulation_id, "a2")[2]) == list(range(6, 11))
