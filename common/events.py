"""Log lines as events with fields: ``event(log, logging.INFO, "worker.started", consumer=name)``.

Every lifecycle line simstream logs is an event: a stable name and fields. The text format shows
them as today's ``worker.started consumer=host-0 group=simstream`` line; ``--log-json`` emits the
name as ``"event"`` and each field as a key of its own, so a log pipeline filters on ``consumer``
or ``simulation`` and tests assert on the event and its fields, not on text. The fields travel on
the ``LogRecord`` (stdlib ``extra=``), so a worker under a supervisor hands them over its log
queue unchanged. The standard library is enough here: no structlog, one dependency fewer.
"""

from __future__ import annotations

import logging
from typing import Any

EVENT_ATTR = "event"
FIELDS_ATTR = "fields"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(name: str, fields: dict[str, Any]) -> str:
    """The text line of an event: its name, then ``key=value`` for each field, in order."""
    return " ".join([name, *(f"{key}={_shown(value)}" for key, value in fields.items())])


def event(logger: logging.Logger, level: int, name: str, /, *, exc_info: Any = None, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` at ``level`` (nothing is rendered if the level is off).

    Field values that are not plain JSON values (an exception, a path) are kept as their text.
    """
    if not logger.isEnabledFor(level):
        return
    plain = {key: value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
             for key, value in fields.items()}
    logger.log(level, "%s", render(name, plain), exc_info=exc_info, stacklevel=2,
               extra={EVENT_ATTR: name, FIELDS_ATTR: plain})


def fields_of(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    """The event name and fields a log record carries (None and {} for a line logged otherwise)."""
    return getattr(record, EVENT_ATTR, None), dict(getattr(record, FIELDS_ATTR, None) or {})
