"""The SQL sink: a batch of stream entries becomes rows, in one transaction, idempotently.

Every insert ignores a row whose key is already present (the table's primary key, or the
producer-assigned ``record_key``), so a replayed entry writes nothing new. Lifecycle rows
(``simulations``) are upserts whose columns commute, so their order does not matter.
Entries that cannot become rows are written to ``dead_letters`` in the same transaction.

A record is the unit of failure: whatever exception one record's values cause (a type check, an
int past 64 bits, nesting past the JSON encoder's depth, a string too long for its column), that
record alone is dead-lettered, with the exception's type and message as its reason, and the rest
of its batch commits. Only a database that cannot take the transaction at all (locked, full,
unreachable) raises, as DatabaseUnavailable, so that nothing is acknowledged.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import JSON, Engine, Table, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from common import schema
from common.codec import decode
from common.errors import DatabaseUnavailable, RecordError
from common.layouts import STANDALONE, layout_named
from common.records import KINDS, RecordKind
from consumer.value_conversion import postgresql_conversion
from consumer.stream_reader import Entry

log = logging.getLogger(__name__)

_INSERTS: dict[str, Callable] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_AGENT_ROW_KINDS = frozenset({"agent", "agent_death", "agent_retraction"})
"""Kinds after whose rows a transaction removes retracted agents' rows (see ``_retractions_applied``)."""


@dataclass
class DeadLetter:
    """A record that will not become a row, and why: keyed by its entry and its index in the entry
    (always 0 while an entry holds one record)."""

    entry_id: bytes
    raw: bytes | None
    error: str
    delivery_count: int | None = None
    index: int = 0


@dataclass
class WriteResult:
    """What one committed batch wrote."""

    rows_by_table: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    isolated_by_database: int = 0


def idempotent_insert(kind: RecordKind, dialect: str, table: Table | None = None):
    """The insert statement for ``kind`` (into ``table``, by default its standalone table) that a
    replay cannot duplicate."""
    table = kind.table if table is None else table
    statement = _INSERTS[dialect](table)
    if not kind.merge_columns:
        return statement.on_conflict_do_nothing()
    updates = {name: statement.excluded[name] for name in kind.merge_columns}
    for name in kind.keep_existing:
        updates[name] = func.coalesce(table.c[name], statement.excluded[name])
    keys = [column.name for column in table.primary_key]
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def _retractions_applied(agents: Table, retracted: Table):
    """Remove the agent rows of retracted agents (run after agent rows or retractions are written)."""
    return (delete(agents).where(agents.c.simulation_id == bindparam("simulation_id"))
            .where(agents.c.agent_id.in_(select(retracted.c.agent_id)
                                         .where(retracted.c.simulation_id == bindparam("simulation_id")))))


_REFUSED_STATES = ("08", "25006", "40", "42501", "53", "55P03", "57", "58")
"""PostgreSQL SQLSTATEs (classes and codes) that refuse a transaction whatever its rows hold: the
connection failed, the transaction is read-only, rights were revoked, the disk or memory is full,
a lock or a deadlock, an operator shut the server down. The batch waits and is retried; no row is
to blame, so none is isolated or dead-lettered for it."""


