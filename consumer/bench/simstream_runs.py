"""simstream itself under the benchmark: the producer process, the consumer processes, end to end.

Consumer throughput is taken from Redis: from the first delivery to the group until every entry
is acknowledged, which the worker does only after the rows committed; the rows are then counted
in SQL, table by table, against the mix. End to end runs a paced producer (consumers keep up),
samples log() -> committed latency per step from the ``simulation_steps`` rows, SIGKILLs a worker
a quarter of the way in and times how long until every entry it held is committed again, and
reads Redis's peak memory.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
from sqlalchemy import func, select, text

from common import schema
from common.connections import create_sink_engine, ensure_schema
from common.keys import Keys
from common.settings import DEFAULT_GROUP
from common.workload import Mix
from consumer.bench.environment import (BenchError, PacedProducer, consumer_processes, group_progress,
                                        poll_until, run_producer, wait_exit)
from consumer.bench.model import BenchContext
from consumer.worker import consumer_name

_POLL_S = 0.005
_RUN_TIMEOUT_S = 900.0


def _names() -> tuple[str, str]:
    token = secrets.token_hex(3)
    return f"bench-{token}", f"simstream-bench-{token}"


def producer_run(ctx: BenchContext) -> dict[str, Any]:
    """The producer process flat out into a fresh Redis with no consumers."""
    simulation_id, namespace = _names()
    with ctx.fresh_redis() as server:
        return run_producer(server.url, namespace, simulation_id, ctx.mix)


def count_rows(db_url: str, simulation_id: str) -> dict[str, int]:
    """Rows per data table for ``simulation_id``."""
    engine = create_sink_engine(db_url)
    try:
        with engine.connect() as connection:
            return {table.name: connection.execute(select(func.count()).select_from(table).where(
                table.c.simulation_id == simulation_id)).scalar_one() for table in schema.DATA_TABLES}
    finally:
        engine.dispose()


def check_rows(db_url: str, simulation_id: str, mix: Mix) -> None:
    """BenchError unless every row of the mix is in SQL exactly as often as it was logged."""
    found = count_rows(db_url, simulation_id)
    expected = {**mix.rows_by_table(), "simstream_simulations": 1}
    wrong = {table: (found.get(table, 0), want) for table, want in expected.items() if found.get(table, 0) != want}
    if wrong:
        raise BenchError(f"rows in SQL differ from the records logged (found, expected): {wrong}")


def consumers_run(ctx: BenchContext, processes: int) -> dict[str, Any]:
    """Records/s from a filled stream to committed rows with ``processes`` consumer processes."""
    simulation_id, namespace = _names()
    keys = Keys(namespace)
    with ctx.fresh_redis() as server, ctx.fresh_database(f"consumers-{processes}") as db_url:
        run_producer(server.url, namespace, simulation_id, ctx.mix)  # fill the stream (not timed)
        client = redis.Redis.from_url(server.url)
        stream = keys.stream(simulation_id)
        last_id = client.xinfo_stream(stream)["last-generated-id"].decode()
        entries = client.xlen(stream)
        log_path = ctx.scratch / f"consumers-{processes}.log"
        with consumer_processes(server.url, db_url, namespace, processes, log_path) as consumers:
            started = poll_until(lambda: _delivered(client, stream) and time.monotonic(),
                                 _RUN_TIMEOUT_S, _POLL_S, "the consumers' first read")
            finished = poll_until(lambda: _all_acked(client, stream, last_id) and time.monotonic(),
                                  _RUN_TIMEOUT_S, _POLL_S, "the consumers to persist the stream")
            wait_exit(consumers, 120, "simstream consume --drain", log_path)
        check_rows(db_url, simulation_id, ctx.mix)
        client.close()
    return {"processes": processes, "entries": entries, "seconds": finished - started,
            "rps": entries / (finished - started)}


def _delivered(client: redis.Redis, stream: str) -> bool:
    progress = group_progress(client, stream, DEFAULT_GROUP)
    return progress is None or progress[0] != "0-0"


def _all_acked(client: redis.Redis, stream: str, last_id: str) -> bool:
    progress = group_progress(client, stream, DEFAULT_GROUP)
    return progress is None or (progress[0] == last_id and progress[1] == 0)


@dataclass
class _Watch:
    """What the end-to-end run observed while the producer logged."""

    seen: dict[int, float] = field(default_factory=dict)  # step -> when its row was first seen committed
    killed_at: float = float("inf")
    recovery_s: float | None = None
    kills: int = 0  # SIGKILLs sent: a worker that died holding nothing is killed again after its restart
    max_backlog: int = 0  # longest the stream got: entries not yet persisted or not yet trimmed


def end_to_end_run(ctx: BenchContext, processes: int, rate: float) -> dict[str, Any]:
    """Paced producer -> ``processes`` consumers: latency, peak memory, recovery after SIGKILL."""
    simulation_id, namespace = _names()
    stream = Keys(namespace).stream(simulation_id)
    with ctx.fresh_redis() as server, ctx.fresh_database("end-to-end") as db_url:
        engine = create_sink_engine(db_url)
        ensure_schema(engine)
        client = redis.Redis.from_url(server.url)
        producer = PacedProducer(server.url, namespace, simulation_id, ctx.mix, rate)
        log_path = ctx.scratch / "end-to-end.log"
        try:
            with consumer_processes(server.url, db_url, namespace, processes, log_path) as consumers:
                poll_until(lambda: (group_progress(client, stream, DEFAULT_GROUP) or ("", 0, 0))[2] >= processes,
                           60, 0.02, "the consumers to join the group")
                producer.go()
                watch = _watch_steps(ctx, client, engine, stream, consumers, producer)
                result = producer.result()
                wait_exit(consumers, _RUN_TIMEOUT_S, "simstream consume --drain", log_path)
            peak = int(client.info("memory")["used_memory_peak"])
        finally:
            producer.kill()
            engine.dispose()
        check_rows(db_url, simulation_id, ctx.mix)
        client.close()
    latencies = sorted(watch.seen[step] - logged for step, logged in enumerate(result["step_times"], start=1)
                       if step in watch.seen and watch.seen[step] < watch.killed_at)
    return {"processes": processes, "rate": rate, "latency_p50_ms": _pick(latencies, 0.5) * 1000,
            "latency_p99_ms": _pick(latencies, 0.99) * 1000, "latency_samples": len(latencies),
            "peak_redis_bytes": peak, "max_stream_length": watch.max_backlog, "recovery_s": watch.recovery_s,
            "kills": watch.kills}


def _pick(ordered: list[float], share: float) -> float:
    if not ordered:
        raise BenchError("no step was committed before the consumer was killed; use more --records")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _watch_steps(ctx: BenchContext, client: redis.Redis, engine, stream: str, consumers, producer) -> _Watch:
    """Note when each step row commits; SIGKILL a worker a quarter of the way in and time its recovery."""
    watch = _Watch()
    kill_after = max(1, ctx.mix.steps // 4)  # early enough that a short run is still going
    with engine.connect() as connection:
        while producer.process.poll() is None or len(watch.seen) < ctx.mix.steps:
            now = time.monotonic()
            for (step,) in connection.execute(text("SELECT step_number FROM simulation_steps")):
                watch.seen.setdefault(step, now)
            connection.rollback()  # end the read transaction so the next poll sees new commits
            watch.max_backlog = max(watch.max_backlog, client.xlen(stream))
            if watch.recovery_s is None and len(watch.seen) >= kill_after:
                watch.killed_at, watch.recovery_s, watch.kills = _kill_and_recover(client, stream, consumers)
            if consumers.poll() is not None:
                break
            time.sleep(_POLL_S)
    return watch


def _kill_and_recover(client: redis.Redis, stream: str, consumers, attempts: int = 5) -> tuple[float, float, int]:
    """SIGKILL worker slot 0 while it holds entries; seconds until they are all acknowledged.

    What it held is read after it died (nothing changes a dead consumer's pending entries); if it
    died between batches, holding nothing, the supervisor restarts it and we try again.
    """
    name = consumer_name(0)
    workers = _worker_processes(consumers.pid)
    worker = workers[0]  # slot 0 is started first
    for attempt in range(1, attempts + 1):
        poll_until(lambda: _holds_entries(client, stream, name), 60, 0.001, "worker 0 to hold entries")
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.wait(10)
        held = client.xpending_range(stream, DEFAULT_GROUP, "-", "+", 100_000, consumername=name)
        if held:
            ids = {row["message_id"] for row in held}
            low, high = held[0]["message_id"], held[-1]["message_id"]  # XPENDING lists ids in order

            def recovered() -> bool:
                try:
                    still = client.xpending_range(stream, DEFAULT_GROUP, low, high, len(ids))
                except redis.ResponseError:
                    return True  # the stream was removed: it is removed only once all is persisted
                return not any(row["message_id"] in ids for row in still)

            poll_until(recovered, 120, _POLL_S, "the killed worker's entries to be committed again")
            return killed_at, time.monotonic() - killed_at, attempt
        poll_until(lambda: _restarted(consumers.pid, worker.pid, len(workers)), 60, 0.02,
                   "the supervisor to restart the killed worker")
        before = {process.pid for process in workers}
        workers = _worker_processes(consumers.pid)
        worker = next(process for process in workers if process.pid not in before)  # slot 0, restarted
    raise BenchError(f"worker 0 held no entries at any of {attempts} kills; use more --records")


def _holds_entries(client: redis.Redis, stream: str, name: str) -> bool:
    try:
        return bool(client.xpending_range(stream, DEFAULT_GROUP, "-", "+", 1, consumername=name))
    except redis.ResponseError:
        raise BenchError("the run was persisted before a worker could be killed; use more --records") from None


def _restarted(supervisor_pid: int, killed_pid: int, count: int) -> bool:
    pids = [process.pid for process in _worker_processes(supervisor_pid, require=False)]
    return len(pids) == count and killed_pid not in pids


def _worker_processes(supervisor_pid: int, require: bool = True) -> list[psutil.Process]:
    """The supervisor's live worker children, oldest (slot 0) first."""
    children = []
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                children.append(child)
        except psutil.Error:
            continue  # exited while we looked
    if require and not children:
        raise BenchError("found no consumer worker process to kill")
    return sorted(children, key=lambda child: child.create_time())
