"""Record batches (format 2 entries) against a real Redis and a real SQLite file, counted record by record.

- a poison record in the middle of a batch entry is dead-lettered alone, with its entry id and
  index, whether the producer's sender or only the database can tell it is bad, and ``dlq retry``
  appends exactly that one record again;
- a stream written half by producers before record batches (format 1), half by today's is
  drained exactly, and its record counts are right;
- a journal in the old format is replayed exactly, by ``simstream replay-journal`` and by a
  producer that finds it as an earlier run's journal, completion marker included;
- batches appended twice (a retried append whose reply was lost) add no entry twice.

Helpers here build the two formats as their writers did; tests/e2e/test_batch_crash.py uses them too.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from sqlalchemy import func, select, text

from common import schema
from common.codec import (BATCH_FORMAT, ENTRY_FIELD, RECORD_FORMAT, BatchEncoder, EncodedBatch, decode_entry,
                          describe, make_encoder)
from common.connections import ensure_schema
from common.journal import journal_path, read_journal, replay_journal
from common.keys import Keys
from common.layouts import META_FIELD as LAYOUT_FIELD, STANDALONE, layout_named
from common.records import KINDS
from common.rows import RowMaker, row_columns
from common.stream_append import ACKED_FIELD_PREFIX, RECORDS_ADDED_FIELD, append_entries
from consumer.ops.dead_letters import retry_dead_letters
from consumer.stream_status import stream_status, text_dict
from producer import StreamProducer
from tests.helpers import drain_with_worker, running_worker, wait_for

pytestmark = pytest.mark.timeout(120)

GROUP = "simstream"
ACKED_FIELD = f"{ACKED_FIELD_PREFIX}{GROUP}"


# -- records and the two entry formats ---------------------------------------------------------

def action(i: int, **changes: Any) -> dict[str, Any]:
    """Fields of agent action ``i``; its agent id ``a<i>`` identifies its row."""
    return {"step_number": i, "agent_id": f"a{i}", "action_type": "move", "reward": 0.5, "details": {"i": i},
            **changes}


def agent_state(i: int, **changes: Any) -> dict[str, Any]:
    return {"step_number": i, "agent_id": f"a{i}", "position_x": 1.0, "position_y": 2.0, "resource_level": 3.0,
            "current_health": 9.0, "starting_health": 10.0, "starvation_counter": 0, "is_defending": False,
            "total_reward": 0.5, "age": i, **changes}


def start_record(layout: str = STANDALONE) -> tuple[str, dict[str, Any]]:
    return "simulation", {"start_time": 1.0, "status": "running", LAYOUT_FIELD: layout}


def end_record() -> tuple[str, dict[str, Any]]:
    return "simulation_end", {"end_time": 2.0, "status": "completed"}


def actions(numbers: range) -> list[tuple[str, dict[str, Any]]]:
    return [("agent_action", action(i)) for i in numbers]


def agent_ids(numbers: range) -> Counter:
    """The rows ``actions(numbers)`` must leave in agent_actions: each agent id once."""
    return Counter(f"a{i}" for i in numbers)


def batches_of(simulation_id: str, producer_id: str, records: list[tuple[str, dict]], first_seq: int = 1,
               max_records: int = 250) -> list[EncodedBatch]:
    """``records`` as today's producer sends them: format 2 entries, numbered from ``first_seq``."""
    encoder = BatchEncoder(simulation_id, producer_id, STANDALONE, max_records=max_records)
    return encoder.encode([(kind, seq, fields) for seq, (kind, fields) in enumerate(records, first_seq)])


def with_row_changed(batch: EncodedBatch, offset: int, column: str, value: Any) -> EncodedBatch:
    """``batch`` with one value of the row at ``offset`` replaced: a row its producer laid out, which
    only the database can judge (the consumer hands rows to executemany as they are)."""
    unpacked = msgpack.unpackb(batch.payload, raw=False)
    for kind, offsets, rows in unpacked[6]:
        if offset in offsets:
            rows[offsets.index(offset)][row_columns(KINDS[kind]).index(column)] = value
            return dataclasses.replace(batch, payload=msgpack.packb(unpacked, use_bin_type=True))
    raise KeyError(offset)


