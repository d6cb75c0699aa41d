"""The SQL sink: a batch of stream entries becomes rows, in one transaction, idempotently.

Every insert ignores a row whose key is already present (the table's primary key, or the
producer-assigned ``record_key``), so a replayed entry writes nothing new. Lifecycle rows
(``simulations``) are upserts whose columns commute, so their order does not matter.
Entries that cannot become rows are written to ``dead_letters`` in the same transaction.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import JSON, Boolean, Engine, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from common import schema
from common.codec import decode
from common.connections import create_sink_engine, ensure_schema, simulation_db_url
from common.errors import ConfigurationError, DatabaseUnavailable, RecordError
from common.records import KINDS, RecordKind
from common.settings import is_per_simulation
from consumer.stream_reader import Entry

log = logging.getLogger(__name__)

_INSERTS: dict[str, Callable] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass
class DeadLetter:
    """An entry that will not become a row, and why."""

    entry_id: bytes
    raw: bytes | None
    error: str
    delivery_count: int | None = None


@dataclass
class WriteResult:
    """What one committed batch wrote."""

    rows_by_table: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    isolated_by_database: int = 0


def idempotent_insert(kind: RecordKind, dialect: str):
    """The insert statement for ``kind`` that a replay cannot duplicate."""
    statement = _INSERTS[dialect](kind.table)
    if not kind.merge_columns:
        return statement.on_conflict_do_nothing()
    updates = {name: statement.excluded[name] for name in kind.merge_columns}
    for name in kind.keep_existing:
        updates[name] = func.coalesce(kind.table.c[name], statement.excluded[name])
    keys = [column.name for column in kind.table.primary_key]
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def _is_transient(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Sink:
    """Writes decoded entries of one simulation stream to the SQL database at ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._statements = {name: idempotent_insert(kind, self.dialect) for name, kind in KINDS.items()}
        # Compiled once with named parameters, so row dicts go to the driver's executemany as they
        # are: SQLAlchemy's per-row parameter processing was a fifth of a worker's time.
        self._compile_dialect = sqlite.dialect(paramstyle="named") if self.dialect == "sqlite" else engine.dialect
        self._driver_sql: dict[tuple[str, ...], str] = {}
        self._conversions = {name: _conversions(kind, self.dialect) for name, kind in KINDS.items()}
        self._dead_letter_insert = _INSERTS[self.dialect](schema.dead_letters).on_conflict_do_nothing()

    def write(self, stream: str, simulation_id: str, entries: list[Entry],
              dead_letters: list[DeadLetter] | None = None) -> WriteResult:
        """Commit the rows of ``entries`` (and dead letters for those that fail) in one transaction.

        Raises DatabaseUnavailable if the database cannot take the transaction now; then nothing
        was committed and the caller must not acknowledge. A row the database itself rejects is
        isolated by retrying the batch in halves, and dead-lettered alone.
        """
        letters = list(dead_letters or [])
        kinds_of: list[tuple[str, dict[str, Any], Entry]] = []
        for entry in entries:
            try:
                record = decode(entry.payload)
                row = self._driver_row(record.kind.name, record.to_row(simulation_id))
            except RecordError as exc:
                letters.append(DeadLetter(entry.entry_id, entry.payload, str(exc), entry.deliveries))
                continue
            except (TypeError, ValueError, OverflowError) as exc:  # e.g. bytes inside a JSON column
                letters.append(DeadLetter(entry.entry_id, entry.payload,
                                          f"{record.kind.name}: a value cannot be stored: {exc}", entry.deliveries))
                continue
            kinds_of.append((record.kind.name, row, entry))
        try:
            return self._commit(stream, simulation_id, kinds_of, letters)
        except _RowRejected:
            return self._bisect(stream, simulation_id, kinds_of, letters)

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
                if letters:
                    connection.execute(self._dead_letter_insert,
                                       [self._letter_row(stream, simulation_id, letter) for letter in letters])
        except SQLAlchemyError as exc:
            if _is_transient(exc):
                raise DatabaseUnavailable(f"database did not take the batch: {exc.orig or exc}") from exc
            raise _RowRejected(str(getattr(exc, "orig", None) or exc)) from exc
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
        for column, convert in self._conversions[kind_name]:
            row[column] = convert(row.get(column))
        return row

    def _bisect(self, stream: str, simulation_id: str, rows: list[tuple[str, dict, Entry]],
                letters: list[DeadLetter]) -> WriteResult:
        """Commit ``rows`` in halves until each rejected row stands alone, then dead-letter it.

        Several transactions instead of one; safe because nothing is acknowledged until all of
        them have committed, and a replay of any of them writes nothing new.
        """
        total = self._commit(stream, simulation_id, [], letters) if letters else WriteResult()
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
                result = self._commit(stream, simulation_id, [], [letter])
                result.isolated_by_database = 1
                _merge(total, result)
        log.warning("sink.rows_isolated stream=%s rejected=%d", stream, total.isolated_by_database)
        return total

    def _letter_row(self, stream: str, simulation_id: str, letter: DeadLetter) -> dict[str, Any]:
        entry_id = letter.entry_id.decode() if isinstance(letter.entry_id, bytes) else letter.entry_id
        return {"stream": stream, "entry_id": entry_id, "simulation_id": simulation_id,
                "raw": letter.raw, "error": letter.error[:2000],
                "delivery_count": letter.delivery_count, "created_at": time.time()}


