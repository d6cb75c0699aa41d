"""simstream itself under the benchmark: the producer process, the consumer processes, end to end.

The producer run also reads what the stream costs Redis: ``used_memory_peak`` over the empty
server's ``used_memory`` while it holds every record (no consumer), per 1M records.
Consumer throughput is taken from Redis: from the first delivery to the group until every entry
is acknowledged, which the worker does only after the rows committed; the rows are then counted
in SQL, table by table, against the mix. End to end as throughput starts the consumers, then the
producer flat out beside them, and times the first ``log()`` to the moment every entry (the last
one included) is seen acknowledged. End to end as latency runs a paced producer (consumers keep up),
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

from common import faults, replies, schema
from common.connections import create_sink_engine, ensure_schema
from common.keys import Keys
from common.settings import DEFAULT_GROUP
from common.workload import Mix
from consumer.bench.environment import (BenchError, WaitingProducer, consumer_processes, group_progress,
                                        poll_until, run_producer, wait_exit)
from consumer.bench.model import BenchContext, DatabaseFactory
from consumer.stream_status import entry_id_tuple

_POLL_S = 0.005
_RUN_TIMEOUT_S = 900.0


def _names() -> tuple[str, str]:
    token = secrets.token_hex(3)
    return f"bench-{token}", f"simstream-bench-{token}"


def producer_run(ctx: BenchContext) -> dict[str, Any]:
    """The producer process flat out into a fresh Redis with no consumers, and Redis's memory for
    the stream then holding every record: peak and held, over the empty server's, per 1M records."""
    simulation_id, namespace = _names()
    with ctx.fresh_redis() as server:
        client = redis.Redis.from_url(server.url)
        before = _used_memory(client)
        result = run_producer(server.url, namespace, simulation_id, ctx.mix)
        memory = client.info("memory")
        client.close()
    per_1m = 1e6 / result["records"]
    return {**result, "redis_before_bytes": before, "redis_peak_bytes": int(memory["used_memory_peak"]),
            "redis_peak_per_1m_bytes": (int(memory["used_memory_peak"]) - before) * per_1m,
            "redis_held_per_1m_bytes": (int(memory["used_memory"]) - before) * per_1m}


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


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