def append_old_format(client, keys: Keys, simulation_id: str, producer_id: str,
                      records: list[tuple[str, dict]], layout: str = STANDALONE) -> None:
    """Append ``records`` as producers before record batches did: one XADD per record (format 1,
    field ``r``), the layout and the producer's last sequence number in the meta hash, the
    simulation in the registry. No record counts: those producers kept none."""
    encode = make_encoder()
    stream, meta = keys.stream(simulation_id), keys.meta(simulation_id)
    pipe = client.pipeline(transaction=False)
    pipe.hset(meta, LAYOUT_FIELD, layout)
    for seq, (kind, fields) in enumerate(records, 1):
        pipe.xadd(stream, {ENTRY_FIELD: encode(kind, producer_id, seq, fields)})
    pipe.hset(meta, f"seq:{producer_id}", len(records))
    pipe.sadd(keys.registry, simulation_id)
    pipe.execute()


def write_old_journal(directory: Path, simulation_id: str, producer_id: str, records: list[tuple[str, dict]],
                      complete: bool = True) -> Path:
    """A journal as producers before record batches left it: a frame (4-byte big-endian length,
    payload) per format 1 record, then a zero-length frame if the simulation was closed."""
    encode = make_encoder()
    payloads = [encode(kind, producer_id, seq, fields) for seq, (kind, fields) in enumerate(records, 1)]
    if complete:
        payloads.append(b"")
    path = journal_path(directory, simulation_id, producer_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(struct.pack(">I", len(payload)) + payload for payload in payloads))
    return path


def one_entry_producer(redis_url: str, namespace: str, simulation_id: str, tmp_path: Path,
                       **options: Any) -> StreamProducer:
    """A producer that sends nothing until it is flushed or closed, then packs everything it holds
    into one record batch (its buffer and entries are larger than anything a test logs)."""
    settings = {"batch_size": 10_000, "entry_records": 10_000, "flush_interval_s": 60.0,
                "journal_dir": str(tmp_path / "journal"), **options}
    return StreamProducer(simulation_id, redis_url, namespace=namespace, **settings)


# -- what Redis and SQL hold ---------------------------------------------------------------------

def entry_format(payload: bytes) -> int:
    return msgpack.unpackb(payload, raw=False)[0]


def stream_entries(client, keys: Keys, simulation_id: str) -> list[tuple[str, bytes]]:
    """(id, payload) of every entry in the simulation's stream, oldest first."""
    return [(entry_id.decode(), fields[ENTRY_FIELD]) for entry_id, fields in client.xrange(keys.stream(simulation_id))]


def records_by_entry(client, keys: Keys, simulation_id: str) -> list[EncodedBatch]:
    """What each entry holds, from its header (producer, sequence numbers, record count)."""
    return [describe(payload) for _, payload in stream_entries(client, keys, simulation_id)]


def assert_each_record_once(batches: list[EncodedBatch], producer_id: str, logged: int) -> None:
    """The entries hold the producer's records 1..logged, each in exactly one entry."""
    held = Counter(seq for batch in batches if batch.producer_id == producer_id
                   for seq in range(batch.first_seq, batch.last_seq + 1))
    doubled = sorted(seq for seq, n in held.items() if n > 1)
    assert not doubled, f"records in more than one entry: {doubled[:10]}"
    assert sorted(held) == list(range(1, logged + 1))
    assert sum(batch.records for batch in batches if batch.producer_id == producer_id) == logged


def meta_of(client, keys: Keys, simulation_id: str) -> dict[str, str]:
    return text_dict(client.hgetall(keys.meta(simulation_id)))


