"""The health verdict, from status snapshots built by hand (the e2e tests drive real runs)."""

from __future__ import annotations

import pytest

from consumer.health import HealthThresholds, dead_letter_counts, verdict
from consumer.inspect import StreamStatus

THRESHOLDS = HealthThresholds(lag_threshold=100, stuck_after_ms=1_000, claim_idle_ms=5_000)


def snapshot(lag=0, pending=0, idle_ms=(10,), oldest_pending_idle_ms=None) -> StreamStatus:
    return StreamStatus("sim", "ns:{sim}:stream", exists=True, length=lag + pending, group_exists=True,
                        lag=lag, pending=pending, oldest_pending_idle_ms=oldest_pending_idle_ms,
                        consumers=[{"name": f"c{i}", "pending": 0, "idle_ms": idle} for i, idle in enumerate(idle_ms)])


@pytest.mark.parametrize("status, letters, expected", [
    (snapshot(), 0, "ok"),
    (snapshot(lag=100), 0, "ok"),                                  # at the threshold: not yet lagging
    (snapshot(lag=101), 0, "lagging"),
    (snapshot(lag=50, pending=51), None, "lagging"),               # backlog = lag + pending
    (snapshot(lag=1, idle_ms=(1_001,)), 0, "stuck"),               # nobody seen within stuck_after_ms
    (snapshot(lag=1, idle_ms=()), 0, "stuck"),                     # no consumer at all
    (snapshot(lag=0, idle_ms=(99_999,)), 0, "ok"),                 # idle consumers, nothing to do
    (snapshot(pending=1, idle_ms=(10, 99_999), oldest_pending_idle_ms=6_001), 0, "stuck"),  # claimable, unclaimed
    (snapshot(pending=1, idle_ms=(10, 99_999), oldest_pending_idle_ms=6_000), 0, "ok"),
    (snapshot(), 2, "dead-letters"),
    (snapshot(lag=500), 2, "dead-letters"),                        # dead letters outrank lagging
    (snapshot(lag=1, idle_ms=()), 2, "stuck"),                     # stuck outranks dead letters
    (snapshot(), None, "ok"),                                      # unknown dead letters: no verdict on them
])
def test_verdicts_follow_their_definitions(status, letters, expected):
    assert verdict(status, letters, THRESHOLDS) == expected


def test_a_stream_without_its_group_counts_its_whole_length_as_backlog():
    status = StreamStatus("sim", "s", exists=True, length=7, group_exists=False)
    assert status.backlog == 7 and verdict(status, 0, THRESHOLDS) == "stuck"


def test_dead_letters_are_unknown_without_a_database_and_it_is_never_created(tmp_path):
    assert dead_letter_counts(None) is None
    assert dead_letter_counts(f"sqlite:///{tmp_path / 'absent.db'}") is None
    assert not (tmp_path / "absent.db").exists()
    assert dead_letter_counts("postgresql+psycopg://nobody@127.0.0.1:1/none") is None
