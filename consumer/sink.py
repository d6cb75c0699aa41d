"""The SQL sink: a batch of stream entries becomes rows, in one transaction, idempotently.

An entry is a record batch (or, from producers older than batches, one record): its rows arrive
laid out by :mod:`common.rows`, one tuple per record in the fixed column order of its kind. The
rows of a write are gathered per kind (``list.extend``: nothing per row in Python) and handed to
the driver's ``executemany`` with one statement per kind, compiled once, whose column list follows
that order. On PostgreSQL alone each row also passes :mod:`consumer.value_conversion`.

Every insert ignores a row whose key is already present (the table's primary key, or the
producer-assigned ``record_key``), so a replayed entry writes nothing new. Lifecycle rows
(``simulations``) are upserts whose columns commute, so their order does not matter.
What cannot become a row is written to ``dead_letters`` in the same transaction: an entry that is
unreadable as a whole (index 0, its raw bytes), a record its producer could not lay out (a
*reject*, with its offset in the batch and its reason).

A record is the unit of failure: whatever exception one record's values cause (a type check, an
int past 64 bits, nesting past the JSON encoder's depth, a string too long for its column), that
record alone is dead-lettered, with the exception's type and message as its reason, and the rest
of its batch commits. Only a database that cannot take the transaction at all (locked, full,
unreachable) raises, as DatabaseUnavailable, so that nothing is acknowledged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Dialect, Engine, Table, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from common import schema
from common.codec import DecodedEntry, decode_entry, describe
from common.errors import DatabaseUnavailable, RecordError
from common.events import event
from common.layouts import STANDALONE, layout_named
from common.records import KINDS, RecordKind
from common.replies import text
from common.rows import RowMaker, row_columns
from consumer.stream_reader import Entry
from consumer.value_conversion import converted_row, row_conversions

log = logging.getLogger(__name__)

_INSERTS: dict[str, Callable] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_AGENT_ROW_KINDS = frozenset({"agent", "agent_death", "agent_retraction"})
"""Kinds after whose rows a transaction removes retracted agents' rows (see ``_retractions_applied``)."""


@dataclass
class DeadLetter:
    """A record that will not become a row, and why: keyed by its entry and its index in the entry
    (its offset in the batch; 0 for an entry dead-lettered whole). ``records``: how many records
    it stands for (1; a whole entry's count, 0 if its payload is gone), which its ack counts."""

    entry_id: bytes
    raw: bytes | None
    error: str
    delivery_count: int | None = None
    index: int = 0
    records: int = 1

    @classmethod
    def whole_entry(cls, entry_id: bytes, payload: bytes | None, error: str,
                    delivery_count: int | None = None) -> DeadLetter:
        """The dead letter of an entry as a whole (unreadable, delivered too often, trimmed)."""
        return cls(entry_id, payload, error, delivery_count, 0, entry_records(payload))


def entry_records(payload: bytes | None) -> int:
    """The records an entry holds, by its header: 0 if its payload is gone, 1 if unreadable."""
    if payload is None:
        return 0
    described = describe(payload)
    return described.records if described is not None and described.records > 0 else 1


@dataclass
class WriteResult:
    """What one committed batch wrote. ``records_by_entry``: the records each entry settled
    (committed or dead-lettered), which its acknowledgement adds to the group's count."""

    rows_by_table: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    records_dead_lettered: int = 0
    isolated_by_database: int = 0
    records_by_entry: dict[bytes, int] = field(default_factory=dict)

    @property
    def records_persisted(self) -> int:
        """Records committed as rows (one row per record)."""
        return sum(self.rows_by_table.values())


def driver_insert(kind: RecordKind, table: Table, dialect: Dialect) -> str:
    """``kind``'s insert into ``table`` as driver SQL that a replay cannot duplicate: the columns
    in :func:`~common.rows.row_columns` order, positional placeholders; rows whose key exists are
    ignored, or for kinds with ``merge_columns`` upserted (``keep_existing`` columns keep a value
    already there)."""
    quote = dialect.identifier_preparer.quote
    name = dialect.identifier_preparer.format_table(table)
    columns = row_columns(kind)
    values = ", ".join(_placeholder(dialect, table.c[column]) for column in columns)
    sql = f"INSERT INTO {name} ({', '.join(map(quote, columns))}) VALUES ({values}) ON CONFLICT"
    if not kind.merge_columns:
        return f"{sql} DO NOTHING"
    updates = {column: f"excluded.{quote(column)}" for column in kind.merge_columns}
    for column in kind.keep_existing:
        updates[column] = f"coalesce({name}.{quote(column)}, excluded.{quote(column)})"
    keys = ", ".join(quote(column.name) for column in table.primary_key)
    assignments = ", ".join(f"{quote(column)} = {value}" for column, value in updates.items())
    return f"{sql} ({keys}) DO UPDATE SET {assignments}"


