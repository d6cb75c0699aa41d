"""The one stream append (``common.stream_append.append_entries``) and the journal replay built on
it, against a real Redis: exact record counts, sequence numbers and backlog, copies skipped,
``skip_seen=False`` appending again, and a journal half old format, half record batches, replayed
after part of it already reached Redis."""

from __future__ import annotations

import pytest

from common.codec import BatchEncoder, describe, make_encoder
from common.journal import Journal, count_records, journal_path, replay_journal
from common.keys import Keys
from common.layouts import STANDALONE
from common.stream_append import ACKED_FIELD_PREFIX, RECORDS_ADDED_FIELD, append_entries

pytestmark = pytest.mark.timeout(60)

GROUP = "simstream"


def actions(simulation_id: str, producer_id: str, seqs, max_records: int = 10):
    """agent_action records ``seqs`` packed as record batches of ``max_records``."""
    records = [("agent_action", seq, {"step_number": seq, "agent_id": "a", "action_type": "move"}) for seq in seqs]
    return BatchEncoder(simulation_id, producer_id, STANDALONE, max_records=max_records).encode(records)


def entries_of(client, keys: Keys, simulation_id: str) -> list[tuple[str, str, int, int]]:
    """(id, producer, first seq, records) of every entry in the stream, in order."""
    found = []
    for entry_id, fields in client.xrange(keys.stream(simulation_id)):
        batch = describe(fields[b"r"])
        found.append((entry_id.decode(), batch.producer_id, batch.first_seq, batch.records))
    return found


def meta_of(client, keys: Keys, simulation_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.meta(simulation_id)).items()}


def test_a_second_append_of_the_same_batches_adds_nothing_and_the_counts_stay_exact(
        redis_server, namespace, simulation_id):
    # Given: 45 records of producer p1 as five batches, appended once
    client, keys = redis_server.client(), Keys(namespace)
    batches = actions(simulation_id, "p1", range(1, 46))
    first = append_entries(client, keys, simulation_id, batches, layout=STANDALONE, group=GROUP)
    entries = entries_of(client, keys, simulation_id)

    # Then: five entries, 45 records counted, seq:p1 at 45, all of it backlog; the last id is the newest entry's
    assert [(producer, seq, records) for _, producer, seq, records in entries] == \
        [("p1", 1, 10), ("p1", 11, 10), ("p1", 21, 10), ("p1", 31, 10), ("p1", 41, 5)]
    assert (first.records_added, first.backlog_records, first.last_entry_id) == (45, 45, entries[-1][0])
    meta = meta_of(client, keys, simulation_id)
    assert (meta[RECORDS_ADDED_FIELD], meta["seq:p1"], meta["layout"]) == ("45", "45", STANDALONE)
    assert client.sismember(keys.registry, simulation_id)

    # When: the same append comes again (its reply was lost), and a group has acknowledged 30 records
    client.hset(keys.meta(simulation_id), f"{ACKED_FIELD_PREFIX}{GROUP}", 30)
    again = append_entries(client, keys, simulation_id, batches, layout=STANDALONE, group=GROUP)

    # Then: nothing is added; the counts are unchanged, the backlog is 45 - 30, and the id it names
    # is the newest entry already holding those records (what wait_persisted must wait for)
    assert entries_of(client, keys, simulation_id) == entries
    assert (again.records_added, again.backlog_records, again.last_entry_id) == (0, 15, entries[-1][0])
    assert (meta_of(client, keys, simulation_id)[RECORDS_ADDED_FIELD], meta_of(client, keys, simulation_id)["seq:p1"]) \
        == ("45", "45")

    # When: the next records follow, with one batch a copy of the last one already there
    more = append_entries(client, keys, simulation_id, batches[-1:] + actions(simulation_id, "p1", range(46, 51)),
                          group=GROUP)

    # Then: only the new batch is added and counted
    assert (more.records_added, more.backlog_records) == (5, 20)
    assert entries_of(client, keys, simulation_id)[-1][1:] == ("p1", 46, 5)
    assert meta_of(client, keys, simulation_id)["seq:p1"] == "50"

    # When: a batch is appended with skip_seen=False (a dead letter re-driven), and nothing at all with a group
    redriven = append_entries(client, keys, simulation_id, batches[:1], skip_seen=False, group=GROUP)
    asked = append_entries(client, keys, simulation_id, [], group=GROUP, register=False)

    # Then: the re-driven batch is appended again and counted again; seq:p1 does not go back
    final = entries_of(client, keys, simulation_id)
    assert (redriven.records_added, redriven.last_entry_id, final[-1][1:]) == (10, final[-1][0], ("p1", 1, 10))
    assert (asked.records_added, asked.last_entry_id, asked.backlog_records) == (0, None, 30)
    assert meta_of(client, keys, simulation_id)["seq:p1"] == "50"
    assert meta_of(client, keys, simulation_id)[RECORDS_ADDED_FIELD] == "60"


def test_a_journal_half_old_format_half_record_batches_replays_exactly_after_part_of_it_reached_redis(
        redis_server, namespace, simulation_id, tmp_path):
    # Given: a journal with the start record and 20 actions in the old format (one record per frame),
    # then 30 actions as record batches, and the completion marker; the old-format half already
    # reached Redis once (a replay killed half-way)
    client, keys = redis_server.client(), Keys(namespace)
    encode = make_encoder()
    old = [encode("simulation", "p1", 1, {"layout": STANDALONE})]
    old += [encode("agent_action", "p1", seq, {"step_number": seq, "agent_id": "a", "action_type": "move"})
            for seq in range(2, 22)]
    new = actions(simulation_id, "p1", range(22, 52))
    journal = Journal(journal_path(tmp_path, simulation_id, "p1"))
    journal.append(old + [batch.payload for batch in new])
    journal.mark_complete()
    assert count_records(journal.path) == 51
    half = append_entries(client, keys, simulation_id, [describe(payload) for payload in old], layout=STANDALONE)
    assert half.records_added == 21

    # When: the journal is replayed, 8 records per pipeline
    result = replay_journal(client, keys, journal.path, batch_size=8)

    # Then: every record is in the stream exactly once, the counts say 51, the simulation is complete
    entries = entries_of(client, keys, simulation_id)
    seqs = [seq + offset for _, _, seq, records in entries for offset in range(records)]
    assert seqs == list(range(1, 52)) and len(entries) == 21 + 3
    assert (result.records, result.complete, result.last_entry_id) == (51, True, entries[-1][0])
    meta = meta_of(client, keys, simulation_id)
    assert (meta[RECORDS_ADDED_FIELD], meta["seq:p1"], meta["layout"], meta["complete"]) == ("51", "51", STANDALONE, "1")
    assert not journal.path.exists()

    # When: a copy of the same journal is replayed again (a replay killed before it removed the file)
    journal.append([batch.payload for batch in new])
    again = replay_journal(client, keys, journal.path)

    # Then: nothing is added, and it still names the newest entry holding its records
    assert entries_of(client, keys, simulation_id) == entries
    assert (again.records, again.last_entry_id) == (30, entries[-1][0])
    assert meta_of(client, keys, simulation_id)[RECORDS_ADDED_FIELD] == "51"
