"""Backoff shared by producer and consumer: bounded, exponential, jittered."""

from __future__ import annotations

from tenacity import wait_exponential, wait_random
from tenacity.wait import wait_base


def jittered_backoff(first_s: float = 0.05, max_s: float = 2.0) -> wait_base:
    """Waits of about first_s, 2*first_s, 4*first_s ... capped at max_s, plus up to first_s of jitter
    (so many clients retrying at once do not retry in lockstep)."""
    return wait_exponential(multiplier=first_s, max=max_s) + wait_random(0, first_s)
