"""``simstream bench`` end to end on a small mix: every row measured, every ratio from the same run.

No timing asserts: the numbers depend on the machine. What is checked is that each configuration
ran (positive figures), the outputs exist, each ratio is the quotient of this run's figures and
each target line says PASS or MISS. The consumer rows run again on PostgreSQL when one answers
(``SIMSTREAM_TEST_PG_URL``); otherwise a skip row says why.
Nor may a test depend on the machine's speed: the main test runs the shortest mix with the bench
process itself starved (stopped most of the time) while the end-to-end run goes on, which is what a
busy machine does at worst, and its worker must still be killed inside the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

PG_URL = os.environ.get("SIMSTREAM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_ROWS = {"extra": ["simstream_consumers_pg_1", "simstream_consumers_pg_2"],
           "skipped": ["simstream_consumers_pg_skipped"], "none": []}
NOT_A_RATE = {"end_to_end", "redis_memory", "simstream_consumers_pg_skipped"}


def _row_keys(pg_rows: str) -> list[str]:
    """The rows of a run, in order; ``pg_rows``: the consumer rows ran again on PostgreSQL
    (``extra``), could not (``skipped``), or the run's sink is PostgreSQL already (``none``)."""
    return ["limit_xadd", "limit_sql", "limit_pipeline", "baseline_direct", "baseline_list_queue",
            "simstream_producer", "redis_memory", "simstream_consumers_1", "simstream_consumers_2",
            *PG_ROWS[pg_rows], "end_to_end", "end_to_end_throughput", "recent_state_sqlite", "recent_state_redis"]


