"""The producer's background thread: encodes buffered records and XADDs them in pipelined batches.

Only this thread talks to Redis, so the simulation thread never waits on the network. A batch that
fails is retried, in order, with bounded jittered backoff; ``sent_seq`` advances only once Redis
has accepted a batch, so ``flush()`` never reports a record as sent that is not in the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from common.codec import ENTRY_FIELD, make_encoder
from common.retry import jittered_backoff
from common.connections import redis_client
from common.keys import Keys
from common.settings import ProducerSettings

log = logging.getLogger(__name__)

BufferedRecord = tuple[str, int, dict[str, Any]]
"""(kind, seq, fields) as ``log()`` leaves it for the sender."""


@dataclass
class SenderStats:
    """What the sender has done so far; read by ``StreamProducer.stats()``."""

    sent_by_kind: Counter = field(default_factory=Counter)
    sent: int = 0
    batches: int = 0
    failed_attempts: int = 0
    last_error: str | None = None


class BatchSender(threading.Thread):
    """Drains ``buffer`` into the simulation's stream until stopped and empty.

    ``sent_seq`` is the highest sequence number Redis has accepted; because records are sent in
    order, every record up to it is in the stream.
    """

    def __init__(self, simulation_id: str, producer_id: str, buffer: deque[BufferedRecord],
                 settings: ProducerSettings, keys: Keys) -> None:
        super().__init__(name=f"simstream-sender-{simulation_id}", daemon=True)
        self.simulation_id = simulation_id
        self.producer_id = producer_id
        self.buffer = buffer
        self.settings = settings
        self.stream_key = keys.stream(simulation_id)
        self.meta_key = keys.meta(simulation_id)
        self.registry_key = keys.registry
        self.wake = threading.Event()
        self.progress = threading.Condition()
        self.sent_seq = 0
        self.stats = SenderStats()
        self._stopping = False
        self._mark_complete = False
        self.completed = False
        self._encode = make_encoder()
        self._client: redis.Redis | None = None

    def stop(self, mark_complete: bool) -> None:
        """Send what is buffered, optionally mark the simulation complete, then end the thread."""
        self._mark_complete = mark_complete
        self._stopping = True
        self.wake.set()

    def run(self) -> None:
        try:
            while True:
                self.wake.wait(self.settings.flush_interval_s)
                self.wake.clear()
                self._send_buffered()
                if self._stopping and not self.buffer:
                    if self._mark_complete:
                        self._call_with_retry(self._send_completion)
                        self.completed = True
                    return
        finally:
            with self.progress:
                self.progress.notify_all()
            if self._client is not None:
                self._client.close()

    def _send_buffered(self) -> None:
        popleft = self.buffer.popleft
        while self.buffer:
            # Only this thread pops, so len() is a lower bound while log() keeps appending.
            batch = [popleft() for _ in range(min(len(self.buffer), self.settings.batch_size))]
            payloads = [self._encode(kind, self.producer_id, seq, fields) for kind, seq, fields in batch]
            self._call_with_retry(self._send_batch, payloads, batch[-1][1])
            self.stats.sent += len(batch)
            self.stats.batches += 1
            self.stats.sent_by_kind.update(kind for kind, _, _ in batch)
            with self.progress:
                self.sent_seq = batch[-1][1]
                self.progress.notify_all()

    def _client_or_connect(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.settings.redis_url, self.settings.socket_timeout_s)
        return self._client

    def _send_batch(self, payloads: list[bytes], last_seq: int) -> None:
        pipe = self._client_or_connect().pipeline(transaction=False)
        for payload in payloads:
            # execute_command skips redis-py's argument handling in xadd(); no MAXLEN, ever.
            pipe.execute_command("XADD", self.stream_key, "*", ENTRY_FIELD, payload)
        pipe.sadd(self.registry_key, self.simulation_id)
        pipe.hset(self.meta_key, f"seq:{self.producer_id}", last_seq)
        pipe.execute()

    def _send_completion(self) -> None:
        client = self._client_or_connect()
        client.sadd(self.registry_key, self.simulation_id)
        client.hset(self.meta_key, mapping={"complete": 1, "completed_at": time.time(),
                                            f"seq:{self.producer_id}": self.sent_seq})

    def _call_with_retry(self, action, *args) -> None:
        """Run ``action`` until Redis accepts it, backing off between attempts.

        A retried pipeline may repeat XADDs whose replies were lost; the copies carry the same
        record key, so the sink ignores them.
        """
        while True:
            try:
                for attempt in Retrying(retry=retry_if_exception_type(redis.RedisError),
                                        wait=jittered_backoff(),
                                        stop=stop_after_attempt(8), reraise=True,
                                        before_sleep=self._note_failure):
                    with attempt:
                        action(*args)
                return
            except redis.RedisError as exc:
                log.warning("producer.redis_unavailable simulation=%s error=%s", self.simulation_id, exc)

    def _note_failure(self, retry_state) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = str(retry_state.outcome.exception())