def consumers_run(ctx: BenchContext, processes: int, fresh_database: DatabaseFactory | None = None,
                  label: str = "") -> dict[str, Any]:
    """Records/s from a filled stream to committed rows with ``processes`` consumer processes, on
    ``fresh_database`` (default: the run's database; ``label`` names its files)."""
    simulation_id, namespace = _names()
    keys = Keys(namespace)
    name = f"consumers-{processes}{label}"
    with ctx.fresh_redis() as server, (fresh_database or ctx.fresh_database)(name) as db_url:
        run_producer(server.url, namespace, simulation_id, ctx.mix)  # fill the stream (not timed)
        client = redis.Redis.from_url(server.url)
        stream = keys.stream(simulation_id)
        last_id = client.xinfo_stream(stream)["last-generated-id"].decode()
        entries = client.xlen(stream)
        log_path = ctx.scratch / f"{name}.log"
        with consumer_processes(server.url, db_url, namespace, processes, log_path) as consumers:
            started = poll_until(lambda: _delivered(client, stream) and time.monotonic(),
                                 _RUN_TIMEOUT_S, _POLL_S, "the consumers' first read")
            finished = poll_until(lambda: _all_acked(client, stream, last_id) and time.monotonic(),
                                  _RUN_TIMEOUT_S, _POLL_S, "the consumers to persist the stream")
            wait_exit(consumers, 120, "simstream consume --drain", log_path)
        check_rows(db_url, simulation_id, ctx.mix)
        client.close()
    return {"processes": processes, "entries": entries, "records": ctx.mix.total, "seconds": finished - started,
            "rps": ctx.mix.total / (finished - started)}


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
        producer = WaitingProducer(server.url, namespace, simulation_id, ctx.mix, rate,
                                   hold_after=max(1, ctx.mix.steps // 4))
        log_path = ctx.scratch / "end-to-end.log"
        try:
            with consumer_processes(server.url, db_url, namespace, processes, log_path, crash.env()) as consumers:
                _wait_joined(client, stream, processes)
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


def throughput_run(ctx: BenchContext, processes: int = 1) -> dict[str, Any]:
    """Records/s from the first ``log()`` to the last committed row: the producer process flat out,
    ``processes`` consumer processes started before it and persisting beside it."""
    simulation_id, namespace = _names()
    stream = Keys(namespace).stream(simulation_id)
    with ctx.fresh_redis() as server, ctx.fresh_database("throughput") as db_url:
        client = redis.Redis.from_url(server.url)
        before = _used_memory(client)
        producer = WaitingProducer(server.url, namespace, simulation_id, ctx.mix)  # its stream exists
        log_path = ctx.scratch / "throughput.log"
        try:
            with consumer_processes(server.url, db_url, namespace, processes, log_path) as consumers:
                _wait_joined(client, stream, processes)
                producer.go()
                all_acked_at = _all_acked_at(client, stream, producer, consumers, log_path)
                result = producer.result()
                wait_exit(consumers, _RUN_TIMEOUT_S, "simstream consume --drain", log_path)
            peak = int(client.info("memory")["used_memory_peak"])
        finally:
            producer.kill()
        check_rows(db_url, simulation_id, ctx.mix)
        client.close()
    # The last row cannot commit before the last record is in Redis: a poll that saw the stream
    # caught up just before the producer's final batch landed cannot end the run early.
    seconds = max(all_acked_at, result["in_redis_at"]) - result["first_log_at"]
    return {"processes": processes, "records": ctx.mix.total, "seconds": seconds, "rps": ctx.mix.total / seconds,
            "producer_in_redis_s": result["in_redis_at"] - result["first_log_at"],
            "log_p50_us": result["log_p50_us"], "log_p99_us": result["log_p99_us"],
            "redis_peak_bytes": peak, "redis_peak_over_empty_bytes": peak - before}


def _wait_joined(client: redis.Redis, stream: str, processes: int) -> None:
    poll_until(lambda: (group_progress(client, stream, DEFAULT_GROUP) or ("", 0, 0))[2] >= processes,
               60, 0.02, "the consumers to join the group")


def _all_acked_at(client: redis.Redis, stream: str, producer: WaitingProducer, consumers, log_path: Path) -> float:
    """When every entry of the stream, the producer's last one included, was first seen acknowledged
    (a worker acknowledges after its commit), polled every 5 ms until the producer has exited (or
    the consumers, which drain only a complete simulation)."""
    seen_id, since = None, None
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        now, (last_id, caught_up) = time.monotonic(), _ack_state(client, stream)
        if last_id is None:  # removed: complete and fully persisted, caught up since the last poll at the latest
            since = since if since is not None else now
        elif not caught_up:
            since = None
        elif since is None or last_id != seen_id:  # newly caught up, or caught up again with newer entries
            since = now
        seen_id = last_id if last_id is not None else seen_id
        finished = producer.process.poll() is not None or consumers.poll() is not None  # drained: complete
        if since is not None and finished:
            return since
        if consumers.poll() is not None:
            raise BenchError(f"the consumers exited before the stream was persisted; see {log_path}")
        time.sleep(_POLL_S)
    raise BenchError(f"the throughput run did not finish within {_RUN_TIMEOUT_S:.0f} s; see {log_path}")


def _ack_state(client: redis.Redis, stream: str) -> tuple[str | None, bool]:
    """(the stream's last entry id, whether the group has acknowledged every entry up to it), read
    in one transaction; (None, True) once the stream is removed."""
    pipe = client.pipeline(transaction=True)
    pipe.xinfo_stream(stream)
    pipe.xinfo_groups(stream)
    try:
        info, groups = pipe.execute()
    except redis.ResponseError:
        return None, True  # removed: it is removed only once all is persisted
    last_id = replies.text(info["last-generated-id"])
    group = next((g for g in groups if replies.text(g["name"]) == DEFAULT_GROUP), None)
    return last_id, group is not None and replies.text(group["last-delivered-id"]) == last_id and int(group["pending"]) == 0


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
        return not any(replies.text(row["message_id"]) in ids for row in still)

    poll_until(recovered, 120, _POLL_S, "the killed worker's entries to be committed again")
    return killed_at, time.monotonic() - killed_at


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
