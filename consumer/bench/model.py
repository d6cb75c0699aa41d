"""What a benchmark measurement produces (rows of the table) and what it is given (the context).

A measurement is a function ``(BenchContext) -> list[Row]``. The built-in ones run in a fixed
order; :data:`EXTRA_MEASUREMENTS` is where further ones plug in: each runs after the built-in
rows, gets the same context (fresh Redis and database factories, the record mix, the rows so
far) and its rows join the same table, JSON and plot.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from consumer.ops.embedded_redis import EmbeddedRedis
from common.workload import Mix


@dataclass
class Row:
    """One line of the benchmark table.

    ``rate``: records (or rows) per second, plotted; None for rows that are not a throughput.
    ``figures``: every number measured, by name, for bench.json. ``ratio``: this row's figure
    divided by the one of row ``ratio_to`` from the same run, described by ``ratio_text`` and shown
    as a share (``ratio_unit`` ``%``) or a multiple (``x``).
    """

    key: str
    label: str
    rate: float | None
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    ratio_to: str | None = None
    ratio_text: str = ""
    ratio_unit: str = "%"

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON-able values."""
        return asdict(self)


ENV_BENCH_PG_URL = "SIMSTREAM_BENCH_PG_URL"
DEFAULT_BENCH_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def bench_pg_url() -> str | None:
    """The PostgreSQL of the extra consumer rows: ``SIMSTREAM_BENCH_PG_URL`` (empty or ``off``:
    none), else the local test database; used only when it answers."""
    url = os.environ.get(ENV_BENCH_PG_URL, DEFAULT_BENCH_PG_URL).strip()
    return None if url.lower() in ("", "off") else url


@dataclass
class BenchOptions:
    """The knobs of one ``simstream bench`` run."""

    records: int = 250_000
    consumers: tuple[int, ...] = (1, 2)
    out_dir: Path = Path("bench-results")
    db_url: str | None = None  # None: SQLite files in a scratch folder; else a PostgreSQL URL
    agents: int = 100
    resources: int = 20
    pg_url: str | None = field(default_factory=bench_pg_url)  # consumer rows on PostgreSQL too, if it answers

    @property
    def mix(self) -> Mix:
        """The record mix every measurement of the run uses."""
        return Mix(self.records, self.agents, self.resources)


DatabaseFactory = Callable[[str], contextlib.AbstractContextManager[str]]
"""``fresh_database(label)``: a new, empty database for one configuration, as a URL; removed afterwards."""


@dataclass
class BenchContext:
    """Given to every measurement: options, scratch folder, fresh servers, rows measured so far."""

    options: BenchOptions
    scratch: Path
    fresh_redis: Callable[[], contextlib.AbstractContextManager[EmbeddedRedis]]
    fresh_database: DatabaseFactory
    rows: list[Row] = field(default_factory=list)

    @property
    def mix(self) -> Mix:
        """The record mix of this run."""
        return self.options.mix

    def row(self, key: str) -> Row | None:
        """The row measured earlier under ``key``, if any."""
        return next((row for row in self.rows if row.key == key), None)

    def say(self, message: str) -> None:
        """One progress line on stdout."""
        print(f"  {message}", flush=True)


Measurement = Callable[[BenchContext], list[Row]]
"""A measurement: runs against the context's fresh servers and returns its rows."""

EXTRA_MEASUREMENTS: list[Measurement] = []
"""Measurements run after the built-in ones; append to plug a new row into the benchmark."""

