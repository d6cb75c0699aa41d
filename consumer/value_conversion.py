"""Values for PostgreSQL columns: converted where nothing is lost, else rejected with the cause.

SQLite needs none of this: its column affinity stores whatever the reference simulation's own
path would store (an int in a text column as text, an integral float in an integer column as an
integer). PostgreSQL refuses a value of another type instead, so the sink converts the lossless
cases itself, per record, and a value that would lose something dead-letters its record alone.
Rows arrive laid out by :mod:`common.rows` (a tuple per record, JSON columns already text), so a
conversion is planned once per kind as (column index, convert) and applied by :func:`converted_row`.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

from sqlalchemy import JSON, Boolean, Column, Float, Integer, String, Table, Text

from common.errors import RecordError

_EXACT_FLOAT_INT = 2**53


def postgresql_conversion(column: Column) -> Callable[[Any], Any] | None:
    """The conversion a value for ``column`` needs on PostgreSQL, or None if it needs none."""
    column_type = column.type
    if isinstance(column_type, Boolean):
        return _to_bool
    if isinstance(column_type, Integer):
        return _to_int
    if isinstance(column_type, Float):
        return _to_float
    if isinstance(column_type, (String, Text)):
        return _to_text
    return None


def row_conversions(columns: Sequence[str], fields: Collection[str],
                    table: Table) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """(index, convert) for each of a row's ``fields`` (its ``columns`` in order) whose column on
    PostgreSQL needs a conversion. JSON columns need none: the row holds their text already."""
    plan = []
    for index, name in enumerate(columns):
        column = table.c[name]
        if name in fields and not isinstance(column.type, JSON):
            convert = postgresql_conversion(column)
            if convert is not None:
                plan.append((index, convert))
    return tuple(plan)


def converted_row(row: Sequence[Any], conversions: tuple[tuple[int, Callable[[Any], Any]], ...]) -> tuple:
    """``row`` with ``conversions`` applied; RecordError if a value would lose something."""
    values = list(row)
    for index, convert in conversions:
        values[index] = convert(values[index])
    return tuple(values)


def _refuse(value: Any, column_kind: str) -> RecordError:
    return RecordError(f"{type(value).__name__} {value!r:.60} cannot be stored in a {column_kind} column "
                       "without losing something")


def _to_bool(value: Any) -> bool | None:
    if value is None or value.__class__ is bool:
        return value
    if value in (0, 1) and not isinstance(value, str):
        return bool(value)
    raise _refuse(value, "boolean")


def _to_int(value: Any) -> int | None:
    if value is None or value.__class__ is int:
        return value
    if value.__class__ is bool:
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _refuse(value, "integer")


def _to_float(value: Any) -> float | None:
    if value is None or value.__class__ is float:
        return value
    if isinstance(value, int) and abs(value) <= _EXACT_FLOAT_INT:
        return float(value)
    if isinstance(value, float):
        return value
    raise _refuse(value, "floating-point")


def _to_text(value: Any) -> str | None:
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, float) else str(value)
    raise _refuse(value, "text")
