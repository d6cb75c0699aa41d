"""``simstream bench``: every measurement of one run, in order, then the ratios and the report.

Order: the limits, the baselines, the simstream producer (and Redis's memory per record), the
simstream consumers (one configuration per process count, then the same on PostgreSQL when the
run's sink is SQLite and a PostgreSQL answers), end to end paced (latency, recovery) and flat out
(throughput), reading recent state, then :data:`~consumer.bench.model.EXTRA_MEASUREMENTS`.
Every configuration runs on its own fresh Redis and database. Ratios compare figures of this run
only (:mod:`consumer.bench.verdicts`), so a busy or a fast machine moves both sides together.
"""

from __future__ import annotations

import platform
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from common.errors import ExitCode
from common.keys import Keys
from consumer.bench import baselines, limits, simstream_runs
from consumer.bench.environment import database_factory, fresh_redis, fresh_sqlite, postgres_unreachable
from consumer.bench.model import (ENV_BENCH_PG_URL, EXTRA_MEASUREMENTS, BenchContext, BenchOptions, DatabaseFactory,
                                  Measurement, Row)
from consumer.bench.report import write_report
from consumer.bench.verdicts import apply_ratios, ratio, targets
from consumer.bench.recent_state import measure_recent_state_reads

E2E_PACE_SHARE = 0.5
"""End to end paces the producer at this share of the measured consumer throughput."""


def measure_limits(ctx: BenchContext) -> list[Row]:
    """limit: XADD, limit: SQL executemany, limit: pipeline."""
    payloads = limits.raw_payloads(ctx.mix)
    simulation_id = f"bench-limit-{secrets.token_hex(3)}"
    stream = Keys("bench-limit").stream(simulation_id)
    with ctx.fresh_redis() as server:
        xadd = limits.xadd_limit(server.url, stream, payloads)
    ctx.say(f"limit XADD {xadd:,.0f} records/s")
    rows, runs = limits.prebuilt_rows(ctx.mix, simulation_id), []
    for run in range(limits.SQL_LIMIT_RUNS):
        with ctx.fresh_database(f"limit-sql-{run}") as db_url:
            runs.append(limits.sql_insert_limit(db_url, simulation_id, rows))
    sql = max(runs)
    ctx.say(f"limit SQL executemany {sql:,.0f} rows/s (best of {', '.join(f'{rps:,.0f}' for rps in runs)})")
    with ctx.fresh_redis() as server, ctx.fresh_database("limit-pipeline") as db_url:
        pipeline = limits.pipeline_limit(server.url, stream, db_url, simulation_id, payloads)
    ctx.say(f"limit pipeline {pipeline:,.0f} records/s")
    backend = _backend(ctx)
    return [
        Row("limit_xadd", "limit: XADD", xadd,
            f"redis-py pipelined XADD, one record per entry, {limits.PRODUCER_BATCH}/pipeline", {"rps": xadd}),
        Row("limit_sql", "limit: SQL executemany", sql,
            f"{backend} executemany of prebuilt rows into simstream's tables, 1 transaction per "
            f"{limits.SQL_LIMIT_BATCH:,} rows, best of {len(runs)}",
            {"rps": sql, "runs_rps": runs, "rows_per_transaction": limits.SQL_LIMIT_BATCH}),
        Row("limit_pipeline", "limit: pipeline", pipeline,
            f"XREADGROUP -> unpack -> executemany ({backend}) -> XACK", {"rps": pipeline}),
    ]


def measure_baselines(ctx: BenchContext) -> list[Row]:
    """baseline: direct SQLite, baseline: list queue (both on SQLite, as designed)."""
    simulation_id = f"bench-base-{secrets.token_hex(3)}"
    with fresh_sqlite(ctx.scratch, "direct") as db_url:
        direct = baselines.direct_sqlite(db_url, simulation_id, ctx.mix)
    ctx.say(f"baseline direct SQLite {direct['rps']:,.0f} records/s")
    with ctx.fresh_redis() as server, fresh_sqlite(ctx.scratch, "list-queue") as db_url:
        queue = baselines.list_queue(server.url, db_url, simulation_id, ctx.mix)
    ctx.say(f"baseline list queue: RPUSH {queue['producer_rps']:,.0f}, worker {queue['worker_rps']:,.0f} records/s")
    return [
        Row("baseline_direct", "baseline: direct SQLite", direct["rps"],
            f"ORM, buffered, commit per flush; {direct['us_per_record']:.1f} µs/record on the simulation thread",
            direct),
        Row("baseline_list_queue", "baseline: list queue", queue["worker_rps"],
            f"worker LRANGE/LTRIM + ORM insert; producer RPUSH {queue['producer_rps']:,.0f}/s "
            f"({queue['producer_us_per_record']:.1f} µs/record)", queue),
    ]


