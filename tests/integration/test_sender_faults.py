"""The producer's sender thread never dies silently: one unencodable value, a thread killed on
purpose once (holding records, or after its append reached Redis), a thread that keeps dying, and
a producer that neither Redis nor its journal takes.

Every record is accounted for by its identity (producer id, sequence number): in a record batch
of the stream, in the journal, or, for the one unencodable record, a reject in its batch and in
``dead_letters`` with its reason.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from common import faults, schema
from common.codec import decode_entry
from consumer.ops.embedded_redis import free_port
from common.errors import SenderFailed
from common.journal import read_journal, replay_journal
from common.keys import Keys
from common.layouts import STANDALONE, layout_named
from common.rows import RowMaker
from common.stream_append import RECORDS_ADDED_FIELD
from producer import StreamProducer
from tests.helpers import drain_with_worker, wait_for


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def log_actions(producer: StreamProducer, steps: range) -> None:
    for step in steps:
        producer.log("agent_action", step_number=step, agent_id=f"a{step % 7}", action_type="move",
                     details={"step": step})


def entry_records(payload: bytes, simulation_id: str) -> tuple[dict[int, tuple], dict[int, str]]:
    """One entry decoded: {seq: (kind, row)} in sequence order, and {seq: reason} for its rejects."""
    entry = decode_entry(payload, simulation_id, RowMaker(layout_named(STANDALONE)))
    rows = {entry.first_seq + offset: (kind, row) for kind, offsets, laid in entry.groups
            for offset, row in zip(offsets, laid)}
    assert len(rows) + len(entry.rejects) == entry.records
    return dict(sorted(rows.items())), {entry.first_seq + offset: reason for offset, reason in entry.rejects}


def stream_records(client, keys: Keys, simulation_id: str) -> tuple[dict[int, tuple], dict[int, str]]:
    """Every record of the stream, in stream order: {seq: (kind, row)}, and {seq: reason} for rejects."""
    records, failures = {}, {}
    for _, fields in client.xrange(keys.stream(simulation_id)):
        rows, rejects = entry_records(fields[b"r"], simulation_id)
        for seq in [*rows, *rejects]:
            assert seq not in records and seq not in failures, f"record {seq} is in the stream twice"
        records.update(rows)
        failures.update(rejects)
    return records, failures


@pytest.fixture
def kill_thread(monkeypatch):
    """Arm the sender's thread seam for this test (see common/faults.py)."""
    faults.reset()

    def arm(spec: str) -> None:
        monkeypatch.setenv(faults.KILL_THREAD_ENV, spec)

    yield arm
    faults.reset()


def test_a_value_nested_3000_deep_is_dead_lettered_alone_and_every_valid_record_lands(
        redis_server, sqlite_url, sink_engine, namespace, simulation_id, tmp_path):
    # Given: a producer logging 1,000 valid actions with one nested 3,000 deep in their midst
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, batch_size=100,
                              journal_dir=str(tmp_path / "journal"))
    log_actions(producer, range(1, 501))
    producer.log("agent_action", step_number=0, agent_id="deep", action_type="move", details=nested(3000))
    log_actions(producer, range(501, 1001))

    # When: it flushes and closes, and a worker drains the stream
    flushed = producer.flush()
    closed = producer.close()
    records, failures = stream_records(redis_server.client(), Keys(namespace), simulation_id)
    worker = drain_with_worker(redis_server.url, sqlite_url, namespace)

    # Then: the sender never died; every record reached Redis, the deep one marked with its reason
    assert producer.stats()["sender_restarts"] == 0 and producer.stats()["sender_failure"] is None
    assert flushed.all_in_redis and closed.all_in_redis and closed.complete
    deep_seq = 502  # 1: the simulation record, 2..501: the first 500 actions
    assert set(records) | set(failures) == set(range(1, 1004))
    assert list(failures) == [deep_seq] and "RecursionError" in failures[deep_seq]
    assert "could not be encoded by its producer" in failures[deep_seq]
    # ... and in SQL: every valid action once, the deep one alone in dead_letters with that reason
    with sink_engine.connect() as connection:
        actions = schema.agent_actions
        steps = [row.step_number for row in connection.execute(
            select(actions.c.step_number).where(actions.c.simulation_id == simulation_id))]
        letters = connection.execute(select(schema.dead_letters.c.error, schema.dead_letters.c.raw)).all()
    assert sorted(steps) == list(range(1, 1001))
    [(error, raw)] = letters
    assert "RecursionError" in error and "could not be encoded" in error
    assert decode_failure(raw, simulation_id) == (deep_seq, failures[deep_seq])
    assert worker.stats.dead_lettered == 1


def decode_failure(raw: bytes, simulation_id: str) -> tuple[int, str]:
    """A dead letter's payload: (seq, reason) of the one rejected record it holds."""
    rows, rejects = entry_records(raw, simulation_id)
    assert not rows
    [(seq, reason)] = rejects.items()
    return seq, reason


