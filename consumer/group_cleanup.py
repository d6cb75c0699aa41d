"""Dead consumers leave no clutter: an idle consumer name holding nothing leaves the group.

After a claim pass has taken a dead consumer's pending entries, its name lingers in XINFO
CONSUMERS with 0 pending. ``XGROUP DELCONSUMER`` removes it, but it also drops whatever the
consumer still holds from the group's pending list, which would strand those entries for good.
So the check and the delete run in one Lua script: Redis executes it atomically, and no claim or
read can move an entry to that name between the check and the delete.

Deleting a consumer that is in fact alive is harmless: its next XREADGROUP creates it again,
and a read that was blocked when it was deleted re-creates it when it is served (tested on
Redis 6.2 and 7). The idle floor keeps live workers, seen at least every ``block_ms``, out of
reach anyway, and a worker never deletes its own name.
"""

from __future__ import annotations

import logging

import redis

from common.events import event
from common.replies import text_dict
from common.scripts import LuaScript

log = logging.getLogger(__name__)

# KEYS[1] stream; ARGV group, consumer, min idle ms. Returns 1 if deleted, 0 if it holds entries
# or was seen too recently, -1 if it no longer exists.
_DELETE_IF_IDLE_AND_EMPTY = LuaScript("""
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] == ARGV[2] then
    if tonumber(fields['pending']) == 0 and tonumber(fields['idle']) > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return -1
""")

_IDLE_FLOOR_BLOCKS = 10


def dead_consumer_idle_ms(claim_idle_ms: int, block_ms: int) -> int:
    """How long a consumer must be unseen to count as dead: ``claim_idle_ms``, and at least
    ten read timeouts, so that ``claim_idle_ms=0`` does not churn live consumers' names.
    """
    return max(claim_idle_ms, _IDLE_FLOOR_BLOCKS * block_ms)


def remove_dead_consumers(client: redis.Redis, stream: str, group: str, own_name: str,
                          min_idle_ms: int) -> list[str]:
    """Delete every other consumer of ``group`` that holds no entry and has been idle longer
    than ``min_idle_ms``; returns the names removed.
    """
    removed = []
    for consumer in map(text_dict, client.xinfo_consumers(stream, group)):
        name = consumer["name"]
        if name == own_name or int(consumer["pending"]) or int(consumer["idle"]) <= min_idle_ms:
            continue
        if _DELETE_IF_IDLE_AND_EMPTY.run(client, [stream], [group, name, min_idle_ms]) == 1:
            removed.append(name)
            event(log, logging.INFO, "worker.consumer_removed", stream=stream, consumer=name, idle_ms=consumer["idle"])
    return removed
