"""One-word health of a simulation stream, and the dead-letter counts it needs from the sink.

A stream's *backlog* is what its group still has to persist, in records (records appended less
records in acknowledged entries; for a stream of producers before record batches, entries not yet
delivered (lag) plus entries delivered and not acknowledged (pending), one record each). Whether
there is any backlog at all is judged on those entries, which Redis counts exactly (see
:class:`~consumer.stream_status.StreamStatus`). A consumer is *active* when Redis saw it
within ``stuck_after_ms`` (its XINFO CONSUMERS idle time); a live worker is seen at least every
``block_ms``. The verdict is the first of these that holds:

``sink-unusable``
    a worker found the simulation's database unable to take its rows (a table of another shape,
    a layout the database cannot hold); the reason is shown, and the entries wait in Redis.
``redis-failing``
    ``status`` could not read the stream (its master is down, failing over), or a consumer has
    been retrying Redis for the stream longer than ``failing_after_ms``; the last error is shown.
``sink-failing``
    a consumer has been retrying the database for the simulation longer than ``failing_after_ms``
    (it refuses writes, is read-only, full, unreachable); the last error is shown, nothing is
    acknowledged meanwhile. These two explain a ``stuck`` or growing backlog, so they rank above.
``stuck``
    backlog > 0, and either no consumer is active, or the oldest pending entry has been idle
    longer than ``claim_idle_ms + stuck_after_ms`` (it became claimable and nobody claimed it).
``dead-letters``
    the sink holds dead letters for the simulation (``simstream dlq list`` shows them).
``lagging``
    backlog > ``lag_threshold`` records while consumers are active.
``ok``
    none of the above.

Consumers publish what they retry in Redis (:mod:`consumer.failures`); a report not re-confirmed
within ``stuck_after_ms`` is stale (its consumer is gone) and ignored. The verdict reads one
snapshot; the trend of the backlog shows in ``status --watch``.
Whether a simulation is ``abandoned`` (its producer stopped without completing it) is its state,
not a health verdict: ``abandoned_after_s`` is where it begins (:meth:`StreamStatus.abandoned`).
Dead letters live in SQL: without a reachable database their count is unknown (None) and the
verdict cannot be ``dead-letters``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from common import schema
from common.events import event
from common.settings import DEFAULT_ABANDONED_AFTER_S, SIMULATION_ID_PLACEHOLDER, is_per_simulation
from consumer.failures import REDIS, SINK, Failure
from consumer.stream_status import StreamStatus

log = logging.getLogger(__name__)

OK, LAGGING, STUCK, DEAD_LETTERS, SINK_UNUSABLE = "ok", "lagging", "stuck", "dead-letters", "sink-unusable"
SINK_FAILING, REDIS_FAILING = "sink-failing", "redis-failing"
VERDICTS = (OK, LAGGING, STUCK, DEAD_LETTERS, SINK_UNUSABLE, SINK_FAILING, REDIS_FAILING)

_DB_CONNECT_TIMEOUT_S = 3


@dataclass(frozen=True)
class HealthThresholds:
    """Where ``lagging``, ``stuck`` and ``*-failing`` begin (see the module docstring), and the
    state ``abandoned``."""

    lag_threshold: int = 10_000
    stuck_after_ms: int = 30_000
    claim_idle_ms: int = 60_000
    abandoned_after_s: float = DEFAULT_ABANDONED_AFTER_S
    failing_after_ms: int = 10_000


def active_consumers(status: StreamStatus, thresholds: HealthThresholds) -> list[dict]:
    """The group's consumers Redis saw within ``stuck_after_ms``."""
    return [c for c in status.consumers if c["idle_ms"] <= thresholds.stuck_after_ms]


def current_failure(reports: list[Failure] | None, thresholds: HealthThresholds,
                    now: float | None = None) -> Failure | None:
    """Among consumers' reports for one simulation, the one that names its verdict: re-confirmed
    within ``stuck_after_ms``, failing longer than ``failing_after_ms``; Redis before the sink,
    then the longest-lasting. None if there is none."""
    now = time.time() if now is None else now
    live = [f for f in reports or () if (now - f.seen) * 1000 <= thresholds.stuck_after_ms
            and (now - f.since) * 1000 >= thresholds.failing_after_ms]
    return min(live, key=lambda f: (f.what != REDIS, f.since), default=None)


def verdict(status: StreamStatus, dead_letters: int | None, thresholds: HealthThresholds,
            failure: Failure | None = None) -> str:
    """The one-word health of ``status``: sink-unusable, redis-failing, sink-failing, stuck,
    dead-letters, lagging or ok (in that precedence). ``failure``: see :func:`current_failure`."""
    if status.sink_problem:
        return SINK_UNUSABLE
    if status.redis_error or (failure is not None and failure.what == REDIS):
        return REDIS_FAILING
    if failure is not None and failure.what == SINK:
        return SINK_FAILING
    if status.backlog_entries > 0 and _stuck(status, thresholds):
        return STUCK
    if dead_letters:
        return DEAD_LETTERS
    if status.backlog > thresholds.lag_threshold:
        return LAGGING
    return OK


def _stuck(status: StreamStatus, thresholds: HealthThresholds) -> bool:
    if not active_consumers(status, thresholds):
        return True
    idle = status.oldest_pending_idle_ms
    return idle is not None and idle > thresholds.claim_idle_ms + thresholds.stuck_after_ms


def dead_letter_counts(db_url: str | None) -> dict[str, int] | None:
    """Dead letters per simulation in the sink; None if there is no database to ask.

    Never creates a database or a table: a missing SQLite file or a sink without the
    ``dead_letters`` table counts as unknown, not as zero.
    """
    if not db_url:
        return None
    if is_per_simulation(db_url):
        return _per_simulation_counts(db_url)
    try:
        url = make_url(db_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return None
        args = {"connect_timeout": _DB_CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
        engine = create_engine(url, connect_args=args)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        event(log, logging.DEBUG, "health.dead_letters_unknown", error=exc)
        return None
    try:
        return _count_by_simulation(engine)
    except SQLAlchemyError as exc:
        event(log, logging.DEBUG, "health.dead_letters_unknown", error=exc)
        return None
    finally:
        engine.dispose()


def _per_simulation_counts(template: str) -> dict[str, int] | None:
    """Dead letters summed over every simulation's own file that exists; None if there is none."""
    files = Path(make_url(template).database or "").parent
    pattern = Path(make_url(template).database or "").name.replace(SIMULATION_ID_PLACEHOLDER, "*")
    counts: dict[str, int] | None = None
    for file in sorted(files.glob(pattern)) if files.is_dir() else []:
        found = dead_letter_counts(f"sqlite:///{file.resolve()}")
        if found is not None:
            counts = counts or {}
            for simulation_id, count in found.items():
                counts[simulation_id] = counts.get(simulation_id, 0) + count
    return counts


def _count_by_simulation(engine) -> dict[str, int] | None:
    table = schema.dead_letters
    with engine.connect() as connection:
        if not inspect(connection).has_table(table.name):
            return None
        query = select(table.c.simulation_id, func.count()).group_by(table.c.simulation_id)
        return {simulation_id: count for simulation_id, count in connection.execute(query)}