def action_agents(engine, simulation_id: str) -> Counter:
    """Agent ids in agent_actions for the simulation, duplicates counted."""
    table = schema.agent_actions
    with engine.connect() as connection:
        return Counter(row.agent_id for row in connection.execute(
            select(table.c.agent_id).where(table.c.simulation_id == simulation_id)))


def rows_in(engine, table, simulation_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)
                                  .where(table.c.simulation_id == simulation_id)).scalar()


def dead_letters_in(engine) -> list:
    with engine.connect() as connection:
        return connection.execute(select(schema.dead_letters).order_by(schema.dead_letters.c.id)).all()


def decoded(payload: bytes, simulation_id: str):
    return decode_entry(payload, simulation_id, RowMaker(layout_named(STANDALONE)))


def mark_complete(client, keys: Keys, simulation_id: str) -> None:
    """What a producer's close() records once its last entry is in: the simulation is complete."""
    client.hset(keys.meta(simulation_id), "complete", 1)


def wait_all_acknowledged(client, keys: Keys, simulation_id: str) -> None:
    wait_for(lambda: stream_status(client, keys, GROUP, simulation_id).persisted_all, timeout_s=60,
             what="every entry delivered to the group and acknowledged")


# -- a poison record in the middle of a batch ----------------------------------------------------

PRODUCER_REJECTS = {
    "bool-field-2": (("agent_state", agent_state(99, is_defending=2)), "'is_defending' must be a bool (or 0/1)"),
    "int-past-64-bits": (("agent_action", action(99, step_number=2**63)), "must be an integer of at most 64 bits"),
    "int-past-msgpack": (("agent_action", action(99, step_number=2**70)), "must be an integer of at most 64 bits"),
}

BAD_SEQ, BAD_OFFSET, ENTRY_RECORDS = 12, 11, 23
"""Where the bad record sits in the one entry: after the start record and ten actions (seq 1..11),
before ten more actions and the end record."""


@pytest.mark.parametrize("case", sorted(PRODUCER_REJECTS))
def test_a_record_the_producer_rejects_in_the_middle_of_a_batch_is_dead_lettered_alone_and_redriven_alone(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path, case):
    # Given: one batch entry of 23 records whose middle one holds a value no column can take
    (kind, fields), reason = PRODUCER_REJECTS[case]
    client, keys = redis_server.client(), Keys(namespace)
    producer = one_entry_producer(redis_server.url, namespace, simulation_id, tmp_path)
    for number in range(10):
        producer.log("agent_action", **action(number))
    producer.log(kind, **fields)
    for number in range(10, 20):
        producer.log("agent_action", **action(number))
    assert producer.close().all_in_redis
    [(entry_id, payload)] = stream_entries(client, keys, simulation_id)
    entry = decoded(payload, simulation_id)
    assert entry_format(payload) == BATCH_FORMAT and entry.records == ENTRY_RECORDS
    assert [offset for offset, _ in entry.rejects] == [BAD_OFFSET], "the sender did not mark the bad record"

    # When: a worker drains the simulation
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: its neighbours are rows, each once; it alone is a dead letter, with its entry id, index and reason
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(20))
    assert rows_in(sink_engine, schema.agent_states, simulation_id) == 0
    [letter] = dead_letters_in(sink_engine)
    assert (letter.entry_id, letter.entry_index) == (entry_id, BAD_OFFSET)
    assert reason in letter.error and letter.simulation_id == simulation_id and letter.delivery_count == 1
    assert worker.stats.dead_lettered == 1
    kept = decoded(letter.raw, simulation_id)
    assert (kept.producer_id, kept.first_seq, kept.records) == (producer.producer_id, BAD_SEQ, 1)

    # When: the dead letter is re-driven
    retried = retry_dead_letters(sink_engine, client, keys)

    # Then: exactly that one record is appended again, counted once
    assert retried.redriven == 1 and dead_letters_in(sink_engine) == []
    [(again_id, again_payload)] = stream_entries(client, keys, simulation_id)
    again = describe(again_payload)
    assert (again.producer_id, again.first_seq, again.records) == (producer.producer_id, BAD_SEQ, 1)
    assert meta_of(client, keys, simulation_id).get(RECORDS_ADDED_FIELD) == "1"

    # When / Then: drained again, it is a dead letter again, alone (record 0 of its new entry); no row changed
    drain_with_worker(redis_server.url, sqlite_url, namespace)
    [letter] = dead_letters_in(sink_engine)
    assert (letter.entry_id, letter.entry_index) == (again_id, 0) and reason in letter.error
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(20))


