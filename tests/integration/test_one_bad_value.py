"""A record is the unit of failure: one bad value among thousands costs that record, nothing more.

Runs the real CLI (``simstream consume --drain``, ``simstream dlq retry``) against a real Redis and
a real SQLite file or PostgreSQL schema (skipped, saying why, where no PostgreSQL answers). Also:
dead letters keyed per record on a database made by the previous version, and a database that
refuses every write kept apart from a bad record.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import msgpack

import pytest
from sqlalchemy import (Column, Float, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint,
                        create_engine, insert, select)

from common import schema
from common.codec import RECORD_FORMAT, decode, make_encoder
from common.connections import create_sink_engine, ensure_schema
from common.errors import DatabaseUnavailable
from common.keys import Keys
from common.records import KINDS
from common.rows import row_columns
from consumer.sink import DeadLetter, Sink
from consumer.stream_reader import Entry
from producer import RedisBufferedDataLogger
from tests.helpers import FAST
from tests.log_events import events_in, has_event

pytestmark = [pytest.mark.newest_redis, pytest.mark.timeout(300)]

VALID = 3000
DRAIN_WITHIN_S = 60
WORKER_EXITS = ("supervisor.worker_died", "supervisor.worker_failed", "worker.failed")


def nested(depth: int) -> dict:
    """A dict ``depth`` levels deep."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def depth_of(value) -> int:
    depth = 0
    while isinstance(value, dict):
        depth, value = depth + 1, value.get("k")
    return depth


