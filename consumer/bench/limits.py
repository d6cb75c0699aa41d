"""The machine's limits for the same work, with no simstream code in the measured loop.

- XADD: redis-py pipelined XADD, one record per entry: each record of the mix as its own msgpack
  payload ``[1, kind, producer, seq, fields]`` (simstream's first entry format), 2,000 per pipeline.
- SQL executemany: the sink's own limit. The driver's ``executemany`` (sqlite3 or psycopg) of the
  mix's rows, prebuilt as tuples before the clock starts, into simstream's tables (same schema and
  indexes, same connection settings: WAL and ``synchronous=NORMAL`` on SQLite), one transaction
  per 10,000 rows; the best of three runs, each into a fresh database.
- pipeline: the minimal loop XREADGROUP -> msgpack unpack -> executemany -> commit -> XACK over
  the XADD limit's entries, 1,000 per read.

Rows are the ones the sink writes (same columns, derived keys, JSON as text), built by the
smallest code that gets them right. The payloads are encoded here, not by simstream's codec, so
the limits stay the same whatever format simstream's producers write.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any, Callable

import msgpack
import redis
from sqlalchemy import JSON

from common.connections import create_sink_engine, ensure_schema
from common.records import KINDS, RecordKind
from common.workload import Mix, mix_records

PRODUCER_BATCH = 2000
CONSUMER_BATCH = 1000
SQL_LIMIT_BATCH = 10_000
"""Rows per transaction of the SQL executemany limit."""
SQL_LIMIT_RUNS = 3
"""The SQL executemany limit is the best of this many runs, each into a fresh database: a limit
taken once, on a machine busy for a moment, would be no limit."""
RECORD_FORMAT = 1  # one record per entry, as the limits write and read them
RAW_PRODUCER_ID = "bench-raw"
ENTRY_FIELD = b"r"  # the one field of an entry, as the producer writes it
GROUP = "bench-limit"


def row_builder(kind: RecordKind, simulation_id: str) -> tuple[list[str], Callable[[dict, str], list]]:
    """(columns, build(fields, record_key) -> values) for the rows of ``kind``."""
    names = [spec.name for spec in kind.fields]
    defaults = [spec.default for spec in kind.fields]
    json_at = [i for i, spec in enumerate(kind.fields)
               if spec.name in kind.json_text or isinstance(kind.table.c[spec.name].type, JSON)]
    columns = ["simulation_id", *names] + (["record_key"] if kind.keyed_by_record else []) \
        + (["id"] if kind.derive else [])
    dumps, keyed, derive = json.dumps, kind.keyed_by_record, kind.derive

    def build(fields: dict, record_key: str) -> list:
        values = [simulation_id] + [fields.get(name, default) for name, default in zip(names, defaults)]
        for i in json_at:
            if values[i + 1] is not None:
                values[i + 1] = dumps(values[i + 1])
        if keyed:
            values.append(record_key)
        if derive:
            values.append(derive(simulation_id, fields)["id"])
        return values

    return columns, build


class RawWriter:
    """The DB-API connection of a sink URL (SQLite or PostgreSQL) and one executemany per table."""

    def __init__(self, db_url: str, simulation_id: str) -> None:
        self.engine = create_sink_engine(db_url)  # same PRAGMAs (WAL, synchronous=NORMAL) as the sink
        ensure_schema(self.engine)
        self.connection = self.engine.raw_connection()
        self.sqlite = self.engine.dialect.name == "sqlite"
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self.statements, self.builders = {}, {}
        for name, kind in KINDS.items():
            columns, self.builders[name] = row_builder(kind, simulation_id)
            self.statements[name] = (f"INSERT INTO {kind.table.name} ({', '.join(columns)}) "
                                     f"VALUES ({', '.join([mark] * len(columns))})")

    def write(self, rows_by_kind: dict[str, list]) -> None:
        """One transaction: an executemany per kind."""
        cursor = self.connection.cursor()
        if self.sqlite:
            cursor.execute("BEGIN")
        for kind, rows in rows_by_kind.items():
            cursor.executemany(self.statements[kind], rows)
        if self.sqlite:
            cursor.execute("COMMIT")
        else:
            self.connection.commit()
        cursor.close()

    def close(self) -> None:
        """Release the connection and the engine."""
        self.connection.close()
        self.engine.dispose()


def xadd_limit(redis_url: str, stream: str, payloads: list[bytes]) -> float:
    """Records/s of redis-py pipelined XADD of ``payloads``."""
    client = redis.Redis.from_url(redis_url)
    started = time.perf_counter()
    for start in range(0, len(payloads), PRODUCER_BATCH):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start:start + PRODUCER_BATCH]:
            pipe.execute_command("XADD", stream, "*", ENTRY_FIELD, payload)
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return len(payloads) / elapsed


RowBatches = list[dict[str, list[tuple]]]
"""Transactions of rows: per transaction, the rows of each kind."""


def prebuilt_rows(mix: Mix, simulation_id: str, batch_rows: int = SQL_LIMIT_BATCH) -> RowBatches:
    """The mix's rows as tuples, ``batch_rows`` per transaction, built before any clock starts."""
    builders = {name: row_builder(kind, simulation_id)[1] for name, kind in KINDS.items()}
    batches: RowBatches = []
    batch: dict[str, list[tuple]] = defaultdict(list)
    for seq, (kind, fields) in enumerate(mix_records(mix), start=1):
        batch[kind].append(tuple(builders[kind](fields, f"{RAW_PRODUCER_ID}:{seq}")))
        if seq % batch_rows == 0:
            batches.append(batch)
            batch = defaultdict(list)
    return batches + [batch] if batch else batches


