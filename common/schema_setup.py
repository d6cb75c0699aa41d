"""Make a database ready for a layout's rows, or say in one line why it cannot be.

What is repaired without asking: missing tables are created (a new file gets exactly the layout's
tables), and the reference simulation's own tables get simstream's ``record_key`` column and its
unique index (see :mod:`common.agentfarm_schema`). What is not: a column simstream writes that is
missing or of another type, or a primary key other than the layout's (its idempotent upserts rely
on it). Those raise :class:`SchemaUnusable`, naming the table and what to do.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, Table, inspect, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from common.agentfarm_schema import KEYED_TABLES as AGENTFARM_KEYED_TABLES
from common.errors import ConfigurationError, DatabaseUnavailable
from common.events import event
from common.layouts import AGENTFARM, STANDALONE, layout_named
from common.masking import mask_secrets
from common.schema import dead_letters

log = logging.getLogger(__name__)

# Any fixed number: PostgreSQL advisory lock held while one process creates the schema.
_SCHEMA_LOCK_KEY = 0x5153_5452

_MIGRATIONS = {
    ("resource_states", "resource_id"): {
        "postgresql": "ALTER TABLE resource_states ALTER COLUMN resource_id TYPE VARCHAR(64)",
        "sqlite": "ALTER TABLE resource_states RENAME COLUMN resource_id TO resource_id_int; "
                  "ALTER TABLE resource_states ADD COLUMN resource_id VARCHAR(64); "
                  "UPDATE resource_states SET resource_id = resource_id_int",
    },
    ("simulation_steps", "average_agent_age"): {
        "postgresql": "ALTER TABLE simulation_steps ALTER COLUMN average_agent_age TYPE INTEGER",
    },
}
"""How to bring a database made by an earlier simstream to the current types, per dialect."""


class SchemaUnusable(ConfigurationError):
    """The database has a table simstream cannot write its rows into; the message says why."""


def ensure_schema(engine: Engine, layout_name: str = STANDALONE) -> None:
    """Create the layout's missing tables and repair what may be repaired, then check the rest.

    Safe when several consumers (and the simulation itself) create tables at once. Raises
    SchemaUnusable for a table it cannot use, DatabaseUnavailable if the database does not answer.
    """
    layout = layout_named(layout_name)
    try:
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                _create_and_repair(connection, layout)
        else:
            _create_sqlite(engine, layout)
        check_schema(engine, layout_name)
    except SchemaUnusable:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(mask_secrets(
            f"cannot create the schema at {shown_url(engine)!r}: {getattr(exc, 'orig', None) or exc}; "
            "check --db / SIMSTREAM_DB_URL and that the database is up")) from exc


def shown_url(engine: Engine) -> str:
    """The engine's URL as simstream prints it: every password masked, query parameters too."""
    return mask_secrets(engine.url.render_as_string(hide_password=False))


def _create_sqlite(engine: Engine, layout) -> None:
    for attempt in range(3):
        try:
            with engine.begin() as connection:
                _create_and_repair(connection, layout)
            return
        except OperationalError as exc:
            # Another process created a table between our check and our CREATE: look again.
            if "already exists" not in str(exc) and "duplicate column" not in str(exc) or attempt == 2:
                raise


def _create_and_repair(connection, layout) -> None:
    layout.metadata.create_all(connection, checkfirst=True)
    _upgrade_dead_letters(connection)
    if layout.name != AGENTFARM:
        return
    for table in AGENTFARM_KEYED_TABLES:
        columns = {column["name"] for column in inspect(connection).get_columns(table.name)}
        if "record_key" not in columns:
            connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN record_key VARCHAR(64)")
        connection.exec_driver_sql(
            f"CREATE UNIQUE INDEX IF NOT EXISTS simstream_ux_{table.name}_record_key ON {table.name} (record_key)")


_DEAD_LETTERS_V1_COLUMNS = "id, stream, entry_id, simulation_id, raw, error, delivery_count, created_at"


def _upgrade_dead_letters(connection: Connection) -> None:
    """Upgrade, in place, a ``dead_letters`` table made before dead letters were keyed by record.

    Adds ``entry_index`` (0 for existing rows: each came from a one-record entry) and makes the
    unique key (stream, entry_id, entry_index). Rows and ids are kept. SQLite cannot drop a
    constraint, so there the table is rebuilt under its name, in the caller's transaction.
    """
    if "entry_index" in {column["name"] for column in inspect(connection).get_columns("dead_letters")}:
        return
    event(log, logging.INFO, "schema.upgraded", table="dead_letters", column="entry_index")
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("ALTER TABLE dead_letters ADD COLUMN entry_index INTEGER NOT NULL DEFAULT 0")
        connection.exec_driver_sql("ALTER TABLE dead_letters DROP CONSTRAINT IF EXISTS uq_dead_letters_entry")
        connection.exec_driver_sql("ALTER TABLE dead_letters ADD CONSTRAINT uq_dead_letters_record "
                                   "UNIQUE (stream, entry_id, entry_index)")
        return
    connection.exec_driver_sql("ALTER TABLE dead_letters RENAME TO dead_letters_before_entry_index")
    dead_letters.create(connection)
    connection.exec_driver_sql(f"INSERT INTO dead_letters ({_DEAD_LETTERS_V1_COLUMNS}) "
                               f"SELECT {_DEAD_LETTERS_V1_COLUMNS} FROM dead_letters_before_entry_index")
    connection.exec_driver_sql("DROP TABLE dead_letters_before_entry_index")


def check_schema(engine: Engine, layout_name: str = STANDALONE) -> None:
    """SchemaUnusable if a table of the layout lacks a column, has one of another type, or has
    another primary key than the layout's."""
    layout = layout_named(layout_name)
    inspector = inspect(engine)
    for table in layout.metadata.sorted_tables:
        _check_table(engine, inspector, table)


def _check_table(engine: Engine, inspector, table: Table) -> None:
    dialect = engine.dialect
    found = {column["name"]: column for column in inspector.get_columns(table.name)}
    where = f"table {table.name} of {shown_url(engine)!r}"
    for column in table.columns:
        existing = found.get(column.name)
        if existing is None:
            raise SchemaUnusable(f"{where} has no column {column.name}; simstream writes it. "
                                 "Point --db at a new file, or add the column")
        wanted, has = column.type.compile(dialect=dialect), existing["type"].compile(dialect=dialect)
        if _affinity(wanted) != _affinity(has):
            migration = _MIGRATIONS.get((table.name, column.name), {}).get(dialect.name)
            advice = (f"made by an earlier simstream? migrate it: {migration}" if migration
                      else "point --db at a new file, or change the column")
            raise SchemaUnusable(f"{where}: column {column.name} is {has}, simstream writes {wanted}; {advice}")
    wanted_key = {column.name for column in table.primary_key}
    has_key = set(inspector.get_pk_constraint(table.name).get("constrained_columns") or ())
    if wanted_key != has_key:
        raise SchemaUnusable(f"{where} has primary key ({', '.join(sorted(has_key)) or 'none'}), simstream's "
                             f"idempotent writes need ({', '.join(sorted(wanted_key))}); point --db at a new file")


def _affinity(type_name: str) -> str:
    """The kind of value a declared column type keeps (SQLite's affinity rules; they also tell
    PostgreSQL's integer, text and floating types apart)."""
    name = type_name.upper()
    if "INT" in name:
        return "INTEGER"
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if any(word in name for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return name.split("(")[0]
