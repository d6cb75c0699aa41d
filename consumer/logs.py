"""Logging for the ``simstream`` processes: plain lines or one JSON object per line.

Both formats pass every finished line through :func:`common.masking.mask_secrets`, so a
password never reaches the log at any level, even in a message quoting a library's error.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from common.masking import mask_secrets


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message (passwords masked)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": mask_secrets(record.getMessage()),
        })


class MaskingFormatter(logging.Formatter):
    """The plain ``time level pid message`` line (UTC), passwords masked."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Send simstream's log lines to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(process)d %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
