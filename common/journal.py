"""The producer's on-disk journal: where records wait while Redis cannot take them.

One append-only file per producer: ``<dir>/<simulation_id>~<producer_id>.journal``. Each frame
is a 4-byte big-endian length and the record's encoded payload, exactly the bytes that would
have been XADDed, so a replayed record keeps its identity and the sink ignores copies. A frame of
length 0 marks the simulation complete (its producer was closed while Redis was away). A frame
torn by a crash mid-write is ignored: it was never reported as journaled.

Replaying sends the frames in order, then removes the file; a replay that fails half-way leaves
the file, and the next replay sends all of it again (the copies write nothing new). A replay
refreshes the simulation's heartbeat (:mod:`common.heartbeat`): a simulation shown as abandoned
because its producer died comes back to life when its journal is replayed. The folder is created
when a journal is first appended to, and producers remove it once a replay leaves it empty.

Journals hold simulation data: the folder is created readable by its owner only (0700) and each
file too (0600), whatever the umask.

Appending and replaying hold an exclusive ``flock`` on the file, so a replay by another process
(``simstream replay-journal``, a second producer of the simulation) never removes frames its
owner appended after the replay read the file: an append that waited on the lock finds the file
removed and starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import msgpack
import redis

from common import faults
from common.codec import ENTRY_FIELD
from common.failover import confirm_replicas, require_replicas, slot_client
from common.heartbeat import touch_command
from common.keys import Keys
from common.layouts import META_FIELD as LAYOUT_FIELD

_FRAME_HEADER = struct.Struct(">I")
_COMPLETE_MARKER = b""
SUFFIX = ".journal"
FILE_MODE = 0o600
DIR_MODE = 0o700


def journal_path(directory: str | Path, simulation_id: str, producer_id: str) -> Path:
    """Where a producer journals its records."""
    return Path(directory) / f"{simulation_id}~{producer_id}{SUFFIX}"


def simulation_of(path: str | Path) -> str:
    """The simulation a journal file belongs to, from its name."""
    return Path(path).name.rsplit("~", 1)[0]


def journals_for(directory: str | Path, simulation_id: str) -> list[Path]:
    """Journals an earlier producer of ``simulation_id`` left behind, oldest first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{simulation_id}~*{SUFFIX}"), key=lambda p: p.stat().st_mtime)


class Journal:
    """Appends encoded records to one producer's journal file."""

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.frames = 0

    def append(self, payloads: list[bytes]) -> None:
        """Write ``payloads`` as frames; they are on disk (or in the OS cache) when this returns."""
        _make_folder(self.path.parent)
        with _locked(self.path, "ab") as handle:
            handle.write(b"".join(_FRAME_HEADER.pack(len(p)) + p for p in payloads))
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        self.frames += len(payloads)

    def mark_complete(self) -> None:
        """Record that the simulation was closed: a replay marks it complete after its records."""
        self.append([_COMPLETE_MARKER])

    def exists(self) -> bool:
        return self.path.exists()


