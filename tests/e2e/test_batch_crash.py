"""A real worker process SIGKILLed while it holds record batches: between committing them and
acknowledging them (the one unsafe window), or after reading them. Its restarted self replays
them; every row is there once, every entry acknowledged, and the record counts are not doubled.
"""

from __future__ import annotations

import json
import signal

import pytest

from common.faults import CRASH_ENV, CRASH_ONCE_FILE_ENV
from common.keys import Keys
from common.stream_append import RECORDS_ADDED_FIELD
from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, dead_letter_count, produce_workload, wait_for
from tests.log_events import has_event
from tests.integration.test_record_batches import (ACKED_FIELD, meta_of, records_by_entry,
                                                   wait_all_acknowledged)

pytestmark = pytest.mark.timeout(240)

ENTRY_RECORDS = 50


@pytest.mark.newest_redis  # a long run: once, on the newest Redis
@pytest.mark.parametrize("moment", ["after_commit", "after_read"])
def test_a_worker_killed_holding_batch_entries_is_replayed_with_exact_rows_and_counts(
        cli, redis_server, sink_engine, namespace, simulation_id, tmp_path, moment):
    # Given: a running simulation whose 636 records are in the stream as record batches of 50, and a
    # worker reading two entries at a time, armed to SIGKILL itself at its second batch of entries:
    # after committing them and before acknowledging them, or after reading them
    client, keys = redis_server.client(), Keys(namespace)
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=10_000,
                                     entry_records=ENTRY_RECORDS, flush_interval_s=60.0,
                                     journal_dir=str(tmp_path / "journal"))
    expected = produce_workload(logger, steps=30, agents=5)
    logged = logger.flush_all_buffers().logged
    entries = records_by_entry(client, keys, simulation_id)
    assert logged == 636 and [batch.records for batch in entries] == [ENTRY_RECORDS] * 12 + [36]
    assert meta_of(client, keys, simulation_id)[RECORDS_ADDED_FIELD] == str(logged)
    once = tmp_path / "crashed"
    crash_env = {CRASH_ENV: f"{moment}:2", CRASH_ONCE_FILE_ENV: str(once)}

    # When: the supervisor runs it; it dies by SIGKILL and is restarted under the same name
    consumers = cli.start("consume", "--processes", "1", "--batch-size", "2", "--log-json", *FAST,
                          extra_env=crash_env)
    wait_for(once.exists, timeout_s=60, what="the worker to be killed")
    wait_all_acknowledged(client, keys, simulation_id)

    # Then: the kill happened; the restarted worker replayed what it held: every entry is
    # acknowledged, the records in acknowledged entries are counted once, and every row is there once
    wait_for(lambda: has_event(cli.output(consumers), "supervisor.worker_died", exit=-9), timeout_s=30,
             what="the supervisor to report the kill")
    meta = meta_of(client, keys, simulation_id)
    assert (meta.get(ACKED_FIELD), meta[RECORDS_ADDED_FIELD]) == (str(logged), str(logged)), meta
    assert_rows_match(sink_engine, simulation_id, expected)
    # ... and `simstream status` says so, in records
    shown = cli.run("status", "--json")
    assert shown.returncode == 0, shown.stderr
    [stream] = [s for s in json.loads(shown.stdout)["streams"] if s["simulation_id"] == simulation_id]
    assert {name: stream.get(name) for name in ("logged", "records_added", "persisted", "backlog")} == {
        "logged": logged, "records_added": logged, "persisted": logged, "backlog": 0}

    # When: the consumers are stopped, the simulation closes, and a drain finishes it
    consumers.send_signal(signal.SIGTERM)
    assert consumers.wait(60) == 0, cli.output(consumers)[-3000:]
    assert logger.close().complete
    drained = cli.run("consume", "--drain", *FAST)

    # Then: still every row exactly once, nothing dead-lettered, nothing left in Redis
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert_rows_match(sink_engine, simulation_id, expected)
    assert dead_letter_count(sink_engine) == 0
    assert not client.exists(keys.stream(simulation_id))