def test_a_row_only_the_database_refuses_in_the_middle_of_a_batch_is_dead_lettered_alone_and_lands_once_redriven(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a database that refuses one particular action, and one batch entry holding it among 21 others
    client, keys = redis_server.client(), Keys(namespace)
    ensure_schema(sink_engine)
    with sink_engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON agent_actions "
                                "WHEN NEW.action_type = 'forbidden' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    producer = one_entry_producer(redis_server.url, namespace, simulation_id, tmp_path)
    for number in range(21):
        producer.log("agent_action", **action(number, action_type="forbidden" if number == 10 else "move"))
    assert producer.close().all_in_redis
    [(entry_id, payload)] = stream_entries(client, keys, simulation_id)
    assert entry_format(payload) == BATCH_FORMAT and decoded(payload, simulation_id).rejects == []

    # When: a worker drains the simulation
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: the other 20 actions are rows, each once; the refused one alone is a dead letter at its index
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(21)) - agent_ids(range(10, 11))
    [letter] = dead_letters_in(sink_engine)
    assert (letter.entry_id, letter.entry_index) == (entry_id, 11) and "refused" in letter.error
    assert worker.stats.dead_lettered == 1

    # When: the cause is fixed and the dead letter re-driven and drained
    with sink_engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse"))
    retried = retry_dead_letters(sink_engine, client, keys)
    [again] = records_by_entry(client, keys, simulation_id)
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: exactly that record was appended again, and now it is a row, once, beside the others
    assert retried.redriven == 1 and (again.first_seq, again.records) == (12, 1)
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(21))
    assert dead_letters_in(sink_engine) == []


def test_a_hand_crafted_row_the_database_refuses_is_dead_lettered_alone_and_redriven_alone(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: one batch entry of 21 actions whose middle row (offset 10) has no record_key (NOT NULL)
    client, keys = redis_server.client(), Keys(namespace)
    [batch] = batches_of(simulation_id, "p1", actions(range(21)))
    batch = with_row_changed(batch, 10, "record_key", None)
    added = append_entries(client, keys, simulation_id, [batch], layout=STANDALONE)
    mark_complete(client, keys, simulation_id)

    # When: a worker drains the simulation
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: the other 20 are rows, each once; the bad one alone is a dead letter at index 10, saying why
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(21)) - agent_ids(range(10, 11))
    [letter] = dead_letters_in(sink_engine)
    assert (letter.entry_id, letter.entry_index) == (added.last_entry_id, 10)
    assert "record_key" in letter.error, letter.error

    # When: it is re-driven, then drained again
    assert retry_dead_letters(sink_engine, client, keys).redriven == 1
    [again] = records_by_entry(client, keys, simulation_id)
    drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: exactly that record came back, and is again a dead letter alone; no row changed
    assert (again.producer_id, again.first_seq, again.records) == ("p1", 11, 1)
    [letter] = dead_letters_in(sink_engine)
    assert letter.entry_index == 0 and "record_key" in letter.error
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(21)) - agent_ids(range(10, 11))


