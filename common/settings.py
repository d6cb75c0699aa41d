"""Settings for producers and consumers: frozen, validated, read from the environment.

Every setting can come from an environment variable (``SIMSTREAM_*``) and be overridden by an
explicit argument or CLI flag, so compose files and terminals configure the same thing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from common.errors import ConfigurationError
from common.masking import mask_secrets

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DB_URL = "sqlite:///simstream.db"
DEFAULT_NAMESPACE = "simstream"
DEFAULT_GROUP = "simstream"

ENV_REDIS_URL = "SIMSTREAM_REDIS_URL"
ENV_DB_URL = "SIMSTREAM_DB_URL"
ENV_NAMESPACE = "SIMSTREAM_NAMESPACE"
ENV_GROUP = "SIMSTREAM_GROUP"
ENV_JOURNAL_DIR = "SIMSTREAM_JOURNAL_DIR"
ENV_REDIS_CA_CERTS = "SIMSTREAM_REDIS_CA_CERTS"
ENV_ABANDONED_AFTER_S = "SIMSTREAM_ABANDONED_AFTER_S"
ENV_WAIT_FOR_SIMULATION_S = "SIMSTREAM_WAIT_FOR_SIMULATION_S"
DEFAULT_ABANDONED_AFTER_S = 180.0
"""A running simulation whose producer has not been heard from for this long is ``abandoned``."""
DEFAULT_WAIT_FOR_SIMULATION_S = 60.0
"""How long ``consume --drain`` waits for a first simulation when none exists yet."""
DEFAULT_JOURNAL_DIR = ".simstream-journal"
BACKPRESSURE_POLICIES = ("spill", "slow")

REDIS_SCHEMES = ("redis", "rediss", "unix")

SIMULATION_ID_PLACEHOLDER = "{simulation_id}"
"""In a SQLite URL, makes one database file per simulation: ``sqlite:///runs/{simulation_id}.db``."""

T = TypeVar("T")


def validate_redis_url(url: str) -> str:
    """Return ``url`` if it is a Redis URL simstream can use, else raise ConfigurationError.

    A CA file named in the URL (``?ssl_ca_certs=PATH``) must be a readable file.
    """
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"Redis URL {mask_secrets(url)!r} has scheme {parts.scheme or 'none'!r}; use redis://HOST:PORT/DB, "
            f"rediss://... or unix:///path/to/redis.sock (set --redis-url or {ENV_REDIS_URL})"
        )
    try:
        parts.port  # parsed lazily: "notaport" and 99999 raise only here
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        raise ConfigurationError(
            f"Redis URL {mask_secrets(url)!r} has port {port!r}; a port is a number from 1 to 65535, "
            f"as in redis://HOST:6379/0 (set --redis-url or {ENV_REDIS_URL})"
        ) from None
    for ca_file in parse_qs(parts.query).get("ssl_ca_certs", []):
        _require_readable_file(ca_file, f"the CA file of Redis URL {mask_secrets(url)!r}")
    return url


def redis_url_with_ca(url: str, ca_certs: str | None) -> str:
    """``url`` carrying ``ca_certs`` as its ``ssl_ca_certs`` parameter (a CA already in the URL wins).

    The CA file is how a ``rediss://`` client trusts a server certificate no public CA signed;
    ConfigurationError if it is not a readable file or the URL does not use TLS.
    """
    if not ca_certs or "ssl_ca_certs" in parse_qs(urlsplit(url).query):
        return url
    if urlsplit(url).scheme != "rediss":
        raise ConfigurationError(
            f"a Redis CA file ({ENV_REDIS_CA_CERTS} / --redis-ca-certs) needs a rediss:// URL, "
            f"got {mask_secrets(url)!r}")
    _require_readable_file(ca_certs, f"the Redis CA file ({ENV_REDIS_CA_CERTS} / --redis-ca-certs)")
    separator = "&" if urlsplit(url).query else "?"
    return f"{url.split('#', 1)[0]}{separator}ssl_ca_certs={quote(os.path.abspath(ca_certs), safe='/')}"