def sql_insert_limit(db_url: str, simulation_id: str, batches: RowBatches) -> float:
    """Rows/s of executemany of prebuilt ``batches`` into a fresh database, one transaction each."""
    writer = RawWriter(db_url, simulation_id)
    try:
        started = time.perf_counter()
        for rows_by_kind in batches:
            writer.write(rows_by_kind)
        return sum(len(rows) for batch in batches for rows in batch.values()) / (time.perf_counter() - started)
    finally:
        writer.close()


def pipeline_limit(redis_url: str, stream: str, db_url: str, simulation_id: str, payloads: list[bytes]) -> float:
    """Records/s of the minimal XREADGROUP -> unpack -> executemany -> XACK loop."""
    client = redis.Redis.from_url(redis_url)
    client.set_response_callback("XREADGROUP", lambda response, **_: response)  # raw reply, no dicts
    xadd_limit(redis_url, stream, payloads)  # fill the stream (not timed)
    client.xgroup_create(stream, GROUP, id="0")
    writer = RawWriter(db_url, simulation_id)
    unpack, done = msgpack.unpackb, 0
    try:
        started = time.perf_counter()
        while done < len(payloads):
            reply = client.execute_command("XREADGROUP", "GROUP", GROUP, "c0", "COUNT", CONSUMER_BATCH,
                                           "BLOCK", 1000, "STREAMS", stream, ">")
            entries = _stream_entries(reply)
            rows_by_kind: dict[str, list[Any]] = defaultdict(list)
            for _, (_, payload) in entries:  # [id, [b"r", payload]]
                _, kind, producer_id, seq, fields = unpack(payload)
                rows_by_kind[kind].append(writer.builders[kind](fields, f"{producer_id}:{seq}"))
            writer.write(rows_by_kind)
            client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
            done += len(entries)
        return done / (time.perf_counter() - started)
    finally:
        writer.close()
        client.close()


def _stream_entries(reply: Any) -> list:
    """The entries of the one stream in an XREADGROUP reply (RESP2 pairs or RESP3 map)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    return next(iter(pairs))[1]


def raw_payloads(mix: Mix) -> list[bytes]:
    """The mix, one msgpack payload per record (producer id ``bench-raw``)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return [pack((RECORD_FORMAT, kind, RAW_PRODUCER_ID, seq, fields))
            for seq, (kind, fields) in enumerate(mix_records(mix), start=1)]
