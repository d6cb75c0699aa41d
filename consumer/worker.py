"""A consumer process: read a batch, commit it to SQL, then acknowledge it. Nothing else acks.

The loop reads as its steps: discover streams, replay own pending entries, reclaim stale ones
from dead consumers, read new entries, persist, ack. The only unsafe window is between commit and
ack; a crash there replays the batch, and the idempotent inserts write nothing new.
A stream entry is a record batch (``batch_size`` entries per read, one transaction): its ack (one
script) also adds the records it settled to the group's count in the meta hash, exactly once, which
``status``, progress and the producers' backpressure read; the worker's own counts are records.
SIGTERM/SIGINT set a flag: the batch in hand is committed and acknowledged, then the worker exits
0. A second signal exits at once (the entries in hand stay pending and are replayed later).

Failures: a database that does not take a batch is retried (``DATABASE_COMMIT`` in
:mod:`common.retry`: 30 s, what ``_DB_RETRY_S`` was), then the worker backs off and replays
(``WORKER_RECOVERY``). A single Redis server that fails stops every step, so the worker backs off
as a whole. On a Redis Cluster a failure of one stream's master (refused, reset, MOVED,
CLUSTERDOWN, timed out) sets only that stream aside: it is retried after a jittered backoff
against the owner a refreshed slot map names (its own pending entries first), while the streams on
healthy masters keep flowing. What the worker is retrying is published for ``status``
(:mod:`consumer.failures`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import redis
from redis.cluster import RedisCluster

from common import faults
from common.connections import is_cluster, redis_client
from common.events import event
from common.errors import (DatabaseUnavailable, ExitCode, GroupMissing, RedisUnavailable, SimstreamError,
                           TransientError)
from common.failover import FAILOVER_ERRORS, REDIS_ERRORS, is_failover_error, refresh_slots
from common.keys import Keys
from common.layouts import META_FIELD as LAYOUT_FIELD, STANDALONE
from common.replies import text_dict
from common.schema_setup import SchemaUnusable
from common.retry import DATABASE_COMMIT, STREAM_SET_ASIDE, WORKER_RECOVERY
from common.settings import ConsumerSettings
from consumer.failures import REDIS, SINK, FailureTracker
from consumer.group_cleanup import dead_consumer_idle_ms, remove_dead_consumers
from consumer.stream_status import simulation_ids, stream_status
from consumer.metrics import WorkerMetrics
from consumer.retention import drop_if_recreated, remove_finished, trim_persisted
from consumer.sink import DeadLetter
from consumer.sink_pool import SinkPool
from consumer.stream_reader import Entry, StreamReader

log = logging.getLogger(__name__)

_UNUSABLE_RETRY_S = 10.0
SINK_PROBLEM_FIELD = "sink_problem"
"""Meta hash field where a worker says why a simulation's database cannot take its rows."""


def consumer_name(slot: int) -> str:
    """Stable name for a worker slot on this host: a restarted worker finds its own pending."""
    return f"{socket.gethostname()}-{slot}"


@dataclass
class _StreamState:
    stream: str
    simulation_id: str
    replay_after: bytes | None = b"0"  # not None: own pending entries still to replay from here
    claim_cursor: bytes = b"0-0"
    gone_ids: list[bytes] = field(default_factory=list)  # deleted entries not yet dead-lettered
    layout: str | None = None  # announced by the producer in the meta hash (common.layouts)
    blocked_until: float = 0.0  # its database cannot take its rows: not read again before this
    failures: int = 0  # Redis failures in a row (a cluster master down): set aside until retry_at
    retry_at: float = 0.0

    def ready(self, now: float) -> bool:
        """True unless the simulation's database was found unusable less than an interval ago, or
        its Redis master failed and its retry time has not come."""
        return now >= self.blocked_until and now >= self.retry_at


@dataclass
class WorkerStats:
    """Counters for the shutdown summary line: records persisted and dead-lettered, entries
    claimed, retries, batches."""

    persisted: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    retried: int = 0
    batches: int = 0


