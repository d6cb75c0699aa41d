"""The exception tree shared by producer and consumer, and the CLI's exit codes.

::

    SimstreamError
    ├── ConfigurationError        bad URL, bad option, unwritable path: fix the setting
    ├── TransientError            retried; the entries involved stay pending in Redis
    │   ├── RedisUnavailable      Redis refused, timed out or dropped the connection
    │   ├── DatabaseUnavailable   the SQL sink is locked, busy or unreachable
    │   ├── GroupMissing          NOGROUP: the stream or its group vanished (server restarted)
    │   └── PersistTimeout        wait_persisted gave up: its message names the backlog
    ├── NoSimulation              consume --drain: no simulation appeared to drain
    └── PermanentError            retrying cannot help; the entry goes to dead_letters
        └── RecordError           undecodable payload, unknown kind or version, bad fields

Library exceptions are translated to these at the boundary (``raise ... from exc``).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of the ``simstream`` command; scripts and supervisors can branch on them."""

    OK = 0
    FAILED = 1
    BAD_CONFIGURATION = 2
    COULD_NOT_CONNECT = 3
    VERIFICATION_FAILED = 4
    INTERRUPTED = 130


class SimstreamError(Exception):
    """Base of every error simstream raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED


class ConfigurationError(SimstreamError):
    """A setting is wrong; the message says which one and what to do."""

    exit_code = ExitCode.BAD_CONFIGURATION


class TransientError(SimstreamError):
    """A failure that may pass; work is retried and nothing is acknowledged meanwhile."""

    exit_code = ExitCode.COULD_NOT_CONNECT


class RedisUnavailable(TransientError):
    """Redis did not answer (refused, timed out, connection dropped)."""


class DatabaseUnavailable(TransientError):
    """The SQL sink did not accept the transaction (locked, busy, connection lost)."""


class GroupMissing(TransientError):
    """The consumer group (or its stream) is gone, for example after a Redis restart."""


class PersistTimeout(TransientError):
    """``wait_persisted`` gave up before consumers committed everything the producer logged.

    ``backlog``: how many of the producer's records were not yet persisted (entries not yet
    delivered or not yet acknowledged, plus records not yet in Redis); a lower bound when it was
    too many to count (the message then says "at least").
    """

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, backlog: int) -> None:
        super().__init__(message)
        self.backlog = backlog


class NoSimulation(SimstreamError):
    """``consume --drain`` waited for a first simulation and none appeared.

    Exit code 1 (failed), not 2: the settings may well be right and the producer merely late or
    crashed before its first record; the message names the Redis URL and namespace to check.
    """

    exit_code = ExitCode.FAILED


class PermanentError(SimstreamError):
    """A failure that retrying cannot fix; the entry is dead-lettered."""


class RecordError(PermanentError):
    """A stream entry cannot become a row: bad msgpack, unknown kind or version, bad fields."""