def test_a_sender_killed_once_is_restarted_with_the_batch_it_held(redis_server, namespace, simulation_id,
                                                                    tmp_path, kill_thread):
    # Given: a sender thread that dies holding its second batch, not yet sent
    kill_thread("sender_in_hand:2")
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, batch_size=100,
                              journal_dir=str(tmp_path / "journal"))

    # When: the simulation logs 1,000 records and flushes
    log_actions(producer, range(1, 1001))
    report = producer.flush()

    # Then: the thread was restarted once, and every record is in the stream exactly once, in order
    assert producer.stats()["sender_restarts"] == 1 and producer.stats()["sender_failure"] is None
    assert report.all_in_redis and report.logged == 1001
    records, failures = stream_records(redis_server.client(), Keys(namespace), simulation_id)
    assert not failures and list(records) == list(range(1, 1002))
    assert producer.close().all_in_redis
    assert not any((tmp_path / "journal").glob("*.journal"))


def test_a_sender_killed_after_its_append_reached_redis_sends_it_again_and_nothing_is_added_twice(
        redis_server, namespace, simulation_id, tmp_path, kill_thread, monkeypatch):
    # Given: a producer whose sender only sends when asked (flush), and has sent its start record
    client, keys = redis_server.client(), Keys(namespace)
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, batch_size=1000,
                              entry_records=25, flush_interval_s=30.0, journal_dir=str(tmp_path / "journal"))
    assert producer.flush().all_in_redis
    before = client.xrevrange(keys.stream(simulation_id), count=1)[0][0].decode()

    # When: 100 records go in one pipeline, and the sender dies once its entries are in Redis,
    # before it has noted them (as if the reply were lost)
    kill_thread("sender_appended:1")
    log_actions(producer, range(1, 101))
    report = producer.flush()

    # Then: the restarted thread sent them again; each record is in the stream once, counted once
    assert producer.stats()["sender_restarts"] == 1 and producer.stats()["sender_failure"] is None
    assert report.all_in_redis and report.logged == 101
    records, failures = stream_records(client, keys, simulation_id)
    assert not failures and list(records) == list(range(1, 102))
    assert client.xlen(keys.stream(simulation_id)) == 1 + 4
    assert client.hget(keys.meta(simulation_id), RECORDS_ADDED_FIELD) == b"101"
    # ... and the producer knows the newest entry holding them (what wait_persisted waits for)
    newest = client.xrevrange(keys.stream(simulation_id), count=1)[0][0].decode()
    assert newest != before and producer._sender.last_entry_id == newest
    monkeypatch.delenv(faults.KILL_THREAD_ENV)
    assert producer.close().all_in_redis


def test_a_sender_that_keeps_dying_makes_the_next_call_raise_and_leaves_its_records_in_the_journal(
        redis_server, namespace, simulation_id, tmp_path, kill_thread):
    # Given: a sender thread that dies on every batch it takes, however often it is restarted
    kill_thread("sender_in_hand:1+")
    journal_dir = tmp_path / "journal"
    producer = StreamProducer(simulation_id, redis_server.url, namespace=namespace, batch_size=100,
                              journal_dir=str(journal_dir))
    log_actions(producer, range(1, 301))

    # When: the simulation flushes
    with pytest.raises(SenderFailed) as flushed:
        producer.flush()

    # Then: the call raised, in one line naming the journal; every record logged is in the journal
    message = str(flushed.value)
    assert "\n" not in message and "died 4 times in a row" in message and "ThreadKilled" in message
    [journal] = journal_dir.glob("*.journal")
    assert str(journal) in message
    assert journaled_seqs(journal) == list(range(1, 302))
    assert flushed.value.report.journaled == 301 and flushed.value.report.in_redis == 0

    # When: the simulation goes on logging, then closes
    log_actions(producer, range(301, 601))  # log() does not raise: the journal takes them
    with pytest.raises(SenderFailed):
        producer.close()

    # Then: every record, the end of the simulation included, waits in the journal, marked complete
    payloads, complete = read_journal(journal)
    assert complete and journaled_seqs(journal) == list(range(1, 603))
    assert redis_server.client().xlen(Keys(namespace).stream(simulation_id)) == 0
    # ... and replaying it brings every one of them to Redis
    faults.reset()
    replay_journal(redis_server.client(), Keys(namespace), journal)
    records, failures = stream_records(redis_server.client(), Keys(namespace), simulation_id)
    assert not failures and list(records) == list(range(1, 603))


def journaled_seqs(journal) -> list[int]:
    """The sequence numbers of every record in the journal, in order (each frame decoded whole)."""
    payloads, _ = read_journal(journal)
    seqs = []
    for payload in payloads:
        rows, rejects = entry_records(payload, "unused")
        assert not rejects
        seqs += rows
    return seqs


def test_log_raises_only_when_neither_redis_nor_the_journal_can_take_records(simulation_id, tmp_path):
    # Given: no Redis at the address, and a journal folder that cannot be created (a file is in the way)
    (tmp_path / "not-a-folder").write_text("")
    producer = StreamProducer(simulation_id, f"redis://127.0.0.1:{free_port()}/0", batch_size=10,
                              spill_after_s=0.1, journal_dir=str(tmp_path / "not-a-folder" / "journal"))

    # When: records are logged until the sender has given up
    log_actions(producer, range(1, 6))  # below a batch: log() only queues
    wait_for(lambda: producer.stats()["sender_failure"], timeout_s=30, what="the sender to give up")

    # Then: log() raises, in one line, once its batch can go nowhere; the records are still counted
    with pytest.raises(SenderFailed) as raised:
        log_actions(producer, range(6, 20))
    assert "\n" not in str(raised.value) and "cannot be written either" in str(raised.value)
    assert "only in memory" in str(raised.value)
