"""The sender's journal: where entries wait while Redis cannot take them, and their way back.

A pipeline Redis does not take within ``spill_after_s`` (or, with ``backpressure="spill"``, one
sent while the backlog is past the high-water mark) is written to the producer's journal as its
entries' payloads (:mod:`common.journal`). While a journal exists, newer entries follow it there,
so the stream keeps the order records were logged in. Every ``journal_retry_interval_s`` the
sender replays the journals an earlier producer of the simulation left (if
``replay_earlier_journals``), then its own; once they are in Redis the files are removed and
entries go straight to Redis again. A replay appends with ``skip_seen``: entries a lost reply
left in Redis already are not added twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import redis

from common.codec import EncodedBatch
from common.events import event
from common.journal import (Journal, ReplayResult, count_records, journal_path, journals_for, remove_folder_if_empty,
                            replay_journal)
from common.keys import Keys
from common.settings import ProducerSettings

log = logging.getLogger(__name__)


class SenderJournal:
    """One producer's journal, and the journals earlier producers of its simulation left.

    ``journal``: this producer's own file. ``earlier``: journals of earlier producers still to
    replay before any record of this one reaches Redis (empty if ``replay_earlier_journals`` is
    off: they are then only named in a warning).
    """

    def __init__(self, simulation_id: str, producer_id: str, settings: ProducerSettings, keys: Keys) -> None:
        self.simulation_id = simulation_id
        self.settings = settings
        self.keys = keys
        self.journal = Journal(journal_path(settings.journal_dir, simulation_id, producer_id), settings.journal_fsync)
        self.earlier: list[Path] = self._earlier_journals()
        self._next_try = 0.0

    def _earlier_journals(self) -> list[Path]:
        """Journals an earlier producer of this simulation left, to replay before our records;
        each is named in a warning, and none is replayed if ``replay_earlier_journals`` is off."""
        found = journals_for(self.settings.journal_dir, self.simulation_id)
        replay = self.settings.replay_earlier_journals
        for path in found:
            event(log, logging.WARNING, "producer.earlier_journal_found", simulation=self.simulation_id, journal=path,
                  records=count_records(path), age_s=round(time.time() - path.stat().st_mtime),
                  action="replay into this run" if replay else f"left on disk: simstream replay-journal {path}")
        return found if replay else []

    def append(self, entries: list[EncodedBatch], first: bool) -> int:
        """Write ``entries`` (their payloads, one frame each); returns how many records they hold.
        ``first``: the sender was not journaling until now (a warning says it starts). Raises
        OSError if the journal cannot be written."""
        if first:
            event(log, logging.WARNING, "producer.journaling", simulation=self.simulation_id, journal=self.journal.path)
        self.journal.append([entry.payload for entry in entries])
        return sum(entry.records for entry in entries)

    def due(self, force: bool = False) -> bool:
        """Whether to try a replay now (every ``journal_retry_interval_s``, or at once if ``force``)."""
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        self._next_try = now + self.settings.journal_retry_interval_s
        return True

    def replay(self, client: redis.Redis) -> Iterator[tuple[ReplayResult, bool]]:
        """Replay the earlier journals, then ours, in order: yields (result, is ours) after each.

        Raises redis.RedisError where Redis fails; what was not replayed stays on disk for the
        next try. Once all are replayed, the journal folder is removed if that left it empty.
        """
        replicas = {"replica_acks": self.settings.replica_acks, "replica_wait_ms": self.settings.replica_wait_ms}
        while self.earlier:
            # An earlier producer's completion marker is not ours to apply: this one still runs.
            result = replay_journal(client, self.keys, self.earlier[0], self.settings.batch_size,
                                    mark_complete=False, **replicas)
            self.earlier.pop(0)
            self._replayed(result)
            yield result, False
        if self.journal.exists():
            result = replay_journal(client, self.keys, self.journal.path, self.settings.batch_size, **replicas)
            self._replayed(result)
            yield result, True
        remove_folder_if_empty(self.settings.journal_dir)  # leave no empty .simstream-journal/ behind

    def _replayed(self, result: ReplayResult) -> None:
        event(log, logging.INFO, "producer.journal_replayed", simulation=self.simulation_id, journal=result.path,
              records=result.records)
