"""Rows ready for the driver: each record kind laid out as one row, in a fixed column order.

The order is defined here, per record kind, not by any one sink's tables:
``simulation_id``, the kind's fields in the order :mod:`common.records` declares them, then
``record_key`` (kinds without a natural key) and the derived ``id`` (``agent_state``). Every sink's
insert names its columns in this order, so the standalone schema, AgentFarm's schema and
PostgreSQL all take the same rows. The producer's sender lays records out (format 2 entries,
:mod:`common.entry_format`); a consumer lays out only records of format 1 entries, with the same
code, so both agree by construction. ``ROWS_VERSION`` names this order; it travels in every entry.

A value is checked here as the sink always did (:meth:`RecordKind.to_row`): a required field
missing, a map or list in a scalar column, an int past 64 bits, a bool that is not 0/1. JSON
fields become text as the reference logger writes it. Whatever a value raises, :meth:`RowMaker.make`
turns it into a RecordError naming the record's kind, so one record is the unit of failure.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable

from sqlalchemy import JSON

from common.errors import RecordError
from common.layouts import Layout
from common.records import JSON_VALUE, KINDS, RecordKind

ROWS_VERSION = 1
"""Version of the row order below; bumped whenever a kind's columns change."""

_SCALARS = frozenset({str, int, float, bool, bytes})
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def row_columns(kind: RecordKind) -> tuple[str, ...]:
    """The columns of ``kind``'s row, in the order its values travel."""
    return ("simulation_id", *(spec.name for spec in kind.fields),
            *(("record_key",) if kind.keyed_by_record else ()), *kind.derived)


def _json_default(value: Any) -> Any:
    """What json cannot encode as it is: numpy values become Python ones, bytes are refused (a JSON
    column cannot hold them), anything else is stored as its repr, as the stream always carried it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


_encode_chunks = json.encoder.c_make_encoder(
    None, _json_default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True) \
    if json.encoder.c_make_encoder is not None else None


def _json_text(value: Any) -> str:
    """json.dumps(value): keys in the order given, as the reference logger writes. The C encoder
    is made once (json.dumps makes one per call, half its cost for a small map); without a
    circular-reference check, a cycle ends in RecursionError, which rejects the record."""
    if _encode_chunks is None:
        return json.dumps(value, default=_json_default)
    return "".join(_encode_chunks(value, 0))


def plain_scalar(value: Any) -> Any:
    """A scalar of an exact built-in class: numpy scalars and subclasses (an IntEnum, a str enum)
    become the plain value they hold; anything else is returned unchanged (and then refused)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            converted = item()
        except Exception:  # noqa: BLE001 - a numpy array of several values: not a scalar
            return value
        return converted if converted.__class__ in _SCALARS else value
    return value


class RowMaker:
    """Lays records out as rows for one table layout (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._plans = {name: self._plan(kind) for name, kind in KINDS.items()}
        self._fast = {name: _fast_maker(plan, partial(self.make, name)) for name, plan in self._plans.items()}

    def maker_for(self, kind_name: str) -> Callable[[str, str, Any], tuple[Any, ...]]:
        """``make`` for one kind: ``(simulation_id, record_key, fields) -> row``, the same row or
        RecordError, through code generated for the kind (the sender calls it once per record)."""
        try:
            return self._fast[kind_name]
        except (KeyError, TypeError):
            raise RecordError(f"unknown record kind {kind_name!r}") from None

    def _plan(self, kind: RecordKind) -> tuple:
        table = self.layout.table_for(kind.name, kind.table)
        steps = []
        for spec in kind.fields:
            json_column = table is not None and spec.name in table.c and isinstance(table.c[spec.name].type, JSON)
            steps.append((spec.name, spec.required, spec.default, spec.types, bool in spec.types,
                          spec.name in kind.json_text, json_column))
        no_simulation_id = kind.name in self.layout.kinds_without_simulation_id
        return kind, tuple(steps), no_simulation_id

    def make(self, kind_name: str, simulation_id: str, record_key: str, fields: Any) -> tuple[Any, ...]:
        """The record's row, or RecordError saying which value no column can take."""
        try:
            kind, steps, no_simulation_id = self._plans[kind_name]
        except (KeyError, TypeError):
            raise RecordError(f"unknown record kind {kind_name!r}") from None
        try:
            return self._make(kind, steps, no_simulation_id, simulation_id, record_key, fields)
        except RecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - any type: a raising __repr__, RecursionError from deep nesting
            raise RecordError(f"{kind_name}: a value cannot be stored: {_cause(exc)}") from exc

    def _make(self, kind: RecordKind, steps: tuple, no_simulation_id: bool, simulation_id: str,
              record_key: str, fields: Any) -> tuple[Any, ...]:
        if not isinstance(fields, dict):
            raise RecordError(f"{kind.name}: fields must be a map, got {type(fields).__name__}")
        if not fields.keys() <= kind.allowed:
            raise RecordError(f"{kind.name}: unknown fields {sorted(fields.keys() - kind.allowed)}")
        row: list[Any] = [None if no_simulation_id else simulation_id]  # a tuple when complete
        get = fields.get
        for name, required, default, types, bool_field, json_text, json_column in steps:
            value = get(name)
            if value is None:
                if required:
                    raise RecordError(f"{kind.name}: field {name!r} is required")
                value = default
            elif json_text or json_column or types is JSON_VALUE:
                pass  # any JSON value: encoded below, and a value JSON cannot hold fails there
            else:
                value = _checked_scalar(kind.name, name, value, bool_field)
            if json_text and value is not None:
                value = _json_value(kind.name, name, value)
            if json_column:
                value = _json_text(value)  # what it raises is the record's: see make()
            row.append(value)
        if kind.keyed_by_record:
            row.append(record_key)
        if kind.derived:
            row.append(f"{simulation_id}:{row[_AGENT_ID]}-{row[_STEP_NUMBER]}")
        return tuple(row)