class _RowRejected(Exception):
    """The database refused a row of the batch for a reason retrying cannot fix."""


def _conversions(kind: RecordKind, dialect: str) -> list[tuple[str, Callable]]:
    """(column, convert) for the kind's columns whose SQLAlchemy type would process the value, as
    it would: JSON columns are serialised (None too, as JSON ``null``); booleans become bool for
    PostgreSQL (SQLite stores ints). Only columns the kind's rows carry."""
    found = []
    for column in kind.table.columns:
        if column.name not in kind.allowed:
            continue
        if isinstance(column.type, JSON):
            found.append((column.name, json.dumps))
        elif isinstance(column.type, Boolean) and dialect == "postgresql":
            found.append((column.name, _optional_bool))
    return found


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _merge(total: WriteResult, part: WriteResult) -> None:
    for table, count in part.rows_by_table.items():
        total.rows_by_table[table] = total.rows_by_table.get(table, 0) + count
    total.dead_letters += part.dead_letters
    total.isolated_by_database += part.isolated_by_database


class SinkPool:
    """The Sink of each simulation: one shared database, or one SQLite file per simulation.

    With a plain URL every simulation shares one Sink, opened (and its schema ensured) at once,
    so a bad database fails at start-up. With a ``{simulation_id}`` template each simulation gets
    its own engine when first written, with its schema ensured; ``release()`` disposes it.
    """

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._sinks: dict[str, Sink] = {}
        self._shared = None if is_per_simulation(db_url) else _open_sink(db_url)

    def for_simulation(self, simulation_id: str) -> Sink:
        """The Sink writing ``simulation_id``'s rows; raises DatabaseUnavailable if it cannot open."""
        if self._shared is not None:
            return self._shared
        sink = self._sinks.get(simulation_id)
        if sink is None:
            url = simulation_db_url(self.db_url, simulation_id)
            try:
                sink = self._sinks[simulation_id] = _open_sink(url)
            except ConfigurationError as exc:
                # The template was checked at start; a folder that cannot be made now (disk full,
                # permissions changed) may be fixed while the entries wait: retry, do not exit.
                raise DatabaseUnavailable(str(exc)) from exc
            log.info("sink.opened simulation=%s database=%s", simulation_id, url)
        return sink

    @property
    def open_simulations(self) -> list[str]:
        """Simulations whose own database file is open now (always empty for a shared database)."""
        return sorted(self._sinks)

    def release(self, simulation_id: str) -> None:
        """Close ``simulation_id``'s own engine (it is reopened if the simulation comes back)."""
        sink = self._sinks.pop(simulation_id, None)
        if sink is not None:
            sink.engine.dispose()

    def close(self) -> None:
        """Close every engine."""
        for simulation_id in list(self._sinks):
            self.release(simulation_id)
        if self._shared is not None:
            self._shared.engine.dispose()


def _open_sink(url: str) -> Sink:
    engine = create_sink_engine(url)
    try:
        ensure_schema(engine)
    except Exception:
        engine.dispose()
        raise
    return Sink(engine)
