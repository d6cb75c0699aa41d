"""The stream entry format: one field, ``r``, holding msgpack bytes, in one of two versions.

**Format 2, a record batch** (what producers write): many records in one entry, so that an entry,
not a record, is the unit of XADD, delivery, claim and XACK::

    [2, rows_version, layout, producer_id, first_seq, count, groups, rejects]
    groups:  [[kind, offsets, rows], ...]      one per kind present in the batch
    rejects: [[offset, kind, reason, fields], ...]

Record ``offset`` of the batch has sequence number ``first_seq + offset``; its identity is
``producer_id:seq`` (its ``record_key``) or its table's natural key, so a batch sent twice (a
retried XADD whose reply was lost, a journal replayed) writes nothing twice. Each row is laid out
by the producer's sender (:mod:`common.rows`, version ``rows_version``): the consumer hands a
group's rows to ``executemany`` as they are. A record the sender could not lay out (a value no
column takes, a value that cannot be encoded) travels as a *reject* with its reason, in its place
in the sequence: the consumer dead-letters exactly that record, with the entry id and its offset,
and the producer's sender thread never stops on a value.

**Format 1, one record per entry** (producers before batches; streams and journals written then):
``[1, kind, producer_id, seq, fields]``, with ``fields`` a map, or a string (the reason) for a
record its producer marked unencodable. Still read: :func:`decode_entry` lays its record out with
the same :class:`~common.rows.RowMaker` the sender uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import msgpack

from common.errors import RecordError
from common.records import KINDS, RecordKind

RECORD_FORMAT = 1
"""Format 1: one record per entry (still read; written only by :func:`make_encoder`)."""
BATCH_FORMAT = 2
"""Format 2: a record batch."""
FORMAT_VERSION = BATCH_FORMAT
"""The format producers write."""
ENTRY_FIELD = b"r"
MISSING_FIELD = b""
"""Payload of an entry that exists but has no ``r`` field (distinct from a trimmed entry's None)."""


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record: its kind, its identity and its fields (not yet type-checked)."""

    kind: RecordKind
    producer_id: str
    seq: int
    fields: dict[str, Any]

    @property
    def record_key(self) -> str:
        """Identity of the record, stable across retries and replays."""
        return f"{self.producer_id}:{self.seq}"

    def to_row(self, simulation_id: str) -> dict[str, Any]:
        """The table row, type-checked (RecordError if a field is wrong)."""
        return self.kind.to_row(simulation_id, self.record_key, self.fields)


def _to_builtin(value: Any) -> Any:
    """Numpy scalars and arrays (common in simulations) become plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    # A value msgpack cannot carry is sent as its repr: the consumer then rejects the field by
    # type and dead-letters the record with the reason, rather than the producer dropping it.
    return repr(value)


def _plain(value: Any) -> Any:
    """``value`` with everything msgpack cannot carry replaced by its repr, recursively."""
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    converted = _to_builtin(value)  # numpy scalar or array -> Python value; anything else -> repr
    return repr(value) if converted is value else _plain(converted)


_REASON_CHARS = 500


def unencodable_reason(exc: BaseException) -> str:
    """The one-line reason an unencodable record carries in place of its fields."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}"[:_REASON_CHARS]


def make_encoder() -> Callable[[str, str, int, dict[str, Any]], bytes]:
    """A format 1 (one record per entry) encoder, for entries of older producers. An encoder with its own reusable packer; use one per thread. Never raises for a value:
    what msgpack cannot carry (a datetime, an int past 64 bits) is sent as its repr, and the
    consumer then takes it or dead-letters the record with the reason; a record that cannot be
    encoded even so (nesting past msgpack's depth or Python's recursion limit, a failing
    ``__repr__``) is sent marked unencodable (see the module docstring)."""
    packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)

    def encode(kind: str, producer_id: str, seq: int, fields: dict[str, Any]) -> bytes:
        nonlocal packer
        try:
            return packer.pack((RECORD_FORMAT, kind, producer_id, seq, fields))
        except Exception:  # noqa: BLE001 - any value may fail; the fallback below says why
            packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)  # drop any half-packed state
        try:
            return packer.pack((RECORD_FORMAT, kind, producer_id, seq, _plain(fields)))
        except Exception as exc:  # noqa: BLE001 - RecursionError, ValueError (depth), a raising __repr__
            packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
            return packer.pack((RECORD_FORMAT, kind, producer_id, seq, unencodable_reason(exc)))

    return encode


def decode(payload: bytes | None) -> Record:
    """Decode a format 1 entry's payload, or raise RecordError saying what is wrong with it."""
    if payload is None:
        raise RecordError("entry has no payload: it was trimmed or deleted before it was persisted")
    if payload == MISSING_FIELD:
        raise RecordError(f"entry has no {ENTRY_FIELD.decode()!r} field: it was not written by a simstream producer")
    try:
        unpacked = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RecordError(f"payload is not valid msgpack ({type(exc).__name__}: {_said(exc)})") from exc
    if not isinstance(unpacked, list) or len(unpacked) != 5:
        raise RecordError("payload is not a [version, kind, producer, seq, fields] array")
    version, kind_name, producer_id, seq, fields = unpacked
    if version != RECORD_FORMAT:
        raise RecordError(f"unknown format version {version!r}; this consumer reads {RECORD_FORMAT} and {BATCH_FORMAT}")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise RecordError(f"unknown record kind {kind_name!r}")
    if isinstance(fields, str):  # marked unencodable by its producer: the reason is in place of the fields
        raise RecordError(f"{kind_name} record {producer_id}:{seq} could not be encoded by its producer ({fields})")
    if not isinstance(producer_id, str) or not isinstance(seq, int) or not isinstance(fields, dict):
        raise RecordError("payload has a malformed producer id, sequence number or fields map")
    return Record(kind, producer_id, seq, fields)


def _said(exc: Exception) -> str:
    """What ``exc`` says; its class's own description when its message is empty (msgpack's
    FormatError has none)."""
    return str(exc).strip() or (type(exc).__doc__ or type(exc).__name__).strip().splitlines()[0].rstrip(".")


def entry_payload(entry_fields: dict[bytes, bytes] | None) -> bytes | None:
    """The msgpack bytes of a stream entry's field map (None if the entry was trimmed)."""
    if entry_fields is None:
        return None
    return entry_fields.get(ENTRY_FIELD, MISSING_FIELD)


# -- format 2: record batches ------------------------------------------------------------------

BufferedRecord = tuple[str, int, dict[str, Any]]
"""(kind, seq, fields) as a producer buffers a record."""


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One format 2 entry ready to append: its payload and the records it holds."""

    payload: bytes
    producer_id: str
    first_seq: int
    last_seq: int
    records: int
    layout: str | None = None


class BatchEncoder:
    """Lays a producer's records out as rows and packs them into format 2 entries of at most
    ``max_records`` records and (unless one record alone is larger) ``max_bytes`` bytes.

    Never raises for a value: a record that cannot be laid out or encoded becomes a reject with
    its reason (see the module docstring). Use one per thread (it keeps a packer).
    """

    def __init__(self, simulation_id: str, producer_id: str, layout: str, max_records: int = 250,
                 max_bytes: int = 256 * 1024) -> None:
        from common.layouts import layout_named
        from common.rows import ROWS_VERSION, RowMaker

        self.simulation_id = simulation_id
        self.producer_id = producer_id
        self.layout = layout
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._rows = RowMaker(layout_named(layout))
        self._rows_version = ROWS_VERSION
        self._packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
        self._key_prefix = f"{producer_id}:"
        self._makers: dict[str, Callable[[str, str, Any], tuple[Any, ...]]] = {}

    def encode(self, records: list[BufferedRecord]) -> list[EncodedBatch]:
        """``records`` (in sequence order) as one or more entries, in order."""
        return [batch for start in range(0, len(records), self.max_records)
                for batch in self._encode(records[start:start + self.max_records])]

    def _encode(self, records: list[BufferedRecord]) -> list[EncodedBatch]:
        payload = self._payload(records)
        if len(payload) > self.max_bytes and len(records) > 1:
            middle = len(records) // 2
            return self._encode(records[:middle]) + self._encode(records[middle:])
        first, last = records[0][1], records[-1][1]
        return [EncodedBatch(payload, self.producer_id, first, last, len(records), self.layout)]

    def _payload(self, records: list[BufferedRecord], unpackable: dict[int, str] | None = None) -> bytes:
        """One entry's payload. ``unpackable``: reasons for records msgpack could not pack (by seq)."""
        makers, simulation_id, prefix = self._makers, self.simulation_id, self._key_prefix
        first_seq = records[0][1]
        groups: dict[str, tuple[list[int], list[Any]]] = {}
        rejects = []
        for kind, seq, fields in records:  # the sender's hot loop: kept flat on purpose
            try:
                if unpackable and seq in unpackable:
                    raise RecordError(unpackable[seq])
                row = (makers.get(kind) or self._maker(kind))(simulation_id, f"{prefix}{seq}", fields)
            except RecordError as exc:
                rejects.append((seq - first_seq, kind, str(exc), None if unpackable and seq in unpackable else fields))
                continue
            group = groups.get(kind)
            if group is None:
                group = groups[kind] = ([], [])
            group[0].append(seq - first_seq)
            group[1].append(row)
        header = (BATCH_FORMAT, self._rows_version, self.layout, self.producer_id, first_seq, len(records))
        body = [(kind, offsets, rows) for kind, (offsets, rows) in groups.items()]
        try:
            return self._packer.pack((*header, body, rejects))
        except Exception:  # noqa: BLE001 - a value msgpack refuses (a lone surrogate): find its record
            self._packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
            if unpackable is not None:
                raise
        return self._payload(records, self._unpackable(records))

    def _maker(self, kind: str) -> Callable[[str, str, Any], Any]:
        maker = self._makers[kind] = self._rows.maker_for(kind)
        return maker

    def _unpackable(self, records: list[BufferedRecord]) -> dict[int, str]:
        """Why each record msgpack cannot pack (as a row, or else as its fields) cannot be sent."""
        reasons = {}
        for kind, seq, fields in records:
            try:
                try:
                    self._packer.pack(self._rows.make(kind, self.simulation_id, f"{self._key_prefix}{seq}", fields))
                except RecordError as rejected:  # sent as a reject with its fields, if they pack
                    try:
                        self._packer.pack(fields)
                    except Exception as exc:  # noqa: BLE001
                        raise _Unpackable(f"{rejected}; {kind} record {self.producer_id}:{seq} could not be "
                                          f"encoded by its producer ({unencodable_reason(exc)})") from exc
            except _Unpackable as exc:
                self._packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
                reasons[seq] = str(exc)
            except Exception as exc:  # noqa: BLE001 - the packer is reset; the record carries why
                self._packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
                reasons[seq] = f"{kind} record {self.producer_id}:{seq} could not be encoded by its producer " \
                               f"({unencodable_reason(exc)})"
        return reasons


class _Unpackable(Exception):
    """A record neither its row nor its fields can be packed of (with the reasons)."""


@dataclass(slots=True)
class DecodedEntry:
    """An entry's records as the sink writes them: rows grouped by kind, and rejects.

    ``groups``: (kind, offsets, rows), each row a tuple in :func:`~common.rows.row_columns` order;
    ``rejects``: (offset, reason). ``records``: how many records
    the entry holds (committed plus rejected). :meth:`letter_payload` is what a dead letter of one
    record keeps: an entry payload holding that record alone, which ``simstream dlq retry`` appends.
    """

    version: int
    producer_id: str
    first_seq: int
    records: int
    groups: list[tuple[str, Sequence[int], Sequence[tuple]]]
    rejects: list[tuple[int, str]]
    _payload: bytes
    _layout: str = ""
    _reject_items: dict[int, tuple[Any, ...]] | None = None

    def letter_payload(self, offset: int) -> bytes:
        """A payload holding only the record at ``offset`` (a format 1 entry: the entry itself)."""
        if self.version == RECORD_FORMAT:
            return self._payload
        seq = self.first_seq + offset
        header = (BATCH_FORMAT, _rows_version(), self._layout, self.producer_id, seq, 1)
        if self._reject_items and offset in self._reject_items:
            _, kind, reason, fields = self._reject_items[offset]
            return msgpack.packb((*header, [], [[0, kind, reason, fields]]), use_bin_type=True)
        for kind, offsets, rows in self.groups:
            if offset in offsets:
                return msgpack.packb((*header, [[kind, [0], [rows[offsets.index(offset)]]]], []), use_bin_type=True)
        raise KeyError(offset)


def _rows_version() -> int:
    from common.rows import ROWS_VERSION

    return ROWS_VERSION


def decode_entry(payload: bytes | None, simulation_id: str, rows) -> DecodedEntry:
    """Decode an entry of either format; a format 1 record is laid out by ``rows`` (a
    :class:`~common.rows.RowMaker` for the simulation's layout). Raises RecordError if the entry
    as a whole is unreadable (trimmed, not msgpack, an unknown version or shape); a record that
    cannot become a row is returned among the rejects."""
    if payload is None or payload == MISSING_FIELD:
        decode(payload)  # raises, saying which
    try:
        # Arrays as tuples: a group's rows go to the driver's executemany as they are (SQLAlchemy
        # takes a list of tuples, not of lists), with no per-row conversion in the consumer.
        unpacked = msgpack.unpackb(payload, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RecordError(f"payload is not valid msgpack ({type(exc).__name__}: {_said(exc)})") from exc
    if isinstance(unpacked, tuple) and unpacked and unpacked[0] == RECORD_FORMAT:
        return _decoded_record(payload, simulation_id, rows)
    if not isinstance(unpacked, tuple) or not unpacked or unpacked[0] != BATCH_FORMAT:
        version = unpacked[0] if isinstance(unpacked, tuple) and unpacked else None
        if isinstance(unpacked, tuple) and len(unpacked) in (5, 8):
            raise RecordError(f"unknown format version {version!r}; this consumer reads {RECORD_FORMAT} and {BATCH_FORMAT}")
        raise RecordError("payload is not a [version, kind, producer, seq, fields] array nor a record batch")
    return _decoded_batch(payload, unpacked)


def _decoded_record(payload: bytes, simulation_id: str, rows) -> DecodedEntry:
    record = decode(payload)
    try:
        row = rows.make(record.kind.name, simulation_id, record.record_key, record.fields)
    except RecordError as exc:
        return DecodedEntry(RECORD_FORMAT, record.producer_id, record.seq, 1, [], [(0, str(exc))], payload)
    return DecodedEntry(RECORD_FORMAT, record.producer_id, record.seq, 1, [(record.kind.name, (0,), [tuple(row)])], [],
                        payload)


def _decoded_batch(payload: bytes, unpacked: tuple) -> DecodedEntry:
    if len(unpacked) != 8:
        raise RecordError("record batch is not an array of 8 items")
    _, rows_version, layout, producer_id, first_seq, count, groups, rejects = unpacked
    if rows_version != _rows_version():
        raise RecordError(f"unknown row layout version {rows_version!r}; this consumer reads {_rows_version()}")
    if not isinstance(producer_id, str) or not isinstance(first_seq, int) or not isinstance(count, int):
        raise RecordError("record batch has a malformed producer id, sequence number or count")
    if not isinstance(groups, tuple) or not isinstance(rejects, tuple):
        raise RecordError("record batch has malformed groups or rejects")
    seen = 0
    for group in groups:
        if (not isinstance(group, tuple) or len(group) != 3 or group[0] not in KINDS or not isinstance(group[1], tuple)
                or not isinstance(group[2], tuple) or len(group[1]) != len(group[2])):
            raise RecordError("record batch has a malformed group (unknown kind, or offsets and rows that differ)")
        seen += len(group[1])
    reject_items = {}
    for item in rejects:
        if not isinstance(item, tuple) or len(item) != 4 or not isinstance(item[0], int):
            raise RecordError("record batch has a malformed reject")
        reject_items[item[0]] = item
    if seen + len(reject_items) != count:
        raise RecordError(f"record batch says it holds {count} records but carries {seen + len(reject_items)}")
    return DecodedEntry(BATCH_FORMAT, producer_id, first_seq, count, list(groups),
                        [(offset, str(item[2])) for offset, item in reject_items.items()], payload,
                        layout if isinstance(layout, str) else "", reject_items)


def describe(payload: bytes) -> EncodedBatch | None:
    """What an entry payload holds, from its header: producer, sequence numbers, record count
    and layout (a format 1 start record names it). None if the payload is unreadable; it is
    still appended, and the consumer dead-letters it."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(payload)
        size = unpacker.read_array_header()
        version = unpacker.unpack()
        if version == BATCH_FORMAT and size == 8:
            _, layout, producer_id, first_seq, count = (unpacker.unpack() for _ in range(5))
        elif version == RECORD_FORMAT and size == 5:
            kind, producer_id, first_seq, fields = (unpacker.unpack() for _ in range(4))
            layout, count = fields.get("layout") if kind == "simulation" and isinstance(fields, dict) else None, 1
        else:
            return None
    except Exception:  # noqa: BLE001 - unreadable: the consumer dead-letters it with the reason
        return None
    if not isinstance(producer_id, str) or type(first_seq) is not int or type(count) is not int or count < 1:
        return None  # no identity to keep: appended as it is, and the consumer dead-letters it
    return EncodedBatch(payload, producer_id, first_seq, first_seq + count - 1, count,
                        layout if isinstance(layout, str) else None)
