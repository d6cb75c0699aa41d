"""The benchmark's outputs: the table (printed and ``bench.md``), ``bench.json`` and ``bench.png``.

The plot needs matplotlib, an optional extra (``pip install 'simstream[bench]'``); without it
the run says so in one line and writes everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumer.bench.model import Row

PLOT_HINT = "plot skipped: matplotlib is not installed; pip install 'simstream[bench]' to get bench.png"


def _rate(row: Row) -> str:
    return f"{row.rate:,.0f}" if row.rate else ""


def _ratio(row: Row) -> str:
    if row.ratio is not None:
        return f"{_value(row.ratio, row.ratio_unit)} {row.ratio_text}"
    return row.ratio_text


def _value(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0%}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.2f} {unit}"


def table_markdown(rows: list[Row]) -> str:
    """The table: one line per row, with its ratio to the limit from the same run."""
    lines = ["| measured | records/s | detail | vs same run |", "|---|---:|---|---|"]
    lines += [f"| {row.label} | {_rate(row)} | {row.detail} | {_ratio(row)} |" for row in rows]
    return "\n".join(lines)


def targets_markdown(targets: list[dict[str, Any]]) -> str:
    """The targets: what is measured, the value of this run, the threshold, PASS or MISS."""
    lines = ["| target | measured | needed | result |", "|---|---:|---:|---|"]
    for target in targets:
        threshold, unit = target["threshold"], target["unit"]
        needed = f"{'<=' if target['at_most'] else '>='} " + (
            _value(threshold, unit) if unit == "%" else f"{threshold:g}{'' if unit == 'x' else ' '}{unit}")
        lines.append(f"| {target['target']} | {_value(target['value'], target['unit'])} | {needed} | "
                     f"{'PASS' if target['met'] else 'MISS'} |")
    return "\n".join(lines)


def _machine_line(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GB, {m['system']}, Python {m['python']}; "
            f"load average at start {', '.join(f'{v:.1f}' for v in m['load_avg_at_start'])}")


def render(rows: list[Row], targets: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """bench.md: header, table, targets."""
    return "\n\n".join([
        f"# simstream bench\n\n{meta['records']:,} records, consumers {meta['consumers']}, sink {meta['db']}, "
        f"{meta['seconds']} s, started {meta['started_at']}.\nMachine: {_machine_line(meta)}.",
        table_markdown(rows), targets_markdown(targets)]) + "\n"


def plot(rows: list[Row], path: Path) -> bool:
    """Horizontal bars of records/s per configuration; False if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if row.rate]
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.2))
    colors = ["#999999" if row.key.startswith("limit") else "#d08050" if row.key.startswith("baseline")
              else "#3070b0" for row in shown]
    axes.barh([row.label for row in shown][::-1], [row.rate for row in shown][::-1], color=colors[::-1])
    axes.set_xlabel("records/s (rows/s for limit: SQL insert)")
    axes.set_title("simstream bench: throughput per configuration")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(out_dir: Path, rows: list[Row], targets: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Print the table and write bench.md, bench.json and bench.png into ``out_dir``."""
    text = render(rows, targets, meta)
    (out_dir / "bench.md").write_text(text)
    (out_dir / "bench.json").write_text(json.dumps(
        {"meta": meta, "rows": [row.as_dict() for row in rows], "targets": targets}, indent=2, default=str))
    print("\n" + text)
    if plot(rows, out_dir / "bench.png"):
        print(f"wrote {out_dir / 'bench.md'}, {out_dir / 'bench.json'}, {out_dir / 'bench.png'}")
    else:
        print(PLOT_HINT)
        print(f"wrote {out_dir / 'bench.md'}, {out_dir / 'bench.json'}")