def _command(tmp_path, records: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "consumer", "bench", "--records", str(records), "--consumers", "1,2",
            "--out", str(tmp_path / "out"), *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSTREAM_")}
    return {**env, "SIMSTREAM_BENCH_PG_URL": PG_URL}


def _bench(tmp_path, *extra: str, records: int = 20_000) -> subprocess.CompletedProcess:
    return subprocess.run(_command(tmp_path, records, *extra), env=_env(), capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)


def _bench_starved_during_end_to_end(tmp_path, records: int) -> subprocess.CompletedProcess:
    """The bench with its own process stopped 1.5 s of every 1.55 s from the paced end-to-end run's
    start to its result: the producer and consumers (processes of their own) run on; the bench
    barely does."""
    bench = subprocess.Popen(_command(tmp_path, records), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    starving = threading.Event()

    def starve() -> None:
        while starving.is_set():
            bench.send_signal(signal.SIGSTOP)
            time.sleep(1.5)
            bench.send_signal(signal.SIGCONT)
            time.sleep(0.05)

    lines, starver = [], threading.Thread(target=starve, daemon=True)
    try:
        for line in bench.stdout:  # bounded: the process is killed in finally if the test fails
            lines.append(line)
            if line.startswith("  end to end paced at") and starver.ident is None:
                starving.set()
                starver.start()
            elif line.startswith("  end to end: latency") or "error" in line:
                starving.clear()
                if starver.is_alive():
                    starver.join(5)
                bench.send_signal(signal.SIGCONT)
        stderr = bench.stderr.read()
        bench.wait(60)
    finally:
        starving.clear()
        if bench.poll() is None:
            bench.send_signal(signal.SIGCONT)
            bench.kill()
            bench.wait(10)
    return subprocess.CompletedProcess(bench.args, bench.returncode, "".join(lines), stderr)


def _rows(tmp_path) -> dict[str, dict]:
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    return {row["key"]: row for row in report["rows"]}


def _assert_complete_and_consistent(tmp_path, result, pg_rows: str) -> dict[str, dict]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "bench.md").exists() and (out / "bench.json").exists()
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(tmp_path)
    assert list(rows) == _row_keys(pg_rows)
    markdown = (out / "bench.md").read_text()
    for row in rows.values():
        assert f"| {row['label']} |" in markdown and f"| {row['label']} |" in result.stdout
        if row["key"] not in NOT_A_RATE:
            assert row["rate"] > 0, row
    producer = rows["simstream_producer"]["figures"]
    assert 0 < producer["log_p50_us"] <= producer["log_p99_us"]
    assert producer["in_redis"] == producer["records"] > 0
    memory = rows["redis_memory"]["figures"]
    assert memory["records"] == producer["records"] and memory["redis_peak_per_1m_bytes"] > 0
    end = rows["end_to_end"]["figures"]
    assert 0 < end["latency_p50_ms"] <= end["latency_p99_ms"]
    assert end["peak_redis_bytes"] > 0 and end["recovery_s"] > 0 and end["latency_samples"] > 0
    flat_out = rows["end_to_end_throughput"]["figures"]
    assert flat_out["records"] == producer["records"] and flat_out["processes"] == 1
    assert 0 < flat_out["producer_in_redis_s"] <= flat_out["seconds"]
    _assert_targets(tmp_path, markdown)
    return rows


def _assert_targets(tmp_path, markdown: str) -> None:
    """Every target carries its value and threshold and is PASS or MISS on them, in the table too."""
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    names = {target["target"].split(" ")[0] for target in report["targets"]}
    assert names >= {"log()", "producer", "one", "end", "peak", "simulation-thread"}
    for target in report["targets"]:
        met = target["value"] <= target["threshold"] if target["at_most"] else target["value"] >= target["threshold"]
        assert target["met"] == met, target
        assert f"| {target['target']} |" in markdown
    verdicts = [line for line in markdown.splitlines() if line.endswith(("| PASS |", "| MISS |"))]
    assert len(verdicts) == len(report["targets"])


def _assert_figure(rows: dict[str, dict], key: str, figure: str, base: str) -> None:
    assert rows[key]["figures"][figure] == pytest.approx(rows[key]["rate"] / rows[base]["rate"], rel=1e-9)


def _assert_ratio(rows: dict[str, dict], key: str, base: str) -> None:
    row = rows[key]
    assert row["ratio_to"] == base
    assert row["ratio"] == pytest.approx(row["rate"] / rows[base]["rate"], rel=1e-9)


@pytest.mark.timeout(400)
def test_bench_measures_every_row_and_computes_ratios_from_the_same_run(tmp_path):
    # Given: no Redis or database configured (the bench starts its own, fresh per configuration)
    # When: the shortest bench runs, its own process starved during the end-to-end run (a busy machine)
    result = _bench_starved_during_end_to_end(tmp_path, records=1_000)

    # Then: every row is there with positive figures, and each ratio uses this run's limits
    pg_rows = "extra" if _postgres_answers() else "skipped"
    rows = _assert_complete_and_consistent(tmp_path, result, pg_rows)
    _assert_ratio(rows, "simstream_producer", "limit_xadd")
    for consumers in ("simstream_consumers_1", "simstream_consumers_2"):
        _assert_ratio(rows, consumers, "limit_sql")
        _assert_figure(rows, consumers, "of_limit_pipeline", "limit_pipeline")
    _assert_ratio(rows, "end_to_end_throughput", "baseline_direct")
    _assert_figure(rows, "end_to_end_throughput", "x_list_queue", "baseline_list_queue")
    _assert_ratio(rows, "recent_state_redis", "recent_state_sqlite")
    if pg_rows == "extra":
        _assert_ratio(rows, "simstream_consumers_pg_2", "simstream_consumers_pg_1")
        assert "PostgreSQL" in rows["simstream_consumers_pg_1"]["detail"]
    else:
        assert "simstream consumers on PostgreSQL skipped: no PostgreSQL answers" in result.stdout


def _postgres_answers() -> bool:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except (SQLAlchemyError, ModuleNotFoundError):
        return False


def test_bench_runs_the_consumer_rows_on_postgresql_and_drops_its_schemas(tmp_path):
    if not _postgres_answers():
        pytest.skip(f"no PostgreSQL answers at {PG_URL} (set SIMSTREAM_TEST_PG_URL)")
    # Given: a PostgreSQL database
    # When: the bench runs with --db pointing at it
    result = _bench(tmp_path, "--db", PG_URL, records=5_000)

    # Then: the consumer rows ran on PostgreSQL, and no bench schema is left behind
    rows = _assert_complete_and_consistent(tmp_path, result, "none")
    assert "PostgreSQL" in rows["simstream_consumers_1"]["detail"]
    assert "PostgreSQL" in rows["end_to_end_throughput"]["detail"]
    engine = create_engine(PG_URL)
    with engine.connect() as connection:
        left = connection.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'simstream_bench%'"))
        assert left.all() == []
    engine.dispose()


def test_bench_with_bad_consumer_counts_says_what_to_use(tmp_path):
    result = subprocess.run([sys.executable, "-m", "consumer", "bench", "--consumers", "one"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "use process counts like 1,2" in result.stderr
