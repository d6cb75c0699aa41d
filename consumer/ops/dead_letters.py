"""Inspecting and re-driving dead letters (``simstream dlq list|retry|purge``).

A retry puts each dead letter's payload (an entry payload holding that one record: a format 1
record, or a record batch of one) back into its simulation's stream as an entry of its own, with
the one stream append (:func:`common.stream_append.append_entries`), then deletes the dead letter.
The append does not skip it although its producer's sequence number already covers it: it is
appended again on purpose. A crash in between re-drives it twice, which the idempotent sink
absorbs. The sink isolates failures per record, so a record that is still bad comes back as a
dead letter alone, and the re-driven records read in the same batch are persisted.
A simulation whose stream was already removed as finished gets its stream back, marked complete,
so consumers finish it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine, delete, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from common.codec import EncodedBatch, describe
from common.keys import Keys
from common.layouts import STANDALONE
from common.schema import dead_letters, simstream_simulations
from common.stream_append import append_entries


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
    """Put each dead letter's payload back into its stream as its own entry, and delete it from
    the table."""
    with engine.connect() as connection:
        if not _has_table(connection):
            return RetryResult(0, 0)
        rows = connection.execute(_filtered(select(dead_letters), simulation_id, ids)).all()
    redriven, skipped = [], 0
    for row in rows:
        if row.raw is None or row.simulation_id is None:
            skipped += 1
            continue
        _redrive(engine, client, keys, row.simulation_id, row.raw)
        redriven.append(row.id)
    if redriven:
        with engine.begin() as connection:
            connection.execute(delete(dead_letters).where(dead_letters.c.id.in_(redriven)))
    return RetryResult(len(redriven), skipped)


def _redrive(engine: Engine, client: redis.Redis, keys: Keys, simulation_id: str, raw: bytes) -> None:
    """Append ``raw`` to the simulation's stream as an entry of its own. A simulation whose stream
    and meta hash retention removed gets them back: the layout announced before the entry
    (consumers wait for a layout, never guess it) and, after it, the mark that it is complete."""
    meta = keys.meta(simulation_id)
    was_removed = not client.exists(meta)
    entry = describe(raw) or EncodedBatch(raw, "", 0, 0, 1)  # unreadable: the consumer dead-letters it again
    layout = _layout_of(engine, simulation_id) if was_removed else None
    append_entries(client, keys, simulation_id, [entry], layout=layout, skip_seen=False,
                   extras=[("HSET", meta, "complete", 1)] if was_removed else (), register=True)


def _layout_of(engine: Engine, simulation_id: str) -> str:
    """The layout the simulation's start record announced, as its lifecycle row keeps it."""
    table = simstream_simulations
    try:
        with engine.connect() as connection:
            layout = connection.execute(select(table.c.layout).where(table.c.simulation_id == simulation_id)).scalar()
    except SQLAlchemyError:
        layout = None  # a database made before layouts: everything in it is standalone
    return layout or STANDALONE


def purge_dead_letters(engine: Engine, simulation_id: str | None = None, ids: tuple[int, ...] = ()) -> int:
    """Delete dead letters; returns how many."""
    with engine.begin() as connection:
        if not _has_table(connection):
            return 0
        return connection.execute(_filtered(delete(dead_letters), simulation_id, ids)).rowcount
