"""The producer's on-disk journal: where records wait while Redis cannot take them.

One append-only file per producer: ``<dir>/<simulation_id>~<producer_id>.journal``. Each frame
is a 4-byte big-endian length and one stream entry's payload, exactly the bytes that would have
been XADDed: a record batch (:mod:`common.codec` format 2), or, in journals written before
record batches, one record (format 1). A replayed record keeps its identity. A frame of length 0
marks the simulation complete (its producer was closed while Redis was away). A frame torn by a
crash mid-write is ignored: it was never reported as journaled.

Replaying appends the frames in order with :func:`common.stream_append.append_entries`, then
removes the file. A replay that fails half-way leaves the file, and the next replay sends it
again: entries whose producer's sequence number Redis already holds are skipped, so nothing is
added twice (and the sink ignores copies anyway). A replay refreshes the simulation's heartbeat
(:mod:`common.heartbeat`): a simulation shown as abandoned because its producer died comes back
to life when its journal is replayed. The folder is created when a journal is first appended
to, and producers remove it once a replay leaves it empty.

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

import redis

from common import faults
from common.codec import EncodedBatch, describe
from common.failover import confirm_replicas, require_replicas, slot_client
from common.heartbeat import touch_command
from common.keys import Keys
from common.stream_append import append_entries

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
    """Appends entry payloads to one producer's journal file."""

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


_HEADER_BYTES = 512
"""Bytes of a frame :func:`count_records` reads: a record batch's header (version, layout,
producer, first sequence number, count) is well within them."""


def count_records(path: str | Path) -> int:
    """How many records a journal holds, read from each frame's header only (the file may be
    large): a record batch's count; a format 1 frame, or one that cannot be read, is one."""
    records = 0
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        while handle.tell() + _FRAME_HEADER.size <= size:
            (length,) = _FRAME_HEADER.unpack(handle.read(_FRAME_HEADER.size))
            if handle.tell() + length > size:
                break  # torn final frame
            if length:  # a zero-length frame is the completion marker
                head = handle.read(min(length, _HEADER_BYTES))
                records += _described(head).records
                handle.seek(length - len(head), os.SEEK_CUR)
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
    """What a journal replay sent: ``records`` (every record the journal held); ``last_entry_id``:
    the id of the newest entry holding them (None if none)."""

    path: Path
    records: int
    complete: bool
    last_entry_id: str | None = None


def replay_journal(client: redis.Redis, keys: Keys, path: str | Path, batch_size: int = 2000,
                   mark_complete: bool = True, replica_acks: int = 0, replica_wait_ms: int = 1000) -> ReplayResult:
    """Send a journal's entries to their simulation's stream in order, then delete the file.

    ``batch_size``: records per pipeline (a pipeline holds at least one entry). ``mark_complete=False``:
    a completion marker in the journal is not applied (a producer of the same simulation replaying
    what an earlier one left is itself still running). ``replica_acks``: each pipeline counts as sent
    only once WAIT confirms that many replicas have it (the producer's setting of the same name).
    ``records`` in the result counts every record the journal held, copies Redis already had included.

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
        entries = [_described(payload) for payload in payloads]
        last_entry_id = _send(client, keys, simulation_of(path), entries, complete and mark_complete, batch_size,
                              (replica_acks, replica_wait_ms))
        path.unlink()
    return ReplayResult(path, sum(entry.records for entry in entries), complete, last_entry_id)


def _described(payload: bytes) -> EncodedBatch:
    """The frame (or its start) as an entry to append: producer, sequence numbers and record
    count from its header; one whose header cannot be read counts one record without identity
    (it is appended as it is, and the consumer dead-letters it with the reason)."""
    return describe(payload) or EncodedBatch(payload, "", 0, 0, 1)


def _chunks(entries: list[EncodedBatch], records: int) -> Iterator[list[EncodedBatch]]:
    """``entries`` in order, in runs of about ``records`` records (at least one entry each)."""
    chunk: list[EncodedBatch] = []
    held = 0
    for entry in entries:
        if chunk and held + entry.records > records:
            yield chunk
            chunk, held = [], 0
        chunk.append(entry)
        held += entry.records
    if chunk:
        yield chunk


def _send(client: redis.Redis, keys: Keys, simulation_id: str, entries: list[EncodedBatch], complete: bool,
          batch_size: int, replicas: tuple[int, int] = (0, 0)) -> str | None:
    """Register the simulation, append ``entries`` in order (copies Redis holds are skipped), then
    record the completion; every append refreshes the heartbeat and announces the layout the
    entries name. Returns the id of the newest entry holding them (None if none)."""
    require_replicas(client, keys.replica_probe(simulation_id), *replicas)
    client.sadd(keys.registry, simulation_id)
    layouts = [entry.layout for entry in entries if isinstance(entry.layout, str) and entry.layout]
    layout = layouts[-1] if layouts else None
    last_entry_id = None
    for chunk in _chunks(entries, batch_size):
        result = append_entries(client, keys, simulation_id, chunk, layout=layout, skip_seen=True,
                                replicas=replicas, register=False)
        last_entry_id = result.last_entry_id or last_entry_id
        faults.checkpoint("journal_mid_replay", 0)
    if complete or not entries:  # the completion; a journal of no entries refreshes the heartbeat here
        pipe = slot_client(client, keys.stream(simulation_id)).pipeline(transaction=False)
        pipe.execute_command(*touch_command(keys.meta(simulation_id)))
        if complete:
            pipe.hset(keys.meta(simulation_id), mapping={"complete": 1, "completed_at": time.time()})
        confirm_replicas(pipe, *replicas)
    return last_entry_id
