"""The "read recent state: Redis vs SQLite" measurement returns sane numbers and cleans up."""

from __future__ import annotations

from consumer.bench.recent_state import measure_recent_state_reads


def test_the_measurement_returns_positive_rates_and_latencies_and_leaves_no_keys(redis_server):
    result = measure_recent_state_reads(redis_server.url, agents=20, steps=30, n=5, reads=200)
    assert (result["operation"], result["agents"], result["steps"], result["n"], result["reads"]) == (
        "read recent state", 20, 30, 5, 200)
    for store in ("redis", "sqlite"):
        numbers = result[store]
        assert numbers["reads_per_s"] > 0 and 0 < numbers["p50_us"] <= numbers["p99_us"], (store, numbers)
    assert result["speedup_p50"] > 0
    client = redis_server.client()
    assert client.keys("simstream-bench-*") == []
    client.close()
