"""``simstream demo``: a real simulation process, real consumer processes, and a check.

The synthetic simulation (``python -m producer.demo_simulation``) embeds the producer and runs as
its own process; ``simstream consume --drain`` persists it with N workers. The demo shows
progress while it waits, then compares, table by table, the rows the simulation logged with the
rows in SQL, and exits 0 only if they match and nothing was dead-lettered.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import redis
from sqlalchemy import func, select

from common import schema
from common.connections import check_redis, create_sink_engine, ensure_schema, redis_client
from consumer.ops.embedded_redis import EmbeddedRedis
from common.errors import ExitCode, RedisUnavailable
from common.keys import Keys
from common.masking import mask_secrets
from common.settings import (DEFAULT_GROUP, DEFAULT_REDIS_URL, ENV_DB_URL, ENV_NAMESPACE, ENV_REDIS_CA_CERTS,
                             ENV_REDIS_URL, redis_url_with_ca)
from consumer.ops.progress import DrainProgress, ProgressDisplay

_TIMEOUT_S = 900.0


@contextlib.contextmanager
def demo_redis(explicit_url: str | None, embedded: bool = False,
               ca_certs: str | None = None) -> Iterator[tuple[str, str]]:
    """The Redis to use: the configured one (with ``ca_certs`` as its CA), else the default if it
    answers, else an embedded one (always an embedded one if ``embedded``). Yields (url, description).
    """
    url = None if embedded else explicit_url or os.environ.get(ENV_REDIS_URL)
    if url:
        yield redis_url_with_ca(url, ca_certs), "configured"
        return
    if not embedded and _answers(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL, "found at the default address"
        return
    with tempfile.TemporaryDirectory(prefix="simstream-redis-") as data_dir:
        with EmbeddedRedis(data_dir) as server:
            yield server.url, f"embedded ({server.binary})"


def _answers(url: str) -> bool:
    try:
        redis_client(url, socket_timeout_s=1.0).ping()
        return True
    except redis.RedisError:
        return False


def _count_rows(engine, simulation_id: str) -> dict[str, int]:
    counts = {}
    with engine.connect() as connection:
        for table in schema.DATA_TABLES:
            query = select(func.count()).select_from(table).where(table.c.simulation_id == simulation_id)
            counts[table.name] = connection.execute(query).scalar_one()
        dead = schema.dead_letters
        counts["dead_letters"] = connection.execute(
            select(func.count()).select_from(dead).where(dead.c.simulation_id == simulation_id)).scalar_one()
    return counts


def run_demo(agents: int, steps: int, consumers: int, db_url: str, redis_url: str | None,
             embedded: bool = False, redis_ca_certs: str | None = None) -> int:
    """Run the demo end to end; returns the exit code. URLs are printed with passwords masked."""
    simulation_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    namespace = f"simstream-demo-{secrets.token_hex(4)}"  # a private namespace: --drain waits only for us
    engine = create_sink_engine(db_url, create_folder=False)
    ensure_schema(engine)
    with demo_redis(redis_url, embedded, redis_ca_certs) as (url, where):
        client = redis_client(url)
        check_redis(client, url)
        print(f"simstream demo: simulation {simulation_id}, {agents} agents x {steps} steps, "
              f"{consumers} consumer processes\n  redis: {mask_secrets(url)} ({where})\n"
              f"  database: {mask_secrets(db_url)}", flush=True)
        # The URL carries the CA if one was given; an empty setting is ignored (embedded Redis: no TLS).
        env = {**os.environ, ENV_REDIS_URL: url, ENV_NAMESPACE: namespace, ENV_DB_URL: db_url, ENV_REDIS_CA_CERTS: ""}
        simulation = subprocess.Popen(
            [sys.executable, "-m", "producer.demo_simulation", "--simulation-id", simulation_id,
             "--agents", str(agents), "--steps", str(steps)], env=env, stdout=subprocess.PIPE, text=True)
        keys = Keys(namespace)
        _wait_registered(client, keys, simulation_id, simulation)
        consumer = subprocess.Popen(
            [sys.executable, "-m", "consumer", "consume", "--processes", str(consumers), "--drain",
             "--no-progress", "--log-level", "WARNING"], env=env)
        try:
            produced = _watch(client, keys, simulation_id, simulation, consumer)
        finally:
            for process in (simulation, consumer):
                if process.poll() is None:
                    process.terminate()
                    process.wait(30)
    return _verify(engine, simulation_id, produced, consumer.returncode)


def _wait_registered(client, keys: Keys, simulation_id: str, simulation: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not client.sismember(keys.registry, simulation_id):
        if simulation.poll() is not None or time.monotonic() > deadline:
            raise RedisUnavailable("the demo simulation never reached Redis; see its output above")
        time.sleep(0.05)


def _watch(client, keys: Keys, simulation_id: str, simulation: subprocess.Popen,
           consumer: subprocess.Popen) -> dict:
    """Show records persisted of records logged (as ``consume --drain`` counts them, from Redis)
    until the simulation and the consumers have both finished. Rows are compared afterwards:
    one record is not always one row (a simulation's start and end share one)."""
    deadline = time.monotonic() + _TIMEOUT_S
    records = DrainProgress(client, keys, DEFAULT_GROUP)  # sampled here, not in a thread of its own
    with ProgressDisplay("persisted") as progress:
        while consumer.poll() is None or simulation.poll() is None:
            if time.monotonic() > deadline:
                break
            progress.update(*records.sample())
            time.sleep(0.5)
        produced = json.loads(simulation.stdout.read().strip().splitlines()[-1])
        persisted, _ = records.sample()
        # Consumers remove a simulation from Redis once every record of it is persisted.
        removed = not client.sismember(keys.registry, simulation_id)
        progress.update(produced["records"] if removed else persisted, produced["records"])
    return produced


def _verify(engine, simulation_id: str, produced: dict, consumer_code: int | None) -> int:
    """Print produced vs persisted per table; 0 only if every table matches."""
    persisted = _count_rows(engine, simulation_id)
    expected = {table.name: produced["rows"].get(table.name, 0) for table in schema.DATA_TABLES}
    expected["dead_letters"] = 0
    width = max(len(name) for name in expected)
    print(f"\n{'table':<{width}}  {'produced':>9}  {'persisted':>9}")
    for name, count in expected.items():
        mark = "ok" if persisted[name] == count else "MISMATCH"
        print(f"{name:<{width}}  {count:>9}  {persisted[name]:>9}  {mark}")
    matches = all(persisted[name] == count for name, count in expected.items())
    total = sum(expected.values())
    if matches and consumer_code == 0:
        print(f"\nok: {total} rows produced and persisted, one for one; consumers drained and exited 0")
        return ExitCode.OK
    print(f"\nFAILED: rows differ or consumers exited {consumer_code}", file=sys.stderr)
    return ExitCode.VERIFICATION_FAILED
