"""Logging for the ``simstream`` processes: plain lines or one JSON object per line.

Both formats pass every finished line through :func:`common.masking.mask_secrets`, so a
password never reaches the log at any level, even in a message quoting a library's error.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from typing import Any, Callable

from common.events import fields_of
from common.masking import mask_secrets


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message, and for an event
    (:mod:`common.events`) its name as ``event`` and each of its fields as a key (passwords
    masked in every text value)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        name, fields = fields_of(record)
        if name is not None:
            line["event"] = name
            for key, value in fields.items():
                shown = mask_secrets(value) if isinstance(value, str) else value
                line[key if key not in line and key != "message" else f"event_{key}"] = shown
        line["message"] = mask_secrets(record.getMessage())
        if record.exc_info:
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(line)


class MaskingFormatter(logging.Formatter):
    """The plain ``time level pid message`` line (UTC), passwords masked."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class CurrentStderrHandler(logging.StreamHandler):
    """Writes each line to whatever ``sys.stderr`` is at that moment, not the one it started
    with: a live progress bar swaps in a proxy that prints lines above the bar."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass  # always the current sys.stderr


def configure_logging(level: str = "INFO", as_json: bool = False, queue=None) -> None:
    """Send simstream's log lines to stderr at ``level``; with ``queue`` (a worker under a
    supervisor that draws a progress bar) send them to the supervisor instead, which prints them
    above its bar (:func:`forward_logs`)."""
    if queue is not None:
        handler: logging.Handler = logging.handlers.QueueHandler(queue)
    else:
        handler = CurrentStderrHandler()
        if as_json:
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(process)d %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def forward_logs(queue) -> Callable[[], None]:
    """Print the log records workers put on ``queue`` through this process's own handlers (each
    keeps its worker's pid and time); returns a function that prints what is left, then stops."""
    listener = logging.handlers.QueueListener(queue, *logging.getLogger().handlers, respect_handler_level=True)
    listener.start()
    return listener.stop
