"""Record kinds: what a producer may log, how it is checked, and which row it becomes.

A record is ``(kind, fields)``. Its fields are the columns of the kind's table, minus the ones
the sink derives (``simulation_id`` from the stream, ``record_key`` from the producer's id and
sequence number, ``agent_states.id`` from the simulation, agent and step). The producer checks
field *names* on the simulation thread (cheap). The consumer checks what no column can take:
a required field missing, a map or list in a scalar column, an int past 64 bits, a bool field
that is not 0/1. It does not reject a value for its Python type: the database stores it as the
reference's own path would (SQLite's column affinity; on PostgreSQL, a lossless conversion in the
sink). A record that fails goes to ``dead_letters`` with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable

from sqlalchemy import Table

from common import schema
from common.errors import RecordError

# What a field's column holds; only JSON and BOOL change how a value is checked.
STR = (str,)
INT = (int,)
FLOAT = (float, int)
BOOL = (bool, int)
JSON_VALUE = (dict, list)
_SCALAR_CLASSES = frozenset({str, int, float, bool, bytes})
_INT64 = range(-2**63, 2**63)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record: its accepted Python types and whether it must be present."""

    name: str
    types: tuple[type, ...]
    required: bool = True
    default: Any = None


def req(name: str, types: tuple[type, ...]) -> FieldSpec:
    """A field the record must carry."""
    return FieldSpec(name, types, required=True)


def opt(name: str, types: tuple[type, ...], default: Any = None) -> FieldSpec:
    """A field that may be absent or None (then ``default`` is written)."""
    return FieldSpec(name, types, required=False, default=default)


@dataclass(frozen=True)
class RecordKind:
    """A kind of record and the table row it becomes.

    ``keyed_by_record``: the table has no natural key, so rows carry the producer-assigned
    ``record_key`` and a replay is ignored by its unique index. Otherwise the table's own primary
    key makes the insert idempotent. ``merge_columns``: on conflict these columns take the new
    values (upsert) instead of the insert being ignored; ``keep_existing`` columns keep a value
    already written. ``json_text``: dict fields stored as JSON text, as the reference does (keys in
the order the simulation gave them, which msgpack preserves).
    """

    name: str
    table: Table
    fields: tuple[FieldSpec, ...]
    keyed_by_record: bool = False
    merge_columns: tuple[str, ...] = ()
    keep_existing: tuple[str, ...] = ()
    json_text: tuple[str, ...] = ()
    derive: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
    derived: tuple[str, ...] = ()
    allowed: frozenset[str] = field(init=False)
    required: frozenset[str] = field(init=False)
    _checks: tuple[tuple[str, tuple[type, ...], bool, Any, bool], ...] = field(init=False, repr=False,
                                                                               compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(f.name for f in self.fields))
        object.__setattr__(self, "required", frozenset(f.name for f in self.fields if f.required))
        # (name, types, required, default, is a bool field) per field: to_row runs once per record.
        object.__setattr__(self, "_checks", tuple((f.name, f.types, f.required, f.default, bool in f.types)
                                                  for f in self.fields))

    def check_names(self, fields: Mapping[str, Any]) -> None:
        """Raise ValueError if ``fields`` lacks a required name or has an unknown one.

        Costs well under a microsecond; the producer calls it on the simulation thread.
        """
        names = fields.keys()
        if not self.required <= names or not names <= self.allowed:
            missing = sorted(self.required - names)
            unknown = sorted(names - self.allowed)
            raise ValueError(
                f"record kind {self.name!r}: missing fields {missing}, unknown fields {unknown}; "
                f"allowed: {sorted(self.allowed)}"
            )

    def to_row(self, simulation_id: str, record_key: str, fields: Mapping[str, Any]) -> dict:
        """The complete table row for a record, or RecordError naming the first field no column
        can take (see the module docstring: types are the database's business, not this one's)."""
        if not isinstance(fields, Mapping):
            raise RecordError(f"{self.name}: fields must be a map, got {type(fields).__name__}")
        if not fields.keys() <= self.allowed:
            raise RecordError(f"{self.name}: unknown fields {sorted(fields.keys() - self.allowed)}")
        row: dict[str, Any] = {"simulation_id": simulation_id}
        get = fields.get
        for name, types, required, default, bool_field in self._checks:
            value = get(name)
            if value is None:
                if required:
                    raise RecordError(f"{self.name}: field {name!r} is required")
                value = default
            elif types is JSON_VALUE:
                pass  # any JSON value: the sink encodes it, and a value JSON cannot hold fails there
            elif value.__class__ not in _SCALAR_CLASSES:
                raise _value_error(self.name, name, value, "a single value (text, number or bool)")
            elif bool_field and value.__class__ is not bool and value not in (0, 1):
                raise _value_error(self.name, name, value, "a bool (or 0/1)")
            elif value.__class__ is int and value not in _INT64:
                raise _value_error(self.name, name, value, "an integer of at most 64 bits")
            row[name] = value
        for column in self.json_text:
            if row[column] is not None:
                try:
                    row[column] = _json_text(row[column])
                except (TypeError, ValueError, RecursionError) as exc:
                    raise _value_error(self.name, column, row[column], f"a JSON value ({exc})") from None
        if self.keyed_by_record:
            row["record_key"] = record_key
        if self.derive is not None:
            row.update(self.derive(simulation_id, row))
        return row


