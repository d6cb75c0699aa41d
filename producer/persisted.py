"""Has a consumer group persisted a stream up to a given entry? Read from Redis, for ``wait_persisted``.

An entry is persisted once the group has acknowledged it: consumers XACK only after the SQL
transaction holding its row (or its dead letter) has committed. "Every entry up to ``entry_id``
is acknowledged" holds when the group's last-delivered-id is at or past ``entry_id`` (all of them
were delivered) and none of them is still pending (the lowest pending id is beyond ``entry_id``,
or nothing is pending). XINFO GROUPS is read before XPENDING: an entry delivered by then and not
pending afterwards was acknowledged in between, so the two reads need no transaction.

A timeout counts what is left in records, not entries (an entry is a batch of records): it reads
the entries' headers (:func:`common.codec.describe`), which needs XRANGE.

Every command names only the simulation's stream, so this works on a Redis Cluster unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from common.codec import describe, entry_payload
from common.replies import text, text_dict

_COUNT_CAP = 100_000
"""Records counted at most; beyond, the counts are lower bounds."""
_PAGE = 100
"""Entries per XRANGE (an entry may hold hundreds of records' bytes)."""
_READ_CAP = 20_000
"""Entries read at most."""


def id_tuple(entry_id: str | bytes | None) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), for comparing ids."""
    if not entry_id:
        return (0, 0)
    millis, _, seq = text(entry_id).partition("-")
    return (int(millis), int(seq or 0))


@dataclass(frozen=True)
class Persistence:
    """Where a group stands with a stream up to one entry."""

    stream_exists: bool
    group_exists: bool
    persisted: bool


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    for info in client.xinfo_groups(stream):
        info = text_dict(info)
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
    """Records in entries up to one id the group has not acknowledged: not yet delivered, or pending.

    ``exact`` is False when there were too many to count: the numbers are then lower bounds.
    """

    undelivered: int
    pending: int
    exact: bool = True

    @property
    def total(self) -> int:
        return self.undelivered + self.pending


def unpersisted_through(client: redis.Redis, stream: str, group: str, entry_id: str) -> Unpersisted:
    """Count the records in entries up to ``entry_id`` that ``group`` has not acknowledged (bounded
    work: past ``_COUNT_CAP`` records the counts are lower bounds)."""
    try:
        info = _group_info(client, stream, group)
        last_generated = text(client.xinfo_stream(stream)["last-generated-id"])
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
    elif info.get("lag") == 0 and id_tuple(last_generated) == id_tuple(entry_id):
        undelivered, exact = 0, True  # Redis 7 says so when nothing came after ours
    else:
        undelivered, exact = _count_range(client, stream, f"({delivered}", entry_id)
    pending, pending_exact = _count_pending(client, stream, group, entry_id)
    return Unpersisted(undelivered, pending, exact and pending_exact)


def _count_range(client: redis.Redis, stream: str, start: str, end: str,
                 only: set[str] | None = None) -> tuple[int, bool]:
    """Records in the entries from ``start`` to ``end``; with ``only``, in those of these ids (an
    id no longer in the stream, deleted while pending, counts one)."""
    count, read, seen = 0, 0, 0
    while count < _COUNT_CAP and read < _READ_CAP:
        page = client.xrange(stream, min=start, max=end, count=_PAGE)
        read += len(page)
        for entry_id, fields in page:
            if only is None or text(entry_id) in only:
                count, seen = count + _records(fields), seen + 1
        if len(page) < _PAGE:
            return count + (len(only) - seen if only is not None else 0), True
        start = f"({text(page[-1][0])}"
    return count, False


def _records(fields: dict[bytes, bytes]) -> int:
    """Records an entry holds: a record batch's count; anything else is one."""
    described = describe(entry_payload(fields) or b"")
    return described.records if described is not None else 1


def _count_pending(client: redis.Redis, stream: str, group: str, entry_id: str) -> tuple[int, bool]:
    summary = client.xpending(stream, group)
    if not summary["pending"] or id_tuple(summary["min"]) > id_tuple(entry_id):
        return 0, True
    found = client.xpending_range(stream, group, "-", entry_id, _READ_CAP)
    pending = {text(item["message_id"]) for item in found}
    count, exact = _count_range(client, stream, text(summary["min"]), entry_id, pending)
    return count, exact and len(found) < _READ_CAP
