"""Test-only fault seams: SIGKILL this process, or end the current thread, at a named moment.

Tests pin the dangerous moments deterministically instead of hoping a random kill lands there:

- ``SIMSTREAM_TEST_CRASH=after_read:N``: a worker, after the N-th batch is read, before its commit;
- ``SIMSTREAM_TEST_CRASH=after_commit:N``: a worker, after the N-th commit, before its ack (the one
  window in which a crash leaves rows committed but entries pending: the replay must write nothing new);
- ``SIMSTREAM_TEST_CRASH=journal_mid_replay:N``: a journal replay, after its N-th batch reached
  Redis, before the journal is removed (the next replay sends it all again: copies write nothing new).

``SIMSTREAM_TEST_CRASH_SLOT`` limits the crash to one worker slot, and
``SIMSTREAM_TEST_CRASH_ONCE_FILE`` makes it happen once: the file is written just before the kill
(a first line ``"<slot> <pid>"``, then the ids of the stream entries the process held, one per
line), and a worker that finds it does not crash again (so a restarted worker carries on).
``SIMSTREAM_TEST_CRASH_ARMED_FILE`` arms the crash only once that file exists, so a caller
outside the process chooses when (``simstream bench`` kills a worker holding a batch a
quarter of the way into its end-to-end run this way); passages before count for nothing. Unset,
every call is a dictionary lookup and a return.

``SIMSTREAM_TEST_KILL_THREAD`` ends a thread instead of the process, as an unexpected error would
(:class:`ThreadKilled`, a BaseException that no handler on the way catches):

- ``sender_in_hand:N``: a producer's sender thread, at the N-th batch it has taken from the buffer
  and not yet handed to Redis or the journal; ``sender_in_hand:N+`` at that batch and every later
  one (so each restarted thread dies too);
- ``sender_appended:N``: a producer's sender thread, once the N-th pipeline's entries are in Redis
  and before the sender has noted it (as if the reply were lost): the restarted thread sends the
  same records again, and the append skips them (nothing is added twice).

``reset()`` forgets the counts between tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Iterable

from common.replies import text

CRASH_ENV = "SIMSTREAM_TEST_CRASH"
CRASH_SLOT_ENV = "SIMSTREAM_TEST_CRASH_SLOT"
CRASH_ONCE_FILE_ENV = "SIMSTREAM_TEST_CRASH_ONCE_FILE"
KILL_THREAD_ENV = "SIMSTREAM_TEST_KILL_THREAD"
CRASH_ARMED_FILE_ENV = "SIMSTREAM_TEST_CRASH_ARMED_FILE"

_counts: dict[str, int] = {}


def _armed_point(slot: int) -> tuple[str, int] | None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    only_slot = os.environ.get(CRASH_SLOT_ENV)
    if only_slot is not None and int(only_slot) != slot:
        return None
    once_file = os.environ.get(CRASH_ONCE_FILE_ENV)
    if once_file and Path(once_file).exists():
        return None
    armed_file = os.environ.get(CRASH_ARMED_FILE_ENV)
    if armed_file and not Path(armed_file).exists():
        return None
    point, _, nth = spec.partition(":")
    return point, int(nth or 1)


def checkpoint(point: str, slot: int, held: Callable[[], Iterable[bytes | str]] | None = None) -> None:
    """SIGKILL the current process if a test armed ``point`` and this is its N-th passage.

    ``held``: the ids of the entries the process holds there, written to the once-file (called
    only when it crashes).
    """
    armed = _armed_point(slot)
    if armed is None or armed[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= armed[1]:
        once_file = os.environ.get(CRASH_ONCE_FILE_ENV)
        if once_file:
            ids = [text(i) for i in (held() if held else ())]
            Path(f"{once_file}.tmp").write_text("\n".join([f"{slot} {os.getpid()}", *ids]))
            os.replace(f"{once_file}.tmp", once_file)  # whoever sees the file can read it whole
        os.kill(os.getpid(), signal.SIGKILL)


class ThreadKilled(BaseException):
    """Raised by an armed thread seam: the thread ends as if an unexpected error had escaped it."""


def thread_checkpoint(point: str) -> None:
    """Raise ThreadKilled if a test armed ``point`` (see the module docstring) for this passage."""
    spec = os.environ.get(KILL_THREAD_ENV)
    if not spec:
        return
    armed, _, nth = spec.partition(":")
    if armed != point:
        return
    key = f"thread:{point}"
    _counts[key] = _counts.get(key, 0) + 1
    every_later = nth.endswith("+")
    first = int(nth.rstrip("+") or 1)
    if _counts[key] == first or (every_later and _counts[key] > first):
        raise ThreadKilled(f"test seam {KILL_THREAD_ENV}={spec} ended this thread")


def reset() -> None:
    """Forget how often each point was passed (tests arming seams in one process call this)."""
    _counts.clear()
