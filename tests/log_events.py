"""Reading the events a ``simstream`` process logged with ``--log-json`` (one JSON object a line),
so a test asserts on an event and its fields, not on a substring of the text line."""

from __future__ import annotations

import json
from typing import Any


def events_in(output: str) -> list[dict[str, Any]]:
    """Every event line of ``output``, in order (lines that are not JSON events are skipped)."""
    found = []
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and "event" in parsed:
            found.append(parsed)
    return found


def events_named(output: str, name: str) -> list[dict[str, Any]]:
    """The lines of event ``name`` in ``output``, each a dict of its fields."""
    return [line for line in events_in(output) if line["event"] == name]


def has_event(output: str, name: str, **fields: Any) -> bool:
    """True when ``output`` holds event ``name`` with (at least) these field values."""
    return any(all(line.get(key) == value for key, value in fields.items()) for line in events_named(output, name))
