"""Connections: the Redis client factory and the SQL sink's engine factory.

Both translate library failures into :mod:`common.errors` types with one-line messages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from common.errors import ConfigurationError, DatabaseUnavailable, RedisUnavailable
from common.keys import validate_simulation_id
from common.masking import mask_secrets
from common.schema_setup import ensure_schema  # noqa: F401  (re-exported: the sink and the CLI ensure schemas through here)
from common.settings import (ENV_DB_URL, ENV_REDIS_URL, SIMULATION_ID_PLACEHOLDER, is_per_simulation, validate_db_url,
                             validate_redis_url)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


class RedisUnreachable(RedisUnavailable, redis.ConnectionError):
    """Redis did not answer while the client was being set up.

    Both a simstream error (the CLI prints one line, a worker exits to be restarted) and a
    redis-py ConnectionError (the producer's retry loop, which retries redis errors, tries again).
    """


def redis_client(url: str, socket_timeout_s: float = 10.0) -> redis.Redis | RedisCluster:
    """A binary-safe client (no decode_responses) for ``url``: redis-py's cluster client if the
    server there is a cluster node (INFO cluster), so any node's address reaches the whole cluster.

    Asks the server once; raises RedisUnreachable if it does not answer.
    """
    validate_redis_url(url)
    options = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": min(socket_timeout_s, 5.0),
               "health_check_interval": 30}
    client = redis.Redis.from_url(url, **options)
    try:
        cluster = int(client.info("cluster").get("cluster_enabled", 0)) == 1
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        client.close()
        raise RedisUnreachable(redis_failure(url, exc)) from exc
    except redis.ResponseError:
        cluster = False  # INFO refused (a restricted managed server): clusters always answer it
    if not cluster:
        return client
    client.close()
    try:
        return RedisCluster.from_url(url, **options)
    except RedisClusterException as exc:  # not a RedisError: raised when no node answers
        raise RedisUnreachable(f"cannot reach the Redis Cluster at {mask_secrets(url)}: {exc}") from exc


def is_cluster(client: redis.Redis | RedisCluster) -> bool:
    """True if ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def check_redis(client: redis.Redis, url: str) -> None:
    """PING ``client``. RedisUnavailable saying what to do if nothing answers; ConfigurationError
    if a server answers but refuses what the URL asks (a database number it does not have)."""
    try:
        client.ping()
    except redis.ResponseError as exc:
        raise ConfigurationError(mask_secrets(
            f"Redis at {url} refused the connection: {_reason(exc)}; check the database number "
            f"(0 to the server's `databases` - 1), user and password in --redis-url / {ENV_REDIS_URL}")) from exc
    except redis.RedisError as exc:
        raise RedisUnavailable(redis_failure(url, exc)) from exc


def redis_failure(url: str, exc: BaseException) -> str:
    """One line for a Redis that did not let us in: the URL (password masked), the cause, what to do."""
    cause = " ".join(str(exc).split()).rstrip(".")
    if isinstance(exc, redis.AuthenticationError):
        hint = "check the user name and password in --redis-url / SIMSTREAM_REDIS_URL"
    elif "SSL" in cause or "certificate" in cause.lower():
        hint = ("check that the server's certificate is signed by the CA given as ssl_ca_certs= in the "
                "rediss:// URL or --redis-ca-certs / SIMSTREAM_REDIS_CA_CERTS, and names the host")
    else:
        hint = ("start one (`simstream redis`) or point --redis-url / SIMSTREAM_REDIS_URL at a running "
                "server")
    return mask_secrets(f"cannot reach Redis at {url}: {cause}; {hint}")


def _reason(exc: BaseException) -> str:
    """A library's message as a clause: one line, no closing period (ours follows after a ';')."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _sqlite_path_ready(url: str, create_folder: bool) -> None:
    """Make sure the SQLite file's folder exists (creating it if ``create_folder``) and is
    writable; ConfigurationError saying which otherwise."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r} names no file; consumers in several processes need a file: "
            "sqlite:///path/to/file.db"
        )
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir() and not create_folder:
        # A typo in a path must not become a folder tree; a per-simulation template does create its folder.
        raise ConfigurationError(f"the folder {folder} of {url!r} does not exist; create it or choose another "
                                 f"--db / {ENV_DB_URL}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the folder {folder} for {mask_secrets(url)!r}: "
                                 f"{exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise ConfigurationError(f"the folder {folder} of {mask_secrets(url)!r} is not writable; "
                                 "choose another --db")


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


def simulation_db_url(url: str, simulation_id: str) -> str:
    """The database URL of ``simulation_id``: ``url`` with its placeholder filled (if it has one)."""
    if not is_per_simulation(url):
        return url
    return url.replace(SIMULATION_ID_PLACEHOLDER, validate_simulation_id(simulation_id))


def check_sink_template(url: str) -> None:
    """For a per-simulation URL, create its folder if missing and check it is writable (no file
    is created)."""
    validate_db_url(url)
    _sqlite_path_ready(url, create_folder=True)


def create_sink_engine(url: str, *, create_folder: bool = True) -> Engine:
    """An engine for the SQL sink at ``url``, tuned for many small concurrent writers.

    For a SQLite file, ``create_folder=False`` refuses (ConfigurationError) a folder that does
    not exist instead of creating it: what the CLI does for a single file named by the user.
    """
    validate_db_url(url)
    if is_per_simulation(url):
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r} is a per-simulation template; name the simulation "
            f"(fill in {SIMULATION_ID_PLACEHOLDER}) to open one of its files"
        )
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_path_ready(url, create_folder)
        engine = create_engine(url)
        _tune_sqlite(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the driver for {mask_secrets(url)!r} is not installed ({exc.name}); pip install 'simstream[postgres]'"
        ) from exc
