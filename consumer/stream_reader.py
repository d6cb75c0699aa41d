"""The consumer's Redis side: group bootstrap, reads, claims and acks for one consumer name.

An ack is one script (:data:`ACK_SCRIPT`) that XACKs the batch's entries and adds the records of
those it acknowledged now to ``acked:<group>`` in the simulation's meta hash, so the group's count
of persisted records stays exact under replays and retried acks.

Replies of XREADGROUP and XAUTOCLAIM are parsed here from the raw protocol, because they differ
by server version and the library's parsers drop what we need: Redis 6.2 answers a claimed entry
whose payload was trimmed away with a bare nil (its id is lost), Redis 7 lists such ids in a third
element and removes them from the pending list. Own pending entries read with id ``0`` that were
trimmed come back as ``[id, nil]`` on both. Every such entry is surfaced, never skipped.

On a Redis Cluster one XREADGROUP may only name streams of one hash slot, so new entries are read
slot by slot, and the wait (BLOCK) is shared between the slots: each gets its slice of
``block_ms``, and once one has answered the rest are read without waiting. The raw-reply commands
go straight to the node owning the stream's slot, because the cluster client would run the
node's own reply parser before any callback of ours. A failover error there (the node refused or
dropped the connection, answered MOVED or CLUSTERDOWN, timed out) refreshes the slot map; if it
then names another owner the command is sent there at once, else it fails as RedisUnavailable and
the worker sets that stream aside, with backoff, while it serves the others (``read_new`` reports
a slot whose read failed through ``on_failure`` and goes on with the next slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis
from redis.crc import key_slot

from common.codec import ENTRY_FIELD, entry_payload
from common.connections import is_cluster
from common.errors import GroupMissing, RedisUnavailable
from common.failover import REDIS_ERRORS, is_failover_error, refresh_slots, slot_client
from common.replies import as_bytes, text
from common.scripts import LuaScript
from common.stream_append import ACKED_FIELD_PREFIX

_RAW_COMMANDS = ("XREADGROUP", "XAUTOCLAIM")

ACK_SCRIPT = LuaScript(
    "local records = 0 "
    "for i = 2, #ARGV, 2 do "
    "  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then records = records + tonumber(ARGV[i + 1]) end "
    "end "
    "if records > 0 then "
    "  local field = '" + ACKED_FIELD_PREFIX + "' .. ARGV[1] "
    "  local acked = tonumber(redis.call('HGET', KEYS[2], field) or '0') + records "
    "  redis.call('HSET', KEYS[2], field, string.format('%d', acked)) "
    "end "
    "return records"
)
"""XACK each entry (KEYS[1] the stream, ARGV[1] the group, then entry id and record count pairs)
and add the records of the entries XACK acknowledged now (it returns 1) to ``acked:<group>`` in
the meta hash (KEYS[2], same hash slot). An entry acknowledged before (a replay, a retried ack)
counts nothing, so the count stays exact; nothing is written when nothing counts, so a meta hash
removed with its finished simulation is not made again. HGET and HSET rather than HINCRBY: the
consumer's ACL (README) already allows them."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry as delivered: its id, payload (None if the payload was trimmed) and how
    many times Redis has delivered it (1 for a new entry; Redis's own counter once read for a
    replayed or claimed one)."""

    entry_id: bytes
    payload: bytes | None
    deliveries: int = 1


@dataclass(frozen=True)
class ClaimResult:
    """One XAUTOCLAIM step: entries now ours, ids Redis dropped, whether more may be unseen."""

    cursor: bytes
    entries: list[Entry]
    gone_ids: list[bytes]
    unnamed_gone: bool

    @property
    def pass_complete(self) -> bool:
        """True when the cursor wrapped: every pending entry has been looked at once."""
        return self.cursor in (b"0-0", "0-0")


def _pairs(reply: Any) -> Iterable[tuple[Any, Any]]:
    """(key, value) pairs from a RESP2 array of pairs or a RESP3 map."""
    return reply.items() if isinstance(reply, dict) else reply


def _entries(raw_entries: Iterable[Any]) -> tuple[list[Entry], bool]:
    """Entries from ``[[id, [field, value, ...]] | [id, nil] | nil, ...]``; flags bare nils."""
    entries, saw_bare_nil = [], False
    for raw in raw_entries:
        if raw is None:
            saw_bare_nil = True
            continue
        entry_id, fields = raw[0], raw[1]
        if fields is not None and len(fields) == 2 and fields[0] == ENTRY_FIELD:
            payload = fields[1]  # the usual entry: just our one field
        else:
            payload = entry_payload(dict(zip(fields[::2], fields[1::2]))) if fields is not None else None
        entries.append(Entry(entry_id, payload))
    return entries, saw_bare_nil


def translate(exc: BaseException, what: str) -> BaseException:
    """The simstream error for a redis-py failure during ``what``."""
    # NOGROUP: the group or stream is missing. UNBLOCKED (Redis 7): the stream was deleted while
    # we were blocked reading it, e.g. removed by another consumer once it was fully persisted.
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED")):
        return GroupMissing(f"{what}: the consumer group or its stream is gone ({exc})")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):  # BusyLoadingError too
        return RedisUnavailable(f"{what}: {exc}")
    if is_failover_error(exc):  # MOVED/ASK, slots migrating, CLUSTERDOWN, no node answering
        return RedisUnavailable(f"{what}: the cluster is changing ({type(exc).__name__}: {exc})")
    return exc


def _raw(response: Any, **_options: Any) -> Any:
    return response


class StreamReader:
    """Reads and acknowledges entries of simulation streams as one named group consumer."""

    def __init__(self, client: redis.Redis, group: str, consumer: str) -> None:
        self.client = client
        self.group = group
        self.consumer = consumer
        self.cluster = is_cluster(client)
        self._rotation = 0
        if not self.cluster:
            for command in _RAW_COMMANDS:
                client.set_response_callback(command, _raw)

    def _raw_client(self, stream: str) -> redis.Redis:
        """The client that returns unparsed replies for ``stream``: on a cluster, its slot's node."""
        if not self.cluster:
            return self.client
        node_client = slot_client(self.client, stream)
        for command in _RAW_COMMANDS:
            node_client.set_response_callback(command, _raw)  # the node client may be new
        return node_client

    def _owner(self, stream: str) -> str | None:
        return self.client.get_node_from_key(stream).name if self.cluster else None

    def _execute_raw(self, stream: str, *args: Any) -> Any:
        owner = self._owner(stream)
        try:
            return self._raw_client(stream).execute_command(*args)
        except REDIS_ERRORS as exc:
            # On a cluster the owner may have changed: learn the new owners, and if the slot has
            # another one now, send the command there at once; else the caller backs off.
            if not (self.cluster and is_failover_error(exc) and refresh_slots(self.client)):
                raise
            if self._owner(stream) == owner:
                raise
            return self._raw_client(stream).execute_command(*args)

    def ensure_group(self, stream: str) -> None:
        """Create the group at the start of ``stream`` (creating the stream if missing).

        Swallows exactly one error, BUSYGROUP: the group already exists.
        """
        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return
            if is_failover_error(exc):
                raise translate(exc, f"creating group {self.group} on {stream}") from exc
            raise
        except REDIS_ERRORS as exc:
            raise translate(exc, f"creating group {self.group} on {stream}") from exc

    def read_new(self, streams: list[str], count: int, block_ms: int,
                 on_failure: Callable[[list[str], Exception], None] | None = None) -> dict[str, list[Entry]]:
        """Up to ``count`` never-delivered entries per stream, waiting at most ``block_ms``.

        With ``on_failure``, a slot whose read fails with RedisUnavailable or GroupMissing is
        reported there (its streams, the error) and the other slots are still read.
        """
        if not streams:
            return {}
        result: dict[str, list[Entry]] = {}
        groups = self._slot_groups(streams)
        slice_ms = max(1, block_ms // len(groups))
        for group in groups:
            try:
                reply = self._read(group, [">"] * len(group), count, None if result else slice_ms)
            except (RedisUnavailable, GroupMissing) as exc:
                if on_failure is None:
                    raise
                on_failure(group, exc)
                continue
            result.update((stream, entries) for stream, entries in reply.items() if entries)
        return result

    def _slot_groups(self, streams: list[str]) -> list[list[str]]:
        """One group of all streams, or on a cluster one per hash slot, in a rotating order."""
        if not self.cluster:
            return [streams]
        by_slot: dict[int, list[str]] = {}
        for stream in streams:
            by_slot.setdefault(key_slot(stream.encode()), []).append(stream)
        groups = list(by_slot.values())
        self._rotation = (self._rotation + 1) % len(groups)  # no slot always waits last
        return groups[self._rotation:] + groups[:self._rotation]

    def read_own_pending(self, stream: str, after_id: bytes | str, count: int) -> list[Entry]:
        """Entries delivered to this consumer and not acknowledged, after ``after_id``."""
        return self._read([stream], [after_id], count, None).get(stream, [])

    def _read(self, streams: list[str], ids: list[Any], count: int,
              block_ms: int | None) -> dict[str, list[Entry]]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        try:
            reply = self._execute_raw(streams[0], *args, "STREAMS", *streams, *ids)
        except REDIS_ERRORS as exc:
            raise translate(exc, "reading") from exc
        result: dict[str, list[Entry]] = {}
        for stream, raw_entries in _pairs(reply or []):
            result[text(stream)], _ = _entries(raw_entries or [])
        return result

    def claim_stale(self, stream: str, min_idle_ms: int, cursor: bytes | str, count: int) -> ClaimResult:
        """XAUTOCLAIM entries idle for ``min_idle_ms`` from any consumer of the group."""
        try:
            reply = self._execute_raw(stream, "XAUTOCLAIM", stream, self.group, self.consumer,
                                      min_idle_ms, cursor, "COUNT", count)
        except REDIS_ERRORS as exc:
            raise translate(exc, f"claiming on {stream}") from exc
        entries, unnamed_gone = _entries(reply[1])
        gone_ids = list(reply[2]) if len(reply) > 2 else []
        return ClaimResult(reply[0], entries, gone_ids, unnamed_gone)

    def ack(self, stream: str, meta: str, records_by_entry: dict[bytes, int]) -> int:
        """Acknowledge entries once their rows are committed, counting in ``meta`` the records each
        settled (``records_by_entry``, see :data:`ACK_SCRIPT`); returns the records counted (those
        of entries this call acknowledged, not of entries acknowledged before)."""
        if not records_by_entry:
            return 0
        args: list[Any] = [self.group]
        for entry_id, records in records_by_entry.items():
            args += [entry_id, records]
        try:
            return int(self._execute_raw(stream, *ACK_SCRIPT.command([stream, meta], args)))
        except REDIS_ERRORS as exc:
            raise translate(exc, f"acknowledging on {stream}") from exc

    def delivery_counts(self, stream: str, first: bytes, last: bytes, count: int) -> dict[bytes, int]:
        """Redis's own delivery counter of this consumer's pending entries in [first, last].

        Read in pages of ``count``: other pending entries of ours may lie in the same id range
        (after claims of scattered ids), and a single page could then miss some of the batch's.
        """
        counts: dict[bytes, int] = {}
        start: bytes | str = first
        while True:
            try:
                rows = self.client.xpending_range(stream, self.group, start, last, count,
                                                  consumername=self.consumer)
            except REDIS_ERRORS as exc:
                raise translate(exc, f"reading delivery counts on {stream}") from exc
            counts.update((row["message_id"], row["times_delivered"]) for row in rows)
            if len(rows) < count:
                return counts
            last_seen = rows[-1]["message_id"]
            start = b"(" + as_bytes(last_seen)
