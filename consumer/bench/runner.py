"""``simstream bench``: every measurement of one run, in order, then the ratios and the report.

Order: the limits, the baselines, the simstream producer, the simstream consumers (one
configuration per process count), end to end, then :data:`~consumer.bench.model.EXTRA_MEASUREMENTS`.
Every configuration runs on its own fresh Redis and database. Ratios compare figures of this run
only, so a busy or a fast machine moves both sides of each ratio together.
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
from consumer.bench.environment import database_factory, fresh_redis, fresh_sqlite
from consumer.bench.model import EXTRA_MEASUREMENTS, BenchContext, BenchOptions, Measurement, Row
from consumer.bench.report import write_report
from consumer.recent_state_bench import measure_recent_state_reads

E2E_PACE_SHARE = 0.5
"""End to end paces the producer at this share of the measured consumer throughput."""


def measure_limits(ctx: BenchContext) -> list[Row]:
    """limit: XADD, limit: SQL insert, limit: pipeline."""
    payloads = limits.raw_payloads(ctx.mix)
    simulation_id = f"bench-limit-{secrets.token_hex(3)}"
    stream = Keys("bench-limit").stream(simulation_id)
    with ctx.fresh_redis() as server:
        xadd = limits.xadd_limit(server.url, stream, payloads)
    ctx.say(f"limit XADD {xadd:,.0f} records/s")
    with ctx.fresh_database("limit-sql") as db_url:
        sql = limits.sql_insert_limit(db_url, simulation_id, ctx.mix)
    ctx.say(f"limit SQL insert {sql:,.0f} rows/s")
    with ctx.fresh_redis() as server, ctx.fresh_database("limit-pipeline") as db_url:
        pipeline = limits.pipeline_limit(server.url, stream, db_url, simulation_id, payloads)
    ctx.say(f"limit pipeline {pipeline:,.0f} records/s")
    backend = _backend(ctx)
    return [
        Row("limit_xadd", "limit: XADD", xadd, f"redis-py pipelined XADD, {limits.PRODUCER_BATCH}/batch",
            {"rps": xadd}),
        Row("limit_sql", "limit: SQL insert", sql,
            f"{backend} executemany, 1 transaction per {limits.CONSUMER_BATCH} records", {"rps": sql}),
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
    """simstream producer: log() p50/p99 on the simulation thread, sustained records/s into Redis."""
    result = simstream_runs.producer_run(ctx)
    ctx.say(f"simstream producer {result['sustained_rps']:,.0f} records/s, log() p50 "
            f"{result['log_p50_us']:.2f} µs p99 {result['log_p99_us']:.2f} µs")
    return [Row("simstream_producer", "simstream producer", result["sustained_rps"],
                f"log() p50 {result['log_p50_us']:.2f} µs, p99 {result['log_p99_us']:.2f} µs, "
                f"mean {result['log_mean_us']:.2f} µs", result)]


def measure_consumers(ctx: BenchContext) -> list[Row]:
    """simstream consumers: stream -> committed rows, once per process count."""
    rows = []
    for processes in ctx.options.consumers:
        result = simstream_runs.consumers_run(ctx, processes)
        ctx.say(f"simstream consumers x{processes}: {result['rps']:,.0f} records/s")
        rows.append(Row(f"simstream_consumers_{processes}", f"simstream consumers x{processes}", result["rps"],
                        f"{processes} process{'es' if processes > 1 else ''}, stream -> committed rows "
                        f"({_backend(ctx)})", result))
    return rows


def measure_end_to_end(ctx: BenchContext) -> list[Row]:
    """end to end: latency, peak Redis memory and recovery after SIGKILL, at a pace consumers keep up with."""
    processes = max(ctx.options.consumers)
    capacity = ctx.row(f"simstream_consumers_{processes}")
    rate = E2E_PACE_SHARE * capacity.rate if capacity else 10_000.0
    result = simstream_runs.end_to_end_run(ctx, processes, rate)
    ctx.say(f"end to end: latency p50 {result['latency_p50_ms']:.0f} ms p99 {result['latency_p99_ms']:.0f} ms, "
            f"peak Redis {result['peak_redis_bytes'] / 2**20:.1f} MB, recovery {result['recovery_s']:.2f} s")
    return [Row("end_to_end", "end to end", None,
                f"log() -> committed row p50 {result['latency_p50_ms']:.0f} ms, p99 {result['latency_p99_ms']:.0f} ms "
                f"at {rate:,.0f} records/s, x{processes}; peak Redis {result['peak_redis_bytes'] / 2**20:.1f} MB; "
                f"recovery after SIGKILL {result['recovery_s']:.2f} s", result)]


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
    _ratio(tier, base, "of read recent state: SQLite")
    return [base, tier]


BUILT_IN: list[Measurement] = [measure_limits, measure_baselines, measure_producer, measure_consumers,
                               measure_end_to_end, measure_recent_state]


def _backend(ctx: BenchContext) -> str:
    return _backend_name(ctx.options)


def _ratio(row: Row | None, base: Row | None, text: str) -> None:
    if row and base and row.rate and base.rate:
        row.ratio, row.ratio_to, row.ratio_text = row.rate / base.rate, base.key, text


def apply_ratios(ctx: BenchContext) -> None:
    """Each simstream figure divided by its limit (and baseline) from this run."""
    _ratio(ctx.row("simstream_producer"), ctx.row("limit_xadd"), "of limit: XADD")
    for processes in ctx.options.consumers:
        _ratio(ctx.row(f"simstream_consumers_{processes}"), ctx.row("limit_pipeline"), "of limit: pipeline")
    end, one = ctx.row("end_to_end"), ctx.row(f"simstream_consumers_{min(ctx.options.consumers)}")
    direct, queue, producer = ctx.row("baseline_direct"), ctx.row("baseline_list_queue"), ctx.row("simstream_producer")
    if end and one and direct and queue:
        end.figures["x_direct_sqlite"] = one.rate / direct.rate
        end.figures["x_list_queue"] = one.rate / queue.rate
        end.ratio_text = (f"x{min(ctx.options.consumers)}: {end.figures['x_direct_sqlite']:.1f}x direct SQLite, "
                          f"{end.figures['x_list_queue']:.1f}x list queue")
        most = ctx.row(f"simstream_consumers_{max(ctx.options.consumers)}")
        if most is not one and most:
            end.figures["x_direct_sqlite_most"] = most.rate / direct.rate
            end.figures["x_list_queue_most"] = most.rate / queue.rate
            end.ratio_text += (f"; x{max(ctx.options.consumers)}: {end.figures['x_direct_sqlite_most']:.1f}x, "
                               f"{end.figures['x_list_queue_most']:.1f}x")
    if producer and direct:
        producer.figures["x_less_thread_time"] = direct.figures["us_per_record"] / producer.figures["log_mean_us"]


def targets(ctx: BenchContext) -> list[dict[str, Any]]:
    """The issue's targets, each with the value this run measured and whether it is met."""
    found: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, at_most: bool, unit: str = "") -> None:
        if value is not None:
            met = value <= limit if at_most else value >= limit
            found.append({"target": name, "value": round(value, 3), "unit": unit, "met": met})

    producer, end = ctx.row("simstream_producer"), ctx.row("end_to_end")
    one = ctx.row(f"simstream_consumers_{min(ctx.options.consumers)}")
    if producer:
        check("log() p50 <= 3 µs", producer.figures["log_p50_us"], 3, True, "µs")
        check("log() p99 <= 50 µs", producer.figures["log_p99_us"], 50, True, "µs")
        check(">= 10x less simulation-thread time than direct SQLite", producer.figures.get("x_less_thread_time"), 10,
              False, "x")
        check("producer >= 70% of limit: XADD", producer.ratio, 0.7, False)
    if one:
        check("one consumer >= 60% of limit: pipeline", one.ratio, 0.6, False)
    if end and "x_direct_sqlite" in end.figures:
        check("end to end >= 3x direct SQLite", end.figures["x_direct_sqlite"], 3, False, "x")
        check("end to end >= 3x list queue", end.figures["x_list_queue"], 3, False, "x")
        check(f"peak Redis memory <= 64 MB ({ctx.mix.total:,} records)", end.figures["peak_redis_bytes"] / 2**20, 64,
              True, "MB")
    return found


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
