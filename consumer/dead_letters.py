"""Inspecting and re-driving dead letters (``simstream dlq list|retry|purge``).

A retry puts the original payload back into its simulation's stream, then deletes the dead
letter. A crash in between re-drives it twice, which the idempotent sink absorbs. A payload that
is still bad simply comes back as a new dead letter. A simulation whose stream was already
removed as finished gets its stream back, marked complete, so consumers finish it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine, delete, inspect, select

from common.codec import ENTRY_FIELD
from common.keys import Keys
from common.schema import dead_letters


@dataclass(frozen=True)
class RetryResult:
    """What a retry did."""

    redriven: int
    skipped_without_payload: int


def _filtered(query, simulation_id: str | None, ids: tuple[int, ...]):
    if simulation_id:
        query = query.where(dead_letters.c.simulation_id == simulation_id)
    if ids:
        query = query.where(dead_letters.c.id.in_(ids))
    return query


def _has_table(connection) -> bool:
    """Whether the sink has a ``dead_letters`` table; one without it has no dead letters (and
    these commands never create it)."""
    return inspect(connection).has_table(dead_letters.name)


def list_dead_letters(engine: Engine, simulation_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters (without their raw bytes), newest first; writes nothing."""
    columns = [c for c in dead_letters.c if c.name != "raw"]
    query = _filtered(select(*columns, dead_letters.c.raw.is_(None).label("payload_lost")), simulation_id, ())
    with engine.connect() as connection:
        if not _has_table(connection):
            return []
        rows = connection.execute(query.order_by(dead_letters.c.id.desc()).limit(limit))
        return [dict(row._mapping) for row in rows]


def retry_dead_letters(engine: Engine, client: redis.Redis, keys: Keys, simulation_id: str | None = None,
                       ids: tuple[int, ...] = ()) -> RetryResult:
    """Put dead letters' payloads back into their streams and delete them from the table."""
    with engine.connect() as connection:
        if not _has_table(connection):
            return RetryResult(0, 0)
        rows = connection.execute(_filtered(select(dead_letters), simulation_id, ids)).all()
    redriven, skipped = [], 0
    for row in rows:
        if row.raw is None or row.simulation_id is None:
            skipped += 1
            continue
        meta = keys.meta(row.simulation_id)
        was_removed = not client.exists(meta)
        pipe = client.pipeline(transaction=False)
        pipe.xadd(keys.stream(row.simulation_id), {ENTRY_FIELD: row.raw})
        pipe.sadd(keys.registry, row.simulation_id)
        if was_removed:
            pipe.hset(meta, "complete", 1)
        pipe.execute()
        redriven.append(row.id)
    if redriven:
        with engine.begin() as connection:
            connection.execute(delete(dead_letters).where(dead_letters.c.id.in_(redriven)))
    return RetryResult(len(redriven), skipped)


def purge_dead_letters(engine: Engine, simulation_id: str | None = None, ids: tuple[int, ...] = ()) -> int:
    """Delete dead letters; returns how many."""
    with engine.begin() as connection:
        if not _has_table(connection):
            return 0
        return connection.execute(_filtered(delete(dead_letters), simulation_id, ids)).rowcount
