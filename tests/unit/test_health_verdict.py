"""The health verdict, from status snapshots built by hand (the e2e tests drive real runs)."""

from __future__ import annotations

import pytest

from consumer.failures import Failure
from consumer.ops.health import HealthThresholds, current_failure, dead_letter_counts, verdict
from consumer.stream_status import StreamStatus

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


NOW = 1_000_000.0
FAILING = HealthThresholds(lag_threshold=100, stuck_after_ms=1_000, claim_idle_ms=5_000, failing_after_ms=500)


def report(what: str, since_s_ago: float, seen_s_ago: float = 0.1, consumer: str = "c0") -> Failure:
    return Failure(what, NOW - since_s_ago, NOW - seen_s_ago, f"{what} refused", consumer)


@pytest.mark.parametrize("reports, expected", [
    ([], None),
    ([report("sink", 0.4)], None),                                 # retrying, but not for long yet
    ([report("sink", 0.6)], "sink"),
    ([report("sink", 5.0, seen_s_ago=1.1)], None),                 # stale: its consumer stopped reporting
    ([report("sink", 9.0), report("redis", 0.6, consumer="c1")], "redis"),  # Redis before the sink
])
def test_a_failure_counts_once_it_lasted_past_the_threshold_and_is_still_confirmed(reports, expected):
    found = current_failure(reports, FAILING, now=NOW)
    assert (found.what if found else None) == expected


@pytest.mark.parametrize("status, letters, failure, expected", [
    (snapshot(lag=1, idle_ms=()), 2, report("sink", 1), "sink-failing"),       # outranks stuck and dead letters
    (snapshot(lag=1, idle_ms=()), 0, report("redis", 1), "redis-failing"),
    (StreamStatus("sim", "s", redis_error="ConnectionError: refused"), 0, None, "redis-failing"),  # status's own read
    (StreamStatus("sim", "s", exists=True, group_exists=True, sink_problem="table of another shape"), 0,
     report("sink", 1), "sink-unusable"),
    (snapshot(), 0, None, "ok"),
])
def test_failing_verdicts_rank_above_stuck_which_they_explain(status, letters, failure, expected):
    assert verdict(status, letters, FAILING, failure) == expected


def test_with_record_counts_the_backlog_is_in_records_and_stuck_is_judged_on_entries():
    # a stream of record batches: 5,000 records added, 4,800 in acknowledged entries, 1 entry not yet delivered
    batches = StreamStatus("sim", "s", exists=True, length=3, group_exists=True, lag=1, records_added=5_000,
                           persisted=4_800, consumers=[{"name": "c0", "pending": 0, "idle_ms": 10}])
    assert (batches.backlog, batches.backlog_entries) == (200, 1)
    assert verdict(batches, 0, THRESHOLDS) == "lagging"  # 200 records > 100, though only one entry
    # every entry acknowledged, yet records counted short (an entry trimmed before it was persisted
    # counts none), and no consumer left: nothing waits for one, so it is not stuck
    settled = StreamStatus("sim", "s", exists=True, length=3, group_exists=True, records_added=5_000,
                           persisted=4_950)
    assert settled.persisted_all and settled.backlog == 50 and verdict(settled, 0, THRESHOLDS) == "ok"


def test_a_stream_without_record_counts_counts_its_entries_as_records():
    older = StreamStatus("sim", "s", exists=True, length=7, group_exists=True, lag=4, pending=3)
    assert older.records_added is None and older.backlog == older.backlog_entries == 7