def test_a_dead_letter_redriven_while_its_simulation_runs_is_appended_again_not_skipped_as_a_copy(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: a running simulation (not complete) whose one batch entry holds a record its producer
    # rejected (offset 5), persisted by a consumer: the stream and its sequence numbers are still there
    client, keys = redis_server.client(), Keys(namespace)
    records = [*actions(range(5)), ("agent_action", action(5, step_number=2**63)), *actions(range(6, 11))]
    [batch] = batches_of(simulation_id, "p1", records)
    entry_id = append_entries(client, keys, simulation_id, [batch], layout=STANDALONE).last_entry_id
    with running_worker(redis_server.url, sqlite_url, namespace, trim_interval_ms=50):
        wait_all_acknowledged(client, keys, simulation_id)
        wait_for(lambda: dead_letters_in(sink_engine), what="the dead letter")
        [letter] = dead_letters_in(sink_engine)
        assert (letter.entry_id, letter.entry_index) == (entry_id, 5)

        # When: it is re-driven while the simulation still runs
        assert retry_dead_letters(sink_engine, client, keys).redriven == 1

        # Then: that one record is appended again (its producer's sequence number 11 already covers
        # it, which must not make the append skip it), and the consumer dead-letters it again, alone
        meta = meta_of(client, keys, simulation_id)
        assert (meta[RECORDS_ADDED_FIELD], meta["seq:p1"]) == ("12", "11")
        wait_for(lambda: [row.entry_id for row in dead_letters_in(sink_engine)] not in ([], [entry_id]),
                 what="the re-driven record to be dead-lettered again")
        wait_all_acknowledged(client, keys, simulation_id)
    [again] = dead_letters_in(sink_engine)
    assert again.entry_id != entry_id and again.entry_index == 0 and "at most 64 bits" in again.error
    assert decoded(again.raw, simulation_id).first_seq == 6
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(11)) - agent_ids(range(5, 6))


# -- old and new formats in one stream -----------------------------------------------------------

def test_a_stream_half_in_the_old_format_half_in_record_batches_is_drained_exactly(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a simulation an old producer began (format 1: the start record and 100 actions, one
    # entry each) and a producer of this version carries on (format 2: 100 actions in entries of 25)
    client, keys = redis_server.client(), Keys(namespace)
    append_old_format(client, keys, simulation_id, "old", [start_record(), *actions(range(100))])
    producer = one_entry_producer(redis_server.url, namespace, simulation_id, tmp_path, entry_records=25)
    for number in range(100, 200):
        producer.log("agent_action", **action(number))
    assert producer.flush().all_in_redis
    formats = Counter(entry_format(payload) for _, payload in stream_entries(client, keys, simulation_id))
    assert formats[RECORD_FORMAT] == 101 and formats[BATCH_FORMAT] >= 5
    before = stream_status(client, keys, GROUP, simulation_id)

    # When: a consumer persists everything in the stream
    with running_worker(redis_server.url, sqlite_url, namespace, trim_interval_ms=50):
        wait_all_acknowledged(client, keys, simulation_id)
        after = stream_status(client, keys, GROUP, simulation_id)
        acked = meta_of(client, keys, simulation_id).get(ACKED_FIELD)

    # Then: status counted all 202 records as logged and waiting; now every record of both formats
    # is counted once as persisted, none as waiting, and is a row once
    counts = {when: (status.logged, status.persisted, status.backlog) for when, status in (("before", before),
                                                                                           ("after", after))}
    assert counts == {"before": (202, 0, 202), "after": (202, 202, 0)}, f"(logged, persisted, backlog): {counts}"
    assert acked == "202", f"records in acknowledged entries: {acked}, expected 202"
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(200))

    # When: the producer closes and a worker drains the simulation
    assert producer.close().all_in_redis
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: still every action once, the simulation complete, nothing dead-lettered
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(200))
    assert dead_letters_in(sink_engine) == [] and worker.stats.dead_lettered == 0
    with sink_engine.connect() as connection:
        status = connection.execute(select(schema.simstream_simulations.c.status).where(
            schema.simstream_simulations.c.simulation_id == simulation_id)).scalar()
    assert status == "completed"