def _placeholder(dialect: Dialect, column) -> str:
    """A positional placeholder for ``column``, with the cast SQLAlchemy's own statement puts on
    a bound value (psycopg: ``%s::JSON`` for a JSON column, so its text is taken as JSON)."""
    if dialect.name == "sqlite":
        return "?"
    rendered = str(bindparam("value", type_=column.type).compile(dialect=dialect))
    return rendered.replace("%(value)s", "%s")


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


_Row = tuple[str, tuple, Entry, DecodedEntry, int]
"""One record's row with where it came from: (kind, row, entry, decoded entry, offset)."""


@dataclass
class _Batch:
    """One write: rows per kind (in the order kinds first appear), the segments they came from
    (only read to isolate a row the database rejects), dead letters, records settled per entry."""

    letters: list[DeadLetter]
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    segments: list[tuple[str, Entry, DecodedEntry, Any, Any]] = field(default_factory=list)
    records: dict[bytes, int] = field(default_factory=dict)

    def settle(self, entry_id: bytes, records: int) -> None:
        self.records[entry_id] = self.records.get(entry_id, 0) + records

    def add_rows(self, kind: str, entry: Entry, decoded: DecodedEntry, offsets, rows) -> None:
        if rows:  # executemany of no rows would run the statement once, without values
            self.rows.setdefault(kind, []).extend(rows)
            self.segments.append((kind, entry, decoded, offsets, rows))

    def each_row(self) -> list[_Row]:
        return [(kind, row, entry, decoded, offset) for kind, entry, decoded, offsets, rows in self.segments
                for offset, row in zip(offsets, rows)]


def _rows_by_kind(rows: list[_Row]) -> dict[str, list[tuple]]:
    by_kind: dict[str, list[tuple]] = {}
    for kind, row, *_ in rows:
        by_kind.setdefault(kind, []).append(row)
    return by_kind


