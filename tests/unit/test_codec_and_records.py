"""The entry formats and record validation, without Redis.

Format 1 (one record per entry, still read) and format 2 (record batches, what producers write):
round trips, rejects in their place, splitting by bytes, values laid out as plain values, and the
one-record payload a dead letter keeps.
"""

from __future__ import annotations

import datetime
import enum

import msgpack
import numpy
import pytest

from common.codec import (BATCH_FORMAT, FORMAT_VERSION, RECORD_FORMAT, BatchEncoder, decode, decode_entry, describe,
                          make_encoder)
from common.errors import RecordError
from common.layouts import STANDALONE, layout_named
from common.records import KINDS, kind_named
from common.rows import RowMaker, row_columns

AGENT = {"agent_id": "a1", "birth_time": 0, "agent_type": "system", "position_x": 1.0, "position_y": 2.0,
         "initial_resources": 5.0, "starting_health": 10.0}


def test_a_record_round_trips_with_its_identity():
    payload = make_encoder()("agent", "p1", 42, AGENT)
    record = decode(payload)
    assert record.kind is KINDS["agent"] and record.record_key == "p1:42" and record.fields == AGENT
    assert record.to_row("sim")["generation"] == 0  # default filled in


@pytest.mark.parametrize("payload, message", [
    (b"\xc1garbage", "not valid msgpack"),
    (msgpack.packb([FORMAT_VERSION + 1, "agent", "p", 1, {}]), "unknown format version"),
    (msgpack.packb([RECORD_FORMAT, "spaceship", "p", 1, {}]), "unknown record kind"),
    (msgpack.packb([RECORD_FORMAT, "agent", "p", "one", {}]), "malformed"),
    (msgpack.packb({"not": "an array"}), "array"),
    (None, "trimmed"),
])
def test_undecodable_payloads_raise_a_record_error_saying_why(payload, message):
    with pytest.raises(RecordError, match=message):
        decode(payload)


