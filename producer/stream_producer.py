"""StreamProducer: the simulation-side entry point, ``log(kind, **fields)`` in microseconds.

``log()`` checks the kind and field names, numbers the record and appends it to an in-memory
deque; nothing else happens on the simulation thread. A :class:`~producer.sender.BatchSender`
thread encodes and XADDs in pipelined batches. The simulation must not mutate a value it has
passed to ``log()`` (a dict, a list) afterwards: it is encoded later, on the sender thread.
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
from dataclasses import dataclass
from typing import Any, Iterable

from common.keys import Keys, validate_simulation_id
from common.records import KINDS, kind_named
from common.settings import ProducerSettings
from common.tiers import RedisIMConfig, RedisSTMConfig, TierWriter
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
    down (only for a programming error: unknown kind or field names); every record keeps a key
    (producer id, sequence number) so a copy sent twice is written once; ``close()`` sends
    everything, then marks the simulation complete so consumers can finish it.

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
        self._buffer: deque[BufferedRecord] = deque()
        self._next_seq = itertools.count(1).__next__
        self._last_seq = 0
        self._closed = False
        self._close_lock = threading.Lock()
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

    def log(self, kind: str, /, **fields: Any) -> None:
        """Queue one record of ``kind`` for the stream; returns in microseconds.

        Raises ValueError for an unknown kind or field name, RuntimeError after ``close()``.
        """
        spec = KINDS.get(kind) or kind_named(kind)
        spec.check_names(fields)
        if self._closed:
            raise RuntimeError(f"producer for {self.simulation_id!r} is closed")
        seq = self._next_seq()
        self._buffer.append((kind, seq, fields))
        self._last_seq = seq
        if len(self._buffer) >= self._batch_size and not self._wake.is_set():
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
        """Wait until every record logged so far is in Redis, or ``timeout_s`` passes."""
        target = self._last_seq
        self._sender.wake.set()
        self._wait_sent(target, timeout_s if timeout_s is not None else self.settings.close_timeout_s)
        return self._report(target)

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
        report = self._report(self._last_seq)
        log.log(logging.INFO if report.all_in_redis else logging.WARNING,
                "producer.closed simulation=%s %s", self.simulation_id, report)
        return report

    def stats(self) -> dict[str, Any]:
        """Counts so far: records logged and sent, per kind, and failed send attempts."""
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
        }

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
        producer.flush(timeout_s=producer.settings.close_timeout_s)
