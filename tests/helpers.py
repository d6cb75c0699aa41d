"""Test helpers: fast consumer settings, in-process workers, a workload that remembers every row it
produced, and row-by-row comparison."""

from __future__ import annotations

import contextlib
import glob
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from common import schema
from common.connections import simulation_db_url
from common.settings import SIMULATION_ID_PLACEHOLDER, ConsumerSettings
from consumer.worker import Worker
from producer import RedisBufferedDataLogger

ACTIONS = ("move", "gather", "attack")


def wait_for(condition, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


# -- fast consumers ---------------------------------------------------------------------------

FAST = ("--block-ms", "100")
"""CLI arguments for ``simstream consume`` in tests: a short blocking read, so stops and drains are quick."""

LEFTOVERS = ("--wait-for-simulation-s", "0")
"""CLI arguments for a drain run after consumers that may have finished everything: nothing left is
nothing to wait for."""

FAST_SETTINGS = {"block_ms": 100, "discover_interval_ms": 50}
"""The same for an in-process worker: a short blocking read and frequent stream discovery."""

WORKER_TIMEOUT_S = 60.0
"""How long an in-process worker may take to drain or to meet a test's condition."""


def fast_settings(redis_url: str, db_url: str, namespace: str, **overrides) -> ConsumerSettings:
    """Consumer settings for an in-process worker: ``FAST_SETTINGS``, then the test's own ``overrides``."""
    return ConsumerSettings(redis_url=redis_url, db_url=db_url, namespace=namespace,
                            **{**FAST_SETTINGS, **overrides})


def run_to_exit(worker: Worker, timeout_s: float = WORKER_TIMEOUT_S) -> int:
    """Run ``worker`` in a thread until its loop ends (drained or stopped); its exit code.

    A worker still running after ``timeout_s`` is asked to stop and the test fails.
    """
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        worker.request_stop("test timeout")
        thread.join(30)
        pytest.fail(f"worker {worker.name} still running after {timeout_s}s")
    assert exit_codes, f"worker {worker.name} raised (see the log above)"
    return exit_codes[0]


def drain_with_worker(redis_url: str, db_url: str, namespace: str, slot: int = 0, name: str = "test-worker",
                      **overrides) -> Worker:
    """Run one fast worker in this process until every simulation is persisted."""
    worker = Worker(fast_settings(redis_url, db_url, namespace, drain=True, **overrides), slot=slot, name=name)
    assert run_to_exit(worker) == 0
    return worker


def start_worker(redis_url: str, db_url: str, namespace: str, slot: int = 0, name: str = "test-worker",
                 **overrides) -> tuple[Worker, threading.Thread]:
    """A fast worker running in a thread of this process; the caller stops it (``request_stop``)."""
    worker = Worker(fast_settings(redis_url, db_url, namespace, **overrides), slot=slot, name=name)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


@contextlib.contextmanager
def worker_running(settings: ConsumerSettings, slot: int = 0, name: str = "test-worker"):
    """A worker with ``settings`` in a thread while the block runs, stopped cleanly at its end."""
    worker = Worker(settings, slot=slot, name=name)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop("test")
        thread.join(30)
    assert not thread.is_alive()


def running_worker(redis_url: str, db_url: str, namespace: str, slot: int = 0, name: str = "test-worker",
                   **overrides):
    """One fast worker in a thread while the block runs (``with running_worker(...):``), stopped at its end."""
    return worker_running(fast_settings(redis_url, db_url, namespace, **overrides), slot=slot, name=name)


def run_worker_until(settings: ConsumerSettings, condition, what: str, slot: int = 0, name: str = "survivor",
                     timeout_s: float = WORKER_TIMEOUT_S) -> Worker:
    """Run a worker in a thread until ``condition()`` holds (failing after ``timeout_s``), then stop it."""
    with worker_running(settings, slot=slot, name=name) as worker:
        wait_for(condition, timeout_s=timeout_s, what=what)
    return worker


def produce_workload(logger: RedisBufferedDataLogger, steps: int, agents: int, resources: int = 5,
                     first_step: int = 1) -> dict[str, Counter]:
    """Log a deterministic run; return the identity of every row it should create, per table.

    Identities are tuples that are unique per row, so comparing Counters finds a lost row and a
    doubled one alike.
    """
    sim = logger.simulation_id
    expected: dict[str, Counter] = {name: Counter() for name in
                                    ("agents", "agent_states", "agent_actions", "resource_states",
                                     "simulation_steps")}
    if first_step == 1:
        for a in range(agents):
            logger.log_agent(f"a{a}", 0, "system", (float(a), 0.0), 5.0, 10.0)
            expected["agents"][(f"a{a}",)] += 1
    for step in range(first_step, first_step + steps):
        states = []
        for a in range(agents):
            for k in range(2):
                logger.log_agent_action(step, f"a{a}", ACTIONS[(step + a + k) % 3], reward=0.5,
                                        details={"k": k})
                expected["agent_actions"][(step, f"a{a}", json.dumps({"k": k}))] += 1
            states.append((f"a{a}", 1.0, 2.0, 3.0, 9.0, 10.0, 0, False, 0.5, step))
            expected["agent_states"][(f"{sim}:a{a}-{step}",)] += 1
        resource_rows = [(f"resource_{r}", 1.0, 0.0, 0.0) for r in range(resources)]
        for r in range(resources):
            expected["resource_states"][(step, f"resource_{r}")] += 1
        logger.log_step(step, states, resource_rows, {"total_agents": agents})
        expected["simulation_steps"][(step,)] += 1
    return expected


IDENTITY_COLUMNS = {
    "agents": ("agent_id",),
    "agent_states": ("id",),
    "agent_actions": ("step_number", "agent_id", "details"),
    "resource_states": ("step_number", "resource_id"),
    "simulation_steps": ("step_number",),
}


class PerSimulationEngines:
    """Read access to a per-simulation sink (``sqlite:///runs/{simulation_id}.db``): one engine per file."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._engines: dict[str, object] = {}

    def for_simulation(self, simulation_id: str):
        """The engine on ``simulation_id``'s own file."""
        url = simulation_db_url(self.template, simulation_id)
        if url not in self._engines:
            self._engines[url] = create_engine(url)
        return self._engines[url]

    def every_file(self) -> list:
        """An engine on every simulation file that exists now."""
        pattern = make_url(self.template).database.replace(SIMULATION_ID_PLACEHOLDER, "*")
        found = []
        for path in sorted(glob.glob(pattern)):
            if path.endswith(("-wal", "-shm", "-journal")):
                continue
            url = f"sqlite:///{path}"
            found.append(self._engines.setdefault(url, create_engine(url)))
        return found

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()


def engines_of(sink, simulation_id: str | None = None) -> list:
    """The engines to read for ``simulation_id`` (None: every simulation) on any kind of sink."""
    if not isinstance(sink, PerSimulationEngines):
        return [sink]
    return [sink.for_simulation(simulation_id)] if simulation_id else sink.every_file()


def persisted_identities(engine, simulation_id: str) -> dict[str, Counter]:
    """The identity of every row in SQL for ``simulation_id``, per table (duplicates counted)."""
    found = {}
    [engine] = engines_of(engine, simulation_id)
    with engine.connect() as connection:
        for table_name, columns in IDENTITY_COLUMNS.items():
            table = schema.metadata.tables[table_name]
            query = select(*[table.c[c] for c in columns]).where(table.c.simulation_id == simulation_id)
            found[table_name] = Counter(tuple(row) for row in connection.execute(query))
    return found


def assert_rows_match(engine, simulation_id: str, expected: dict[str, Counter]) -> None:
    """Every expected row is in SQL exactly once, and nothing else is."""
    found = persisted_identities(engine, simulation_id)
    for table_name, want in expected.items():
        got = found[table_name]
        missing = want - got
        doubled = {key: n for key, n in got.items() if n > 1}
        extra = got - want
        assert not missing and not doubled and not extra, (
            f"{table_name}: {sum(missing.values())} missing, {len(doubled)} doubled, "
            f"{sum(extra.values())} unexpected (e.g. missing {list(missing)[:3]}, doubled {list(doubled)[:3]})")


def dead_letter_count(engine, simulation_id: str | None = None) -> int:
    query = select(schema.dead_letters.c.id)
    if simulation_id:
        query = query.where(schema.dead_letters.c.simulation_id == simulation_id)
    total = 0
    for each in engines_of(engine, simulation_id):
        with each.connect() as connection:
            total += len(connection.execute(query).all())
    return total


def total_expected(expected: dict[str, Counter]) -> int:
    return sum(sum(c.values()) for c in expected.values())


@dataclass(frozen=True)
class StreamRecord:
    """One record as it sits in a stream (either entry format): its kind, sequence number and
    columns (its row, by column name)."""

    kind: str
    seq: int
    fields: dict


def stream_records(client, stream: str, simulation_id: str = "", layout: str = "standalone") -> list[StreamRecord]:
    """Every record in ``stream``, in sequence order within each entry (entries in stream order)."""
    from common.codec import decode_entry
    from common.layouts import layout_named
    from common.records import KINDS
    from common.rows import RowMaker, row_columns

    rows = RowMaker(layout_named(layout))
    found = []
    for _, fields in client.xrange(stream):
        decoded = decode_entry(fields[b"r"], simulation_id, rows)
        by_offset = {offset: (kind, dict(zip(row_columns(KINDS[kind]), row)))
                     for kind, offsets, group_rows in decoded.groups for offset, row in zip(offsets, group_rows)}
        for offset, _reason in decoded.rejects:
            by_offset[offset] = (decoded._reject_items[offset][1], {}) if decoded._reject_items else ("?", {})
        found += [StreamRecord(kind, decoded.first_seq + offset, columns)
                  for offset, (kind, columns) in sorted(by_offset.items())]
    return found