@pytest.mark.parametrize("change, message", [
    ({"agent_id": None}, "'agent_id' is required"),
    ({"birth_time": {"step": 0}}, "'birth_time' must be a single value"),
    ({"position_x": [1.0, 2.0]}, "'position_x' must be a single value"),
    ({"birth_time": 2**63}, "'birth_time' must be an integer of at most 64 bits"),
    ({"wings": 2}, "unknown fields"),
])
def test_values_no_column_can_take_are_rejected_by_name(change, message):
    fields = {**AGENT, **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(RecordError, match=message):
        KINDS["agent"].to_row("sim", "p:1", fields)


def test_producer_side_name_check_catches_typos_immediately():
    with pytest.raises(ValueError, match="unknown fields \\['agentid'\\]"):
        KINDS["agent_action"].check_names({"step_number": 1, "agentid": "a", "action_type": "move"})
    with pytest.raises(ValueError, match="unknown record kind"):
        kind_named("spaceship")


def test_numpy_like_scalars_are_encoded_as_plain_values():
    class Scalar:
        def item(self):
            return 2.5

    record = decode(make_encoder()("agent", "p", 1, {**AGENT, "position_x": Scalar()}))
    assert record.fields["position_x"] == 2.5


def test_agent_state_rows_get_the_reference_id():
    fields = {"step_number": 3, "agent_id": "a1", "position_x": 1.0, "position_y": 2.0, "resource_level": 1.0,
              "current_health": 1.0, "starting_health": 1.0, "starvation_counter": 0, "is_defending": False,
              "total_reward": 0.0, "age": 3}
    assert KINDS["agent_state"].to_row("sim-1", "p:1", fields)["id"] == "sim-1:a1-3"


@pytest.mark.parametrize("value, accepted", [(True, True), (0, True), (1, True), (1.0, True), (2, False),
                                             ("1", False)])
def test_a_bool_field_takes_a_bool_or_0_or_1(value, accepted):
    fields = {"step_number": 3, "agent_id": "a1", "position_x": 1.0, "position_y": 2.0, "resource_level": 1.0,
              "current_health": 1.0, "starting_health": 1.0, "starvation_counter": 0, "is_defending": value,
              "total_reward": 0.0, "age": 3}
    if accepted:
        assert KINDS["agent_state"].to_row("sim-1", "p:1", fields)["is_defending"] == value
    else:
        with pytest.raises(RecordError, match="'is_defending' must be a bool \\(or 0/1\\)"):
            KINDS["agent_state"].to_row("sim-1", "p:1", fields)


def test_values_msgpack_cannot_carry_are_sent_as_their_repr_never_raised():
    # Given: fields msgpack cannot pack, even after the numpy-style conversion
    class Stamp:
        def item(self):
            return datetime.datetime(2026, 1, 2)  # what numpy.datetime64.item() gives

    encode = make_encoder()
    fields = {"step_number": 1, "agent_id": "a1", "action_type": "move",
              "details": {"when": Stamp(), "big": 2**70, "ok": [1, 2.5, "x"]}}

    # When: they are encoded (the sender thread must never die of a value)
    record = decode(encode("agent_action", "p", 9, fields))

    # Then: the unpackable values arrive as their repr, the rest unchanged, and the encoder still works
    assert record.fields["details"] == {"when": repr(datetime.datetime(2026, 1, 2)), "big": repr(2**70),
                                        "ok": [1, 2.5, "x"]}
    assert decode(encode("agent_action", "p", 10, {"step_number": 2})).fields == {"step_number": 2}


@pytest.mark.parametrize("field, value", [("birth_time", "7"), ("birth_time", 7.0), ("agent_id", 13),
                                          ("position_x", True), ("initial_resources", "5.5")])
def test_a_value_is_not_rejected_for_its_python_type(field, value):
    # The database stores it as the reference's own path would (SQLite's affinity; the PostgreSQL
    # sink converts what it can without loss): the record checker leaves types to it.
    assert KINDS["agent"].to_row("sim", "p:1", {**AGENT, field: value})[field] == value


# -- format 2: record batches -------------------------------------------------------------------

ACTION = {"step_number": 1, "agent_id": "a1", "action_type": "move", "details": {"to": [1, 2]}}


def actions(seqs, **change) -> list[tuple[str, int, dict]]:
    """Buffered agent_action records (kind, seq, fields), as ``log()`` leaves them."""
    return [("agent_action", seq, {**ACTION, "step_number": seq, **change}) for seq in seqs]


def encoder(**options) -> BatchEncoder:
    return BatchEncoder("sim", "p1", STANDALONE, **options)


def decoded(payload: bytes):
    return decode_entry(payload, "sim", RowMaker(layout_named(STANDALONE)))


def records_of(entry) -> dict[int, tuple[str, tuple]]:
    """{offset: (kind, row)} of a decoded entry's laid-out records."""
    return {offset: (kind, tuple(row)) for kind, offsets, rows in entry.groups for offset, row in zip(offsets, rows)}


def test_format_2_is_what_producers_write_and_format_1_is_still_read():
    assert FORMAT_VERSION == BATCH_FORMAT == 2 and RECORD_FORMAT == 1
    assert decode(make_encoder()("agent", "p1", 7, AGENT)).seq == 7


def test_a_batch_round_trips_rows_in_the_fixed_column_order_with_the_identity_of_each_record():
    # Given: an agent, an action and an agent state logged in that order
    state = {"step_number": 3, "agent_id": "a1", "position_x": 1.0, "position_y": 2.0, "resource_level": 1.0,
             "current_health": 1.0, "starting_health": 1.0, "starvation_counter": 0, "is_defending": False,
             "total_reward": 0.0, "age": 3}
    records = [("agent", 10, AGENT), ("agent_action", 11, ACTION), ("agent_state", 12, state)]

    # When: they are packed into one entry and decoded
    [batch] = encoder().encode(records)
    entry = decoded(batch.payload)

    # Then: the entry says who wrote which records, and each row follows row_columns(kind)
    assert (batch.producer_id, batch.first_seq, batch.last_seq, batch.records, batch.layout) == \
        ("p1", 10, 12, 3, STANDALONE)
    assert (entry.version, entry.producer_id, entry.first_seq, entry.records, entry.rejects) == \
        (BATCH_FORMAT, "p1", 10, 3, [])
    rows = records_of(entry)
    assert [kind for kind, _ in rows.values()] == ["agent", "agent_action", "agent_state"]
    for kind, row in rows.values():
        assert len(row) == len(row_columns(KINDS[kind]))
    agent = dict(zip(row_columns(KINDS["agent"]), rows[0][1]))
    assert agent["simulation_id"] == "sim" and agent["agent_id"] == "a1" and agent["generation"] == 0
    action = dict(zip(row_columns(KINDS["agent_action"]), rows[1][1]))
    assert action["record_key"] == "p1:11" and action["details"] == '{"to": [1, 2]}'
    assert dict(zip(row_columns(KINDS["agent_state"]), rows[2][1]))["id"] == "sim:a1-3"
    # ... and describe() reads the same from the header alone
    assert describe(batch.payload) == batch


def test_a_record_no_column_takes_is_a_reject_in_its_place_with_its_reason_and_its_neighbours_are_rows():
    # Given: five actions, the third with a step number past 64 bits, the fourth of an unknown field
    records = actions(range(1, 6))
    records[2] = ("agent_action", 3, {**ACTION, "step_number": 2**70})
    records[3] = ("agent_action", 4, {**ACTION, "wings": 2})

    # When: they are packed and decoded
    [batch] = encoder().encode(records)
    entry = decoded(batch.payload)

    # Then: the two bad records are rejects at their offsets, saying why; the others are rows
    assert entry.records == 5 and sorted(records_of(entry)) == [0, 1, 4]
    reasons = dict(entry.rejects)
    assert sorted(reasons) == [2, 3]
    assert "'step_number' must be an integer of at most 64 bits" in reasons[2]
    assert "unknown fields ['wings']" in reasons[3]


def test_a_batch_is_split_by_count_and_by_bytes_keeping_every_record_in_order():
    # Given: records of about 1 KiB each
    records = actions(range(1, 101), details={"blob": "x" * 1000})

    # When: entries may hold 40 records and 8 KiB
    by_count = encoder(max_records=40).encode(records)
    by_bytes = encoder(max_records=40, max_bytes=8 * 1024).encode(records)

    # Then: the count limit makes 40 + 40 + 20; the byte limit smaller entries, each under 8 KiB
    assert [batch.records for batch in by_count] == [40, 40, 20]
    assert len(by_bytes) > 3 and all(len(batch.payload) <= 8 * 1024 for batch in by_bytes)
    for batches in (by_count, by_bytes):
        seqs = [batch.first_seq + offset for batch in batches for offset in records_of(decoded(batch.payload))]
        assert seqs == list(range(1, 101))
        assert all(batch.last_seq - batch.first_seq + 1 == batch.records for batch in batches)
    # ... and one record larger than the limit still goes, alone
    [alone] = encoder(max_bytes=100).encode(actions([1], details={"blob": "x" * 1000}))
    assert alone.records == 1 and len(alone.payload) > 100


class Colour(enum.IntEnum):
    RED = 1


def test_numpy_scalars_and_an_int_enum_are_laid_out_as_plain_values():
    # Given: an agent state whose values are numpy scalars and an IntEnum
    fields = {"step_number": numpy.int64(3), "agent_id": numpy.str_("a1"), "position_x": numpy.float32(1.5),
              "position_y": numpy.float64(2.0), "resource_level": 1.0, "current_health": 1.0, "starting_health": 1.0,
              "starvation_counter": Colour.RED, "is_defending": numpy.bool_(True), "total_reward": 0.0, "age": 3}

    # When: it is packed and decoded
    [batch] = encoder().encode([("agent_state", 1, fields)])
    entry = decoded(batch.payload)

    # Then: the row holds plain values of exact built-in types
    [(kind, row)] = records_of(entry).values()
    row = dict(zip(row_columns(KINDS["agent_state"]), row))
    assert not entry.rejects
    assert (row["step_number"], row["agent_id"], row["position_x"], row["starvation_counter"], row["is_defending"]) \
        == (3, "a1", 1.5, 1, True)
    assert [type(row[name]) for name in ("step_number", "agent_id", "position_x", "starvation_counter",
                                         "is_defending")] == [int, str, float, int, bool]
    assert row["id"] == "sim:a1-3"


def test_a_lone_surrogate_is_rejected_alone_and_the_encoder_goes_on():
    # Given: three actions, the middle one with a string msgpack cannot encode (a lone surrogate)
    records = actions([1, 2, 3])
    records[1] = ("agent_action", 2, {**ACTION, "action_type": "mo\ud800ve"})
    coder = encoder()

    # When: they are packed and decoded
    [batch] = coder.encode(records)
    entry = decoded(batch.payload)

    # Then: only that record is a reject, saying its producer could not encode it; the encoder still works
    assert sorted(records_of(entry)) == [0, 2]
    [(offset, reason)] = entry.rejects
    assert offset == 1 and "agent_action record p1:2 could not be encoded by its producer" in reason
    assert "UnicodeEncodeError" in reason
    [after] = coder.encode(actions([4]))
    assert sorted(records_of(decoded(after.payload))) == [0]


def test_a_letter_payload_of_a_row_or_of_a_reject_decodes_back_to_that_one_record():
    # Given: a batch of four actions, the third a reject
    records = actions(range(20, 24))
    records[2] = ("agent_action", 22, {**ACTION, "step_number": [1]})
    [batch] = encoder().encode(records)
    entry = decoded(batch.payload)

    # When: dead letters keep the record at offset 1 (a row) and at offset 2 (a reject)
    row_letter, reject_letter = decoded(entry.letter_payload(1)), decoded(entry.letter_payload(2))

    # Then: each is an entry of one record, with that record's own sequence number and contents
    assert (row_letter.producer_id, row_letter.first_seq, row_letter.records, row_letter.rejects) == ("p1", 21, 1, [])
    assert records_of(row_letter) == {0: records_of(entry)[1]}
    assert (reject_letter.first_seq, reject_letter.records, records_of(reject_letter)) == (22, 1, {})
    assert reject_letter.rejects == [(0, dict(entry.rejects)[2])]
    assert describe(entry.letter_payload(1)).first_seq == 21 and describe(entry.letter_payload(2)).records == 1
    # ... and a format 1 entry's letter is the entry itself
    old = make_encoder()("agent", "p0", 5, AGENT)
    assert decoded(old).letter_payload(0) == old


def test_describe_reads_either_format_and_gives_none_for_what_has_no_identity():
    old_start = make_encoder()("simulation", "p0", 1, {"layout": "agentfarm"})
    assert describe(old_start).layout == "agentfarm" and describe(old_start).records == 1
    assert describe(make_encoder()("agent", "p0", 9, AGENT)).first_seq == 9
    assert describe(b"\xc1garbage") is None
    assert describe(msgpack.packb([RECORD_FORMAT, "agent", "p", "one", {}])) is None
    assert describe(msgpack.packb([BATCH_FORMAT, 1, STANDALONE, "p", 1, 0, [], []])) is None
