"""The producer's background thread: encodes buffered records and XADDs them in pipelined batches.

Only this thread talks to Redis, so the simulation thread never waits on the network. A batch
Redis does not take is retried with bounded jittered backoff for ``spill_after_s``, then written
to the on-disk journal. While a journal exists, newer batches follow it there (so the stream keeps
the order records were logged in), and every ``journal_retry_interval_s`` the journal is replayed;
once it is in Redis the file is removed and batches go straight to Redis again.

Backpressure: every batch's pipeline also reads XLEN. The stream holds only unpersisted entries
plus what awaits trimming, so its length is the backlog. Past ``high_water_records`` the sender
either spills to the journal (``backpressure="spill"``) or sets ``throttle`` so ``log()`` slows
the simulation (``"slow"``) until the backlog falls below ``low_water_records``. Nothing is trimmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis
from tenacity import Retrying, retry_if_exception_type

from common.codec import ENTRY_FIELD, make_encoder
from common.connections import redis_client
from common.heartbeat import NOW_MS_LUA, HEARTBEAT_FIELD, touch_command
from common.journal import (Journal, count_records, journal_path, journals_for, remove_folder_if_empty,
                            replay_journal)
from common.keys import Keys
from common.layouts import META_FIELD as LAYOUT_FIELD
from common.retry import jittered_backoff
from common.settings import ProducerSettings

log = logging.getLogger(__name__)

# One EVAL per batch XADDs every payload on the server: the client packs and parses one command
# instead of one per record, which halves the sender's CPU per record (see README, Performance).
# Entries and their order are the same as with one XADD each; a retried batch repeats entries
# with the same record keys, which the sink ignores. Never MAXLEN. The same call refreshes the
# simulation's heartbeat (KEYS[2], the meta hash: same hash slot) by the server's clock, and
# returns the id of the last entry added, which ``wait_persisted`` waits for.
XADD_BATCH_SCRIPT = ("local id for i = 2, #ARGV do id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i]) end "
                     + NOW_MS_LUA + f"redis.call('HSET', KEYS[2], '{HEARTBEAT_FIELD}', now) return id")

BufferedRecord = tuple[str, int, dict[str, Any]]
"""(kind, seq, fields) as ``log()`` leaves it for the sender."""

PipelineExtras = Callable[[list[BufferedRecord]], list[tuple[Any, ...]]]
"""Given a batch, Redis commands to send in the same pipeline as its XADDs (computed once per
batch, outside the retry loop); see ``BatchSender.pipeline_extras``."""


@dataclass
class SenderStats:
    """What the sender has done so far; read by ``StreamProducer.stats()``."""

    sent_by_kind: Counter = field(default_factory=Counter)
    sent: int = 0
    journaled: int = 0
    replayed: int = 0
    batches: int = 0
    failed_attempts: int = 0
    backlog: int = 0
    last_error: str | None = None


class BatchSender(threading.Thread):
    """Drains ``buffer`` into the simulation's stream (or its journal) until stopped and empty.

    ``handed_off_seq``: every record up to this sequence number is in Redis or in the journal.
    ``in_journal``: how many of them are in the journal, not yet in Redis.
    ``last_entry_id``: the id of the newest entry this sender added to the stream (a batch's last,
    or the last of a journal it replayed); set before ``handed_off_seq`` / ``in_journal`` move.
    ``first_sent_at``: when (monotonic) Redis first took a batch of this sender, else None.
    """

    def __init__(self, simulation_id: str, producer_id: str, buffer: deque[BufferedRecord],
                 settings: ProducerSettings, keys: Keys) -> None:
        super().__init__(name=f"simstream-sender-{simulation_id}", daemon=True)
        self.simulation_id = simulation_id
        self.producer_id = producer_id
        self.buffer = buffer
        self.settings = settings
        self.keys = keys
        self.stream_key = keys.stream(simulation_id)
        self.meta_key = keys.meta(simulation_id)
        self.journal = Journal(journal_path(settings.journal_dir, simulation_id, producer_id), settings.journal_fsync)
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
        self._left_journals: list[Path] = self._earlier_journals()
        self.journaling = bool(self._left_journals)  # older records first: ours queue behind them
        self._outage_since: float | None = None  # when Redis last stopped answering, while it does not
        self._spilling_for_backlog = False
        self._next_journal_try = 0.0
        self._stopping = False
        self._mark_complete = False
        self._spill_now = False
        self._encode = make_encoder()
        self._client: redis.Redis | None = None

    def _earlier_journals(self) -> list[Path]:
        """Journals an earlier producer of this simulation left, to replay before our records;
        each is named in a warning, and none is replayed if ``replay_earlier_journals`` is off."""
        found = journals_for(self.settings.journal_dir, self.simulation_id)
        replay = self.settings.replay_earlier_journals
        for path in found:
            log.warning("producer.earlier_journal_found simulation=%s journal=%s records=%d age_s=%.0f action=%s",
                        self.simulation_id, path, count_records(path), time.time() - path.stat().st_mtime,
                        "replay into this run" if replay else f"left on disk: simstream replay-journal {path}")
        return found if replay else []

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

    def run(self) -> None:
        try:
            while True:
                self.wake.wait(self.settings.flush_interval_s)
                self.wake.clear()
                if self.journaling:
                    self._try_leave_journal()
                self._send_buffered()
                self._heartbeat_if_idle()
                if self._stopping and not self.buffer:
                    self._finish()
                    return
        except Exception:
            log.exception("producer.sender_failed simulation=%s", self.simulation_id)
            raise
        finally:
            with self.progress:
                self.progress.notify_all()
            if self._client is not None:
                self._client.close()

    def _send_buffered(self) -> None:
        popleft = self.buffer.popleft
        while self.buffer:
            # Only this thread pops, so len() is a lower bound while log() keeps appending.
            with self.hand_off:
                batch = [popleft() for _ in range(min(len(self.buffer), self.settings.batch_size))]
            if not batch:  # the producer recalled what was left
                break
            payloads = [self._encode(kind, self.producer_id, seq, fields) for kind, seq, fields in batch]
            extras = () if self.pipeline_extras is None or self.journaling else self.pipeline_extras(batch)
            if self.journaling or not self._send_with_retry(self._send_batch, payloads, batch[-1][1], extras):
                self._to_journal(payloads)
            else:
                self.stats.sent += len(batch)
            self.stats.batches += 1
            self.stats.sent_by_kind.update(kind for kind, _, _ in batch)
            with self.progress:
                self.handed_off_seq = batch[-1][1]
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
            log.warning("producer.closed_with_journal simulation=%s journal=%s records=%d",
                        self.simulation_id, self.journal.path, self.in_journal)

    # -- Redis -----------------------------------------------------------------------------

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
        return self._client

    def _send_batch(self, payloads: list[bytes], last_seq: int, extras: Any = ()) -> None:
        pipe = self._redis().pipeline(transaction=False)
        pipe.execute_command("EVAL", XADD_BATCH_SCRIPT, 2, self.stream_key, self.meta_key, ENTRY_FIELD, *payloads)
        for command in extras:
            pipe.execute_command(*command)
        pipe.sadd(self.keys.registry, self.simulation_id)
        # The layout first: consumers take sequence numbers without a layout for an older producer.
        pipe.hset(self.meta_key, mapping={LAYOUT_FIELD: self.settings.layout, f"seq:{self.producer_id}": last_seq})
        pipe.xlen(self.stream_key)
        replies = pipe.execute()
        self._note_added(replies[0])
        self._observe_backlog(replies[-1])

    def _note_added(self, entry_id: bytes | str | None) -> None:
        """Remember the newest entry this sender added (and that the heartbeat was just refreshed)."""
        if not entry_id:
            return
        self.last_entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
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
        except redis.RedisError as exc:
            log.debug("producer.heartbeat_failed simulation=%s error=%s", self.simulation_id, exc)

    def _send_completion(self) -> None:
        pipe = self._redis().pipeline(transaction=False)
        pipe.sadd(self.keys.registry, self.simulation_id)
        pipe.hset(self.meta_key, mapping={LAYOUT_FIELD: self.settings.layout, "complete": 1,
                                          "completed_at": time.time(), f"seq:{self.producer_id}": self.handed_off_seq})
        pipe.execute()

    def _send_with_retry(self, action: Callable, *args: Any, until_spill: bool = False) -> bool:
        """Run ``action`` until Redis takes it; False after ``spill_after_s`` (or on spill_now).

        A retried pipeline may repeat XADDs whose replies were lost; the copies carry the same
        record key, so the sink ignores them.
        """
        deadline = None if until_spill else time.monotonic() + self.settings.spill_after_s

        def give_up(_retry_state) -> bool:
            return self._spill_now or (deadline is not None and time.monotonic() >= deadline)

        try:
            for attempt in Retrying(retry=retry_if_exception_type(redis.RedisError), wait=jittered_backoff(),
                                    stop=give_up, reraise=True, before_sleep=self._note_failure):
                with attempt:
                    action(*args)
            self._outage_over(replayed=0)
            return True
        except redis.RedisError as exc:
            self._note_error(exc)
            return False

    def _note_failure(self, retry_state) -> None:
        self._note_error(retry_state.outcome.exception())

    def _note_error(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        self.stats.failed_attempts += 1
        if self.stats.last_error is None or self.stats.failed_attempts % 50 == 1:
            log.warning("producer.redis_unavailable simulation=%s error=%s", self.simulation_id, exc)
        self.stats.last_error = str(exc)

    def _outage_over(self, replayed: int) -> None:
        """Say once that Redis answers again, and how many journaled records went to it: the
        outage's start was a warning, so its end is one too."""
        if self._outage_since is None:
            return
        log.warning("producer.outage_ended simulation=%s outage_s=%.1f journaled_records_replayed=%d",
                    self.simulation_id, time.monotonic() - self._outage_since, replayed)
        self._outage_since = None

    def _observe_backlog(self, backlog: int) -> None:
        self.stats.backlog = backlog
        if backlog > self.settings.high_water_records:
            if self.settings.backpressure == "spill" and not self.journaling:
                log.warning("producer.backpressure simulation=%s backlog=%d action=spill", self.simulation_id, backlog)
                self.journaling = self._spilling_for_backlog = True
            elif self.settings.backpressure == "slow" and not self.throttle:
                log.warning("producer.backpressure simulation=%s backlog=%d action=slow", self.simulation_id, backlog)
                self.throttle = True
        elif backlog < self.settings.low_water_records:
            self.throttle = False

    # -- the journal -----------------------------------------------------------------------

    def _to_journal(self, payloads: list[bytes]) -> None:
        if not self.journaling:
            log.warning("producer.journaling simulation=%s journal=%s", self.simulation_id, self.journal.path)
        self.journaling = True
        self.journal.append(payloads)
        self.in_journal += len(payloads)
        self.stats.journaled += len(payloads)

    def _try_leave_journal(self, force: bool = False) -> None:
        """Replay left-behind journals, then ours, if Redis answers (and the backlog allows)."""
        now = time.monotonic()
        if not force and now < self._next_journal_try:
            return
        self._next_journal_try = now + self.settings.journal_retry_interval_s
        replayed = 0
        try:
            if self._spilling_for_backlog:
                if self._redis().xlen(self.stream_key) >= self.settings.low_water_records:
                    return
            while self._left_journals:
                # An earlier producer's completion marker is not ours to apply: this one still runs.
                result = replay_journal(self._redis(), self.keys, self._left_journals[0], self.settings.batch_size,
                                        mark_complete=False)
                self._note_added(result.last_entry_id)
                self._left_journals.pop(0)
                self.stats.replayed += result.records
                replayed += result.records
                log.info("producer.journal_replayed simulation=%s journal=%s records=%d",
                         self.simulation_id, result.path, result.records)
            if self.journal.exists():
                result = replay_journal(self._redis(), self.keys, self.journal.path, self.settings.batch_size)
                self._note_added(result.last_entry_id)
                self.stats.replayed += result.records
                self.stats.sent += result.records
                replayed += result.records
                log.info("producer.journal_replayed simulation=%s journal=%s records=%d",
                         self.simulation_id, result.path, result.records)
        except redis.RedisError as exc:
            self._note_error(exc)
            return
        remove_folder_if_empty(self.settings.journal_dir)  # leave no empty .simstream-journal/ behind
        with self.progress:
            self.in_journal = 0
        self.journaling = self._spilling_for_backlog = False
        self._outage_over(replayed)
