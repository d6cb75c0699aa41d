"""The recent-state tiers in Redis: configuration, key names, entry format and the write script.

Beside each simulation's stream, Redis can keep every agent's latest states in two tiers:

- short-term (STM): per agent a hash ``step -> msgpack entry``, a timeline sorted set scored by
  step, and a hash of the same entries already compressed (staged for the move below). At most
  ``memory_limit`` steps per agent, TTL ``ttl_s`` refreshed on every write.
- intermediate (IM): per agent a hash ``step -> compressed entry`` and its timeline. Entries
  that leave the STM (trimmed by rank, oldest steps first) move here; at most ``memory_limit``
  steps, TTL ``ttl_s`` refreshed on every move.

Every key carries the simulation's hash tag, so a simulation's tier keys and its stream share
one cluster slot: one pipeline carries the XADDs and the tier writes, and the Lua script that
writes, trims and moves touches keys of that one slot only. The tiers are a cache: the SQL
``agent_states`` table stays the record, and readers fall back to it
(:mod:`common.recent_state`).

Compression happens in Python (Redis's Lua has no zlib): raw DEFLATE with a small window and a
preset dictionary of the column names, so even a single ~230-byte entry shrinks by about 60%.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import msgpack

from common.codec import _to_builtin as to_builtin  # numpy values, as the stream encodes them
from common.errors import ConfigurationError
from common.events import event
from common.scripts import LuaScript
from common.settings import DEFAULT_NAMESPACE

log = logging.getLogger(__name__)

STATE_COLUMNS = ("step_number", "agent_id", "position_x", "position_y", "position_z", "resource_level",
                 "current_health", "starting_health", "starvation_counter", "is_defending",
                 "total_reward", "age")
"""The ``agent_states`` columns a tier entry holds (all but ``id`` and ``simulation_id``)."""

_ZDICT = msgpack.packb({name: None for name in STATE_COLUMNS})
_WBITS = -9  # raw deflate, 512-byte window: an entry is far smaller, and setup is 20x cheaper
_MEM_LEVEL = 1


def _check_tier(config: Any) -> None:
    if not isinstance(config.namespace, str) or not config.namespace or set("{}") & set(config.namespace):
        raise ConfigurationError(
            f"tier namespace must be a non-empty string without braces, got {config.namespace!r}")
    for name in ("ttl_s", "memory_limit"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RedisSTMConfig:
    """The short-term tier: at most ``memory_limit`` latest steps per agent, kept ``ttl_s``
    seconds after the agent's last write, under key namespace ``namespace``."""

    ttl_s: int = 86_400
    memory_limit: int = 1000
    namespace: str = "stm"

    def __post_init__(self) -> None:
        _check_tier(self)


@dataclass(frozen=True)
class RedisIMConfig:
    """The intermediate tier: at most ``memory_limit`` older steps per agent, zlib-compressed at
    ``compression_level`` (1 fastest .. 9 smallest), kept ``ttl_s`` seconds after the last move."""

    ttl_s: int = 604_800
    memory_limit: int = 10_000
    namespace: str = "im"
    compression_level: int = 1

    def __post_init__(self) -> None:
        _check_tier(self)
        if self.compression_level not in range(1, 10):
            raise ConfigurationError(f"RedisIMConfig.compression_level must be 1..9, got {self.compression_level!r}")


@dataclass(frozen=True)
class TierKeys:
    """Key names of one agent's tiers. The agent id comes last, so no id can name another's key."""

    namespace: str
    stm: RedisSTMConfig
    im: RedisIMConfig

    def __post_init__(self) -> None:
        if self.stm.namespace == self.im.namespace:
            raise ConfigurationError("the short-term and intermediate tiers need different namespaces")

    def _key(self, simulation_id: str, tier: str, part: str, agent_id: str) -> str:
        return f"{self.namespace}:{{{simulation_id}}}:{tier}:{part}:{agent_id}"

    def stm_keys(self, simulation_id: str, agent_id: str) -> tuple[str, str, str]:
        """(entries hash, compressed copies hash, timeline) of the agent's short-term tier."""
        tier = self.stm.namespace
        return (self._key(simulation_id, tier, "h", agent_id), self._key(simulation_id, tier, "z", agent_id),
                self._key(simulation_id, tier, "t", agent_id))

    def im_keys(self, simulation_id: str, agent_id: str) -> tuple[str, str]:
        """(compressed entries hash, timeline) of the agent's intermediate tier."""
        tier = self.im.namespace
        return self._key(simulation_id, tier, "h", agent_id), self._key(simulation_id, tier, "t", agent_id)

    def all_keys(self, simulation_id: str, agent_id: str) -> tuple[str, ...]:
        """Every key of the agent's two tiers, in the order the store script takes them."""
        return (*self.stm_keys(simulation_id, agent_id), *self.im_keys(simulation_id, agent_id))