class Sink:
    """Writes decoded entries of simulation streams to the SQL database at ``engine``, into the
    tables of ``layout`` (see :mod:`common.layouts`)."""

    def __init__(self, engine: Engine, layout: str = STANDALONE) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.layout = layout_named(layout)
        self._row_maker = RowMaker(self.layout)
        tables = {name: self.layout.table_for(name, kind.table) for name, kind in KINDS.items()}
        self._tables = {name: table for name, table in tables.items() if table is not None}
        self._sql = {name: driver_insert(KINDS[name], table, engine.dialect) for name, table in self._tables.items()}
        # PostgreSQL alone converts values per row (SQLite's column affinity stores them as they are).
        self._conversions = {name: row_conversions(row_columns(KINDS[name]), KINDS[name].allowed, table)
                             for name, table in self._tables.items()} if self.dialect == "postgresql" else None
        metadata = self.layout.metadata.tables
        self._apply_retractions = _retractions_applied(metadata["agents"], metadata["simstream_retracted_agents"])
        self._dead_letter_insert = _INSERTS[self.dialect](schema.dead_letters).on_conflict_do_nothing()

    def write(self, stream: str, simulation_id: str, entries: list[Entry],
              dead_letters: list[DeadLetter] | None = None) -> WriteResult:
        """Commit the rows of ``entries`` (and dead letters for what fails) in one transaction.

        Raises DatabaseUnavailable if the database cannot take the transaction now; then nothing
        was committed and the caller must not acknowledge. Any other exception a record causes is
        that record's: an entry unreadable as a whole, or a record that cannot become a row, is
        dead-lettered there, and one raised by the database or driver for the batch (of any type)
        is isolated by retrying the batch in halves, and its row dead-lettered alone. Every record
        is then committed or dead-lettered: ``records_by_entry`` says how many, per entry.
        """
        batch = _Batch(list(dead_letters or []))
        for letter in batch.letters:
            batch.settle(letter.entry_id, letter.records)
        for entry in entries:
            self._add(batch, entry, simulation_id)
        try:
            result = self._commit(stream, simulation_id, batch.rows, batch.letters)
        except _RowRejected:
            result = self._bisect(stream, simulation_id, batch)
        result.records_by_entry = batch.records
        return result

    def _add(self, batch: _Batch, entry: Entry, simulation_id: str) -> None:
        """The entry's rows into ``batch``, or its dead letters: whatever exception a record's
        values raise stays with that record, an unreadable entry's with the entry."""
        try:
            decoded = decode_entry(entry.payload, simulation_id, self._row_maker)
        except Exception as exc:  # noqa: BLE001 - RecordError, or a malformed batch raising anything
            reason = str(exc) if isinstance(exc, RecordError) else f"entry is unreadable: {_cause(exc)}"
            letter = DeadLetter.whole_entry(entry.entry_id, entry.payload, reason, entry.deliveries)
            batch.letters.append(letter)
            batch.settle(entry.entry_id, letter.records)
            return
        batch.settle(entry.entry_id, decoded.records)
        for offset, reason in decoded.rejects:
            batch.letters.append(_record_letter(entry, decoded, offset, reason))
        for kind, offsets, rows in decoded.groups:
            if kind not in self._sql:
                reason = f"{kind}: the {self.layout.name} layout has no {KINDS[kind].table.name} table"
                batch.letters += [_record_letter(entry, decoded, offset, reason) for offset in offsets]
            elif self._conversions is None:
                batch.add_rows(kind, entry, decoded, offsets, rows)
            else:
                self._add_converted(batch, kind, entry, decoded, offsets, rows)

    def _add_converted(self, batch: _Batch, kind: str, entry: Entry, decoded: DecodedEntry, offsets, rows) -> None:
        """PostgreSQL: each row's values converted where nothing is lost; a row that cannot be is
        its record's dead letter."""
        conversions = self._conversions[kind]
        kept_offsets, kept_rows = [], []
        for offset, row in zip(offsets, rows):
            try:
                kept_rows.append(converted_row(row, conversions))
                kept_offsets.append(offset)
            except RecordError as exc:
                batch.letters.append(_record_letter(entry, decoded, offset, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a row of another length or shape: its record's fault
                batch.letters.append(_record_letter(entry, decoded, offset, f"{kind}: a value cannot be stored: "
                                                                           f"{_cause(exc)}"))
        if kept_rows:
            batch.add_rows(kind, entry, decoded, kept_offsets, kept_rows)

    def _commit(self, stream: str, simulation_id: str, rows_by_kind: dict[str, list[tuple]],
                letters: list[DeadLetter]) -> WriteResult:
        result = WriteResult(dead_letters=len(letters), records_dead_lettered=sum(l.records for l in letters))
        try:
            with self.engine.begin() as connection:
                for kind, rows in rows_by_kind.items():
                    connection.exec_driver_sql(self._sql[kind], rows)
                    table = KINDS[kind].table.name
                    result.rows_by_table[table] = result.rows_by_table.get(table, 0) + len(rows)
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

    def _bisect(self, stream: str, simulation_id: str, batch: _Batch) -> WriteResult:
        """Commit the batch's rows in halves until each rejected row stands alone, then dead-letter it.

        Several transactions instead of one; safe because nothing is acknowledged until all of
        them have committed, and a replay of any of them writes nothing new.
        """
        total = self._commit_letters(stream, simulation_id, batch.letters) if batch.letters else WriteResult()
        pending = [batch.each_row()]
        while pending:
            part = pending.pop()
            try:
                _merge(total, self._commit(stream, simulation_id, _rows_by_kind(part), []))
            except _RowRejected as rejection:
                if len(part) > 1:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
                    continue
                _, _, entry, decoded, offset = part[0]
                letter = _record_letter(entry, decoded, offset, f"database rejected the row: {rejection}")
                result = self._commit_letters(stream, simulation_id, [letter])
                result.isolated_by_database = 1
                _merge(total, result)
        event(log, logging.WARNING, "sink.rows_isolated", stream=stream, rejected=total.isolated_by_database)
        return total

    def _commit_letters(self, stream: str, simulation_id: str, letters: list[DeadLetter]) -> WriteResult:
        """Commit dead letters alone. A database that refuses even these refuses every write (read
        only, rights revoked): that is no record's fault, so nothing is acknowledged."""
        try:
            return self._commit(stream, simulation_id, {}, letters)
        except _RowRejected as exc:
            raise DatabaseUnavailable(f"database refused the dead letters too: {exc}") from exc

    def _letter_row(self, stream: str, simulation_id: str, letter: DeadLetter) -> dict[str, Any]:
        return {"stream": stream, "entry_id": text(letter.entry_id), "entry_index": letter.index,
                "simulation_id": simulation_id, "raw": letter.raw,
                "error": letter.error.replace("\x00", "\\x00")[:2000],  # PostgreSQL text takes no NUL
                "delivery_count": letter.delivery_count, "created_at": time.time()}


class _RowRejected(Exception):
    """The database refused a row of the batch for a reason retrying cannot fix."""


def _record_letter(entry: Entry, decoded: DecodedEntry, offset: int, reason: str) -> DeadLetter:
    """The dead letter of the record at ``offset``: a payload holding it alone, keyed by its offset."""
    return DeadLetter(entry.entry_id, decoded.letter_payload(offset), reason, entry.deliveries, index=offset)


def _cause(exc: BaseException) -> str:
    """The exception as a reason: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _merge(total: WriteResult, part: WriteResult) -> None:
    for table, count in part.rows_by_table.items():
        total.rows_by_table[table] = total.rows_by_table.get(table, 0) + count
    total.dead_letters += part.dead_letters
    total.records_dead_lettered += part.records_dead_lettered
    total.isolated_by_database += part.isolated_by_database