def test_a_whole_stream_of_old_entries_and_new_batches_drains_with_exact_record_counts(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: a complete simulation, 51 format 1 entries of an old producer, then 4 record batches of another
    client, keys = redis_server.client(), Keys(namespace)
    append_old_format(client, keys, simulation_id, "old", [start_record(), *actions(range(50))])
    new = batches_of(simulation_id, "new", [*actions(range(50, 150)), end_record()], max_records=30)
    assert [batch.records for batch in new] == [30, 30, 30, 11]
    assert append_entries(client, keys, simulation_id, new, layout=STANDALONE).records_added == 101
    mark_complete(client, keys, simulation_id)

    # When: a worker drains it
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: every action is a row once, and the worker counted records (152), not entries (55)
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(150))
    assert worker.stats.persisted == 152 and worker.stats.dead_lettered == 0
    assert not client.exists(keys.stream(simulation_id))  # all acknowledged: the finished simulation was removed


# -- journals in the old format ------------------------------------------------------------------

OLD_JOURNAL = [start_record(), *actions(range(50)), end_record()]


def test_an_old_format_journal_is_replayed_exactly_by_the_command_and_its_copy_adds_nothing(
        cli, redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a journal left by a producer before record batches: 52 format 1 frames and the completion marker
    client, keys = redis_server.client(), Keys(namespace)
    journal = write_old_journal(tmp_path / "journal", simulation_id, "old", OLD_JOURNAL)
    assert read_journal(journal) == ([make_encoder()(kind, "old", seq, fields)
                                      for seq, (kind, fields) in enumerate(OLD_JOURNAL, 1)], True)
    copy = shutil.copy(journal, tmp_path / "copy.journal")

    # When: `simstream replay-journal` sends it, in batches smaller than the journal
    replayed = cli.run("replay-journal", str(journal.parent), "--batch-size", "7")

    # Then: every record is in the stream once, the simulation complete, its counts exact, the journal gone
    assert replayed.returncode == 0, replayed.stderr
    assert "52 records sent, simulation marked complete" in replayed.stdout
    assert not journal.exists()
    entries = records_by_entry(client, keys, simulation_id)
    assert_each_record_once(entries, "old", 52)
    meta = meta_of(client, keys, simulation_id)
    assert meta["complete"] == "1" and meta[LAYOUT_FIELD] == STANDALONE and meta["seq:old"] == "52"
    assert meta.get(RECORDS_ADDED_FIELD) == "52"

    # When: the same journal is replayed again (as after a replay killed before it removed the file)
    journal.parent.mkdir(parents=True, exist_ok=True)
    Path(copy).rename(journal)
    again = replay_journal(client, keys, journal, batch_size=7)

    # Then: it read all 52 records, yet added no entry and no record
    assert again.records == 52 and again.complete
    assert records_by_entry(client, keys, simulation_id) == entries
    assert meta_of(client, keys, simulation_id).get(RECORDS_ADDED_FIELD) == "52"

    # When / Then: drained, every record is a row once
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(50))
    assert worker.stats.persisted == 52 and worker.stats.dead_lettered == 0


def test_an_old_format_journal_found_by_a_new_producer_is_replayed_before_its_records_and_not_completed(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: an earlier run's journal in the old format, closed (completion marker) while Redis was away
    client, keys = redis_server.client(), Keys(namespace)
    journal_dir = tmp_path / "journal"
    journal = write_old_journal(journal_dir, simulation_id, "old", OLD_JOURNAL)

    # When: a producer of this version starts on the same simulation and journal folder, logs 30 actions
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, journal_dir=str(journal_dir),
                              journal_retry_interval_s=0.1, entry_records=10)
    for number in range(50, 80):
        producer.log("agent_action", **action(number))
    assert producer.flush().all_in_redis

    # Then: the old journal is in the stream before the new records, each once; its completion
    # marker is not applied while this producer runs; the journal is gone
    assert not journal.exists()
    assert producer.stats()["replayed"] == 52
    entries = records_by_entry(client, keys, simulation_id)
    assert_each_record_once(entries, "old", 52)
    assert_each_record_once(entries, producer.producer_id, 31)
    producers = [batch.producer_id for batch in entries]
    assert "old" not in producers[producers.index(producer.producer_id):], "an old record came after a new one"
    assert meta_of(client, keys, simulation_id).get("complete") is None

    # When: the producer closes and a worker drains the simulation
    assert producer.close().complete
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: every action of both runs is a row exactly once
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(80))
    assert worker.stats.dead_lettered == 0


