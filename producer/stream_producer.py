"""StreamProducer: the simulation-side entry point, ``log(kind, **fields)`` in microseconds.

``log()`` checks the kind and field names, numbers the record and appends it to an in-memory
deque; nothing else happens on the simulation thread. A :class:`~producer.sender.BatchSender`
thread lays records out as rows and appends them to the stream as record batches (many records
per entry). The simulation must not mutate a value it has passed to ``log()`` (a dict, a list)
afterwards: it is laid out and encoded later, on the sender thread. Every count this class
reports (``flush()``, ``close()``, ``stats()``, a ``PersistTimeout``) is in records, not entries.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import redis

from common.connections import redis_client
from common.events import event
from common.errors import ConfigurationError, GroupMissing, PersistTimeout, SenderFailed
from common.failover import REDIS_ERRORS, check_replicas
from common.keys import Keys, validate_simulation_id
from common.records import KINDS, kind_named
from common.retry import PERSISTED_POLL
from common.settings import ProducerSettings
from common.tiers import RedisIMConfig, RedisSTMConfig, TierWriter
from producer.persisted import persisted_through, unpersisted_through
from producer.sender import BatchSender, BufferedRecord

log = logging.getLogger(__name__)

_SPILL_JOIN_S = 30.0


@dataclass(frozen=True)
class FlushReport:
    """Where the producer's records are after ``flush()`` or ``close()``.

    ``in_redis``: records Redis has accepted. ``journaled``: records in the on-disk journal
    (``journal_path``), sent when Redis answers again, by this producer, the next one for the same
    simulation, or ``simstream replay-journal``. ``waiting``: records still in memory when the
    timeout ran out. ``complete``: the simulation is marked complete in Redis (``close()`` only).
    """

    logged: int
    in_redis: int
    journaled: int
    waiting: int
    complete: bool = False
    journal_path: str | None = None

    @property
    def all_in_redis(self) -> bool:
        """True when every logged record is in the stream."""
        return self.in_redis == self.logged

    @property
    def nothing_lost(self) -> bool:
        """True when every logged record is in Redis or in the journal."""
        return self.waiting == 0

    def __str__(self) -> str:
        where = f"{self.in_redis} in Redis"
        if self.journaled:
            where += f", {self.journaled} in the journal {self.journal_path}"
        if self.waiting:
            where += f", {self.waiting} still in memory"
        return f"{self.logged} records logged: {where}" + ("; simulation complete" if self.complete else "")


class StreamProducer:
    """Buffers a simulation's records and streams them to Redis from a background thread.

    Guarantees: ``log()`` never waits for the network and never raises because Redis is slow or
    down (only for a programming error: unknown kind or field names, or SenderFailed when neither
    Redis nor the journal can take records); no value stops the sender thread, and a sender thread
    that dies anyway is restarted, or its records are journaled and ``flush()``/``close()`` raise
    SenderFailed; every record keeps a key (producer id, sequence number) so a copy sent twice is
    written once; ``close()`` sends everything, then marks the simulation complete so consumers
    can finish it.

    With ``recent_state=True`` (or a tier config), every batch's pipeline also writes its agent
    states into the Redis recent-state tiers (see :mod:`common.tiers`); off, it costs nothing.
    """

    def __init__(self, simulation_id: str, redis_url: str | None = None, *,
                 settings: ProducerSettings | None = None, experiment_id: str | None = None,
                 parameters: dict[str, Any] | None = None, recent_state: bool = False,
                 redis_stm_config: RedisSTMConfig | None = None, redis_im_config: RedisIMConfig | None = None,
                 **setting_overrides: Any) -> None:
        self.simulation_id = validate_simulation_id(simulation_id)
        self.settings = settings or ProducerSettings.from_env(redis_url=redis_url, **setting_overrides)
        self.producer_id = secrets.token_hex(8)
        self.keys = Keys(self.settings.namespace)
        if self.settings.replica_acks:
            self._check_replicas()
        self._buffer: deque[BufferedRecord] = deque()
        self._next_seq = itertools.count(1).__next__
        self._last_seq = 0
        self._closed = False
        self._close_lock = threading.Lock()
        self._completion_journaled = False
        self._sender = BatchSender(self.simulation_id, self.producer_id, self._buffer,
                                   self.settings, self.keys)
        if recent_state or redis_stm_config or redis_im_config:
            tiers = TierWriter(self.settings.namespace, redis_stm_config, redis_im_config)
            self._sender.pipeline_extras = tiers.batch_hook(self.simulation_id)
        self._sender.start()
        self._batch_size, self._wake = self.settings.batch_size, self._sender.wake
        atexit.register(_flush_at_exit, weakref.ref(self))
        self.log("simulation", start_time=time.time(), status="running",
                 experiment_id=experiment_id, parameters=parameters, layout=self.settings.layout)

    def _check_replicas(self) -> None:
        """With ``replica_acks``: ConfigurationError now if the stream's master has too few replicas.

        If Redis does not answer yet, nothing is lost by starting: no batch counts as sent until
        WAIT confirms it, so without replicas every record ends in the journal.
        """
        try:
            client = redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
        except REDIS_ERRORS as exc:
            event(log, logging.WARNING, "producer.replicas_unchecked", simulation=self.simulation_id, error=exc)
            return
        try:
            check_replicas(client, self.keys.stream(self.simulation_id), self.settings.replica_acks)
        except REDIS_ERRORS as exc:
            event(log, logging.WARNING, "producer.replicas_unchecked", simulation=self.simulation_id, error=exc)
        finally:
            client.close()

    def log(self, kind: str, /, **fields: Any) -> None:
        """Queue one record of ``kind`` for the stream; returns in microseconds.

        Raises ValueError for an unknown kind or field name, RuntimeError after ``close()``, and
        SenderFailed only when the sender thread is gone for good and the journal cannot be written.
        """
        spec = KINDS.get(kind) or kind_named(kind)
        spec.check_names(fields)
        if self._closed:
            raise RuntimeError(f"producer for {self.simulation_id!r} is closed")
        seq = self._next_seq()
        self._buffer.append((kind, seq, fields))
        self._last_seq = seq
        if len(self._buffer) >= self._batch_size:
            if self._sender.failure is not None:
                self._journal_instead()  # no sender thread any more: this thread journals, batch by batch
            elif not self._wake.is_set():
                self._wake.set()  # Event.set takes a lock: only when the sender is not already woken
        if self._sender.throttle:  # backpressure="slow" and the backlog is past the high-water mark
            time.sleep(self.settings.throttle_sleep_s)

    def discard_pending(self, kinds: Iterable[str], field: str, values: Iterable[Any]) -> int:
        """Recall records of ``kinds`` whose ``field`` is in ``values`` and that the sender thread
        has not taken yet; return how many were recalled.

        A recalled record never reaches Redis. A record the sender has already taken (usually within
        ``flush_interval_s`` of ``log()``) is on its way and is not recalled. The records still
        waiting are renumbered so that sequence numbers stay contiguous (none of them has been
        sent, so none has an identity anywhere yet). Call it from the thread that calls ``log()``.
        """
        wanted, kinds = set(values), frozenset(kinds)
        with self._sender.hand_off:
            waiting = list(self._buffer)
            kept = [record for record in waiting if record[0] not in kinds or record[2].get(field) not in wanted]
            recalled = len(waiting) - len(kept)
            if recalled:
                first_seq = waiting[0][1]
                self._buffer.clear()
                self._buffer.extend((k, first_seq + i, fields) for i, (k, _, fields) in enumerate(kept))
                self._last_seq -= recalled
                self._next_seq = itertools.count(self._last_seq + 1).__next__
        return recalled

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called: nothing more can be logged."""
        return self._closed

    def flush(self, timeout_s: float | None = None) -> FlushReport:
        """Wait until every record logged so far is in Redis, or ``timeout_s`` passes.

        Raises SenderFailed if the sender thread is gone for good (its records are then in the
        journal, which the message names).
        """
        target = self._last_seq
        self._sender.wake.set()
        self._wait_sent(target, timeout_s if timeout_s is not None else self.settings.close_timeout_s)
        self._raise_if_failed(target)
        return self._report(target)

    def wait_persisted(self, timeout_s: float | None = None) -> FlushReport:
        """Return once consumers have committed everything this producer logged so far.

        Flushes first, then waits until the consumer group (``settings.group``, default
        ``simstream``, env ``SIMSTREAM_GROUP``) has acknowledged every entry this producer added to
        the stream up to its last one: each delivered and none still pending, so each is a
        committed row or dead letter in SQL. A stream retention has already removed (complete and
        acknowledged by every group) counts as persisted. Returns the flush report.

        Raises GroupMissing at once if the stream has no such group (no consumer ever read it;
        only within ``group_wait_s`` of this producer's first batch does it wait for consumers to
        discover a new stream), and PersistTimeout, naming the backlog, if ``timeout_s`` (default
        ``persist_timeout_s``) passes first, or at once if records this producer can no longer
        send (closed with a journal) stand in the way; ConfigurationError at once if the producer's
        Redis user may not run XINFO GROUPS or XPENDING. Waits on consumers: not for the per-step path.
        """
        timeout_s = self.settings.persist_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        target = self._last_seq
        self.flush(timeout_s)
        stream, group = self.keys.stream(self.simulation_id), self.settings.group
        client: redis.Redis | None = None
        polls = 0
        try:
            while True:
                entry_id, not_in_redis = self._sent_through(target)
                try:
                    if not not_in_redis and entry_id is not None:
                        client = client or redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
                        state = persisted_through(client, stream, group, entry_id)
                        if state.persisted:
                            return self._report(target)
                        if not state.group_exists and self._group_wait_over():
                            raise GroupMissing(
                                f"no consumer group {group!r} on stream {stream}: no consumer has read simulation "
                                f"{self.simulation_id!r}; start `simstream consume` on this Redis and namespace, "
                                f"or set the producer's group (SIMSTREAM_GROUP) to the consumers' group")
                except redis.exceptions.NoPermissionError as exc:
                    raise ConfigurationError(
                        f"wait_persisted needs XINFO GROUPS and XPENDING on stream {stream}, which this Redis "
                        f"user may not run ({' '.join(str(exc).split())}); see the producer's ACL rules in the "
                        "README (Security and access)") from exc
                except redis.RedisError as exc:
                    event(log, logging.DEBUG, "producer.wait_persisted_retry", simulation=self.simulation_id, error=exc)
                if not_in_redis and not self._sender.is_alive():
                    raise self._timeout(client, target, "this producer is closed and cannot send them; "
                                        "replay its journal with `simstream replay-journal`")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout(client, target, f"after {timeout_s:g}s; are consumers running "
                                        "(`simstream consume`) on this Redis and namespace?")
                polls += 1
                time.sleep(min(PERSISTED_POLL.pause_s(polls), remaining))
        finally:
            if client is not None:
                client.close()

    def _sent_through(self, target: int) -> tuple[str | None, int]:
        """(id of the newest entry this producer added, records up to ``target`` not in Redis)."""
        sender = self._sender
        with sender.progress:
            not_in_redis = max(0, target - sender.handed_off_seq) + sender.in_journal
            return sender.last_entry_id, not_in_redis

    def _group_wait_over(self) -> bool:
        first = self._sender.first_sent_at
        return first is None or time.monotonic() - first >= self.settings.group_wait_s

    def _timeout(self, client: redis.Redis | None, target: int, why: str) -> PersistTimeout:
        """PersistTimeout naming how many of this producer's records are not persisted, and where."""
        entry_id, not_in_redis = self._sent_through(target)
        parts, backlog, exact = [], not_in_redis, True
        if entry_id is not None:
            own = None
            try:
                if client is None:
                    client = own = redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
                left = unpersisted_through(client, self.keys.stream(self.simulation_id), self.settings.group,
                                           entry_id)
                backlog, exact = backlog + left.total, left.exact
                parts += [f"{left.undelivered} not yet delivered to a consumer",
                          f"{left.pending} delivered and not acknowledged"]
            except redis.exceptions.NoPermissionError:
                exact = False
                parts.append("not counted in Redis: this Redis user may not read the stream (XINFO STREAM, XRANGE)")
            except redis.RedisError as exc:
                exact = False
                parts.append(f"Redis did not answer: {' '.join(str(exc).split())}")
            finally:
                if own is not None:
                    own.close()
        if not_in_redis:
            journal = self._sender.journal.path if self._sender.in_journal else None
            parts.append(f"{not_in_redis} not yet in Redis" + (f" (journal {journal})" if journal else ""))
        return PersistTimeout(
            f"simulation {self.simulation_id!r}: {'' if exact else 'at least '}{backlog} records of this producer "
            f"not yet persisted by consumer group {self.settings.group!r} ({', '.join(parts)}) {why}", backlog)

    def close(self, timeout_s: float | None = None, status: str = "completed") -> FlushReport:
        """Log the simulation's end (with ``status``), send everything, mark it complete; idempotent.

        Returns once every record is in Redis, or, if Redis does not take them within
        ``timeout_s`` (default ``close_timeout_s``), in the journal, which then also records that
        the simulation is complete. The report says which.
        """
        with self._close_lock:
            if not self._closed:
                self.log("simulation_end", end_time=time.time(), status=status)
                self._closed = True
                self._sender.stop(mark_complete=True)
        self._sender.join(timeout_s if timeout_s is not None else self.settings.close_timeout_s)
        if self._sender.is_alive():
            self._sender.spill_now()  # stop waiting for Redis: the rest goes to the journal
            self._sender.join(_SPILL_JOIN_S)
        self._raise_if_failed(self._last_seq, closing=True)
        report = self._report(self._last_seq)
        event(log, logging.INFO if report.all_in_redis else logging.WARNING, "producer.closed",
              simulation=self.simulation_id, **asdict(report))
        return report

    def stats(self) -> dict[str, Any]:
        """Counts so far, in records: logged, sent (to Redis), journaled, replayed from journals,
        the consumer group's ``backlog`` as the last append saw it, sent per kind; ``batches``:
        pipelines sent; failed send attempts, and how often the sender thread was restarted
        (``sender_failure``: why it is gone for good, or None)."""
        sender = self._sender.stats
        return {
            "logged": self._last_seq,
            "sent": sender.sent,
            "journaled": sender.journaled,
            "replayed": sender.replayed,
            "backlog": sender.backlog,
            "sent_by_kind": dict(sender.sent_by_kind),
            "batches": sender.batches,
            "failed_attempts": sender.failed_attempts,
            "last_error": sender.last_error,
            "sender_restarts": self._sender.restarts,
            "sender_failure": self._sender.failure,
        }

    def _journal_instead(self) -> None:
        """Journal what the buffer holds; SenderFailed if the journal cannot take it either."""
        sender = self._sender
        try:
            sender.journal_buffered()
        except OSError as exc:
            held = len(self._buffer) + len(sender.in_hand)
            raise SenderFailed(f"{sender.failure}; its journal {sender.journal.path} cannot be written either "
                               f"({exc}): {held} records are only in memory") from exc

    def _raise_if_failed(self, target: int, closing: bool = False) -> None:
        """If the sender thread is gone for good: journal the rest (and, closing, the completion),
        then raise SenderFailed saying where the records are."""
        sender = self._sender
        if sender.failure is None:
            return
        self._journal_instead()
        if closing and not sender.completed and not self._completion_journaled:
            try:
                sender.journal.mark_complete()
                self._completion_journaled = True
            except OSError as exc:
                raise SenderFailed(f"{sender.failure}; the journal {sender.journal.path} cannot be "
                                   f"written ({exc})") from exc
        report = self._report(target)
        event(log, logging.ERROR, "producer.sender_gone", simulation=self.simulation_id, **asdict(report))
        raise SenderFailed(f"{sender.failure}: records go to the journal, not to Redis ({report}); "
                           "`simstream replay-journal` sends them once Redis is reachable", report)

    def _wait_sent(self, target: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._sender.progress:
            while self._sender.handed_off_seq < target and self._sender.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._sender.progress.wait(min(remaining, 0.5))

    def _report(self, target: int) -> FlushReport:
        sender = self._sender
        with sender.progress:
            handed_off, journaled = min(sender.handed_off_seq, target), sender.in_journal
        return FlushReport(logged=target, in_redis=handed_off - journaled, journaled=journaled,
                           waiting=target - handed_off, complete=sender.completed,
                           journal_path=str(sender.journal.path) if journaled else None)

    def __enter__(self) -> StreamProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _flush_at_exit(producer_ref: weakref.ref) -> None:
    """At interpreter exit, send what a producer still holds (it is not marked complete)."""
    producer = producer_ref()
    if producer is not None and not producer._closed:
        try:
            producer.flush(timeout_s=producer.settings.close_timeout_s)
        except SenderFailed as exc:
            event(log, logging.ERROR, "producer.exit_with_journal", simulation=producer.simulation_id, error=exc)