# agent_state rows: [simulation_id, step_number, agent_id, ...]; its derived id is built from these.
_STEP_NUMBER, _AGENT_ID = 1, 2


def _checked_scalar(kind_name: str, name: str, value: Any, bool_field: bool) -> Any:
    if value.__class__ not in _SCALARS:
        value = plain_scalar(value)
        if value.__class__ not in _SCALARS:
            raise _value_error(kind_name, name, value, "a single value (text, number or bool)")
    if bool_field and value.__class__ is not bool and value not in (0, 1):
        raise _value_error(kind_name, name, value, "a bool (or 0/1)")
    if value.__class__ is int and not _INT64_MIN <= value <= _INT64_MAX:
        raise _value_error(kind_name, name, value, "an integer of at most 64 bits")
    return value


def _json_value(kind_name: str, name: str, value: Any) -> str:
    try:
        return _json_text(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _value_error(kind_name, name, value, f"a JSON value ({_cause(exc)})") from None


def _value_error(kind: str, name: str, value: Any, expected: str) -> RecordError:
    try:
        shown = f"{value!r:.60}"
    except Exception:  # noqa: BLE001 - a value whose repr raises is still named by its type
        shown = "(no repr)"
    return RecordError(f"{kind}: field {name!r} must be {expected}; got {type(value).__name__} {shown}")


def _cause(exc: BaseException) -> str:
    """The exception as a reason: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__



def _fast_maker(plan: tuple, careful: Callable[[str, str, Any], tuple[Any, ...]]) -> Callable[[str, str, Any], tuple[Any, ...]]:
    """A function laying one kind's record out, generated for the kind: one straight line per field
    for the usual values (a float, a str, a bool, an int of 64 bits, None where the field may be
    absent, JSON text). Anything else (a numpy value, a missing required field, a default to fill,
    a value that fails) goes to ``careful``, which returns the same row or raises the reason."""
    kind, steps, no_simulation_id = plan
    lines = ["def make(simulation_id, record_key, fields):",
             "    if fields.__class__ is not dict or not fields.keys() <= ALLOWED:",
             "        return careful(simulation_id, record_key, fields)",
             "    get = fields.get",
             "    try:"]
    values = ["None" if no_simulation_id else "simulation_id"]
    for index, (name, required, default, types, bool_field, json_text, json_column) in enumerate(steps):
        value = f"v{index}"
        values.append(value)
        lines.append(f"        {value} = fields[{name!r}]" if required else f"        {value} = get({name!r})")
        if json_text or json_column or types is JSON_VALUE:
            if required:
                lines.append(f"        if {value} is None: return careful(simulation_id, record_key, fields)")
            elif default is not None:
                lines.append(f"        if {value} is None: return careful(simulation_id, record_key, fields)")
            if json_text:
                lines.append(f"        if {value} is not None: {value} = dumps({value})")
            if json_column:
                lines.append(f"        {value} = dumps({value})")
            continue
        absent_ok = not required and default is None
        if bool_field:
            usual = f"(c is bool or c is int or c is float) and ({value} == 0 or {value} == 1)"
        else:  # the class the field usually holds is tested first
            tests = {float: "c is float", str: "c is str", int: f"(c is int and {MIN} <= {value} <= {MAX})"}
            order = [t for t in types if t in tests] + [t for t in (float, str, int) if t not in types]
            usual = " or ".join([tests[t] for t in dict.fromkeys(order)] + ["c is bool"])
        lines += [f"        c = {value}.__class__",
                  f"        if not ({usual}" + (f" or {value} is None" if absent_ok else "") + "):",
                  "            return careful(simulation_id, record_key, fields)"]
    if kind.keyed_by_record:
        values.append("record_key")
    if kind.derived:
        values.append(f"f'{{simulation_id}}:{{v{_AGENT_ID - 1}}}-{{v{_STEP_NUMBER - 1}}}'")
    lines += ["    except Exception:  # noqa: BLE001 - the careful path says why",
              "        return careful(simulation_id, record_key, fields)",
              f"    return ({', '.join(values)},)"]
    namespace = {"ALLOWED": kind.allowed, "careful": careful, "dumps": _json_text}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built above from the kind's own field names
    return namespace["make"]


MIN, MAX = _INT64_MIN, _INT64_MAX
