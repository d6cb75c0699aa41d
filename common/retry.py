"""Every retry policy simstream has, named, on tenacity: bounded, exponential, jittered.

=====================  ===========  =========  =================================================
policy                 first wait   longest    gives up
=====================  ===========  =========  =================================================
``REDIS_SEND``         0.05 s       2 s        the sender's ``spill_after_s`` (then it journals)
``DATABASE_COMMIT``    0.05 s       2 s        after 30 s (the worker backs off and replays)
``SENDER_RESTART``     0.05 s       2 s        after 3 deaths in a row (then it journals)
``WORKER_RECOVERY``    0.1 s        5 s        never: a worker waits for Redis as long as it runs
``STREAM_SET_ASIDE``   0.1 s        5 s        never: one cluster master's stream, retried alone
``SUPERVISOR_RESTART`` 0.1 s        10 s       never: a crash loop slows down, a stable run resets it
``PERSISTED_POLL``     0.01 s       0.25 s     the caller's ``wait_persisted`` timeout
=====================  ===========  =========  =================================================

Each wait is about ``first * 2 ** (attempt - 1)``, capped, plus up to ``first`` of random jitter,
so many clients retrying at once do not retry in lockstep. A loop around one call uses
:meth:`RetryPolicy.retrying`; a retry that is not such a loop (a thread restarted, a stream set
aside while the others are served, a worker process restarted) asks :meth:`RetryPolicy.pause_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tenacity import (RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, stop_never,
                      wait_exponential, wait_random)
from tenacity.wait import wait_base


@dataclass(frozen=True)
class RetryPolicy:
    """A named backoff: waits from ``first_s`` doubling to ``max_s``, jittered; ``give_up_after_s``
    bounds a :meth:`retrying` loop (None: the caller's ``stop`` decides)."""

    name: str
    first_s: float
    max_s: float
    give_up_after_s: float | None = None

    def wait(self) -> wait_base:
        """The tenacity wait of this policy."""
        return wait_exponential(multiplier=self.first_s, max=self.max_s) + wait_random(0, self.first_s)

    def pause_s(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1 for the first)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        return self.wait()(state)

    def retrying(self, on: type[BaseException] | tuple[type[BaseException], ...], *,
                 stop: Callable[[RetryCallState], bool] | None = None,
                 before_sleep: Callable[[RetryCallState], Any] | None = None) -> Retrying:
        """A tenacity loop retrying ``on`` (and nothing else) under this policy; the last error is
        re-raised when it gives up."""
        if stop is None:
            stop = stop_after_delay(self.give_up_after_s) if self.give_up_after_s is not None else stop_never
        return Retrying(retry=retry_if_exception_type(on), wait=self.wait(), stop=stop, reraise=True,
                        before_sleep=before_sleep)


REDIS_SEND = RetryPolicy("redis-send", first_s=0.05, max_s=2.0)
DATABASE_COMMIT = RetryPolicy("database-commit", first_s=0.05, max_s=2.0, give_up_after_s=30.0)
SENDER_RESTART = RetryPolicy("sender-restart", first_s=0.05, max_s=2.0)
WORKER_RECOVERY = RetryPolicy("worker-recovery", first_s=0.1, max_s=5.0)
STREAM_SET_ASIDE = RetryPolicy("stream-set-aside", first_s=0.1, max_s=5.0)
SUPERVISOR_RESTART = RetryPolicy("supervisor-restart", first_s=0.1, max_s=10.0)
PERSISTED_POLL = RetryPolicy("persisted-poll", first_s=0.01, max_s=0.25)
"""Not a retry of a failure: how often ``wait_persisted`` asks whether the consumers are done."""