def _is_transient(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate and sqlstate.startswith(_REFUSED_STATES):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Sink:
    """Writes decoded entries of simulation streams to the SQL database at ``engine``, into the
    tables of ``layout`` (see :mod:`common.layouts`)."""

    def __init__(self, engine: Engine, layout: str = STANDALONE) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.layout = layout_named(layout)
        self._tables = {name: self.layout.table_for(name, kind.table) for name, kind in KINDS.items()}
        self._statements = {name: idempotent_insert(kind, self.dialect, self._tables[name])
                            for name, kind in KINDS.items() if self._tables[name] is not None}
        tables = self.layout.metadata.tables
        self._apply_retractions = _retractions_applied(tables["agents"], tables["simstream_retracted_agents"])
        # Compiled once with named parameters, so row dicts go to the driver's executemany as they
        # are: SQLAlchemy's per-row parameter processing was a fifth of a worker's time.
        self._compile_dialect = sqlite.dialect(paramstyle="named") if self.dialect == "sqlite" else engine.dialect
        self._driver_sql: dict[tuple[str, ...], str] = {}
        self._conversions = {name: _conversions(kind, self._tables[name], self.dialect)
                             for name, kind in KINDS.items() if self._tables[name] is not None}
        self._dead_letter_insert = _INSERTS[self.dialect](schema.dead_letters).on_conflict_do_nothing()

    def write(self, stream: str, simulation_id: str, entries: list[Entry],
              dead_letters: list[DeadLetter] | None = None) -> WriteResult:
        """Commit the rows of ``entries`` (and dead letters for those that fail) in one transaction.

        Raises DatabaseUnavailable if the database cannot take the transaction now; then nothing
        was committed and the caller must not acknowledge. Any other exception a record causes is
        that record's: one raised while making its row dead-letters it there, and one raised by
        the database or driver for the batch (of any type) is isolated by retrying the batch in
        halves, and its row dead-lettered alone. Every entry is then committed or dead-lettered.
        """
        letters = list(dead_letters or [])
        rows: list[tuple[str, dict[str, Any], Entry]] = []
        for entry in entries:
            prepared = self._prepare(entry, simulation_id)
            (letters if isinstance(prepared, DeadLetter) else rows).append(prepared)
        try:
            return self._commit(stream, simulation_id, rows, letters)
        except _RowRejected:
            return self._bisect(stream, simulation_id, rows, letters)

    def _prepare(self, entry: Entry, simulation_id: str) -> tuple[str, dict[str, Any], Entry] | DeadLetter:
        """The entry's (kind, driver row, entry), or its dead letter: whatever exception its values
        raise stays with this record."""
        kind_name = "entry"
        try:
            record = decode(entry.payload)
            kind_name = record.kind.name
            return kind_name, self._driver_row(kind_name, record.to_row(simulation_id)), entry
        except RecordError as exc:
            return DeadLetter(entry.entry_id, entry.payload, str(exc), entry.deliveries)
        except Exception as exc:  # noqa: BLE001 - any type: bytes in JSON, RecursionError from deep nesting
            return DeadLetter(entry.entry_id, entry.payload, f"{kind_name}: a value cannot be stored: {_cause(exc)}",
                              entry.deliveries)

    def _commit(self, stream: str, simulation_id: str, rows: list[tuple[str, dict, Entry]],
                letters: list[DeadLetter]) -> WriteResult:
        rows_by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for kind_name, row, _ in rows:
            rows_by_kind[kind_name].append(row)
        result = WriteResult(dead_letters=len(letters))
        try:
            with self.engine.begin() as connection:
                for kind_name, kind_rows in rows_by_kind.items():
                    connection.exec_driver_sql(self._sql_for(kind_name, kind_rows[0]), kind_rows)
                    table = KINDS[kind_name].table.name
                    result.rows_by_table[table] = result.rows_by_table.get(table, 0) + len(kind_rows)
                if not rows_by_kind.keys().isdisjoint(_AGENT_ROW_KINDS):
                    connection.execute(self._apply_retractions, {"simulation_id": simulation_id})
                if letters:
                    connection.execute(self._dead_letter_insert,
                                       [self._letter_row(stream, simulation_id, letter) for letter in letters])
        except SQLAlchemyError as exc:
            if _is_transient(exc):
                raise DatabaseUnavailable(f"database did not take the batch: {exc.orig or exc}") from exc
            raise _RowRejected(_cause(getattr(exc, "orig", None) or exc)) from exc
        except Exception as exc:  # noqa: BLE001
            # The driver raises some value errors outside the DB-API tree (sqlite3's OverflowError
            # for an int past 64 bits, from executemany): a row's fault too, found by bisection.
            raise _RowRejected(_cause(exc)) from exc
        return result

    def _sql_for(self, kind_name: str, sample: dict[str, Any]) -> str:
        """The kind's idempotent insert for rows with ``sample``'s columns, compiled once."""
        key = (kind_name, *sample)
        sql = self._driver_sql.get(key)
        if sql is None:
            compiled = self._statements[kind_name].compile(dialect=self._compile_dialect, column_keys=list(sample))
            sql = self._driver_sql[key] = str(compiled)
        return sql

    def _driver_row(self, kind_name: str, row: dict[str, Any]) -> dict[str, Any]:
        """The row as the driver takes it: what the skipped type processing did, done here, once
        per record and inside the record's own guard, so a value that cannot be stored (bytes in a
        JSON column) dead-letters its record instead of failing the batch."""
        conversions = self._conversions.get(kind_name)
        if conversions is None:
            raise RecordError(f"{kind_name}: the {self.layout.name} layout has no "
                              f"{KINDS[kind_name].table.name} table")
        for column, convert in conversions:
            row[column] = convert(row.get(column))
        if kind_name in self.layout.kinds_without_simulation_id:
            row["simulation_id"] = None
        return row

    def _bisect(self, stream: str, simulation_id: str, rows: list[tuple[str, dict, Entry]],
                letters: list[DeadLetter]) -> WriteResult:
        """Commit ``rows`` in halves until each rejected row stands alone, then dead-letter it.

        Several transactions instead of one; safe because nothing is acknowledged until all of
        them have committed, and a replay of any of them writes nothing new.
        """
        total = self._commit_letters(stream, simulation_id, letters) if letters else WriteResult()
        pending = [rows]
        while pending:
            part = pending.pop()
            try:
                _merge(total, self._commit(stream, simulation_id, part, []))
            except _RowRejected as rejection:
                if len(part) > 1:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
                    continue
                entry = part[0][2]
                letter = DeadLetter(entry.entry_id, entry.payload, f"database rejected the row: {rejection}",
                                    entry.deliveries)
                result = self._commit_letters(stream, simulation_id, [letter])
                result.isolated_by_database = 1
                _merge(total, result)
        log.warning("sink.rows_isolated stream=%s rejected=%d", stream, total.isolated_by_database)
        return total

    def _commit_letters(self, stream: str, simulation_id: str, letters: list[DeadLetter]) -> WriteResult:
        """Commit dead letters alone. A database that refuses even these refuses every write (read
        only, rights revoked): that is no record's fault, so nothing is acknowledged."""
        try:
            return self._commit(stream, simulation_id, [], letters)
        except _RowRejected as exc:
            raise DatabaseUnavailable(f"database refused the dead letters too: {exc}") from exc

    def _letter_row(self, stream: str, simulation_id: str, letter: DeadLetter) -> dict[str, Any]:
        entry_id = letter.entry_id.decode() if isinstance(letter.entry_id, bytes) else letter.entry_id
        return {"stream": stream, "entry_id": entry_id, "entry_index": letter.index,
                "simulation_id": simulation_id, "raw": letter.raw,
                "error": letter.error.replace("\x00", "\\x00")[:2000],  # PostgreSQL text takes no NUL
                "delivery_count": letter.delivery_count, "created_at": time.time()}


class _RowRejected(Exception):
    """The database refused a row of the batch for a reason retrying cannot fix."""


def _cause(exc: BaseException) -> str:
    """The exception as a reason: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _conversions(kind: RecordKind, table: Table, dialect: str) -> list[tuple[str, Callable]]:
    """(column, convert) for the kind's columns whose value the driver cannot take as it is.

    JSON columns are serialised as SQLAlchemy would (None too, as JSON ``null``). On SQLite every
    other value goes as it is and the column's affinity stores it as the reference's own path
    would. On PostgreSQL a value is converted where that loses nothing (an int for a text column,
    an integral float for an integer one), else the record is rejected with the cause.
    """
    found = []
    for column in table.columns:
        if column.name not in kind.allowed:
            continue
        if isinstance(column.type, JSON):
            found.append((column.name, json.dumps))
        elif dialect == "postgresql":
            convert = postgresql_conversion(column)
            if convert is not None:
                found.append((column.name, convert))
    return found


def _merge(total: WriteResult, part: WriteResult) -> None:
    for table, count in part.rows_by_table.items():
        total.rows_by_table[table] = total.rows_by_table.get(table, 0) + count
    total.dead_letters += part.dead_letters
    total.isolated_by_database += part.isolated_by_database
