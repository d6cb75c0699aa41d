"""The one way entries are appended to a simulation's stream, with its bookkeeping.

Used by the producer's sender, by journal replay and by ``simstream dlq retry``. One EVAL per call
(on the master owning the simulation's slot: stream and meta hash share a hash tag) does, on the
server and atomically:

- announce the layout (``layout`` in the meta hash) before any entry that needs it;
- XADD each entry (never with MAXLEN), unless ``skip_seen`` and its producer's ``seq:<producer>``
  already covers its first sequence number: a batch appended again (a retried pipeline whose reply
  was lost, a journal replayed after part of it reached Redis) is not added twice;
- raise ``seq:<producer>`` to the entry's last sequence number (records logged, for ``status``);
- add the records appended to ``records_added`` (exact: skipped copies are not counted);
- refresh the heartbeat by the server's clock;
- return the id of the last entry added (if every entry was a copy already there, the newest entry
  appended for the last copy's producer: a reply lost after the append, then a retry that skips
  it, still tells the caller an id at or past its records, which ``wait_persisted`` waits for)
  and, for ``group``, the backlog in records:
  ``records_added`` less the group's ``acked:<group>`` (records in entries it has acknowledged,
  kept exact by the consumers' acknowledgement script).

The simulation is then added to the registry (a set that may live on another cluster master).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import redis

from common.codec import ENTRY_FIELD, EncodedBatch
from common.failover import confirm_replicas, slot_client
from common.heartbeat import HEARTBEAT_FIELD, NOW_MS_LUA
from common.keys import Keys
from common.replies import text
from common.scripts import LuaScript
from common.layouts import META_FIELD as LAYOUT_FIELD

RECORDS_ADDED_FIELD = "records_added"
"""Meta hash field: records appended to the stream, each counted once."""
ACKED_FIELD_PREFIX = "acked:"
"""Meta hash field prefix: records in entries a group has acknowledged (``acked:<group>``)."""
LAST_ENTRY_FIELD_PREFIX = "entry:"
"""Meta hash field prefix: the id of the newest entry appended for a producer (``entry:<producer>``):
what an append returns for copies it skipped (their own ids are older, never newer)."""

APPEND_SCRIPT = LuaScript(
    "if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], '" + LAYOUT_FIELD + "', ARGV[1]) end "
    "local id = false local seen = false local added = 0 "
    "for i = 4, #ARGV, 5 do "
    "  local producer = ARGV[i] local first = tonumber(ARGV[i + 1]) local last = tonumber(ARGV[i + 2]) "
    "  local have = 0 "
    "  if producer ~= '' then have = tonumber(redis.call('HGET', KEYS[2], 'seq:' .. producer) or '0') end "
    "  if ARGV[2] == '0' or producer == '' or first > have then "
    "    id = redis.call('XADD', KEYS[1], '*', '" + ENTRY_FIELD.decode() + "', ARGV[i + 4]) "
    "    added = added + tonumber(ARGV[i + 3]) "
    "    if producer ~= '' then "
    "      if last > have then redis.call('HSET', KEYS[2], 'seq:' .. producer, last) end "
    "      redis.call('HSET', KEYS[2], '" + LAST_ENTRY_FIELD_PREFIX + "' .. producer, id) "
    "    end "
    "  elseif producer ~= '' then "
    "    seen = redis.call('HGET', KEYS[2], '" + LAST_ENTRY_FIELD_PREFIX + "' .. producer) "
    "  end "
    "end "
    "if not id then id = seen end "
    "if added > 0 then redis.call('HINCRBY', KEYS[2], '" + RECORDS_ADDED_FIELD + "', added) end "
    + NOW_MS_LUA + "redis.call('HSET', KEYS[2], '" + HEARTBEAT_FIELD + "', now) "
    "local backlog = -1 "
    "if ARGV[3] ~= '' then "
    "  local total = tonumber(redis.call('HGET', KEYS[2], '" + RECORDS_ADDED_FIELD + "') or '0') "
    "  local acked = tonumber(redis.call('HGET', KEYS[2], '" + ACKED_FIELD_PREFIX + "' .. ARGV[3]) or '0') "
    "  backlog = math.max(0, total - acked) "
    "end "
    "return {id, added, backlog}"
)


@dataclass(frozen=True)
class AppendResult:
    """What one append did: the id of the last entry it added (if every entry was a copy already
    appended: the newest entry of their producer, or None if unknown, e.g. written before record
    batches), how many records it added, and the group's backlog in records (None when no group
    was asked about)."""

    last_entry_id: str | None
    records_added: int
    backlog_records: int | None


def append_command(keys: Keys, simulation_id: str, batches: Sequence[EncodedBatch], *, layout: str | None = None,
                   skip_seen: bool = True, group: str | None = None) -> tuple[Any, ...]:
    """The EVAL appending ``batches`` (see the module docstring), for ``execute_command`` or a pipeline."""
    args: list[Any] = [layout or "", "1" if skip_seen else "0", group or ""]
    for batch in batches:
        args += [batch.producer_id or "", batch.first_seq, batch.last_seq, batch.records, batch.payload]
    return APPEND_SCRIPT.command([keys.stream(simulation_id), keys.meta(simulation_id)], args)


def parse_reply(reply: Any) -> AppendResult:
    """The script's reply as an AppendResult."""
    entry_id, added, backlog = reply
    return AppendResult(text(entry_id) or None, int(added), None if int(backlog) < 0 else int(backlog))


def append_entries(client: redis.Redis, keys: Keys, simulation_id: str, batches: Sequence[EncodedBatch], *,
                   layout: str | None = None, skip_seen: bool = True, group: str | None = None,
                   extras: Sequence[tuple[Any, ...]] = (), replicas: tuple[int, int] = (0, 0),
                   register: bool = True) -> AppendResult:
    """Append ``batches`` to the simulation's stream in one pipeline (with ``extras``, commands for
    the same slot), confirmed by ``replicas`` = (replicas, wait_ms) if asked; then add the
    simulation to the registry unless ``register`` is False (the caller does it on its own clock).

    Raises redis.RedisError (ReplicaAckMissing too) if Redis did not take it: the caller sends
    it again, and the copies are not added twice (``skip_seen``).
    """
    stream = keys.stream(simulation_id)
    pipe = slot_client(client, stream).pipeline(transaction=False)
    pipe.execute_command(*append_command(keys, simulation_id, batches, layout=layout, skip_seen=skip_seen,
                                         group=group))
    for command in extras:
        pipe.execute_command(*command)
    result = parse_reply(confirm_replicas(pipe, *replicas)[0])
    if register:
        client.sadd(keys.registry, simulation_id)
    return result