def _require_readable_file(path: str, what: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigurationError(f"{what} {path!r} is not a readable file")


def validate_db_url(url: str) -> str:
    """Return ``url`` if SQLAlchemy can parse it, else raise ConfigurationError."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r} is not a SQLAlchemy URL; use sqlite:///path/to/file.db or "
            f"postgresql+psycopg://user@host/db (set --db or {ENV_DB_URL})"
        ) from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r}: backend {parsed.get_backend_name()!r} is not supported; "
            "use sqlite:/// or postgresql+psycopg://"
        )
    if SIMULATION_ID_PLACEHOLDER in url and parsed.get_backend_name() != "sqlite":
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r}: {SIMULATION_ID_PLACEHOLDER} is only for SQLite file names; "
            "PostgreSQL holds every simulation in one database, so leave it out"
        )
    if SIMULATION_ID_PLACEHOLDER in url and SIMULATION_ID_PLACEHOLDER not in os.path.basename(parsed.database or ""):
        raise ConfigurationError(
            f"database URL {mask_secrets(url)!r}: {SIMULATION_ID_PLACEHOLDER} is only for SQLite file names, "
            "not for a folder: e.g. sqlite:///runs/{simulation_id}.db"
        )
    return url


def is_per_simulation(db_url: str) -> bool:
    """True if ``db_url`` is a template naming one SQLite file per simulation."""
    return SIMULATION_ID_PLACEHOLDER in db_url


def normalize_db_url(value: str) -> str:
    """A SQLAlchemy URL from ``value``: URLs pass through, a bare path becomes a SQLite URL."""
    if "://" in value:
        return value
    return f"sqlite:///{os.path.abspath(os.path.expanduser(value))}"


def _require_positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value <= 0:
            raise ConfigurationError(f"{name} must be > 0, got {value!r}")


def _masked_repr(settings: object) -> str:
    """A settings object's repr with every URL's password masked."""
    fields = ", ".join(f"{field.name}={mask_secrets(repr(getattr(settings, field.name)))}"
                       for field in dataclasses.fields(settings))
    return f"{type(settings).__name__}({fields})"


def _env_seconds(name: str) -> float | None:
    """A duration in seconds from environment variable ``name``; None if unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number of seconds") from None


def _env_overrides(cls: type[T], env: dict[str, str], explicit: dict[str, Any]) -> T:
    """Build ``cls`` from environment values, then explicit values that are not None."""
    values = {key: value for key, value in env.items() if value is not None and value != ""}
    values.update({key: value for key, value in explicit.items() if value is not None})
    return cls(**values)


@dataclass(frozen=True)
class ProducerSettings:
    """How a producer buffers, sends, journals and backs off.

    A batch Redis refuses for ``spill_after_s`` goes to the journal in ``journal_dir`` (memory
    stays bounded, nothing is dropped); the journal is retried every ``journal_retry_interval_s``.
    Past ``high_water_records`` of unpersisted backlog, ``backpressure`` decides: ``"spill"`` to
    the journal, or ``"slow"`` the simulation (``log()`` sleeps ``throttle_sleep_s``) until the
    backlog is under ``low_water_records``. ``close_timeout_s`` bounds ``close()``. ``layout``:
    the tables consumers write this simulation's rows into (see :mod:`common.layouts`).
    ``replay_earlier_journals``: a journal an earlier producer of the same simulation left in
    ``journal_dir`` is replayed into this run (True, with a warning naming it) or left on disk
    for ``simstream replay-journal`` (False, with a warning saying so).
    ``redis_ca_certs``: a CA file for a ``rediss://`` URL, added to it as ``ssl_ca_certs``.
    ``batch_size``: records the sender takes from the buffer per pipeline; it packs them into
    stream entries (record batches) of at most ``entry_records`` records and ``entry_max_bytes``
    bytes (a single larger record still goes, alone).

    ``group`` is the consumer group ``wait_persisted`` waits for (``SIMSTREAM_GROUP``, like the
    consumers'); ``persist_timeout_s`` bounds ``flush_all_buffers(wait_persisted=True)``;
    ``group_wait_s`` is how long after its first batch reached Redis a producer still waits for
    consumers to create their group (they look for new streams every second) before saying there
    is none. ``heartbeat_interval_s``: the sender refreshes the simulation's heartbeat with every
    batch and at least this often while idle (see ``simstream status``, state ``abandoned``).
    The repr masks the URL's password.

    ``replica_acks``: a batch counts as sent only once ``WAIT`` confirms that many replicas of the
    stream's master have it (within ``replica_wait_ms``); else it is sent again, and journaled
    after ``spill_after_s``. 0 (the default) does not wait: a failover may then lose the last
    writes the master acknowledged but had not yet replicated.
    """

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    redis_ca_certs: str = ""
    batch_size: int = 2000
    entry_records: int = 250
    entry_max_bytes: int = 262_144
    flush_interval_s: float = 0.05
    close_timeout_s: float = 60.0
    socket_timeout_s: float = 5.0
    spill_after_s: float = 2.0
    journal_dir: str = DEFAULT_JOURNAL_DIR
    journal_retry_interval_s: float = 1.0
    journal_fsync: bool = False
    replay_earlier_journals: bool = True
    backpressure: str = "spill"
    high_water_records: int = 1_000_000
    low_water_records: int = 800_000
    throttle_sleep_s: float = 0.001
    group: str = DEFAULT_GROUP
    persist_timeout_s: float = 60.0
    group_wait_s: float = 3.0
    heartbeat_interval_s: float = 5.0
    layout: str = "standalone"
    replica_acks: int = 0
    replica_wait_ms: int = 1000

    def __post_init__(self) -> None:
        from common.layouts import layout_named  # the table definitions are not needed to read settings

        object.__setattr__(self, "redis_url", redis_url_with_ca(self.redis_url, self.redis_ca_certs))
        validate_redis_url(self.redis_url)
        layout_named(self.layout)
        _require_positive(self, "batch_size", "entry_records", "entry_max_bytes", "flush_interval_s",
                          "close_timeout_s", "socket_timeout_s",
                          "spill_after_s", "journal_retry_interval_s", "high_water_records",
                          "low_water_records", "throttle_sleep_s", "persist_timeout_s", "heartbeat_interval_s",
                          "replica_wait_ms")
        if self.group_wait_s < 0:
            raise ConfigurationError(f"group_wait_s must be >= 0, got {self.group_wait_s!r}")
        if not self.group:
            raise ConfigurationError("group must not be empty (set it or SIMSTREAM_GROUP)")
        if self.replica_acks < 0:
            raise ConfigurationError(f"replica_acks must be >= 0, got {self.replica_acks!r}")
        if self.backpressure not in BACKPRESSURE_POLICIES:
            raise ConfigurationError(f"backpressure must be one of {BACKPRESSURE_POLICIES}, got {self.backpressure!r}")
        if self.low_water_records > self.high_water_records:
            raise ConfigurationError("low_water_records must not exceed high_water_records")

    def __repr__(self) -> str:
        return _masked_repr(self)

    @classmethod
    def from_env(cls, **explicit: Any) -> ProducerSettings:
        """Settings from ``SIMSTREAM_*`` variables, overridden by explicit non-None values."""
        env = {"redis_url": os.environ.get(ENV_REDIS_URL, ""),
               "namespace": os.environ.get(ENV_NAMESPACE, ""),
               "redis_ca_certs": os.environ.get(ENV_REDIS_CA_CERTS, ""),
               "journal_dir": os.environ.get(ENV_JOURNAL_DIR, ""),
               "group": os.environ.get(ENV_GROUP, "")}
        return _env_overrides(cls, env, explicit)


@dataclass(frozen=True)
class ConsumerSettings:
    """How a consumer process reads, persists and acknowledges.

    ``claim_idle_ms``: entries another consumer has held this long are claimed (XAUTOCLAIM).
    ``drain``: exit 0 once every known simulation is complete (or abandoned) and fully persisted;
    started before any simulation exists, wait up to ``wait_for_simulation_s`` for the first one.
    ``abandoned_after_s``: a simulation that is not complete and whose producer has not been heard
    from for this long (its heartbeat, else its newest entry) is abandoned.
    ``redis_ca_certs``: a CA file for a ``rediss://`` URL, added to it as ``ssl_ca_certs``.
    The repr masks the URLs' passwords.
    ``batch_size``: stream entries read per XREADGROUP and committed in one transaction; an entry
    is a record batch of up to the producer's ``entry_records`` records (or one record, for
    entries of producers older than record batches).
    ``failing_after_ms``: for the metrics endpoint's health gauge, how long consumers retry a
    simulation's database or Redis before it is ``sink-failing`` / ``redis-failing``.
    """

    redis_url: str = DEFAULT_REDIS_URL
    db_url: str = DEFAULT_DB_URL
    namespace: str = DEFAULT_NAMESPACE
    group: str = DEFAULT_GROUP
    redis_ca_certs: str = ""
    batch_size: int = 40
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_interval_ms: int = 5_000
    discover_interval_ms: int = 1_000
    max_deliveries: int = 10
    trim_interval_ms: int = 1_000
    drain: bool = False
    abandoned_after_s: float = DEFAULT_ABANDONED_AFTER_S
    wait_for_simulation_s: float = DEFAULT_WAIT_FOR_SIMULATION_S
    failing_after_ms: int = 10_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "redis_url", redis_url_with_ca(self.redis_url, self.redis_ca_certs))
        validate_redis_url(self.redis_url)
        validate_db_url(self.db_url)
        _require_positive(self, "batch_size", "block_ms", "claim_interval_ms",
                          "discover_interval_ms", "max_deliveries", "trim_interval_ms", "abandoned_after_s")
        if self.wait_for_simulation_s < 0:
            raise ConfigurationError(f"wait_for_simulation_s must be >= 0, got {self.wait_for_simulation_s!r}")
        if self.claim_idle_ms < 0:
            raise ConfigurationError(f"claim_idle_ms must be >= 0, got {self.claim_idle_ms!r}")
        if self.failing_after_ms < 0:
            raise ConfigurationError(f"failing_after_ms must be >= 0, got {self.failing_after_ms!r}")

    def __repr__(self) -> str:
        return _masked_repr(self)

    @classmethod
    def from_env(cls, **explicit: Any) -> ConsumerSettings:
        """Settings from ``SIMSTREAM_*`` variables, overridden by explicit non-None values."""
        env = {"redis_url": os.environ.get(ENV_REDIS_URL, ""),
               "db_url": os.environ.get(ENV_DB_URL, ""),
               "namespace": os.environ.get(ENV_NAMESPACE, ""),
               "redis_ca_certs": os.environ.get(ENV_REDIS_CA_CERTS, ""),
               "group": os.environ.get(ENV_GROUP, ""),
               "abandoned_after_s": _env_seconds(ENV_ABANDONED_AFTER_S),
               "wait_for_simulation_s": _env_seconds(ENV_WAIT_FOR_SIMULATION_S)}
        return _env_overrides(cls, env, explicit)

    def replace(self, **changes: Any) -> ConsumerSettings:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)