def measure_producer(ctx: BenchContext) -> list[Row]:
    """simstream producer: log() p50/p99 on the simulation thread, sustained records/s into Redis;
    and what the stream holding every record costs Redis, per 1M records."""
    result = simstream_runs.producer_run(ctx)
    ctx.say(f"simstream producer {result['sustained_rps']:,.0f} records/s, log() p50 "
            f"{result['log_p50_us']:.2f} µs p99 {result['log_p99_us']:.2f} µs; Redis peak "
            f"{result['redis_peak_per_1m_bytes'] / 2**20:.1f} MB per 1M records")
    producer = Row("simstream_producer", "simstream producer", result["sustained_rps"],
                   f"log() p50 {result['log_p50_us']:.2f} µs, p99 {result['log_p99_us']:.2f} µs, "
                   f"mean {result['log_mean_us']:.2f} µs (timer {result['timer_overhead_ns']:.0f} ns included)",
                   result)
    memory = Row("redis_memory", "Redis memory per 1M records", None,
                 f"peak {result['redis_peak_per_1m_bytes'] / 2**20:.1f} MB, held "
                 f"{result['redis_held_per_1m_bytes'] / 2**20:.1f} MB: used_memory_peak and used_memory over the "
                 f"empty server's, the stream holding all {result['records']:,} records (no consumer), scaled",
                 {key: result[key] for key in ("records", "redis_before_bytes", "redis_peak_bytes",
                                               "redis_peak_per_1m_bytes", "redis_held_per_1m_bytes")})
    return [producer, memory]


def measure_consumers(ctx: BenchContext) -> list[Row]:
    """simstream consumers: stream -> committed rows, once per process count."""
    return [_consumers_row(ctx, processes, _backend(ctx)) for processes in ctx.options.consumers]


def measure_consumers_on_postgres(ctx: BenchContext) -> list[Row]:
    """The consumer rows again on PostgreSQL, when the run's sink is SQLite and a PostgreSQL answers
    (``SIMSTREAM_BENCH_PG_URL``, default the local ``test`` database); a skip row says why not."""
    if _backend(ctx) == "PostgreSQL":
        return []  # the consumer rows above run on it (--db)
    url = ctx.options.pg_url
    why = f"{ENV_BENCH_PG_URL} is off" if url is None else postgres_unreachable(url)
    if why:
        ctx.say(f"simstream consumers on PostgreSQL skipped: {why}; set {ENV_BENCH_PG_URL} to measure them")
        return [Row("simstream_consumers_pg_skipped", "simstream consumers on PostgreSQL", None,
                    f"skipped: {why}", {"skipped": why})]
    fresh = database_factory(ctx.scratch, url)
    return [_consumers_row(ctx, processes, "PostgreSQL", fresh) for processes in ctx.options.consumers]


def _consumers_row(ctx: BenchContext, processes: int, backend: str, fresh_database: DatabaseFactory | None = None
                   ) -> Row:
    on_pg = fresh_database is not None
    result = simstream_runs.consumers_run(ctx, processes, fresh_database, "-pg" if on_pg else "")
    label = f"simstream consumers x{processes}" + (" on PostgreSQL" if on_pg else "")
    ctx.say(f"{label}: {result['rps']:,.0f} records/s")
    return Row(f"simstream_consumers_{'pg_' if on_pg else ''}{processes}", label, result["rps"],
               f"{processes} process{'es' if processes > 1 else ''}, stream -> committed rows ({backend})", result)


