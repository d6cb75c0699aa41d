"""What Redis knows about each simulation stream: length, lag, pending, consumers, completion,
and how long since its producer was last heard from (``producer_idle_ms``, see
:mod:`common.heartbeat`), by which a simulation that is not complete is judged abandoned.

Two units: Redis counts stream *entries* (``length``, ``lag``, ``pending``, ``entries_added``),
and an entry is a record batch. What a simulation logged and what its group persisted is counted
in *records*, from its meta hash: ``logged`` (its producers' sequence numbers), ``records_added``
(records appended, each once) and ``persisted`` (records in entries the group acknowledged, kept
by the consumers' ack script). A stream of producers older than record batches has no record
counts (``records_added`` is None): one entry held one record, and the entry counts stand in.
Whether everything is persisted is decided on entries (nothing pending, nothing undelivered),
which Redis keeps exactly.

Used by ``simstream status``, by ``consume --drain`` to decide it may exit, and by the demo's
progress display. Works on Redis 6.2, whose XINFO GROUPS has no ``lag``: it is computed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from common.failover import REDIS_ERRORS
from common.heartbeat import producer_idle_ms, server_time_ms
from common.keys import Keys
from common.replies import text, text_dict
from common.stream_append import ACKED_FIELD_PREFIX, RECORDS_ADDED_FIELD

_LAG_COUNT_CAP = 1_000_000


def entry_id_tuple(entry_id: str | None) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), for comparing ids."""
    if not entry_id:
        return (0, 0)
    millis, _, seq = entry_id.partition("-")
    return (int(millis), int(seq or 0))


@dataclass
class StreamStatus:
    """One simulation stream as one group sees it."""

    simulation_id: str
    stream: str
    exists: bool = False
    length: int = 0
    last_generated_id: str | None = None
    group_exists: bool = False
    last_delivered_id: str | None = None
    pending: int = 0
    lag: int = 0  # entries not yet delivered to the group: every entry while the group does not exist
    consumers: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    logged: int = 0  # records its producers logged and sent (their sequence numbers)
    records_added: int | None = None  # records appended, each once; None: producers before record batches
    persisted: int = 0  # records in entries the group acknowledged (committed or dead-lettered)
    entries_added: int = 0
    acknowledged: int = 0  # entries the group acknowledged
    oldest_pending_id: str | None = None
    oldest_pending_idle_ms: int | None = None
    oldest_pending_age_ms: int | None = None
    producer_idle_ms: int | None = None
    sink_problem: str | None = None
    redis_error: str | None = None  # Redis did not answer for this stream (its master is down)

    @property
    def backlog_entries(self) -> int:
        """Entries the group still has to persist: not yet delivered, or delivered and not acked."""
        return self.lag + self.pending if self.group_exists else self.length

    @property
    def backlog(self) -> int:
        """Records the group still has to persist: records sent less records persisted. Sent is
        the larger of ``logged`` (which counts the records of older producers' entries too, in a
        stream begun before record batches) and ``records_added`` (which counts a re-driven dead
        letter, appended again under its old sequence number). For a stream without record
        counts: its entries not yet persisted (one record each)."""
        if self.records_added is None:
            return self.backlog_entries
        return max(0, max(self.records_added, self.logged) - self.persisted)

    @property
    def persisted_all(self) -> bool:
        """Every entry of the stream was delivered to the group and acknowledged."""
        return self.group_exists and self.pending == 0 and self.lag == 0

    @property
    def drained(self) -> bool:
        """The simulation is complete and every record it sent is persisted."""
        return self.complete and self.persisted_all

    def abandoned(self, after_ms: float) -> bool:
        """Not complete, and its producer not heard from (heartbeat, else newest entry) for longer
        than ``after_ms``. Reversible: a producer or a journal replay that comes back refreshes
        the heartbeat."""
        return not self.complete and self.producer_idle_ms is not None and self.producer_idle_ms > after_ms

    def settled(self, abandoned_after_ms: float) -> bool:
        """Nothing more to wait for: drained, or abandoned with everything it sent persisted."""
        return self.drained or (self.persisted_all and self.abandoned(abandoned_after_ms))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view, with the derived flags."""
        return {**asdict(self), "backlog": self.backlog, "backlog_entries": self.backlog_entries,
                "persisted_all": self.persisted_all, "drained": self.drained}


def simulation_ids(client: redis.Redis, keys: Keys) -> list[str]:
    """Ids of the simulations in the registry, sorted."""
    return sorted(text(member) for member in client.smembers(keys.registry))


def stream_status(client: redis.Redis, keys: Keys, group: str, simulation_id: str,
                  exact_lag: bool = True) -> StreamStatus:
    """The status of one simulation's stream for ``group``.

    ``exact_lag=False``: on Redis 6.2 (no ``lag`` in XINFO) ``lag`` is only 0 or 1 (none / some),
    which is all ``drained`` needs, instead of reading every undelivered entry to count them.
    """
    status = StreamStatus(simulation_id, keys.stream(simulation_id))
    meta = text_dict(client.hgetall(keys.meta(simulation_id)))
    status.complete = meta.get("complete") == "1"
    status.sink_problem = meta.get("sink_problem")  # a worker found the simulation's database unusable
    status.logged = sum(int(value) for name, value in meta.items() if name.startswith("seq:"))
    if meta.get(RECORDS_ADDED_FIELD) is not None:
        status.records_added = int(meta[RECORDS_ADDED_FIELD])
    try:
        info = text_dict(client.xinfo_stream(status.stream))
    except redis.ResponseError:
        _fill_persisted(status, meta, group)
        _fill_producer_idle(client, keys, status, meta)
        return status  # no such stream (yet, or any more)
    status.exists = True
    status.length = int(info["length"])
    status.last_generated_id = info["last-generated-id"]
    # Redis 7 counts every entry ever added; 6.2 does not. There, without record counts, producers'
    # sequence numbers (one record, one entry) are the best estimate (a resent batch makes it
    # slightly low); with record batches only the entries still in the stream are known.
    estimate = status.length if status.records_added is not None else max(status.logged, status.length)
    status.entries_added = int(info.get("entries-added") or estimate)
    for group_info in client.xinfo_groups(status.stream):
        group_info = text_dict(group_info)
        if group_info["name"] == group:
            _fill_group(client, status, group, group_info, exact_lag)
    if not status.group_exists:
        status.lag = status.length  # no consumer has created the group yet: nothing was delivered
    status.acknowledged = max(0, status.entries_added - status.backlog_entries)
    _fill_persisted(status, meta, group)
    _fill_producer_idle(client, keys, status, meta)
    return status


def _fill_persisted(status: StreamStatus, meta: dict[str, Any], group: str) -> None:
    """Records persisted: the group's ack count, or without record counts its acknowledged entries."""
    if status.records_added is None:
        status.persisted = status.acknowledged
    else:
        status.persisted = int(meta.get(f"{ACKED_FIELD_PREFIX}{group}") or 0)


