"""The stream entry format: one field, ``r``, holding msgpack bytes.

Payload: ``[format_version, kind, producer_id, seq, fields]``. ``producer_id`` + ``seq`` is the
record's identity (its ``record_key``): a record sent twice (a retried XADD whose reply was
lost, a journal replayed) keeps it, so the sink can ignore the copy.

An *unencodable* record (a value nested deeper than msgpack's 511 levels, a ``__repr__`` that
raises, anything the encoder cannot turn into bytes) is sent marked: its ``fields`` slot holds a
string, the reason, instead of a map. It keeps its identity, so the producer's sequence numbers
stay contiguous, and :func:`decode` raises RecordError with that reason: the consumer
dead-letters exactly that record, and the producer's sender thread never stops on a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from common.errors import RecordError
from common.records import KINDS, RecordKind

FORMAT_VERSION = 1
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
    """An encoder with its own reusable packer; use one per thread. Never raises for a value:
    what msgpack cannot carry (a datetime, an int past 64 bits) is sent as its repr, and the
    consumer then takes it or dead-letters the record with the reason; a record that cannot be
    encoded even so (nesting past msgpack's depth or Python's recursion limit, a failing
    ``__repr__``) is sent marked unencodable (see the module docstring)."""
    packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)

    def encode(kind: str, producer_id: str, seq: int, fields: dict[str, Any]) -> bytes:
        nonlocal packer
        try:
            return packer.pack((FORMAT_VERSION, kind, producer_id, seq, fields))
        except Exception:  # noqa: BLE001 - any value may fail; the fallback below says why
            packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)  # drop any half-packed state
        try:
            return packer.pack((FORMAT_VERSION, kind, producer_id, seq, _plain(fields)))
        except Exception as exc:  # noqa: BLE001 - RecursionError, ValueError (depth), a raising __repr__
            packer = msgpack.Packer(use_bin_type=True, default=_to_builtin)
            return packer.pack((FORMAT_VERSION, kind, producer_id, seq, unencodable_reason(exc)))

    return encode


def decode(payload: bytes | None) -> Record:
    """Decode an entry's payload, or raise RecordError saying what is wrong with it."""
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
    if version != FORMAT_VERSION:
        raise RecordError(f"unknown format version {version!r}; this consumer reads {FORMAT_VERSION}")
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
