"""The producer's background thread: lays buffered records out as rows, packs them into record
batches and appends those to the stream, one pipeline per ``batch_size`` records.

Only this thread talks to Redis, so the simulation thread never waits on the network. Records
taken from the buffer are laid out and packed by one :class:`~common.codec.BatchEncoder` into
entries of at most ``entry_records`` records and ``entry_max_bytes`` bytes, and appended with
:func:`~common.stream_append.append_entries`: one EVAL that announces the layout, XADDs the
entries, raises the producer's sequence number, counts the records and refreshes the heartbeat.
A pipeline Redis does not take is retried with bounded jittered backoff for ``spill_after_s``,
then its entries go to the on-disk journal (:mod:`producer.journal_replay`). A retried pipeline
whose first reply was lost adds nothing twice: the script skips entries whose sequence numbers
Redis already holds (and the sink ignores copies anyway).

The thread never dies silently. A value no column can take, or that cannot be encoded, travels as
a reject in its batch (the consumer dead-letters that record alone, see :mod:`common.codec`). If
the thread ends anyway (a bug, an error no handler expected), it is restarted, with the records it
held, after a jittered pause; after ``_MAX_RESTARTS`` deaths in a row without progress it is not
restarted again: every record it held or that waits in the buffer goes to the journal, ``failure``
says why, and the producer's ``flush()`` and ``close()`` raise :class:`~common.errors.SenderFailed`.

Backpressure, in records: every append returns the group's backlog (records appended less
records in entries the group has acknowledged). Past ``high_water_records`` the sender either
spills to the journal (``backpressure="spill"``) or sets ``throttle`` so ``log()`` slows the
simulation (``"slow"``) until the backlog falls below ``low_water_records``. Nothing is trimmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from common import faults
from common.codec import BatchEncoder, BufferedRecord, EncodedBatch
from common.connections import redis_client
from common.events import event
from common.heartbeat import touch_command
from common.failover import REDIS_ERRORS, confirm_replicas, is_failover_error, refresh_slots, slot_client
from common.keys import Keys
from common.layouts import META_FIELD as LAYOUT_FIELD
from common.retry import REDIS_SEND, SENDER_RESTART
from common.settings import ProducerSettings
from common.stream_append import append_entries
from producer.journal_replay import SenderJournal

log = logging.getLogger(__name__)

_REGISTER_EVERY_S = 5.0
"""How often a running producer re-adds its simulation to the registry (a set on another master:
a registration lost in a failover comes back, and a registry that is down holds up no batch)."""

_MAX_RESTARTS = 3
"""Deaths in a row, without a batch handed off in between, after which the thread is not restarted."""

PipelineExtras = Callable[[list[BufferedRecord]], list[tuple[Any, ...]]]
"""Given a batch, Redis commands to send in the same pipeline as its entries (computed once per
batch, outside the retry loop); see ``BatchSender.pipeline_extras``."""


@dataclass
class SenderStats:
    """What the sender has done so far, in records (``batches``: pipelines taken from the buffer;
    ``backlog``: the group's backlog in records, as the last append saw it); read by
    ``StreamProducer.stats()``."""

    sent_by_kind: Counter = field(default_factory=Counter)
    sent: int = 0
    journaled: int = 0
    replayed: int = 0
    batches: int = 0
    failed_attempts: int = 0
    backlog: int = 0
    last_error: str | None = None


class BatchSender:
    """Drains ``buffer`` into the simulation's stream (or its journal) from a background thread,
    until stopped and empty; restarts that thread if it dies (see the module docstring).

    ``handed_off_seq``: every record up to this sequence number is in Redis or in the journal.
    ``in_journal``: how many of them (records, not entries) are in the journal, not yet in Redis.
    ``last_entry_id``: the id of the newest entry holding this sender's records (a pipeline's
    last, or the last of a journal it replayed); set before ``handed_off_seq`` / ``in_journal`` move.
    ``first_sent_at``: when (monotonic) Redis first took a batch of this sender, else None.
    ``in_hand``: the batch taken from the buffer and not yet handed off (a restarted thread sends
    it first). ``failure``: why the thread is gone for good, or None.
    """

    def __init__(self, simulation_id: str, producer_id: str, buffer: deque[BufferedRecord],
                 settings: ProducerSettings, keys: Keys) -> None:
        self.simulation_id = simulation_id
        self.producer_id = producer_id
        self.buffer = buffer
        self.settings = settings
        self.keys = keys
        self.stream_key = keys.stream(simulation_id)
        self.meta_key = keys.meta(simulation_id)
        self._journal = SenderJournal(simulation_id, producer_id, settings, keys)
        self.journal = self._journal.journal
        self.wake = threading.Event()
        self.progress = threading.Condition()
        self.hand_off = threading.Lock()  # held while taking a batch; lets the producer recall records
        self.pipeline_extras: PipelineExtras | None = None
        self.handed_off_seq = 0
        self.in_journal = 0
        self.throttle = False
        self.completed = False
        self.last_entry_id: str | None = None
        self.first_sent_at: float | None = None
        self._last_heartbeat = 0.0
        self.stats = SenderStats()
        self.in_hand: list[BufferedRecord] = []
        self.failure: str | None = None
        self.restarts = 0
        self._thread: threading.Thread | None = None
        self._replacing = False
        self._deaths_in_a_row = 0
        self._seq_at_last_death = 0
        self.journaling = bool(self._journal.earlier)  # older records first: ours queue behind them
        self._outage_since: float | None = None  # when Redis last stopped answering, while it does not
        self._spilling_for_backlog = False
        self._stopping = False
        self._mark_complete = False
        self._spill_now = False
        self._encoder = self._new_encoder()
        self._client: redis.Redis | None = None
        self._register_due = 0.0

    # -- the thread's life -----------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart) the background thread."""
        thread = threading.Thread(target=self._run, name=f"simstream-sender-{self.simulation_id}", daemon=True)
        self._thread = thread  # before start(): a successor started by this thread must replace it, not be replaced
        thread.start()

    def is_alive(self) -> bool:
        """True while a sender thread runs, or a dead one is being replaced."""
        thread = self._thread
        return self._replacing or (thread is not None and thread.is_alive())

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the thread to finish, following restarts."""
        deadline = time.monotonic() + timeout_s
        while True:
            thread = self._thread
            if thread is None:
                return
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread is self._thread or time.monotonic() >= deadline:
                return

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - whatever ends the thread, its records must not be stranded
            self._replacing = True
            try:
                self._after_death(exc)
            finally:
                self._replacing = False
        finally:
            with self.progress:
                self.progress.notify_all()

    def _after_death(self, exc: BaseException) -> None:
        """Restart the thread with the batch it held, or, after too many deaths, journal everything."""
        event(log, logging.ERROR, "producer.sender_failed", simulation=self.simulation_id,
              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self._close_client()
        self._encoder = self._new_encoder()
        progressed = self.handed_off_seq > self._seq_at_last_death
        self._deaths_in_a_row = 1 if progressed else self._deaths_in_a_row + 1
        self._seq_at_last_death = self.handed_off_seq
        if self._deaths_in_a_row <= _MAX_RESTARTS:
            time.sleep(SENDER_RESTART.pause_s(self._deaths_in_a_row))
            try:
                self.start()
                self.restarts += 1
                event(log, logging.WARNING, "producer.sender_restarted", simulation=self.simulation_id,
                      restarts=self.restarts, held=len(self.in_hand))
                return
            except RuntimeError as start_error:  # the interpreter cannot start a thread now
                exc = start_error
        self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.failure = (f"the sender thread of simulation {self.simulation_id!r} died {self._deaths_in_a_row} "
                        f"times in a row ({reason})")
        event(log, logging.ERROR, "producer.sender_gave_up", simulation=self.simulation_id,
              journal=self.journal.path, error=reason)
        try:
            self.journal_buffered()
        except OSError as journal_error:
            self.failure += f"; its journal {self.journal.path} cannot be written either ({journal_error})"
            event(log, logging.ERROR, "producer.journal_failed", simulation=self.simulation_id, error=journal_error)

    def journal_buffered(self) -> int:
        """Journal the batch in hand and every buffered record (once the thread is gone for good).

        Safe from any thread. Raises OSError if the journal cannot be written; the records then
        stay where they were. Returns how many were journaled.
        """
        with self.hand_off:
            records = self.in_hand + list(self.buffer)
            if not records:
                return 0
            self._to_journal(self._encoder.encode(records))
            for _ in range(len(records) - len(self.in_hand)):
                self.buffer.popleft()
            self.in_hand = []
            with self.progress:
                self.handed_off_seq = records[-1][1]
                self.progress.notify_all()
        return len(records)

    def _new_encoder(self) -> BatchEncoder:
        settings = self.settings
        return BatchEncoder(self.simulation_id, self.producer_id, settings.layout, settings.entry_records,
                            settings.entry_max_bytes)

    # -- control, from the simulation thread -----------------------------------------------

    def stop(self, mark_complete: bool) -> None:
        """Send what is buffered, optionally mark the simulation complete, then end the thread."""
        self._mark_complete = mark_complete
        self._stopping = True
        self.wake.set()

    def spill_now(self) -> None:
        """Stop waiting for Redis: journal whatever is left and finish (``close()`` timed out)."""
        self._spill_now = True
        self.wake.set()

    # -- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self.in_hand:  # a restarted thread sends what it held at once
                self.wake.wait(self.settings.flush_interval_s)
            self.wake.clear()
            if self.journaling:
                self._try_leave_journal()
            self._send_buffered()
            self._heartbeat_if_idle()
            if self._stopping and not self.buffer:
                self._finish()
                self._close_client()
                return

    def _take_batch(self) -> list[BufferedRecord]:
        # Only this thread pops, so len() is a lower bound while log() keeps appending.
        popleft = self.buffer.popleft
        with self.hand_off:
            self.in_hand = [popleft() for _ in range(min(len(self.buffer), self.settings.batch_size))]
        return self.in_hand

    def _send_buffered(self) -> None:
        while self.in_hand or self.buffer:
            batch = self.in_hand or self._take_batch()  # a restarted thread first sends what it held
            if not batch:  # the producer recalled what was left
                break
            faults.thread_checkpoint("sender_in_hand")
            entries = self._encoder.encode(batch)
            extras = () if self.pipeline_extras is None or self.journaling else self.pipeline_extras(batch)
            if self.journaling or not self._send_with_retry(self._send_entries, entries, extras):
                self._to_journal(entries)
            else:
                self.stats.sent += len(batch)
            self.stats.batches += 1
            self.stats.sent_by_kind.update(kind for kind, _, _ in batch)
            with self.progress:
                self.handed_off_seq = batch[-1][1]
                self.in_hand = []
                self.progress.notify_all()

    def _finish(self) -> None:
        """Everything is handed off: get the journal into Redis if we can, then mark complete."""
        while self.journaling and not self._spill_now:
            self._try_leave_journal(force=True)
            if self.journaling:
                self.wake.wait(self.settings.journal_retry_interval_s)
        if not self._mark_complete:
            return
        if not self.journaling and self._send_with_retry(self._send_completion, until_spill=True):
            self.completed = True
        else:
            self.journal.mark_complete()
            event(log, logging.WARNING, "producer.closed_with_journal", simulation=self.simulation_id,
                  journal=self.journal.path, records=self.in_journal)

    # -- Redis -----------------------------------------------------------------------------

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a connection broken mid-command: nothing left to close
                pass

    def _send_entries(self, entries: list[EncodedBatch], extras: Any = ()) -> None:
        # One pipeline on the master owning the simulation's slot (the extras carry its hash tag
        # too), so WAIT, if asked for, confirms exactly these writes. The registry is added to on
        # the sender's own clock: it may live on another master, and a failure there holds up nothing.
        client = self._redis()
        result = append_entries(client, self.keys, self.simulation_id, entries, layout=self.settings.layout,
                                skip_seen=True, group=self.settings.group, extras=extras,
                                replicas=(self.settings.replica_acks, self.settings.replica_wait_ms), register=False)
        faults.thread_checkpoint("sender_appended")  # in Redis, not yet noted: as if the reply were lost
        self._note_added(result.last_entry_id)
        if result.backlog_records is not None:
            self._observe_backlog(result.backlog_records)
        self._register(client)

    def _note_added(self, entry_id: str | None) -> None:
        """Remember the newest entry holding this sender's records (and that the heartbeat was
        just refreshed); None (nothing appended, nothing known) keeps the previous one."""
        if not entry_id:
            return
        self.last_entry_id = entry_id
        now = time.monotonic()
        self._last_heartbeat = now
        if self.first_sent_at is None:
            self.first_sent_at = now

    def _heartbeat_if_idle(self) -> None:
        """Refresh the heartbeat if no batch did for ``heartbeat_interval_s``: one try, no retry.

        Skipped while journaling because Redis failed (the batches' own retries show that; a
        heartbeat waiting on a dead connection would only hold up the journal). Spilling for
        backlog, Redis answers and the producer is alive, so the heartbeat goes on.
        """
        now = time.monotonic()
        if now - self._last_heartbeat < self.settings.heartbeat_interval_s:
            return
        if self.journaling and not self._spilling_for_backlog:
            return
        self._last_heartbeat = now
        try:
            self._redis().execute_command(*touch_command(self.meta_key))
        except REDIS_ERRORS as exc:
            event(log, logging.DEBUG, "producer.heartbeat_failed", simulation=self.simulation_id, error=exc)

    def _send_completion(self) -> None:
        client = self._redis()
        self._register(client, force=True)
        pipe = slot_client(client, self.stream_key).pipeline(transaction=False)
        # No seq: here: the append script alone raises it, with the entries it covers (skip_seen).
        pipe.hset(self.meta_key, mapping={LAYOUT_FIELD: self.settings.layout, "complete": 1,
                                          "completed_at": time.time()})
        confirm_replicas(pipe, self.settings.replica_acks, self.settings.replica_wait_ms)

    def _register(self, client: redis.Redis, force: bool = False) -> None:
        """Add the simulation to the registry: at the first batch, then every ``_REGISTER_EVERY_S``.

        The registry may live on another master than the stream: a batch already in the stream
        still counts as sent if this fails (it is tried again a second later); ``force`` raises.
        """
        now = time.monotonic()
        if not force and now < self._register_due:
            return
        try:
            client.sadd(self.keys.registry, self.simulation_id)
            self._register_due = now + _REGISTER_EVERY_S
        except REDIS_ERRORS as exc:
            if force:
                raise
            self._register_due = now + 1.0
            event(log, logging.WARNING, "producer.register_failed", simulation=self.simulation_id, error=exc)

    def _send_with_retry(self, action: Callable, *args: Any, until_spill: bool = False) -> bool:
        """Run ``action`` until Redis takes it; False after ``spill_after_s`` (or on spill_now).

        A retried pipeline whose reply was lost adds nothing twice: the append skips entries whose
        sequence numbers Redis already holds.
        """
        deadline = None if until_spill else time.monotonic() + self.settings.spill_after_s

        def give_up(_retry_state) -> bool:
            return self._spill_now or (deadline is not None and time.monotonic() >= deadline)

        try:
            for attempt in REDIS_SEND.retrying(REDIS_ERRORS, stop=give_up, before_sleep=self._note_failure):
                with attempt:
                    action(*args)
            self._outage_over(replayed=0)
            return True
        except REDIS_ERRORS as exc:
            self._note_error(exc)
            return False

    def _note_failure(self, retry_state) -> None:
        self._note_error(retry_state.outcome.exception())

    def _note_error(self, exc: BaseException) -> None:
        if is_failover_error(exc) and self._client is not None:
            refresh_slots(self._client)  # a failover: the next try goes to the slot's new owner
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        self.stats.failed_attempts += 1
        if self.stats.last_error is None or self.stats.failed_attempts % 50 == 1:
            event(log, logging.WARNING, "producer.redis_unavailable", simulation=self.simulation_id, error=exc)
        self.stats.last_error = str(exc)

    def _outage_over(self, replayed: int) -> None:
        """Say once that Redis answers again, and how many journaled records went to it: the
        outage's start was a warning, so its end is one too."""
        if self._outage_since is None:
            return
        event(log, logging.WARNING, "producer.outage_ended", simulation=self.simulation_id,
              outage_s=round(time.monotonic() - self._outage_since, 1), journaled_records_replayed=replayed)
        self._outage_since = None

    def _observe_backlog(self, backlog: int) -> None:
        """Act on the group's backlog in records (see the module docstring)."""
        self.stats.backlog = backlog
        if backlog > self.settings.high_water_records:
            if self.settings.backpressure == "spill" and not self.journaling:
                event(log, logging.WARNING, "producer.backpressure", simulation=self.simulation_id, backlog=backlog,
                      action="spill")
                self.journaling = self._spilling_for_backlog = True
            elif self.settings.backpressure == "slow" and not self.throttle:
                event(log, logging.WARNING, "producer.backpressure", simulation=self.simulation_id, backlog=backlog,
                      action="slow")
                self.throttle = True
        elif backlog < self.settings.low_water_records:
            self.throttle = False

    # -- the journal -----------------------------------------------------------------------

    def _to_journal(self, entries: list[EncodedBatch]) -> None:
        records = self._journal.append(entries, first=not self.journaling)
        self.journaling = True
        self.in_journal += records
        self.stats.journaled += records

    def _backlog_now(self) -> int:
        """The group's backlog in records, asked of Redis (an append of nothing)."""
        result = append_entries(self._redis(), self.keys, self.simulation_id, [], group=self.settings.group,
                                register=False)
        self.stats.backlog = result.backlog_records or 0
        return self.stats.backlog

    def _try_leave_journal(self, force: bool = False) -> None:
        """Replay left-behind journals, then ours, if Redis answers (and the backlog allows)."""
        if not self._journal.due(force):
            return
        replayed = 0
        try:
            if self._spilling_for_backlog and self._backlog_now() >= self.settings.low_water_records:
                return
            for result, ours in self._journal.replay(self._redis()):
                self._note_added(result.last_entry_id)
                self.stats.replayed += result.records
                self.stats.sent += result.records if ours else 0
                replayed += result.records
        except REDIS_ERRORS as exc:
            self._note_error(exc)
            return
        with self.progress:
            self.in_journal = 0
        self.journaling = self._spilling_for_backlog = False
        self._outage_over(replayed)
