"""Values for PostgreSQL columns: converted where nothing is lost, else rejected with the cause.

SQLite needs none of this: its column affinity stores whatever the reference simulation's own
path would store (an int in a text column as text, an integral float in an integer column as an
integer). PostgreSQL refuses a value of another type instead, so the sink converts the lossless
cases itself, per record, and a value that would lose something dead-letters its record alone.
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Boolean, Column, Float, Integer, String, Text

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
