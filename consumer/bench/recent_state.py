"""The benchmark row "read recent state: Redis vs SQLite".

:func:`measure_recent_state_reads` writes the same synthetic agent states to the Redis tiers
(with the producer's own commands, from :mod:`common.tiers`) and to a fresh SQLite
``agent_states`` table, then times the same question against each: an agent's ``n`` latest
states. Both answers are checked equal before anything is timed.
"""

from __future__ import annotations

import random
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, insert, select, text

from common import schema
from common.recent_state import RecentStates
from common.tiers import STATE_COLUMNS, TierWriter, make_entry

_SIMULATION = "bench-recent-state"
_PIPELINE_AGENTS = 200


def measure_recent_state_reads(redis_url: str, *, agents: int = 100, steps: int = 200, n: int = 10,
                               reads: int = 2000, seed: int = 7) -> dict[str, Any]:
    """Reads per second and p50/p99 latency (µs) of ``recent_states(simulation, agent, n)`` from
    Redis and of the same query on SQLite, over the same ``agents`` x ``steps`` states.

    SQLite gets the reference simulation's ``agent_states(agent_id, step_number)`` index, so it is
    compared at its best. Writes under a private key namespace and a temporary file, both removed
    afterwards. Raises ValueError if the two stores do not give the same answer.
    """
    client = redis.Redis.from_url(redis_url)
    namespace = f"simstream-bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="simstream-bench-") as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        try:
            _fill(client, engine, namespace, agents, steps)
            reader = RecentStates(client, namespace)
            picks = random.Random(seed).choices([f"agent-{a}" for a in range(agents)], k=reads)
            with engine.connect() as connection:
                sql = lambda agent_id: _sql_recent(connection, agent_id, n)  # noqa: E731
                redis_read = lambda agent_id: reader.recent_states(_SIMULATION, agent_id, n)  # noqa: E731
                if redis_read(picks[0]) != sql(picks[0]):
                    raise ValueError("Redis and SQLite disagree on an agent's recent states")
                result = {"redis": _time(redis_read, picks), "sqlite": _time(sql, picks)}
        finally:
            engine.dispose()
            _remove_keys(client, namespace)
            client.close()
    result["speedup_p50"] = round(result["sqlite"]["p50_us"] / result["redis"]["p50_us"], 2)
    return {"operation": "read recent state", "agents": agents, "steps": steps, "n": n, "reads": reads,
            **result}


def _fill(client: redis.Redis, engine, namespace: str, agents: int, steps: int) -> None:
    writer = TierWriter(namespace)
    schema.metadata.create_all(engine, tables=[schema.agent_states])
    with engine.begin() as connection:  # the reference's index; not added to the shared metadata
        connection.execute(text("CREATE INDEX IF NOT EXISTS idx_agent_states_agent_step "
                                "ON agent_states (agent_id, step_number)"))
    for first in range(0, agents, _PIPELINE_AGENTS):
        entries = [make_entry(step, _state(f"agent-{a}", step))
                   for a in range(first, min(first + _PIPELINE_AGENTS, agents)) for step in range(1, steps + 1)]
        pipe = client.pipeline(transaction=False)
        for command in writer.commands(_SIMULATION, entries):
            pipe.execute_command(*command)
        pipe.execute()
        rows = [{"id": f"{_SIMULATION}:{e['agent_id']}-{e['step_number']}", "simulation_id": _SIMULATION, **e}
                for e in entries]
        with engine.begin() as connection:
            connection.execute(insert(schema.agent_states), rows)


def _state(agent_id: str, step: int) -> dict[str, Any]:
    return {"agent_id": agent_id, "position_x": step * 0.5, "position_y": 1.25, "resource_level": 3.0 + step,
            "current_health": 9.5, "starting_health": 10.0, "starvation_counter": step % 4,
            "is_defending": step % 2 == 0, "total_reward": step * 0.125, "age": step}


def _sql_recent(connection, agent_id: str, n: int) -> list[dict[str, Any]]:
    table = schema.agent_states
    query = (select(*[table.c[name] for name in STATE_COLUMNS])
             .where(table.c.simulation_id == _SIMULATION, table.c.agent_id == agent_id)
             .order_by(table.c.step_number.desc()).limit(n))
    return [{**row._mapping, "is_defending": bool(row.is_defending)} for row in connection.execute(query)]


def _time(read, agent_ids: list[str]) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for agent_id in agent_ids:
        begin = time.perf_counter()
        read(agent_id)
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"reads_per_s": round(len(agent_ids) / elapsed, 1),
            "p50_us": round(latencies[len(latencies) // 2] * 1e6, 1),
            "p99_us": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6, 1)}


def _remove_keys(client: redis.Redis, namespace: str) -> None:
    batch = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)
