"""The bench report (table, JSON, the one-line hint when matplotlib is missing), the ratios and
targets it is given, and the skip row when no PostgreSQL answers."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from consumer.bench.model import BenchContext, BenchOptions, Row
from consumer.bench.report import PLOT_HINT, write_report
from consumer.bench.runner import measure_consumers_on_postgres
from consumer.bench.verdicts import apply_ratios, targets

META = {"records": 1000, "consumers": [1], "db": "SQLite", "seconds": 1.0, "started_at": "now",
        "machine": {"cpus": 2, "cpu": "x86_64", "memory_gb": 1.0, "system": "Linux", "python": "3.11",
                    "load_avg_at_start": [0.1, 0.2, 0.3]}}
PRODUCER_TARGET = {"target": "producer share", "value": 0.8, "threshold": 0.7, "at_most": False, "unit": "%",
                   "met": True}


def _rows() -> list[Row]:
    limit = Row("limit_xadd", "limit: XADD", 100.0, "raw", {"rps": 100.0})
    producer = Row("simstream_producer", "simstream producer", 80.0, "log()", {"rps": 80.0},
                   ratio=0.8, ratio_to="limit_xadd", ratio_text="of limit: XADD")
    extra = Row("read_recent_state", "read recent state", None, "Redis 2 ms, SQLite 15 ms")  # a plugged-in row
    return [limit, producer, extra]


def _context(rows: list[Row], **options) -> BenchContext:
    def no_server(*_args):
        raise AssertionError("no server is started here")

    return BenchContext(BenchOptions(**options), None, no_server, no_server, rows)


def _measured_rows() -> list[Row]:
    """One run's rows with round figures: every ratio and target below follows from them."""
    return [
        Row("limit_xadd", "limit: XADD", 100_000.0, ""), Row("limit_sql", "limit: SQL executemany", 200_000.0, ""),
        Row("limit_pipeline", "limit: pipeline", 50_000.0, ""),
        Row("baseline_direct", "baseline: direct SQLite", 40_000.0, "", {"us_per_record": 25.0}),
        Row("baseline_list_queue", "baseline: list queue", 20_000.0, ""),
        Row("simstream_producer", "simstream producer", 350_000.0, "",
            {"log_p50_us": 0.9, "log_p99_us": 6.0, "log_mean_us": 2.0}),
        Row("simstream_consumers_1", "simstream consumers x1", 150_000.0, ""),
        Row("simstream_consumers_2", "simstream consumers x2", 250_000.0, ""),
        Row("simstream_consumers_pg_1", "simstream consumers x1 on PostgreSQL", 30_000.0, ""),
        Row("simstream_consumers_pg_2", "simstream consumers x2 on PostgreSQL", 45_000.0, ""),
        Row("end_to_end", "end to end", None, "", {"peak_redis_bytes": 10 * 2**20}),
        Row("end_to_end_throughput", "end to end: throughput", 90_000.0, ""),
    ]


def test_without_matplotlib_the_report_says_how_to_get_the_plot_and_writes_the_rest(tmp_path, monkeypatch, capsys):
    # Given: matplotlib cannot be imported
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    # When: the report is written
    write_report(tmp_path, _rows(), [PRODUCER_TARGET], META)

    # Then: one line says how to get the plot; the table and JSON are there, every row in both
    printed = capsys.readouterr().out
    assert PLOT_HINT in printed and "pip install 'simstream[bench]'" in PLOT_HINT
    assert not (tmp_path / "bench.png").exists()
    markdown = (tmp_path / "bench.md").read_text()
    for label in ("limit: XADD", "simstream producer", "read recent state"):
        assert f"| {label} |" in markdown and f"| {label} |" in printed
    assert "80% of limit: XADD" in markdown and "| producer share | 80% | >= 70% | PASS |" in markdown
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [row["key"] for row in saved["rows"]] == ["limit_xadd", "simstream_producer", "read_recent_state"]


def test_ratios_divide_figures_of_the_same_run_and_each_target_is_pass_or_miss_on_its_threshold():
    # Given: the rows of one run
    ctx = _context(_measured_rows(), records=1000)

    # When: the ratios and targets are worked out
    apply_ratios(ctx)
    found = {target["target"]: target for target in targets(ctx)}

    # Then: each simstream figure is divided by its limit or baseline of this run
    assert ctx.row("simstream_producer").ratio == pytest.approx(3.5)
    assert ctx.row("simstream_consumers_1").ratio == pytest.approx(0.75)  # of limit: SQL executemany
    assert ctx.row("simstream_consumers_1").figures["of_limit_pipeline"] == pytest.approx(3.0)
    assert ctx.row("simstream_consumers_pg_2").ratio == pytest.approx(1.5)
    assert ctx.row("simstream_consumers_pg_2").ratio_to == "simstream_consumers_pg_1"
    assert ctx.row("end_to_end_throughput").ratio == pytest.approx(2.25)
    assert ctx.row("end_to_end_throughput").figures["x_list_queue"] == pytest.approx(4.5)
    # and each target is met or missed by its own threshold
    verdicts = {name: target["met"] for name, target in found.items()}
    assert verdicts == {
        "log() p50": True, "log() p99": False,
        "simulation-thread time, direct SQLite over simstream": True,  # 25 µs / 2 µs
        "producer records/s into Redis over limit: XADD": True,
        "one consumer, share of limit: SQL executemany": True,
        "one consumer, share of limit: pipeline": True,
        "end to end throughput over direct SQLite": False, "end to end throughput over list queue": True,
        "peak Redis memory, paced end to end (1,284 records)": True,
    }


def test_without_postgresql_the_consumer_rows_on_it_are_a_skip_row_that_says_why(capsys):
    # Given: nothing listens where the bench looks for PostgreSQL
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = _context([], records=1000, pg_url=f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/test")

    # When: the PostgreSQL consumer rows are measured
    rows = measure_consumers_on_postgres(ctx)

    # Then: one row and one line say they were skipped and why, without the password
    assert [row.key for row in rows] == ["simstream_consumers_pg_skipped"] and rows[0].rate is None
    printed = capsys.readouterr().out
    assert "simstream consumers on PostgreSQL skipped: no PostgreSQL answers at" in printed
    assert f"127.0.0.1:{port}" in printed and "secret" not in printed and "secret" not in rows[0].detail
