"""Backoff shared by producer and consumer: bounded, exponential, jittered."""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential, wait_random
from tenacity.wait import wait_base


def jittered_backoff(first_s: float = 0.05, max_s: float = 2.0) -> wait_base:
    """Waits of about first_s, 2*first_s, 4*first_s ... capped at max_s, plus up to first_s of jitter
    (so many clients retrying at once do not retry in lockstep)."""
    return wait_exponential(multiplier=first_s, max=max_s) + wait_random(0, first_s)


def backoff_s(attempt: int, first_s: float = 0.05, max_s: float = 2.0) -> float:
    """The wait before retry number ``attempt`` (1 for the first) under :func:`jittered_backoff`.

    For retries that are not a loop around one call: a sender thread restarted after it died, a
    stream set aside until its time comes while the others are served.
    """
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return jittered_backoff(first_s, max_s)(state)
