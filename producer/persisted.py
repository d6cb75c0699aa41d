"""Has a consumer group persisted a stream up to a given entry? Read from Redis, for ``wait_persisted``.

An entry is persisted once the group has acknowledged it: consumers XACK only after the SQL
transaction holding its row (or its dead letter) has committed. "Every entry up to ``entry_id``
is acknowledged" holds when the group's last-delivered-id is at or past ``entry_id`` (all of them
were delivered) and none of them is still pending (the lowest pending id is beyond ``entry_id``,
or nothing is pending). XINFO GROUPS is read before XPENDING: an entry delivered by then and not
pending afterwards was acknowledged in between, so the two reads need no transaction.

Every command names only the simulation's stream, so this works on a Redis Cluster unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

_COUNT_CAP = 100_000
_PAGE = 10_000


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: str | bytes | None) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), for comparing ids."""
    if not entry_id:
        return (0, 0)
    millis, _, seq = _text(entry_id).partition("-")
    return (int(millis), int(seq or 0))


@dataclass(frozen=True)
class Persistence:
    """Where a group stands with a stream up to one entry."""

    stream_exists: bool
    group_exists: bool
    persisted: bool


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    for info in client.xinfo_groups(stream):
        info = {_text(key): _text(value) for key, value in info.items()}
        if info["name"] == group:
            return info
    return None


def persisted_through(client: redis.Redis, stream: str, group: str, entry_id: str) -> Persistence:
    """Whether ``group`` has acknowledged every entry of ``stream`` up to ``entry_id``.

    A stream that no longer exists counts as persisted: the entries were added (``entry_id`` is
    theirs), and retention removes a stream only once it is complete and acknowledged by every
    group. (A server that lost its data, or a stream deleted by hand, looks the same.)
    """
    try:
        info = _group_info(client, stream, group)
    except redis.exceptions.NoPermissionError:
        raise  # refused by an ACL: says nothing about the stream
    except redis.ResponseError:  # no such key
        return Persistence(stream_exists=False, group_exists=False, persisted=True)
    if info is None:
        return Persistence(stream_exists=True, group_exists=False, persisted=False)
    if id_tuple(info["last-delivered-id"]) < id_tuple(entry_id):
        return Persistence(True, True, persisted=False)
    try:
        summary = client.xpending(stream, group)
    except redis.exceptions.NoPermissionError:
        raise
    except redis.ResponseError:  # removed since XINFO answered: complete and all acknowledged
        return Persistence(stream_exists=False, group_exists=False, persisted=True)
    done = not summary["pending"] or id_tuple(summary["min"]) > id_tuple(entry_id)
    return Persistence(True, True, persisted=done)


@dataclass(frozen=True)
class Unpersisted:
    """Entries up to one id the group has not acknowledged: not yet delivered, or pending.

    ``exact`` is False when there were too many to count: the numbers are then lower bounds.
    """

    undelivered: int
    pending: int
    exact: bool = True

    @property
    def total(self) -> int:
        return self.undelivered + self.pending


def unpersisted_through(client: redis.Redis, stream: str, group: str, entry_id: str) -> Unpersisted:
    """Count the entries up to ``entry_id`` that ``group`` has not acknowledged (bounded work:
    at most ``_COUNT_CAP`` entries are read; beyond that the counts are lower bounds)."""
    try:
        info = _group_info(client, stream, group)
        last_generated = _text(client.xinfo_stream(stream)["last-generated-id"])
    except redis.exceptions.NoPermissionError:
        raise  # a producer's user may not read the stream (README: least privilege)
    except redis.ResponseError:
        return Unpersisted(0, 0)  # the stream is gone: removed once persisted
    if info is None:
        undelivered, exact = _count_range(client, stream, "-", entry_id)
        return Unpersisted(undelivered, 0, exact)
    delivered = info["last-delivered-id"]
    if id_tuple(delivered) >= id_tuple(entry_id):
        undelivered, exact = 0, True
    elif info.get("lag") is not None and id_tuple(last_generated) == id_tuple(entry_id):
        undelivered, exact = int(info["lag"]), True  # Redis 7 counts it when nothing came after ours
    else:
        undelivered, exact = _count_range(client, stream, f"({delivered}", entry_id)
    pending, pending_exact = _count_pending(client, stream, group, entry_id)
    return Unpersisted(undelivered, pending, exact and pending_exact)


def _count_range(client: redis.Redis, stream: str, start: str, end: str) -> tuple[int, bool]:
    count = 0
    while count < _COUNT_CAP:
        page = client.xrange(stream, min=start, max=end, count=_PAGE)
        count += len(page)
        if len(page) < _PAGE:
            return count, True
        start = f"({_text(page[-1][0])}"
    return count, False


def _count_pending(client: redis.Redis, stream: str, group: str, entry_id: str) -> tuple[int, bool]:
    summary = client.xpending(stream, group)
    if not summary["pending"] or id_tuple(summary["min"]) > id_tuple(entry_id):
        return 0, True
    if id_tuple(summary["max"]) <= id_tuple(entry_id):
        return int(summary["pending"]), True
    found = client.xpending_range(stream, group, "-", entry_id, _COUNT_CAP)
    return len(found), len(found) < _COUNT_CAP