def _make_folder(folder: Path) -> None:
    """Create the journal folder (and its parents) owner-only; an existing folder is left as it is."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return  # another producer created it first
    os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask


def _owner_only(path: str, flags: int) -> int:
    """open()'s opener: a file it creates is owner-only (0600; a umask only removes bits), and one
    it appends to that others could read (left by an older version) is made so."""
    fd = os.open(path, flags, FILE_MODE)
    if flags & os.O_CREAT:
        status = os.fstat(fd)
        if status.st_mode & 0o077 and status.st_uid == os.geteuid():
            os.fchmod(fd, FILE_MODE)
    return fd


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[BinaryIO]:
    """``path`` opened and exclusively locked; FileNotFoundError if it is gone (read modes)."""
    while True:
        try:
            handle = open(path, mode, opener=_owner_only)
        except FileNotFoundError:
            if "a" not in mode:
                raise
            # A producer removes the folder once a replay leaves it empty: make it (again).
            _make_folder(path.parent)
            continue
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        if os.fstat(handle.fileno()).st_nlink > 0:
            break
        handle.close()  # replayed and removed while we waited for the lock: open the path anew
    try:
        yield handle
    finally:
        handle.close()  # releases the lock


def count_records(path: str | Path) -> int:
    """How many records a journal holds, read from its frame headers only (the file may be large)."""
    records = 0
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        while handle.tell() + _FRAME_HEADER.size <= size:
            (length,) = _FRAME_HEADER.unpack(handle.read(_FRAME_HEADER.size))
            if handle.tell() + length > size:
                break  # torn final frame
            records += length > 0  # a zero-length frame is the completion marker
            handle.seek(length, os.SEEK_CUR)
    return records


def remove_folder_if_empty(folder: str | Path) -> bool:
    """Remove ``folder`` if it holds nothing (a journal folder a replay emptied); True if removed."""
    try:
        Path(folder).rmdir()
        return True
    except OSError:  # not empty (another producer's journal), already gone, or not ours to remove
        return False


def read_journal(path: str | Path) -> tuple[list[bytes], bool]:
    """The payloads of a journal in order, and whether it carries the completion marker."""
    return _frames(Path(path).read_bytes())


def _frames(data: bytes) -> tuple[list[bytes], bool]:
    payloads, complete, offset = [], False, 0
    while offset + _FRAME_HEADER.size <= len(data):
        (length,) = _FRAME_HEADER.unpack_from(data, offset)
        start, end = offset + _FRAME_HEADER.size, offset + _FRAME_HEADER.size + length
        if end > len(data):
            break  # torn final frame: the write never finished
        if length == 0:
            complete = True
        else:
            payloads.append(data[start:end])
        offset = end
    return payloads, complete


@dataclass(frozen=True)
class ReplayResult:
    """What a journal replay sent; ``last_entry_id``: the id of the last entry it added (None if none)."""

    path: Path
    records: int
    complete: bool
    last_entry_id: str | None = None


def replay_journal(client: redis.Redis, keys: Keys, path: str | Path, batch_size: int = 2000,
                   mark_complete: bool = True, replica_acks: int = 0, replica_wait_ms: int = 1000) -> ReplayResult:
    """Send a journal's records to their simulation's stream in order, then delete the file.

    ``mark_complete=False``: a completion marker in the journal is not applied (a producer of the
    same simulation replaying what an earlier one left is itself still running). ``replica_acks``:
    each batch counts as sent only once WAIT confirms that many replicas have it (the producer's
    setting of the same name).

    Raises redis.RedisError if Redis fails part-way; the file is then kept for the next try.
    The file stays locked from reading to removal (see the module docstring); a journal another
    replay removed meanwhile sends nothing.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(_locked(path, "rb"))
        except FileNotFoundError:
            return ReplayResult(path, 0, False)
        payloads, complete = _frames(handle.read())
        last_entry_id = _send(client, keys, simulation_of(path), payloads, complete and mark_complete, batch_size,
                              (replica_acks, replica_wait_ms))
        path.unlink()
    return ReplayResult(path, len(payloads), complete, last_entry_id)


def _send(client: redis.Redis, keys: Keys, simulation_id: str, payloads: list[bytes], complete: bool,
          batch_size: int, replicas: tuple[int, int] = (0, 0)) -> str | None:
    """Register the simulation, XADD ``payloads`` in order, then record the producers' sequence
    numbers (and completion); each batch refreshes the heartbeat. The stream's commands go to the
    master owning its slot. Returns the id of the last entry added (None if none)."""
    stream, meta = keys.stream(simulation_id), keys.meta(simulation_id)
    require_replicas(client, keys.replica_probe(simulation_id), *replicas)
    client.sadd(keys.registry, simulation_id)
    last_seq: dict[str, int] = {}
    last_entry_id = None
    layouts: list[str] = []
    for start in range(0, len(payloads), batch_size):
        pipe = slot_client(client, stream).pipeline(transaction=False)
        chunk = payloads[start:start + batch_size]
        for payload in chunk:
            pipe.execute_command("XADD", stream, "*", ENTRY_FIELD, payload)
            _note_identity(payload, last_seq, layouts)
        pipe.execute_command(*touch_command(meta))
        last_entry_id = confirm_replicas(pipe, *replicas)[len(chunk) - 1]
        faults.checkpoint("journal_mid_replay", 0)
    pipe = slot_client(client, stream).pipeline(transaction=False)
    pipe.execute_command(*touch_command(meta))
    if layouts:  # before the sequence numbers, as a producer writes them (see common.layouts)
        pipe.hset(meta, LAYOUT_FIELD, layouts[-1])
    for producer_id, seq in last_seq.items():
        pipe.hset(meta, f"seq:{producer_id}", seq)
    if complete:
        pipe.hset(meta, mapping={"complete": 1, "completed_at": time.time()})
    confirm_replicas(pipe, *replicas)
    if isinstance(last_entry_id, bytes):
        last_entry_id = last_entry_id.decode()
    return last_entry_id


def _note_identity(payload: bytes, last_seq: dict[str, int], layouts: list[str]) -> None:
    """Note the record's producer and sequence number, and the layout a start record announces."""
    try:
        _, kind, producer_id, seq, fields = msgpack.unpackb(payload, raw=False)
        last_seq[producer_id] = max(seq, last_seq.get(producer_id, 0))
        if kind == "simulation" and isinstance(fields.get(LAYOUT_FIELD), str):
            layouts.append(fields[LAYOUT_FIELD])
    except Exception:  # a payload the consumer will dead-letter; it still goes to the stream
        pass