# -- a retried append ----------------------------------------------------------------------------

def test_batches_appended_again_after_a_lost_reply_add_no_entry_and_no_record_twice(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id):
    # Given: 100 actions packed into four record batches, appended once
    client, keys = redis_server.client(), Keys(namespace)
    batches = batches_of(simulation_id, "p1", actions(range(100)), max_records=25)
    first = append_entries(client, keys, simulation_id, batches, layout=STANDALONE, group=GROUP)
    entries = stream_entries(client, keys, simulation_id)

    # When: the same append is sent again, whole (its reply was lost), and again from its second
    # half (a journal replay that had sent the first half before it was killed)
    retried = append_entries(client, keys, simulation_id, batches, layout=STANDALONE, group=GROUP)
    resumed = append_entries(client, keys, simulation_id, batches[2:], layout=STANDALONE, group=GROUP)

    # Then: the stream holds each batch once, and the counts say 100 records; an append that added
    # nothing names no new entry (at most the newest one already holding its records)
    assert (first.records_added, first.backlog_records) == (100, 100) and first.last_entry_id == entries[-1][0]
    assert (retried.records_added, retried.backlog_records) == (0, 100) and resumed.records_added == 0
    assert {retried.last_entry_id, resumed.last_entry_id} <= {None, entries[-1][0]}
    assert stream_entries(client, keys, simulation_id) == entries and len(entries) == 4
    meta = meta_of(client, keys, simulation_id)
    assert meta[RECORDS_ADDED_FIELD] == "100" and meta["seq:p1"] == "100"

    # When / Then: drained, every action is a row once, and the worker counted 100 records
    mark_complete(client, keys, simulation_id)
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(100))
    assert worker.stats.persisted == 100


def test_a_producer_whose_append_reply_is_lost_sends_it_again_without_a_copy(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    from tests.proxy import ReplyDroppingProxy

    # Given: a producer talking to Redis through a proxy that can lose a reply; 40 actions already in
    client, keys = redis_server.client(), Keys(namespace)
    proxy = ReplyDroppingProxy(redis_server.port)
    producer = one_entry_producer(proxy.url, namespace, simulation_id, tmp_path, entry_records=10,
                                  spill_after_s=30.0)
    for number in range(40):
        producer.log("agent_action", **action(number))
    assert producer.flush().all_in_redis

    # When: Redis applies the next append, but its reply is lost, so the producer sends it again
    proxy.drop_next_reply()
    for number in range(40, 80):
        producer.log("agent_action", **action(number))
    report = producer.close()

    # Then: it did resend, yet every record is in exactly one entry and counted once
    assert proxy.dropped == 1 and producer.stats()["failed_attempts"] >= 1, "no reply was lost: the test proved nothing"
    assert report.all_in_redis and report.complete and report.logged == 82
    assert_each_record_once(records_by_entry(client, keys, simulation_id), producer.producer_id, 82)
    assert meta_of(client, keys, simulation_id).get(RECORDS_ADDED_FIELD) == "82"

    # When / Then: drained, every action is a row once
    drain_with_worker(redis_server.url, sqlite_url, namespace)
    assert action_agents(sink_engine, simulation_id) == agent_ids(range(80))
    proxy.close()
