"""The bench report: table, JSON, and the one-line hint when matplotlib is missing."""

from __future__ import annotations

import json
import sys

from consumer.bench.model import Row
from consumer.bench.report import PLOT_HINT, write_report

META = {"records": 1000, "consumers": [1], "db": "SQLite", "seconds": 1.0, "started_at": "now",
        "machine": {"cpus": 2, "cpu": "x86_64", "memory_gb": 1.0, "system": "Linux", "python": "3.11",
                    "load_avg_at_start": [0.1, 0.2, 0.3]}}


def _rows() -> list[Row]:
    limit = Row("limit_xadd", "limit: XADD", 100.0, "raw", {"rps": 100.0})
    producer = Row("simstream_producer", "simstream producer", 80.0, "log()", {"rps": 80.0},
                   ratio=0.8, ratio_to="limit_xadd", ratio_text="of limit: XADD")
    extra = Row("read_recent_state", "read recent state", None, "Redis 2 ms, SQLite 15 ms")  # a plugged-in row
    return [limit, producer, extra]


def test_without_matplotlib_the_report_says_how_to_get_the_plot_and_writes_the_rest(tmp_path, monkeypatch, capsys):
    # Given: matplotlib cannot be imported
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    # When: the report is written
    write_report(tmp_path, _rows(), [{"target": "producer >= 70%", "value": 0.8, "unit": "", "met": True}], META)

    # Then: one line says how to get the plot; the table and JSON are there, every row in both
    printed = capsys.readouterr().out
    assert PLOT_HINT in printed and "pip install 'simstream[bench]'" in PLOT_HINT
    assert not (tmp_path / "bench.png").exists()
    markdown = (tmp_path / "bench.md").read_text()
    for label in ("limit: XADD", "simstream producer", "read recent state"):
        assert f"| {label} |" in markdown and f"| {label} |" in printed
    assert "80% of limit: XADD" in markdown and "| producer >= 70% | 80% | yes |" in markdown
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [row["key"] for row in saved["rows"]] == ["limit_xadd", "simstream_producer", "read_recent_state"]
