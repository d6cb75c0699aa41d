"""simstream itself under the benchmark: the producer process, the consumer processes, end to end.

Consumer throughput is taken from Redis: from the first delivery to the group until every entry
is acknowledged, which the worker does only after the rows committed; the rows are then counted
in SQL, table by table, against the mix. End to end runs a paced producer (consumers keep up),
samples log() -> committed latency per step from the ``simulation_steps`` rows, SIGKILLs a worker
a quarter of the way in and times how long until every entry it held is committed again, and
reads Redis's peak memory. The kill does not race the run: the producer holds a quarter of the way
in until the crash seam (:mod:`common.faults`) is armed, and the first worker to read after that
dies holding its batch, whatever the machine's speed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from sqlalchemy import func, select, text

from common import faults, schema
from common.connections import create_sink_engine, ensure_schema
from common.keys import Keys
from common.settings import DEFAULT_GROUP
from common.workload import Mix
from consumer.bench.environment import (BenchError, PacedProducer, consumer_processes, group_progress,
                                        poll_until, run_producer, wait_exit)
from consumer.bench.model import BenchContext
from consumer.inspect import entry_id_tuple

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
    kills: int = 0
    held: bool = False  # the producer stopped at its hold step
    max_backlog: int = 0  # longest the stream got: entries not yet persisted or not yet trimmed


@dataclass(frozen=True)
class _CrashFiles:
    """The crash seam (:mod:`common.faults`) as the end-to-end run uses it: a worker is killed
    after reading a batch, before committing it, at its first read once ``armed`` exists, and it
    writes ``killed`` ("<slot> <pid>") just before."""

    armed: Path
    killed: Path

    def env(self) -> dict[str, str]:
        return {faults.CRASH_ENV: "after_read:1", faults.CRASH_ARMED_FILE_ENV: str(self.armed),
                faults.CRASH_ONCE_FILE_ENV: str(self.killed)}


def end_to_end_run(ctx: BenchContext, processes: int, rate: float) -> dict[str, Any]:
    """Paced producer -> ``processes`` consumers: latency, peak memory, recovery after SIGKILL."""
    simulation_id, namespace = _names()
    stream = Keys(namespace).stream(simulation_id)
    crash = _CrashFiles(ctx.scratch / f"{simulation_id}.armed", ctx.scratch / f"{simulation_id}.killed")
    with ctx.fresh_redis() as server, ctx.fresh_database("end-to-end") as db_url:
        engine = create_sink_engine(db_url)
        ensure_schema(engine)
        client = redis.Redis.from_url(server.url)
        # Held a quarter of the way in, until a worker's crash is armed: the kill falls inside the
        # run however fast or slow the machine is.
        producer = PacedProducer(server.url, namespace, simulation_id, ctx.mix, rate,
                                 hold_after=max(1, ctx.mix.steps // 4))
        log_path = ctx.scratch / "end-to-end.log"
        try:
            with consumer_processes(server.url, db_url, namespace, processes, log_path, crash.env()) as consumers:
                poll_until(lambda: (group_progress(client, stream, DEFAULT_GROUP) or ("", 0, 0))[2] >= processes,
                           60, 0.02, "the consumers to join the group")
                producer.go()
                watch = _watch_steps(ctx, client, engine, stream, consumers, producer, crash)
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


def _watch_steps(ctx: BenchContext, client: redis.Redis, engine, stream: str, consumers, producer,
                 crash: _CrashFiles) -> _Watch:
    """Note when each step row commits; when the producer holds, arm a worker's crash and let it
    go on; once a worker died holding its batch, time until that batch is committed again."""
    watch = _Watch()
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    with engine.connect() as connection:
        while producer.process.poll() is None or len(watch.seen) < ctx.mix.steps:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"the end-to-end run did not finish within {_RUN_TIMEOUT_S:.0f} s")
            for (step,) in connection.execute(text("SELECT step_number FROM simulation_steps")):
                watch.seen.setdefault(step, now)
            connection.rollback()  # end the read transaction so the next poll sees new commits
            watch.max_backlog = max(watch.max_backlog, client.xlen(stream))
            watch.held = watch.held or (not crash.armed.exists() and producer.held())
            if watch.held and not crash.armed.exists() and len(watch.seen) >= producer.hold_after:
                # Every step logged so far is committed (latency samples exist, whatever the speed):
                # arm, and the next batch a worker reads is the one it dies holding.
                crash.armed.touch()
                producer.resume()
            if watch.recovery_s is None and crash.killed.exists():
                watch.killed_at, watch.recovery_s = _recovery(client, stream, crash.killed)
                watch.kills = 1
            if consumers.poll() is not None:
                break
            time.sleep(_POLL_S)
    if watch.recovery_s is None:
        raise BenchError(f"no worker was killed during the end-to-end run; see {crash.killed.parent}")
    return watch


def _recovery(client: redis.Redis, stream: str, killed_file: Path) -> tuple[float, float]:
    """When the worker named in ``killed_file`` died, and seconds until every entry it held (listed
    in the file by the worker itself, so nothing races its restart) was committed again. The end is
    observed by polling: on a starved machine it is seen late, never missed."""
    first, *held = killed_file.read_text().splitlines()
    pid = int(first.split()[1])
    killed_at = time.monotonic() - (time.time() - killed_file.stat().st_mtime)
    if not held:
        raise BenchError("the killed worker held no entries")  # it dies after reading a batch: cannot happen
    ids = set(held)
    low, high = min(held, key=entry_id_tuple), max(held, key=entry_id_tuple)
    poll_until(lambda: _exited(pid), 60, 0.001, "the killed worker to exit")

    def recovered() -> bool:
        try:
            still = client.xpending_range(stream, DEFAULT_GROUP, low, high, len(ids))
        except redis.ResponseError:
            return True  # the stream was removed: it is removed only once all is persisted
        return not any(_text(row["message_id"]) in ids for row in still)

    poll_until(recovered, 120, _POLL_S, "the killed worker's entries to be committed again")
    return killed_at, time.monotonic() - killed_at


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
