"""``simstream status``: gather every stream's status and health, render it, refresh it.

The report is one JSON-ready dict (``--json`` prints it as is); the table is drawn from it, so
the two never disagree. ``--watch`` redraws in place on a terminal (rich Live) and reprints
otherwise, until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any, Callable

import redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from common.keys import Keys
from consumer.failures import Failure, read_failures
from consumer.ops.health import HealthThresholds, current_failure, dead_letter_counts, verdict
from consumer.stream_status import StreamStatus, all_statuses

_PLAIN_WIDTH = 200  # not a terminal (a file, a pipe): room for every column rather than 80
_STATE_STYLE = {"abandoned": "yellow"}
_HEALTH_STYLE = {"ok": "green", "lagging": "yellow", "stuck": "bold red", "dead-letters": "red",
                 "sink-unusable": "bold red", "sink-failing": "bold red", "redis-failing": "bold red"}


def _state(status: StreamStatus, thresholds: HealthThresholds) -> str:
    if not status.exists and status.complete:
        return "removed"
    if status.abandoned(thresholds.abandoned_after_s * 1000):
        return "abandoned"
    return "drained" if status.drained else ("complete" if status.complete else "running")


def status_report(client: redis.Redis, keys: Keys, group: str, db_url: str | None,
                  thresholds: HealthThresholds) -> dict[str, Any]:
    """Every registered stream's status, dead letters and verdict; plus simulations already
    removed from Redis (finished) that still have dead letters in the sink.
    """
    statuses = all_statuses(client, keys, group)
    failures = read_failures(client, keys) or {}
    now = time.time()
    letters = dead_letter_counts(db_url)
    known = {status.simulation_id for status in statuses}
    for simulation_id in sorted(set(letters or {}) - known, key=str):
        if simulation_id is not None:
            statuses.append(StreamStatus(simulation_id, keys.stream(simulation_id), complete=True))
    streams = []
    for status in statuses:
        count = None if letters is None else letters.get(status.simulation_id, 0)
        reports = failures.get(status.simulation_id, [])
        failure = current_failure(reports, thresholds, now)
        streams.append({**status.as_dict(), "state": _state(status, thresholds),
                        "abandoned": status.abandoned(thresholds.abandoned_after_s * 1000), "dead_letters": count,
                        "health": verdict(status, count, thresholds, failure),
                        "failing": _failing(status, failure, reports, now)})
    return {"group": group, "dead_letters_known": letters is not None,
            "thresholds": asdict(thresholds), "streams": streams}


def _failing(status: StreamStatus, failure: Failure | None, reports: list[Failure],
             now: float) -> dict[str, Any] | None:
    """What a ``*-failing`` verdict rests on: what fails, for how long, which consumers, the last error."""
    if status.redis_error and (failure is None or failure.what != "redis"):
        return {"what": "redis", "since": None, "for_ms": None, "consumers": ["status"],
                "error": status.redis_error}
    if failure is None:
        return None
    same = [f for f in reports if f.what == failure.what]
    latest = max(same, key=lambda f: f.seen)
    return {"what": failure.what, "since": failure.since, "for_ms": int((now - failure.since) * 1000),
            "consumers": sorted({f.consumer for f in same}), "error": latest.error}


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.1f}s" if ms < 120_000 else f"{ms / 60_000:.0f}m"


def _consumers(stream: dict[str, Any]) -> str:
    return "\n".join(f"{c['name']} ({c['pending']}, {_duration(c['idle_ms'])})"
                      for c in stream["consumers"]) or "-"


_COLUMNS = ("simulation", "state", "health", "logged", "persisted", "backlog", "lag entries", "pending entries",
            "oldest idle", "dead letters", "consumers")


def render_report(report: dict[str, Any]) -> RenderableType:
    """The report as a table, one row per simulation stream, and a note on dead letters."""
    group = report["group"]
    if not report["streams"]:
        return Text(f"no simulation streams registered (group {group})")
    table = Table(title=f"simstream streams (group {group})", box=box.SIMPLE_HEAD, title_justify="left",
                  caption="logged, persisted, backlog: records; lag, pending: stream entries (each a batch of "
                          "records); consumers: name (pending entries, idle time); oldest idle: the oldest "
                          "pending entry's time since delivery", caption_justify="left")
    for column in _COLUMNS:
        textual = column in _COLUMNS[:3] or column == _COLUMNS[-1]
        table.add_column(column, justify="left" if textual else "right",
                         no_wrap=column in ("simulation", "health", "consumers"))
    for s in report["streams"]:
        letters = "unknown" if s["dead_letters"] is None else str(s["dead_letters"])
        table.add_row(s["simulation_id"], Text(s["state"], style=_STATE_STYLE.get(s["state"], "")),
                      Text(s["health"], style=_HEALTH_STYLE[s["health"]]),
                      str(s["logged"]), str(s["persisted"]), str(s["backlog"]), str(s["lag"]), str(s["pending"]),
                      _duration(s["oldest_pending_idle_ms"]), letters, _consumers(s))
    notes = [Text(f"{s['simulation_id']}: {s['sink_problem']}") for s in report["streams"] if s.get("sink_problem")]
    notes += [_failing_note(s) for s in report["streams"] if s.get("failing") and s["health"].endswith("-failing")]
    if not report["dead_letters_known"]:
        notes.append(Text("dead letters: unknown (no reachable database: give --db or SIMSTREAM_DB_URL)"))
    return Group(table, *notes) if notes else table


def _failing_note(stream: dict[str, Any]) -> Text:
    failing = stream["failing"]
    lasting = f" for {_duration(failing['for_ms'])}" if failing["for_ms"] is not None else ""
    return Text(f"{stream['simulation_id']}: {stream['health']}{lasting} ({', '.join(failing['consumers'])}): "
                f"{failing['error']}", style=_HEALTH_STYLE[stream["health"]])


def make_console() -> Console:
    """A console for the table: the terminal's width, or a wide one when output is redirected."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(width=_PLAIN_WIDTH)


def print_report(report: dict[str, Any], as_json: bool, console: Console | None = None) -> None:
    """Print the report once: indented JSON, or the table."""
    if as_json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        (console or make_console()).print(render_report(report))


def watch(build: Callable[[], dict[str, Any]], interval_s: float, as_json: bool,
          console: Console | None = None) -> None:
    """Refresh every ``interval_s`` until Ctrl-C: in place on a terminal, else reprinted
    (one compact JSON object per line with ``as_json``).
    """
    console = console or make_console()
    try:
        if as_json or not console.is_terminal:
            while True:
                report = build()
                if as_json:
                    print(json.dumps(report), flush=True)
                else:
                    console.print(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
                    console.print(render_report(report))
                time.sleep(interval_s)
        with Live(render_report(build()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(render_report(build()), refresh=True)
    except KeyboardInterrupt:
        return
