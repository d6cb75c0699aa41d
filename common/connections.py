"""Connections: the Redis client factory and the SQL sink's engine factory.

Both translate library failures into :mod:`common.errors` types with one-line messages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import redis
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from common.errors import ConfigurationError, DatabaseUnavailable, RedisUnavailable
from common.schema import metadata
from common.settings import validate_db_url, validate_redis_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def redis_client(url: str, socket_timeout_s: float = 10.0) -> redis.Redis:
    """A binary-safe client (no decode_responses) for ``url``; connects lazily."""
    validate_redis_url(url)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=30,
    )


def check_redis(client: redis.Redis, url: str) -> None:
    """PING ``client``; RedisUnavailable with what to do if nothing answers."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {url}: {exc}; start one (`simstream redis`) or point "
            "--redis-url / SIMSTREAM_REDIS_URL at a running server"
        ) from exc


def _sqlite_path_ready(url: str) -> None:
    """Create the SQLite file's folder; ConfigurationError if it cannot be written."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigurationError(
            f"database URL {url!r} names no file; consumers in several processes need a file: "
            "sqlite:///path/to/file.db"
        )
    folder = Path(database).expanduser().resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the folder {folder} for {url!r}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise ConfigurationError(f"the folder {folder} of {url!r} is not writable; choose another --db")


def _tune_sqlite(engine: Engine) -> None:
    """WAL, synchronous=NORMAL, a long busy timeout, and BEGIN IMMEDIATE.

    BEGIN IMMEDIATE takes the write lock when the transaction starts, so concurrent consumers
    queue on the busy timeout instead of failing a lock upgrade half-way through a batch.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA cache_size = -65536")  # 64 MiB: a growing table's indexes stay in memory
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sink_engine(url: str) -> Engine:
    """An engine for the SQL sink at ``url``, tuned for many small concurrent writers."""
    validate_db_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_path_ready(url)
        engine = create_engine(url)
        _tune_sqlite(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the driver for {url!r} is not installed ({exc.name}); pip install 'simstream[postgres]'"
        ) from exc


def ensure_schema(engine: Engine) -> None:
    """Create simstream's tables if missing; safe when several consumers start at once."""
    for attempt in range(3):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except OperationalError as exc:
            # Another process created a table between our check and our CREATE: look again.
            if "already exists" not in str(exc) or attempt == 2:
                raise DatabaseUnavailable(f"cannot create the schema at {engine.url!r}: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"cannot create the schema at {engine.url!r}: {exc}") from exc
