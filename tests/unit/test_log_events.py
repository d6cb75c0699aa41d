"""A lifecycle log line is an event with fields: ``--log-json`` carries the event name and each
field as JSON keys, and the text format reads as the ``name key=value`` line it always was."""

from __future__ import annotations

import json
import logging
import logging.handlers
import pickle

from common.events import event, fields_of
from consumer.logs import JsonFormatter, MaskingFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(message)s"


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logged(emit) -> logging.LogRecord:
    """The one record ``emit(logger)`` logs on a fresh logger."""
    logger = logging.getLogger("tests.unit.log_events")
    handler = Captured()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    [record] = handler.records
    return record


def test_an_event_renders_as_the_name_and_key_value_text_line_it_always_was():
    # Given: an event and the same line logged the old way
    record = logged(lambda log: event(log, logging.WARNING, "worker.transient_error", consumer="host-0",
                                      error=ConnectionError("refused"), retry_in_s=round(2.25, 1)))
    old = logged(lambda log: log.warning("worker.transient_error consumer=%s error=%s retry_in_s=%.1f",
                                         "host-0", ConnectionError("refused"), 2.25))

    # Then: the text line is the same, and the record carries the event and its fields
    text = MaskingFormatter(TEXT_FORMAT)
    assert record.getMessage() == old.getMessage()
    assert text.format(record).split(" ", 3)[3] == text.format(old).split(" ", 3)[3]
    assert fields_of(record) == ("worker.transient_error",
                                 {"consumer": "host-0", "error": "refused", "retry_in_s": 2.2})
    assert fields_of(old) == (None, {})


def test_a_json_line_carries_the_event_and_each_field_as_keys():
    # Given: an event with a field named like a key every JSON line has
    record = logged(lambda log: event(log, logging.INFO, "supervisor.worker_died", slot=2, exit=-9,
                                      restarts=1, restart_in_s=0.5, pid=4242))

    # When: it is formatted as JSON
    line = json.loads(JsonFormatter().format(record))

    # Then: the event and its fields are keys of their own, typed, the colliding one renamed
    assert line["event"] == "supervisor.worker_died"
    assert (line["slot"], line["exit"], line["restarts"], line["restart_in_s"]) == (2, -9, 1, 0.5)
    assert line["event_pid"] == 4242 and line["pid"] == record.process
    assert line["level"] == "INFO" and line["logger"] == "tests.unit.log_events"
    assert line["message"] == "supervisor.worker_died slot=2 exit=-9 restarts=1 restart_in_s=0.5 pid=4242"


def test_a_json_line_masks_passwords_in_fields_and_a_plain_line_has_no_event_key():
    record = logged(lambda log: event(log, logging.INFO, "sink.opened", simulation="sim-1",
                                      database="postgresql://simstream:hunter2@db:5432/sims"))
    line = json.loads(JsonFormatter().format(record))
    assert "hunter2" not in json.dumps(line) and line["simulation"] == "sim-1"

    plain = json.loads(JsonFormatter().format(logged(lambda log: log.info("free text"))))
    assert "event" not in plain and plain["message"] == "free text"


def test_an_event_keeps_its_fields_across_a_worker_log_queue():
    # Given: an event record as a worker hands it to its supervisor (pickled over a queue)
    record = logged(lambda log: event(log, logging.INFO, "worker.started", consumer="host-1", group="g"))
    handed = pickle.loads(pickle.dumps(logging.handlers.QueueHandler(None).prepare(record)))

    # Then: the supervisor's JSON line still has the event and its fields
    line = json.loads(JsonFormatter().format(handed))
    assert (line["event"], line["consumer"], line["group"]) == ("worker.started", "host-1", "g")
    assert fields_of(handed) == ("worker.started", {"consumer": "host-1", "group": "g"})