class Worker:
    """One consumer of the group; see the module docstring for the guarantees."""

    def __init__(self, settings: ConsumerSettings, slot: int = 0, name: str | None = None,
                 parent_pid: int | None = None) -> None:
        self.settings = settings
        self.slot = slot
        self.name = name or consumer_name(slot)
        self.keys = Keys(settings.namespace)
        self.stats = WorkerStats()
        self.metrics = WorkerMetrics(self.name)
        self._parent_pid = parent_pid
        self._stop = threading.Event()
        self._streams: dict[str, _StreamState] = {}
        self._next_discovery = self._next_claim = self._next_drain_check = self._next_retention = 0.0
        self._transient_failures = 0
        self._run_ids: frozenset[str] | None = None
        self.client: redis.Redis | None = None
        self.reader: StreamReader | None = None
        self.sinks: SinkPool | None = None
        self.failures: FailureTracker | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Finish the batch in hand, then exit the loop."""
        if not self._stop.is_set():
            event(log, logging.INFO, "worker.stopping", consumer=self.name, reason=reason)
        self._stop.set()

    def run(self) -> int:
        """Run until stopped (or drained); returns the process exit code."""
        self._install_signal_handlers()
        try:
            self._connect()
            event(log, logging.INFO, "worker.started", consumer=self.name, group=self.settings.group, pid=os.getpid())
            while not self._stop.is_set():
                self._run_step()
            return ExitCode.OK
        except SimstreamError as exc:
            event(log, logging.ERROR, "worker.failed", consumer=self.name, error=exc)
            return exc.exit_code
        finally:
            self._teardown()

    def _run_step(self) -> None:
        try:
            self._tick()
            self._transient_failures = 0
            if not self.reader.cluster:
                self.failures.clear_all(REDIS)  # the one server answered a whole tick
            self.failures.publish()
        except TransientError as exc:
            self._recover_from(exc)
        except FAILOVER_ERRORS as exc:  # a cluster error no step translated: the same back-off
            self._recover_from(RedisUnavailable(f"{type(exc).__name__}: {exc}"))
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            self.request_stop("supervisor gone")

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_discovery:
            self.discover_streams()
        self.replay_own_pending()
        if now >= self._next_claim:
            self.reclaim_stale()
        for stream, entries in self.read_batch().items():
            state = self._streams[stream]
            with self._stream_guard(state):
                self.persist_and_ack(state, entries)
        if now >= self._next_retention:
            self.apply_retention()
        if self.settings.drain and now >= self._next_drain_check:
            self._next_drain_check = now + 0.25
            if self.drained():
                self.apply_retention()  # leave nothing behind in Redis for what is persisted
                self.request_stop("drained")

    def _connect(self) -> None:
        self.client = redis_client(self.settings.redis_url)
        try:
            self._run_ids = _run_ids(self.client)  # tells a server restart from a peer's removal
        except redis.RedisError as exc:
            raise TransientError(f"asking Redis who it is: {exc}") from exc
        self.reader = StreamReader(self.client, self.settings.group, self.name)
        self.failures = FailureTracker(self.client, self.keys, self.name, self.metrics)
        self.failures.publish(force=True)  # a restarted worker withdraws what it reported before
        self.sinks = SinkPool(self.settings.db_url)

    def _teardown(self) -> None:
        if self.sinks is not None:
            self.sinks.close()
        if self.client is not None:
            self.client.close()
        s = self.stats
        event(log, logging.INFO, "worker.summary", consumer=self.name, persisted=s.persisted,
              dead_lettered=s.dead_lettered, claimed=s.claimed, retried=s.retried, batches=s.batches)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, _frame) -> None:
            if self._stop.is_set():
                os._exit(ExitCode.INTERRUPTED)  # second signal: leave now, entries stay pending
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # The supervisor starts workers with these blocked; a signal that came early fires now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def _recover_from(self, exc: TransientError) -> None:
        """After a transient failure: back off, then replay own pending entries on every stream."""
        if isinstance(exc, GroupMissing) and self._forget_finished_streams():
            return  # another consumer removed a finished simulation while we read it: the normal end
        self.stats.retried += 1
        self.metrics.retried()
        self._transient_failures += 1
        pause_s = WORKER_RECOVERY.pause_s(self._transient_failures)
        event(log, logging.WARNING, "worker.transient_error", consumer=self.name, error=exc,
              retry_in_s=round(pause_s, 1))
        for state in self._streams.values():
            state.replay_after = b"0"
            if isinstance(exc, (RedisUnavailable, GroupMissing)):
                self.failures.note(state.simulation_id, REDIS, exc)
        if isinstance(exc, GroupMissing):
            # The server lost the group (restarted empty, or the stream was removed when finished):
            # rediscover from the registry and re-create groups from the start of each stream.
            event(log, logging.WARNING, "worker.group_missing", consumer=self.name, action="rediscover")
            self._next_discovery = 0.0
            self._streams.clear()
        self._stop.wait(pause_s)

    # -- streams set aside while their Redis master fails (cluster) ---------------------------

    def _serving(self) -> list[_StreamState]:
        """The tracked streams, less those set aside (Redis failing, database unusable) for now."""
        now = time.monotonic()
        return [state for state in self._streams.values() if state.ready(now)]

    @contextlib.contextmanager
    def _stream_guard(self, state: _StreamState) -> Iterator[None]:
        """Run one stream's Redis work. On a cluster, its master failing sets aside this stream
        only; on one server the failure is every stream's, and the worker backs off as a whole."""
        try:
            yield
        except (RedisUnavailable, GroupMissing) as exc:
            if not self.reader.cluster:
                raise
            self._set_aside(state, exc)
        else:
            if state.failures:
                event(log, logging.INFO, "worker.stream_back", consumer=self.name, simulation=state.simulation_id,
                      after_failures=state.failures)
                state.failures, state.retry_at = 0, 0.0
                self.failures.clear(state.simulation_id, REDIS)

    def _set_aside(self, state: _StreamState, exc: SimstreamError) -> None:
        state.failures += 1
        pause_s = STREAM_SET_ASIDE.pause_s(state.failures)
        state.retry_at = time.monotonic() + pause_s
        state.replay_after = b"0"  # an ack may have been lost: its own pending entries come first
        self.stats.retried += 1
        self.metrics.retried()
        self.failures.note(state.simulation_id, REDIS, exc)
        refresh_slots(self.client)
        event(log, logging.WARNING, "worker.stream_set_aside", consumer=self.name, simulation=state.simulation_id,
              error=exc, retry_in_s=round(pause_s, 1))
        if isinstance(exc, GroupMissing):  # the group was lost with its master: set it up again
            self._streams.pop(state.stream, None)
            self._next_discovery = 0.0

    def _read_failed(self, streams: list[str], exc: Exception) -> None:
        for stream in streams:
            state = self._streams.get(stream)
            if state is not None:
                self._set_aside(state, exc)

    def _forget_finished_streams(self) -> bool:
        """Stop tracking streams whose simulations left the registry (retention removes a
        simulation from it before deleting its stream, once it is complete and persisted); True
        if there were any. A read that just failed on such a stream is the normal end of a drain,
        not an error: retried later, a stream that is still registered fails again if it is broken.
        A server that restarted (another run id) lost them instead: False, the caller warns.
        """
        try:
            registered = set(simulation_ids(self.client, self.keys))
            run_ids = _run_ids(self.client)
            if run_ids is None or run_ids != self._run_ids:
                self._run_ids = run_ids  # warned once; a later removal by a peer is normal again
                return False
        except redis.RedisError:
            return False
        finished = [state for state in self._streams.values() if state.simulation_id not in registered]
        for state in finished:
            event(log, logging.INFO, "worker.stream_finished", consumer=self.name, simulation=state.simulation_id)
            del self._streams[state.stream]
            self.sinks.release(state.simulation_id)
        return bool(finished)

    # -- the steps -------------------------------------------------------------------------

    def discover_streams(self) -> None:
        """Track every registered simulation's stream; ensure the group exists on new ones."""
        self._next_discovery = time.monotonic() + self.settings.discover_interval_ms / 1000
        try:
            registered = simulation_ids(self.client, self.keys)
        except REDIS_ERRORS as exc:
            if self.reader.cluster:  # the registry's master is down: the known streams go on
                event(log, logging.WARNING, "worker.registry_unavailable", consumer=self.name, error=exc)
                return
            raise RedisUnavailable(f"reading the simulation registry: {exc}") from exc
        for simulation_id in registered:
            stream = self.keys.stream(simulation_id)
            if stream not in self._streams:
                try:
                    self.reader.ensure_group(stream)
                    if drop_if_recreated(self.client, self.keys, simulation_id):
                        continue  # removed by another consumer while we looked: nothing to do
                except REDIS_ERRORS + (RedisUnavailable,) as exc:
                    if self.reader.cluster:  # its master is down: set it up at a later discovery
                        event(log, logging.WARNING, "worker.stream_setup_failed", consumer=self.name,
                              simulation=simulation_id, error=exc)
                        continue
                    raise RedisUnavailable(f"setting up {stream}: {exc}") from exc
                self._streams[stream] = _StreamState(stream, simulation_id)
                event(log, logging.INFO, "worker.stream_discovered", consumer=self.name, simulation=simulation_id)
        for stream in [s for s, state in self._streams.items() if state.simulation_id not in registered]:
            del self._streams[stream]
        for simulation_id in set(self.sinks.open_simulations) - set(registered):
            self.sinks.release(simulation_id)  # also those forgotten when a group went missing

    def replay_own_pending(self) -> None:
        """Re-process entries this consumer name was given but never acknowledged (id 0 first)."""
        for state in self._serving():
            with self._stream_guard(state):
                self._replay_stream(state)

    def _replay_stream(self, state: _StreamState) -> None:
        while state.replay_after is not None and not self._stop.is_set():
            entries = self.reader.read_own_pending(state.stream, state.replay_after, self.settings.batch_size)
            if not entries:
                state.replay_after = None
                break
            self.persist_and_ack(state, entries, check_deliveries=True)
            if not state.ready(time.monotonic()):
                break  # its database was found unusable: try again later, from the same entry
            state.replay_after = entries[-1].entry_id

    def reclaim_stale(self) -> None:
        """XAUTOCLAIM entries other consumers have held longer than ``claim_idle_ms``."""
        self._next_claim = time.monotonic() + self.settings.claim_interval_ms / 1000
        for state in self._serving():
            if state.replay_after is not None:
                continue
            with self._stream_guard(state):
                self._claim_stream(state)

    def _claim_stream(self, state: _StreamState) -> None:
        """One XAUTOCLAIM step on ``state``'s stream; persist and ack what it claimed."""
        claim = self.reader.claim_stale(state.stream, self.settings.claim_idle_ms,
                                        state.claim_cursor, self.settings.batch_size)
        state.claim_cursor = b"0-0" if claim.pass_complete else claim.cursor
        if claim.pass_complete:
            self.forget_dead_consumers(state.stream)
        if not claim.pass_complete:
            self._next_claim = 0.0  # more to look at: continue the pass on the next tick
        # Redis 7 drops the ids of deleted entries from the pending list as it reports them:
        # they are kept here until their dead letters are committed, or nothing would remember them.
        state.gone_ids += claim.gone_ids
        gone = [DeadLetter.whole_entry(entry_id, None, "entry was trimmed before it was persisted")
                for entry_id in state.gone_ids]
        if claim.entries or gone:
            self.stats.claimed += len(claim.entries)
            self.metrics.claimed(len(claim.entries))
            event(log, logging.INFO, "worker.claimed", consumer=self.name, stream=state.stream,
                  entries=len(claim.entries), gone=len(gone))
            self.persist_and_ack(state, claim.entries, dead_letters=gone, check_deliveries=True)
            state.gone_ids = []
        if claim.unnamed_gone:
            state.replay_after = b"0"  # Redis 6.2 hid their ids: find them among our pending

    def forget_dead_consumers(self, stream: str) -> None:
        """Remove other consumers' names once they hold nothing and have long been idle."""
        idle_ms = dead_consumer_idle_ms(self.settings.claim_idle_ms, self.settings.block_ms)
        try:
            remove_dead_consumers(self.client, stream, self.settings.group, self.name, idle_ms)
        except redis.ResponseError as exc:
            event(log, logging.DEBUG, "worker.consumer_cleanup_skipped", consumer=self.name, error=exc)  # stream gone
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"removing dead consumers: {exc}") from exc

    def apply_retention(self) -> None:
        """Trim what every group has persisted; remove simulations that are finished."""
        self._next_retention = time.monotonic() + self.settings.trim_interval_ms / 1000
        for state in self._serving():
            with self._stream_guard(state):
                self._retain_stream(state)

    def _retain_stream(self, state: _StreamState) -> None:
        try:
            if remove_finished(self.client, self.keys, state.simulation_id):
                del self._streams[state.stream]
                self.sinks.release(state.simulation_id)
            else:
                trim_persisted(self.client, state.stream)
        except redis.ResponseError as exc:
            if is_failover_error(exc):
                raise RedisUnavailable(f"trimming {state.stream}: {exc}") from exc
            event(log, logging.DEBUG, "worker.retention_skipped", consumer=self.name, error=exc)  # stream just removed
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"trimming {state.stream}: {exc}") from exc

    def read_batch(self) -> dict[str, list[Entry]]:
        """New entries from every tracked stream, waiting up to ``block_ms`` for some."""
        ready = [state.stream for state in self._serving() if state.replay_after is None]
        if not ready:
            self._stop.wait(min(self.settings.block_ms, 200) / 1000)
            return {}
        on_failure = self._read_failed if self.reader.cluster else None
        return self.reader.read_new(ready, self.settings.batch_size, self.settings.block_ms, on_failure)

    def persist_and_ack(self, state: _StreamState, entries: list[Entry],
                        dead_letters: list[DeadLetter] | None = None, check_deliveries: bool = False) -> None:
        """Commit the entries' rows (and dead letters) in one transaction, then XACK them."""
        letters = list(dead_letters or [])
        if check_deliveries and entries:
            entries, overdelivered = self._split_overdelivered(state.stream, entries)
            letters += overdelivered
        faults.checkpoint("after_read", self.slot,
                          lambda: [entry.entry_id for entry in entries] + [letter.entry_id for letter in letters])
        commit_started = time.monotonic()
        try:
            result = self._write(state, entries, letters)
        except SchemaUnusable as exc:
            self._block(state, exc)  # its entries stay pending: replayed once the database is usable
            return
        commit_s = time.monotonic() - commit_started
        faults.checkpoint("after_commit", self.slot)
        # Sent at once, not deferred into the next read's pipeline: measured, the ack is under 1%
        # of a batch (0.6 ms of ~65 ms for 40 entries of 250 records on SQLite), and reading the
        # next batch in a thread while this one commits gained nothing beyond run-to-run noise.
        self.reader.ack(state.stream, self.keys.meta(state.simulation_id), result.records_by_entry)
        self.stats.batches += 1
        self.stats.persisted += result.records_persisted
        self.stats.dead_lettered += result.records_dead_lettered
        self.metrics.batch_committed(result.rows_by_table, result.records_dead_lettered, commit_s)
        if result.dead_letters:
            event(log, logging.WARNING, "worker.dead_lettered", consumer=self.name, stream=state.stream,
                  count=result.dead_letters, records=result.records_dead_lettered)

    def _write(self, state: _StreamState, entries: list[Entry], letters: list[DeadLetter]):
        layout = self._layout_of(state)
        retrying = DATABASE_COMMIT.retrying(
            DatabaseUnavailable, before_sleep=lambda retry_state: self._count_retry(state, retry_state))
        try:
            result = retrying(lambda: self.sinks.write(state.simulation_id, layout, state.stream, entries, letters))
        except DatabaseUnavailable as exc:
            self.failures.note(state.simulation_id, SINK, exc)
            raise
        self.failures.clear(state.simulation_id, SINK)
        if state.blocked_until:
            self._unblock(state)
        return result

    def _layout_of(self, state: _StreamState) -> str:
        """The table layout the simulation's producer announced (read once per stream)."""
        if state.layout is None:
            try:
                meta = self.client.hgetall(self.keys.meta(state.simulation_id))
            except REDIS_ERRORS as exc:
                raise RedisUnavailable(f"reading the layout of {state.simulation_id}: {exc}") from exc
            fields = text_dict(meta)
            if fields.get(LAYOUT_FIELD) is not None:
                state.layout = fields[LAYOUT_FIELD]
            elif any(name.startswith("seq:") for name in fields):
                state.layout = STANDALONE  # a producer older than layouts
            else:
                raise TransientError(f"simulation {state.simulation_id} has not announced its layout yet")
        return state.layout

    def _block(self, state: _StreamState, problem: SchemaUnusable) -> None:
        """The simulation's database cannot take its rows: leave its entries pending, say why
        (in the log once per interval and in its meta hash, where ``status`` reads it), try again later."""
        state.blocked_until = time.monotonic() + _UNUSABLE_RETRY_S
        state.replay_after = b"0"
        event(log, logging.ERROR, "worker.simulation_blocked", consumer=self.name, simulation=state.simulation_id,
              retry_in_s=round(_UNUSABLE_RETRY_S), reason=problem)
        try:
            self.client.hset(self.keys.meta(state.simulation_id), SINK_PROBLEM_FIELD, str(problem))
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"publishing why {state.simulation_id} waits: {exc}") from exc

    def _unblock(self, state: _StreamState) -> None:
        state.blocked_until = 0.0
        event(log, logging.INFO, "worker.simulation_unblocked", consumer=self.name, simulation=state.simulation_id)
        try:
            self.client.hdel(self.keys.meta(state.simulation_id), SINK_PROBLEM_FIELD)
        except REDIS_ERRORS as exc:
            raise RedisUnavailable(f"clearing {state.simulation_id}'s problem: {exc}") from exc

    def _count_retry(self, state: _StreamState, retry_state) -> None:
        error = retry_state.outcome.exception()
        self.stats.retried += 1
        self.metrics.retried()
        self.failures.note(state.simulation_id, SINK, error)
        event(log, logging.WARNING, "worker.db_retry", consumer=self.name, simulation=state.simulation_id, error=error)

    def _split_overdelivered(self, stream: str, entries: list[Entry]) -> tuple[list[Entry], list[DeadLetter]]:
        """Entries Redis has delivered more than ``max_deliveries`` times become dead letters."""
        counts = self.reader.delivery_counts(stream, entries[0].entry_id, entries[-1].entry_id, len(entries))
        keep, letters = [], []
        for entry in entries:
            delivered = counts.get(entry.entry_id, 1)
            if delivered > self.settings.max_deliveries:
                letters.append(DeadLetter.whole_entry(entry.entry_id, entry.payload, f"delivered {delivered} "
                                                      f"times (limit {self.settings.max_deliveries})", delivered))
            else:
                keep.append(Entry(entry.entry_id, entry.payload, delivered))  # a dead letter says how often
        return keep, letters

    def drained(self) -> bool:
        """True when every registered simulation is complete, or abandoned (its producer stopped
        without completing it, ``abandoned_after_s``), and fully persisted."""
        abandoned_after_ms = self.settings.abandoned_after_s * 1000
        try:
            registered = simulation_ids(self.client, self.keys)
            return all(stream_status(self.client, self.keys, self.settings.group, sim, exact_lag=False)
                       .settled(abandoned_after_ms) for sim in registered)
        except REDIS_ERRORS as exc:
            if self.reader.cluster:
                return False  # a master is failing over: not drained yet, and the other streams go on
            raise RedisUnavailable(f"checking whether all simulations are persisted: {exc}") from exc


def _run_ids(client) -> frozenset[str] | None:
    """The run id of the Redis server (of every cluster node): a restarted server has a new one.
    None if the server does not say (INFO refused)."""
    try:
        info = (client.info("server", target_nodes=RedisCluster.ALL_NODES) if is_cluster(client)
                else client.info("server"))
    except redis.ResponseError:
        return None
    if "run_id" in info:
        return frozenset([str(info["run_id"])])
    return frozenset(str(node["run_id"]) for node in info.values() if isinstance(node, dict) and "run_id" in node)


def run_worker(settings: ConsumerSettings, slot: int, parent_pid: int | None = None,
               log_level: str = "INFO", log_json: bool = False, log_queue=None) -> None:
    """Process entry point used by the supervisor; exits with the worker's exit code.

    ``log_queue``: log through the supervisor (it draws a progress bar on the terminal).
    """
    from consumer.logs import configure_logging

    configure_logging(log_level, log_json, queue=log_queue)
    code = Worker(settings, slot, parent_pid=parent_pid).run()
    if log_queue is not None and parent_pid is not None and os.getppid() != parent_pid:
        log_queue.cancel_join_thread()  # nobody reads the lines any more: do not wait to hand them over
    raise SystemExit(int(code))