_json_text = json.JSONEncoder().encode
"""json.dumps(value) (keys in the order given, as the reference logger writes) without building an
encoder per call."""


def _value_error(kind: str, name: str, value: Any, expected: str) -> RecordError:
    return RecordError(f"{kind}: field {name!r} must be {expected}; got {type(value).__name__} {value!r:.60}")


def _agent_state_id(simulation_id: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{simulation_id}:{row['agent_id']}-{row['step_number']}"}


_METRICS = (
    opt("total_agents", INT), opt("births", INT), opt("deaths", INT),
    opt("current_max_generation", INT), opt("average_agent_age", INT),
    opt("agent_type_counts", JSON_VALUE), opt("total_resources", FLOAT),
    opt("average_agent_resources", FLOAT), opt("resource_efficiency", FLOAT),
    opt("resource_distribution_entropy", FLOAT), opt("average_agent_health", FLOAT),
    opt("average_reward", FLOAT), opt("genetic_diversity", FLOAT),
    opt("dominant_genome_ratio", FLOAT), opt("resources_consumed", FLOAT),
)

_AGENT_COLUMNS = ("birth_time", "agent_type", "position_x", "position_y", "initial_resources",
                  "starting_health", "genome_id", "generation", "action_weights")

METRIC_NAMES = tuple(spec.name for spec in _METRICS)
"""The ``simulation_steps`` metric columns a step record may carry."""

KINDS: dict[str, RecordKind] = {kind.name: kind for kind in (
    RecordKind(
        "simulation", schema.simstream_simulations,
        (opt("experiment_id", STR), opt("start_time", FLOAT), opt("status", STR, "running"),
         opt("parameters", JSON_VALUE), opt("simulation_db_path", STR), opt("layout", STR)),
        # A resumed producer (a second start record) fills what is missing, never blanks it.
        merge_columns=("experiment_id", "start_time", "parameters", "simulation_db_path", "layout"),
        keep_existing=("status", "experiment_id", "start_time", "parameters", "simulation_db_path", "layout"),
    ),
    RecordKind(
        "simulation_end", schema.simstream_simulations,
        (req("end_time", FLOAT), opt("status", STR, "completed"),
         opt("results_summary", JSON_VALUE)),
        merge_columns=("end_time", "status", "results_summary"),
    ),
    RecordKind(
        "agent", schema.agents,
        (req("agent_id", STR), req("birth_time", INT), req("agent_type", STR),
         req("position_x", FLOAT), req("position_y", FLOAT), req("initial_resources", FLOAT),
         req("starting_health", FLOAT), opt("genome_id", STR), opt("generation", INT, 0),
         opt("action_weights", JSON_VALUE), opt("death_time", INT)),
        # An upsert, not an ignored duplicate: a death that committed first left a row holding
        # only death_time; the agent's columns fill it and its death_time is kept.
        merge_columns=_AGENT_COLUMNS, keep_existing=("death_time",),
    ),
    RecordKind(
        "agent_death", schema.agents,
        (req("agent_id", STR), req("death_time", INT)),
        merge_columns=("death_time",),
    ),
    RecordKind(
        # A rolled-back agent: its row is removed, now and if it commits later (see the sink).
        "agent_retraction", schema.retracted_agents,
        (req("agent_id", STR),),
    ),
    RecordKind(
        "agent_state", schema.agent_states,
        (req("step_number", INT), req("agent_id", STR), req("position_x", FLOAT),
         req("position_y", FLOAT), opt("position_z", FLOAT), req("resource_level", FLOAT),
         req("current_health", FLOAT), req("starting_health", FLOAT),
         req("starvation_counter", INT), req("is_defending", BOOL), req("total_reward", FLOAT),
         req("age", INT)),
        derive=_agent_state_id, derived=("id",),
    ),
    RecordKind(
        "resource_state", schema.resource_states,
        (req("step_number", INT), req("resource_id", STR), req("amount", FLOAT),
         req("position_x", FLOAT), req("position_y", FLOAT)),
        keyed_by_record=True,
    ),
    RecordKind(
        "simulation_step", schema.simulation_steps,
        (req("step_number", INT), *_METRICS),
    ),
    RecordKind(
        "agent_action", schema.agent_actions,
        (req("step_number", INT), req("agent_id", STR), req("action_type", STR),
         opt("action_target_id", STR), opt("reward", FLOAT), opt("details", JSON_VALUE),
         opt("module_type", STR), opt("module_id", STR)),
        keyed_by_record=True, json_text=("details",),
    ),
    RecordKind(
        "health_incident", schema.health_incidents,
        (req("step_number", INT), req("agent_id", STR), req("health_before", FLOAT),
         req("health_after", FLOAT), req("cause", STR), opt("details", JSON_VALUE)),
        keyed_by_record=True, json_text=("details",),
    ),
    RecordKind(
        # The health_incidents row of a death (update_agent_death); the agentfarm layout leaves
        # its simulation_id NULL, as the reference's own update_agent_death does.
        "death_incident", schema.health_incidents,
        (req("step_number", INT), req("agent_id", STR), req("health_before", FLOAT),
         req("health_after", FLOAT), req("cause", STR), opt("details", JSON_VALUE)),
        keyed_by_record=True, json_text=("details",),
    ),
    RecordKind(
        "interaction", schema.interactions,
        (req("step_number", INT), req("source_type", STR), req("source_id", STR),
         req("target_type", STR), req("target_id", STR), req("interaction_type", STR),
         opt("action_type", STR), opt("details", JSON_VALUE)),
        keyed_by_record=True,
    ),
    RecordKind(
        "reproduction_event", schema.reproduction_events,
        (req("step_number", INT), req("parent_id", STR), opt("offspring_id", STR),
         req("success", BOOL), req("parent_resources_before", FLOAT),
         req("parent_resources_after", FLOAT), opt("offspring_initial_resources", FLOAT),
         opt("failure_reason", STR), req("parent_generation", INT),
         opt("offspring_generation", INT), req("parent_position_x", FLOAT),
         req("parent_position_y", FLOAT)),
        keyed_by_record=True,
    ),
)}
"""Every record kind, by name."""

LIFECYCLE_KINDS = ("simulation", "simulation_end")
"""Kinds the producer writes itself when a simulation starts and when it is closed."""


def kind_named(name: str) -> RecordKind:
    """The kind called ``name``; ValueError listing the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown record kind {name!r}; known kinds: {sorted(KINDS)}") from None


def table_of_kind(name: str) -> str:
    """Name of the table a kind's records land in."""
    return KINDS[name].table.name
