"""Human-readable rendering of stream statuses for ``simstream status``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from consumer.inspect import StreamStatus


def render_status(statuses: list[StreamStatus], group: str, console: Console | None = None) -> None:
    """Print one row per simulation stream and its consumers."""
    console = console or Console()
    if not statuses:
        console.print(f"no simulation streams registered (group {group})")
        return
    table = Table(title=f"simstream streams (group {group})")
    for column in ("simulation", "state", "logged", "length", "lag", "pending", "consumers (pending, idle)"):
        table.add_column(column, justify="left" if column in ("simulation", "state") else "right")
    for status in statuses:
        consumers = ", ".join(f"{c['name']} ({c['pending']}, {c['idle_ms'] / 1000:.1f}s)"
                              for c in status.consumers) or "-"
        state = "drained" if status.drained else ("complete" if status.complete else "running")
        table.add_row(status.simulation_id, state, str(status.logged), str(status.length),
                      str(status.lag), str(status.pending), consumers)
    console.print(table)
