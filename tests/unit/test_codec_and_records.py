"""The entry format and record validation, without Redis."""

from __future__ import annotations

import datetime

import msgpack
import pytest

from common.codec import FORMAT_VERSION, decode, make_encoder
from common.errors import RecordError
from common.records import KINDS, kind_named

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
    (msgpack.packb([FORMAT_VERSION, "spaceship", "p", 1, {}]), "unknown record kind"),
    (msgpack.packb([FORMAT_VERSION, "agent", "p", "one", {}]), "malformed"),
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
