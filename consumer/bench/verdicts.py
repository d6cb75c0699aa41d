"""What the rows of one run say: each simstream figure over its limit or baseline, and the targets.

Every ratio divides two figures of the same run, so a busy or a fast machine moves both sides
together. Each target names its threshold and is PASS or MISS on this run's value.
"""

from __future__ import annotations

from typing import Any

from consumer.bench.model import BenchContext, Row


def ratio(row: Row | None, base: Row | None, text: str, unit: str = "%") -> None:
    """Set ``row``'s ratio to ``base`` (same run), if both were measured."""
    if row and base and row.rate and base.rate:
        row.ratio, row.ratio_to, row.ratio_text, row.ratio_unit = row.rate / base.rate, base.key, text, unit


def apply_ratios(ctx: BenchContext) -> None:
    """Each simstream figure divided by its limit (and baseline) from this run."""
    ratio(ctx.row("simstream_producer"), ctx.row("limit_xadd"), "limit: XADD", "x")
    pipeline = ctx.row("limit_pipeline")
    for processes in ctx.options.consumers:
        consumers = ctx.row(f"simstream_consumers_{processes}")
        ratio(consumers, ctx.row("limit_sql"), "of limit: SQL executemany")
        if consumers and consumers.rate and pipeline and pipeline.rate:
            consumers.figures["of_limit_pipeline"] = consumers.rate / pipeline.rate
            consumers.ratio_text += f"; {consumers.figures['of_limit_pipeline']:.0%} of limit: pipeline"
    fewest = ctx.row(f"simstream_consumers_pg_{min(ctx.options.consumers)}")
    for processes in set(ctx.options.consumers) - {min(ctx.options.consumers)}:
        ratio(ctx.row(f"simstream_consumers_pg_{processes}"), fewest, fewest.label if fewest else "", "x")
    throughput, direct, queue = ctx.row("end_to_end_throughput"), ctx.row("baseline_direct"), ctx.row(
        "baseline_list_queue")
    ratio(throughput, direct, "direct SQLite", "x")
    if throughput and throughput.rate and queue and queue.rate:
        throughput.figures["x_list_queue"] = throughput.rate / queue.rate
        throughput.ratio_text += f"; {throughput.figures['x_list_queue']:.2f}x list queue"
    producer = ctx.row("simstream_producer")
    if producer and direct:
        producer.figures["x_less_thread_time"] = direct.figures["us_per_record"] / producer.figures["log_mean_us"]


def targets(ctx: BenchContext) -> list[dict[str, Any]]:
    """The targets, each with the value this run measured, its threshold and whether it is met."""
    found: list[dict[str, Any]] = []

    def check(name: str, value: float | None, threshold: float, at_most: bool, unit: str) -> None:
        if value is not None:
            met = value <= threshold if at_most else value >= threshold
            found.append({"target": name, "value": round(value, 4), "threshold": threshold,
                          "at_most": at_most, "unit": unit, "met": met})

    producer, one = ctx.row("simstream_producer"), ctx.row("simstream_consumers_1")
    if producer:
        check("log() p50", producer.figures["log_p50_us"], 1, True, "µs")
        check("log() p99", producer.figures["log_p99_us"], 5, True, "µs")
        check("simulation-thread time, direct SQLite over simstream", producer.figures.get("x_less_thread_time"),
              10, False, "x")
        check("producer records/s into Redis over limit: XADD", producer.ratio, 3, False, "x")
    if one:
        check("one consumer, share of limit: SQL executemany", one.ratio, 0.7, False, "%")
        check("one consumer, share of limit: pipeline", one.figures.get("of_limit_pipeline"), 0.6, False, "%")
    throughput = ctx.row("end_to_end_throughput")
    if throughput:
        check("end to end throughput over direct SQLite", throughput.ratio, 2.5, False, "x")
        check("end to end throughput over list queue", throughput.figures.get("x_list_queue"), 3, False, "x")
    paced = ctx.row("end_to_end")
    if paced:
        check(f"peak Redis memory, paced end to end ({ctx.mix.total:,} records)",
              paced.figures["peak_redis_bytes"] / 2**20, 64, True, "MB")
    return found