# agent_id of each bad record -> (its arguments to log_agent_action, the cause its dead letter must name)
BAD = {
    "bad-int": (dict(step_number=2**63, action_type="move"),
                {"sqlite": "must be an integer of at most 64 bits",
                 "postgresql": "must be an integer of at most 64 bits"}),
    "bad-nesting": (dict(step_number=1, action_type="move", details=nested(1000)),
                    {"sqlite": "RecursionError: maximum recursion depth exceeded",
                     "postgresql": "RecursionError: maximum recursion depth exceeded"}),
    "bad-length": (dict(step_number=1, action_type="x" * 101),
                   {"postgresql": "value too long for type character varying(100)"}),
    "bad-int32": (dict(step_number=2**40, action_type="move"),
                  {"postgresql": "out of range"}),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_url(request, tmp_path) -> tuple[str, str]:
    """(dialect, URL) of the sink: a SQLite file, or the test's own PostgreSQL schema."""
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("postgres_url")
    return "sqlite", f"sqlite:///{tmp_path / 'sink.db'}"


def bad_records_for(dialect: str) -> dict[str, tuple[dict, str]]:
    """The bad records this sink must refuse (SQLite takes a string of any length)."""
    return {agent_id: (args, causes[dialect]) for agent_id, (args, causes) in BAD.items() if dialect in causes}


def spots(bad: dict) -> dict[int, str]:
    """Where each bad record goes among the valid ones: just before valid action number i."""
    return {VALID * (n + 1) // (len(bad) + 1): agent_id for n, agent_id in enumerate(bad)}


def produce(redis_url: str, namespace: str, simulation_id: str, bad: dict[str, tuple[dict, str]]) -> None:
    """VALID actions, the bad ones spread among them so that each shares a batch with valid ones."""
    logger = RedisBufferedDataLogger(simulation_id, redis_url, namespace=namespace)
    places = spots(bad)
    for i in range(VALID):
        if i in places:
            logger.log_agent_action(agent_id=places[i], **bad[places[i]][0])
        logger.log_agent_action(step_number=i, agent_id=f"a{i}", action_type="move", reward=0.5, details={"i": i})
    report = logger.close()
    assert report.complete and report.in_redis == report.logged and report.waiting == 0


@dataclass(frozen=True)
class SentRecord:
    """A record as it is in the stream: where (entry id, offset in the entry), its sequence number,
    its fields (None if its producer could not encode them) and, for a record batch's reject, the
    reason its producer could not lay it out as a row."""

    entry_id: str
    offset: int
    seq: int
    fields: dict | None
    reason: str | None = None


def sent_records(client, stream: str) -> list[SentRecord]:
    """Every record in the stream, in order, from entries of either format (one record per entry,
    or a record batch of rows and rejects)."""
    found = []
    for entry_id, entry in client.xrange(stream):
        unpacked = msgpack.unpackb(entry[b"r"], raw=False)
        if unpacked[0] == RECORD_FORMAT:
            record = decode(entry[b"r"])
            found.append(SentRecord(entry_id.decode(), 0, record.seq, record.fields))
            continue
        _, _, _, _, first_seq, _, groups, rejects = unpacked
        for kind, offsets, rows in groups:
            columns = row_columns(KINDS[kind])
            found += [SentRecord(entry_id.decode(), offset, first_seq + offset, dict(zip(columns, row)))
                      for offset, row in zip(offsets, rows)]
        found += [SentRecord(entry_id.decode(), offset, first_seq + offset, fields, reason)
                  for offset, _, reason, fields in rejects]
    return sorted(found, key=lambda record: record.seq)


def assert_bad_values_reached_redis(client, stream: str, bad: dict) -> dict[int, tuple[str, SentRecord]]:
    """The producer sent each bad record, in its place in the sequence: as it was (not refused,
    not replaced by its repr), or in a record batch as a reject saying why, with its values where
    they can be encoded. Returns {seq: (agent_id, where it is)} of the bad records."""
    records = sent_records(client, stream)
    by_agent = {record.fields.get("agent_id"): record for record in records if record.fields}
    found = {}
    for agent_id in bad:
        record = by_agent.get(agent_id)
        if record is None:  # no values: it must be the record logged just before its valid neighbour
            neighbour = by_agent[f"a{next(i for i, name in spots(bad).items() if name == agent_id)}"]
            [record] = [r for r in records if r.seq == neighbour.seq - 1 and r.fields is None and r.reason]
        found[record.seq] = (agent_id, record)
    values = {agent_id: record for agent_id, record in found.values()}
    assert sorted(values) == sorted(bad)
    if "bad-int" in values:
        assert values["bad-int"].fields["step_number"] == 2**63
    if "bad-nesting" in values:
        nesting = values["bad-nesting"]
        assert (depth_of(nesting.fields["details"]) == 1000 if nesting.fields
                else "RecursionError" in nesting.reason)
    if "bad-length" in values:
        assert values["bad-length"].fields["action_type"] == "x" * 101
    return found


def consume_until_drained(cli, db_url: str) -> str:
    """``simstream consume --drain``: exits 0, within DRAIN_WITHIN_S, no worker exiting on the way."""
    started = time.monotonic()
    result = cli.run("consume", "--processes", "1", "--drain", "--db", db_url, *FAST, "--batch-size", "500",
                     "--log-json", timeout=DRAIN_WITHIN_S + 30)
    elapsed_s = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert elapsed_s < DRAIN_WITHIN_S, f"drain took {elapsed_s:.1f}s"
    assert not [line for line in events_in(result.stderr) if line["event"] in WORKER_EXITS], output[-2000:]
    assert has_event(result.stderr, "supervisor.summary", restarts=0), output[-2000:]
    return output


def letter_seq(raw: bytes) -> int:
    """The sequence number of the one record a dead letter keeps (either format)."""
    unpacked = msgpack.unpackb(raw, raw=False)
    return unpacked[3] if unpacked[0] == RECORD_FORMAT else unpacked[4]


def assert_only_bad_ones_dead_lettered(engine, simulation_id: str, bad: dict[str, tuple[dict, str]],
                                       sent: dict[int, tuple[str, SentRecord]],
                                       where_sent: bool = True) -> None:
    """Every valid action is a row exactly once; each bad one is a dead letter naming its cause,
    keeping that record alone (``where_sent``: keyed by the entry and offset it was sent in)."""
    with engine.connect() as connection:
        actions = schema.agent_actions
        agent_ids = Counter(row.agent_id for row in connection.execute(
            select(actions.c.agent_id).where(actions.c.simulation_id == simulation_id)))
        letters = connection.execute(select(schema.dead_letters)).all()
    for i in range(VALID):
        assert agent_ids[f"a{i}"] == 1, f"a{i} persisted {agent_ids[f'a{i}']} times"
    assert sum(agent_ids.values()) == VALID, f"unexpected rows: {set(agent_ids) - {f'a{i}' for i in range(VALID)}}"
    by_agent = {sent[letter_seq(letter.raw)][0]: letter for letter in letters}
    assert len(letters) == len(by_agent) == len(bad), [letter.error for letter in letters]
    for seq, (agent_id, record) in sent.items():
        letter, cause = by_agent[agent_id], bad[agent_id][1]
        assert cause in letter.error, f"{agent_id}: {letter.error}"
        assert letter.simulation_id == simulation_id and letter_seq(letter.raw) == seq
        if where_sent:
            assert (letter.entry_id, letter.entry_index) == (record.entry_id, record.offset)
        assert letter.delivery_count == 1  # dead-lettered on its first delivery, not by the limit


def dead_letter_entries(engine) -> set[str]:
    with engine.connect() as connection:
        return {row.entry_id for row in connection.execute(select(schema.dead_letters.c.entry_id))}


def test_one_bad_value_dead_letters_only_its_record_and_dlq_retry_keeps_it_so(
        cli, redis_server, sink_url, simulation_id, namespace):
    # Given: 3,000 valid actions and, among them, one record per bad value this sink must refuse
    dialect, db_url = sink_url
    bad = bad_records_for(dialect)
    client, stream = redis_server.client(), Keys(namespace).stream(simulation_id)
    produce(redis_server.url, namespace, simulation_id, bad)
    sent = assert_bad_values_reached_redis(client, stream, bad)
    engine = create_engine(db_url)

    try:
        # When: consumers drain the simulation
        consume_until_drained(cli, db_url)

        # Then: exactly the bad records are dead letters, each with its real cause; the rest are rows
        assert_only_bad_ones_dead_lettered(engine, simulation_id, bad, sent)
        first_entries = dead_letter_entries(engine)

        # When: the dead letters are re-driven and drained again
        retried = cli.run("dlq", "retry", "--db", db_url)
        assert retried.returncode == 0 and f"re-driven: {len(bad)}" in retried.stdout, retried.stdout + retried.stderr
        consume_until_drained(cli, db_url)

        # Then: the bad ones are dead letters again, alone (new entries); every valid row is still there once
        assert_only_bad_ones_dead_lettered(engine, simulation_id, bad, sent, where_sent=False)
        assert not dead_letter_entries(engine) & first_entries
    finally:
        engine.dispose()


def previous_dead_letters_table() -> Table:
    """``dead_letters`` as the previous version created it: one dead letter per stream entry."""
    return Table(
        "dead_letters", MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("stream", String(400), nullable=False),
        Column("entry_id", String(64), nullable=False),
        Column("simulation_id", String(200)),
        Column("raw", LargeBinary),
        Column("error", Text, nullable=False),
        Column("delivery_count", Integer),
        Column("created_at", Float, nullable=False),
        UniqueConstraint("stream", "entry_id", name="uq_dead_letters_entry"),
    )


def test_a_database_from_the_previous_version_gets_dead_letters_keyed_by_record(sink_url):
    # Given: a sink database made by the previous version, holding one dead letter
    _, db_url = sink_url
    engine = create_sink_engine(db_url)
    old = previous_dead_letters_table()
    old.create(engine)
    with engine.begin() as connection:
        connection.execute(insert(old).values(stream="s", entry_id="1-1", simulation_id="sim", raw=b"x",
                                              error="old reason", created_at=1.0))

    try:
        # When: this version starts on it (twice, as several consumers would)
        ensure_schema(engine)
        ensure_schema(engine)

        # Then: the old dead letter is kept, as record 0 of its entry, and one entry can now hold
        # several dead letters (index 0 and 1), each once however often it is written
        encode = make_encoder()
        payload = encode("agent_action", "p", 1, {"step_number": 1, "agent_id": "a", "action_type": "m"})
        letters = [DeadLetter(b"2-1", payload, "first", index=0), DeadLetter(b"2-1", payload, "second", index=1)]
        sink = Sink(engine)
        for _ in range(2):
            assert sink.write("s", "sim", [], letters).dead_letters == 2
        with engine.connect() as connection:
            rows = connection.execute(select(schema.dead_letters).order_by(schema.dead_letters.c.id)).all()
        assert [(r.entry_id, r.entry_index, r.error, r.raw) for r in rows][0] == ("1-1", 0, "old reason", b"x")
        assert [(r.entry_id, r.entry_index, r.error) for r in rows[1:]] == [("2-1", 0, "first"), ("2-1", 1, "second")]
    finally:
        engine.dispose()


def test_a_database_that_refuses_every_write_is_unavailable_not_a_bad_record(tmp_path):
    # Given: a SQLite sink whose every insert, dead letters included, is refused (no record's fault)
    engine = create_sink_engine(f"sqlite:///{tmp_path / 'sink.db'}")
    ensure_schema(engine)
    with engine.begin() as connection:
        for table in ("agent_actions", "dead_letters"):
            connection.exec_driver_sql(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                                       "BEGIN SELECT RAISE(ABORT, 'read only for now'); END")
    encode = make_encoder()
    entries = [Entry(f"1-{seq}".encode(), encode("agent_action", "p", seq, {
        "step_number": 1, "agent_id": f"a{seq}", "action_type": "move"})) for seq in range(1, 5)]

    try:
        # When / Then: the batch is not dead-lettered record by record; the caller keeps it pending
        with pytest.raises(DatabaseUnavailable, match="refused the dead letters too"):
            Sink(engine).write("s", "sim", entries)
        with engine.connect() as connection:
            assert connection.execute(select(schema.dead_letters)).all() == []
            assert connection.execute(select(schema.agent_actions)).all() == []
    finally:
        engine.dispose()