def make_entry(step_number: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A tier entry from an ``agent_state`` record's fields: the columns SQL would hold."""
    entry = {name: fields.get(name) for name in STATE_COLUMNS}
    entry["step_number"] = step_number
    entry["is_defending"] = bool(entry["is_defending"])
    return entry


def pack_entry(entry: Mapping[str, Any]) -> bytes:
    """The short-term tier's bytes for an entry (msgpack map)."""
    return msgpack.packb(entry, use_bin_type=True, default=to_builtin)


def compress(packed: bytes, level: int) -> bytes:
    """The intermediate tier's bytes for a packed entry."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return compressor.compress(packed) + compressor.flush()


def unpack_entry(data: bytes, compressed: bool = False) -> dict[str, Any]:
    """An entry from either tier's bytes."""
    if compressed:
        decompressor = zlib.decompressobj(_WBITS, _ZDICT)
        data = decompressor.decompress(data) + decompressor.flush()
    return msgpack.unpackb(data, raw=False)


# KEYS: stm entries, stm compressed copies, stm timeline, im entries, im timeline.
# ARGV: stm ttl, stm limit, im ttl, im limit, then (step, entry, compressed entry) triples.
# Trimmed after every insert, so no key ever holds more than its limit + 1 entries: Redis keeps
# small sorted sets in their compact encoding, and memory per agent does not depend on how many
# steps one batch carries. Invariant for readers: the IM holds the steps just below the STM's,
# without holes. So a tier that lost a key (evicted, expired) is cleared, not patched, and the IM
# is cleared whenever the STM starts afresh; readers then get those steps from SQL.
STORE_SCRIPT = LuaScript("""
local function store()
  local stm_ttl, stm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
  local im_ttl, im_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
  local stm_present = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3])
  local im_present = redis.call('EXISTS', KEYS[4], KEYS[5])
  if stm_present < 3 or im_present == 1 then
    if stm_present > 0 and stm_present < 3 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
    if im_present > 0 then redis.call('DEL', KEYS[4], KEYS[5]) end
  end
  local moved = 0
  for i = 5, #ARGV, 3 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i])
    if redis.call('ZCARD', KEYS[3]) > stm_limit then
      local step = redis.call('ZPOPMIN', KEYS[3])[1]
      local packed = redis.call('HGET', KEYS[2], step)
      redis.call('HDEL', KEYS[1], step)
      redis.call('HDEL', KEYS[2], step)
      if packed then
        redis.call('HSET', KEYS[4], step, packed)
        redis.call('ZADD', KEYS[5], step, step)
        moved = moved + 1
        if redis.call('ZCARD', KEYS[5]) > im_limit then
          redis.call('HDEL', KEYS[4], redis.call('ZPOPMIN', KEYS[5])[1])
        end
      else
        redis.call('DEL', KEYS[4], KEYS[5])
      end
    end
  end
  if moved > 0 then
    redis.call('EXPIRE', KEYS[4], im_ttl)
    redis.call('EXPIRE', KEYS[5], im_ttl)
  end
  redis.call('EXPIRE', KEYS[1], stm_ttl)
  redis.call('EXPIRE', KEYS[2], stm_ttl)
  redis.call('EXPIRE', KEYS[3], stm_ttl)
  return moved
end
-- A cache must never fail the pipeline that carries the stream's XADDs: an error (a key of the
-- wrong type, say) leaves this agent's tiers as they are and answers -1.
local ok, moved = pcall(store)
if ok then return moved end
return -1
""")


class TierWriter:
    """Turns agent states into the Redis commands that store them in the tiers.

    ``commands()`` returns a ``SCRIPT LOAD`` (cheap when loaded; it makes a restarted Redis
    work without a NOSCRIPT round trip) and one ``EVALSHA`` per agent. Sent in one pipeline,
    each agent's write, trim and STM->IM move is atomic; re-sending the same steps is harmless.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, stm: RedisSTMConfig | None = None,
                 im: RedisIMConfig | None = None) -> None:
        self.stm = stm or RedisSTMConfig()
        self.im = im or RedisIMConfig()
        self.keys = TierKeys(namespace, self.stm, self.im)
        self._limits = (self.stm.ttl_s, self.stm.memory_limit, self.im.ttl_s, self.im.memory_limit)

    def commands(self, simulation_id: str, entries: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Commands storing ``entries`` (dicts from :func:`make_entry`), grouped per agent."""
        by_agent: dict[str, list[Any]] = defaultdict(list)
        level = self.im.compression_level
        for entry in entries:
            packed = pack_entry(entry)
            by_agent[entry["agent_id"]] += (entry["step_number"], packed, compress(packed, level))
        if not by_agent:
            return []
        commands: list[tuple[Any, ...]] = [STORE_SCRIPT.load_command()]
        for agent_id, triples in by_agent.items():
            commands.append(STORE_SCRIPT.sha_command(self.keys.all_keys(simulation_id, agent_id),
                                                     (*self._limits, *triples)))
        return commands

    def batch_hook(self, simulation_id: str) -> Callable[[list[tuple[str, int, dict[str, Any]]]], list]:
        """A producer sender hook: the tier commands for the ``agent_state`` records of a batch."""

        def hook(batch: list[tuple[str, int, dict[str, Any]]]) -> list[tuple[Any, ...]]:
            try:
                states = [make_entry(fields["step_number"], fields)
                          for kind, _, fields in batch if kind == "agent_state"]
                return self.commands(simulation_id, states) if states else []
            except Exception as exc:  # a cache must never stop the stream: skip this batch's states
                event(log, logging.WARNING, "recent_state.skipped", simulation=simulation_id, error=exc)
                return []

        return hook
