"""A dead consumer's name leaves the group once its entries are claimed, never before."""

from __future__ import annotations

import time

from common.keys import Keys
from consumer.group_cleanup import remove_dead_consumers
from producer import RedisBufferedDataLogger
from tests.helpers import assert_rows_match, fast_settings, produce_workload, run_worker_until

GROUP = "simstream"


def consumer_names(client, stream: str) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, GROUP)}


def test_only_idle_consumers_holding_nothing_are_removed_and_never_ourselves(redis_server):
    # Given: a consumer holding an entry, one holding nothing, and ourselves holding nothing
    client = redis_server.client()
    client.xgroup_create("s", GROUP, id="0", mkstream=True)
    holder_id = client.xadd("s", {"r": b"1"})
    client.xreadgroup(GROUP, "holder", {"s": ">"})
    client.xadd("s", {"r": b"2"})
    client.xreadgroup(GROUP, "empty", {"s": ">"})
    client.xack("s", GROUP, *[e[0] for e in client.xreadgroup(GROUP, "empty", {"s": "0"})[0][1]])
    client.xadd("s", {"r": b"3"})
    client.xreadgroup(GROUP, "me", {"s": ">"})
    client.xack("s", GROUP, *[e[0] for e in client.xreadgroup(GROUP, "me", {"s": "0"})[0][1]])
    time.sleep(0.05)  # every name idle for longer than the 10 ms threshold

    # When / Then: only the idle, empty, foreign name goes; a long threshold keeps everyone
    assert remove_dead_consumers(client, "s", GROUP, "me", min_idle_ms=3_600_000) == []
    assert remove_dead_consumers(client, "s", GROUP, "me", min_idle_ms=10) == ["empty"]
    assert consumer_names(client, "s") == {"holder": 1, "me": 0}
    assert client.xpending("s", GROUP)["pending"] == 1  # the held entry is still pending

    # When: the holder's entry is acknowledged, it is removable too
    client.xack("s", GROUP, holder_id)
    time.sleep(0.05)
    assert remove_dead_consumers(client, "s", GROUP, "me", min_idle_ms=10) == ["holder"]
    assert consumer_names(client, "s") == {"me": 0}


def test_a_dead_consumers_name_disappears_after_its_entries_are_claimed_and_not_before(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: a consumer that took entries of a running simulation and died without acknowledging
    client = redis_server.client()
    stream = Keys(namespace).stream(simulation_id)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, entry_records=2)
    expected = produce_workload(logger, steps=3, agents=2)
    logger.flush_all_buffers()
    client.xgroup_create(stream, GROUP, id="0")
    client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=5)
    settings = fast_settings(redis_server.url, sqlite_url, namespace, block_ms=10, claim_interval_ms=20)

    # When: a live worker runs many claim passes while the ghost's entries are not yet claimable
    patient = settings.replace(claim_idle_ms=3_600_000)
    passes_before = time.monotonic()
    run_worker_until(patient, lambda: time.monotonic() - passes_before > 1.0 and
                     consumer_names(client, stream).get("survivor") == 0, what="the survivor to catch up")

    # Then: the ghost keeps its name and its five entries
    assert consumer_names(client, stream)["ghost"] == 5

    # When: a worker may claim them (claim idle 0; dead after 10 read timeouts = 100 ms idle)
    run_worker_until(settings.replace(claim_idle_ms=0), lambda: "ghost" not in consumer_names(client, stream),
                     what="the ghost's name to go")

    # Then: the ghost's entries were persisted by the survivor, which kept its own name
    assert consumer_names(client, stream) == {"survivor": 0}
    logger.close()
    assert_rows_match(sink_engine, simulation_id, expected)