def _fill_producer_idle(client: redis.Redis, keys: Keys, status: StreamStatus, meta: dict[str, Any]) -> None:
    """How long since the producer was heard from, by the clock of the node holding the heartbeat
    (only asked while the simulation is not complete: afterwards it cannot be abandoned)."""
    if status.complete:
        return
    meta_key = keys.meta(status.simulation_id)
    try:
        now_ms = server_time_ms(client, meta_key)
    except redis.ResponseError:  # scripts not allowed (a restricted user): the server's TIME
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
    status.producer_idle_ms = producer_idle_ms(meta, status.last_generated_id, now_ms)


def _fill_group(client: redis.Redis, status: StreamStatus, group: str, info: dict[str, Any],
                exact_lag: bool = True) -> None:
    status.group_exists = True
    status.pending = int(info["pending"])
    status.last_delivered_id = info["last-delivered-id"]
    status.lag = _lag(client, status, info.get("lag"), _LAG_COUNT_CAP if exact_lag else 1)
    status.consumers = [
        {"name": text(consumer["name"]), "pending": int(consumer["pending"]),
         "idle_ms": int(consumer["idle"])}
        for consumer in client.xinfo_consumers(status.stream, group)
    ]
    if status.pending:
        _fill_oldest_pending(client, status, group)


def _fill_oldest_pending(client: redis.Redis, status: StreamStatus, group: str) -> None:
    """The lowest pending id: how long since it was delivered (idle) and since it was added (age)."""
    oldest = client.xpending_range(status.stream, group, "-", "+", 1)
    if not oldest:
        return  # acknowledged since XINFO GROUPS answered
    entry_id = text(oldest[0]["message_id"])
    seconds, micros = client.time()
    status.oldest_pending_id = entry_id
    status.oldest_pending_idle_ms = int(oldest[0]["time_since_delivered"])
    status.oldest_pending_age_ms = max(0, seconds * 1000 + micros // 1000 - entry_id_tuple(entry_id)[0])


def _lag(client: redis.Redis, status: StreamStatus, reported: Any, count_cap: int = _LAG_COUNT_CAP) -> int:
    """Entries not yet delivered to the group: Redis 7's ``lag`` if valid, else counted."""
    if entry_id_tuple(status.last_delivered_id) >= entry_id_tuple(status.last_generated_id):
        return 0
    if reported is not None:
        return int(reported)
    newer = client.xrange(status.stream, min=f"({status.last_delivered_id}", count=count_cap)
    return len(newer)


def all_statuses(client: redis.Redis, keys: Keys, group: str) -> list[StreamStatus]:
    """The status of every registered simulation's stream.

    Raises if the registry cannot be read; a stream Redis does not answer for (on a cluster, its
    master is down) is listed with ``redis_error`` set, and the others are still read.
    """
    statuses = []
    for sim in simulation_ids(client, keys):
        try:
            statuses.append(stream_status(client, keys, group, sim))
        except REDIS_ERRORS as exc:
            statuses.append(StreamStatus(sim, keys.stream(sim), redis_error=f"{type(exc).__name__}: {exc}"))
    return statuses