def measure_end_to_end(ctx: BenchContext) -> list[Row]:
    """end to end: latency, peak Redis memory and recovery after SIGKILL, at a pace consumers keep up with."""
    processes = max(ctx.options.consumers)
    capacity = ctx.row(f"simstream_consumers_{processes}")
    rate = E2E_PACE_SHARE * capacity.rate if capacity else 10_000.0
    ctx.say(f"end to end paced at {rate:,.0f} records/s, x{processes}, a worker killed a quarter of the way in")
    result = simstream_runs.end_to_end_run(ctx, processes, rate)
    ctx.say(f"end to end: latency p50 {result['latency_p50_ms']:.0f} ms p99 {result['latency_p99_ms']:.0f} ms, "
            f"peak Redis {result['peak_redis_bytes'] / 2**20:.1f} MB, recovery {result['recovery_s']:.2f} s")
    return [Row("end_to_end", "end to end", None,
                f"log() -> committed row p50 {result['latency_p50_ms']:.0f} ms, p99 {result['latency_p99_ms']:.0f} ms "
                f"at {rate:,.0f} records/s, x{processes}; peak Redis {result['peak_redis_bytes'] / 2**20:.1f} MB; "
                f"recovery after SIGKILL {result['recovery_s']:.2f} s", result)]


def measure_throughput(ctx: BenchContext) -> list[Row]:
    """end to end as throughput: first log() -> last committed row, producer flat out, one consumer."""
    result = simstream_runs.throughput_run(ctx, processes=1)
    ctx.say(f"end to end throughput: {result['rps']:,.0f} records/s, first log() -> last committed row")
    return [Row("end_to_end_throughput", "end to end: throughput", result["rps"],
                f"first log() -> last committed row, producer flat out beside 1 consumer started first "
                f"({_backend(ctx)}); all in Redis after {result['producer_in_redis_s']:.2f} s, committed after "
                f"{result['seconds']:.2f} s; peak Redis {result['redis_peak_bytes'] / 2**20:.1f} MB", result)]


def measure_recent_state(ctx: BenchContext) -> list[Row]:
    """read recent state: an agent's latest states from the Redis tier, and the same from SQLite."""
    with ctx.fresh_redis() as server:
        result = measure_recent_state_reads(server.url)
    sqlite_side, redis_side = result["sqlite"], result["redis"]
    ctx.say(f"read recent state: Redis p50 {redis_side['p50_us']:.0f} µs, SQLite p50 {sqlite_side['p50_us']:.0f} µs")
    detail = (f"{result['n']} latest states of one of {result['agents']} agents x {result['steps']} steps, "
              f"{result['reads']:,} reads")
    base = Row("recent_state_sqlite", "read recent state: SQLite", sqlite_side["reads_per_s"],
               f"{detail}; p50 {sqlite_side['p50_us']:.0f} µs, p99 {sqlite_side['p99_us']:.0f} µs (indexed)", result)
    tier = Row("recent_state_redis", "read recent state: Redis", redis_side["reads_per_s"],
               f"{detail}; p50 {redis_side['p50_us']:.0f} µs, p99 {redis_side['p99_us']:.0f} µs (short-term tier)",
               result)
    ratio(tier, base, "of read recent state: SQLite")
    return [base, tier]


BUILT_IN: list[Measurement] = [measure_limits, measure_baselines, measure_producer, measure_consumers,
                               measure_consumers_on_postgres, measure_end_to_end, measure_throughput,
                               measure_recent_state]


def _backend(ctx: BenchContext) -> str:
    return _backend_name(ctx.options)


def machine() -> dict[str, Any]:
    """What the run ran on."""
    return {"cpus": psutil.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "load_avg_at_start": list(psutil.getloadavg())}


def run_bench(options: BenchOptions) -> int:
    """Run every measurement, write bench.json, bench.md and the plot; returns the exit code."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meta = {"machine": machine(), "records": options.mix.total, "consumers": list(options.consumers),
            "db": _backend_name(options), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"simstream bench: {options.mix.total:,} records ({options.mix.steps} steps of {options.agents} agents, "
          f"{options.resources} resources), consumers {list(options.consumers)}, {meta['db']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="simstream-bench-") as scratch:
        ctx = BenchContext(options, Path(scratch), fresh_redis, database_factory(Path(scratch), options.db_url))
        for measurement in BUILT_IN + EXTRA_MEASUREMENTS:
            rows = measurement(ctx)
            for row in rows:  # a busy machine moves the figures: keep how busy it was next to them
                row.figures.setdefault("load_avg_1m", round(psutil.getloadavg()[0], 2))
            ctx.rows += rows
        apply_ratios(ctx)
        meta["seconds"] = round(time.monotonic() - started, 1)
        write_report(options.out_dir, ctx.rows, targets(ctx), meta)
    return ExitCode.OK


def _backend_name(options: BenchOptions) -> str:
    url = options.db_url
    return "PostgreSQL" if url and url.startswith("postgresql") else "SQLite"
