"""Reading an agent's recent states: Redis tiers first, the SQL sink when Redis no longer has them.

:class:`RecentStates` answers ``recent_states(simulation_id, agent_id, n)`` and
``state_at(simulation_id, agent_id, step)`` with the same dicts whichever tier holds the step
(the ``agent_states`` columns but ``id`` and ``simulation_id``), so a caller cannot tell a
cache hit from a fallback except by speed. The tiers are written by the producer
(``recent_state=True``); see :mod:`common.tiers` for their layout.
"""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import Engine, select

from common import schema
from common.scripts import LuaScript
from common.settings import DEFAULT_NAMESPACE
from common.tiers import STATE_COLUMNS, RedisIMConfig, RedisSTMConfig, TierKeys, unpack_entry

__all__ = ["RecentStates", "RedisIMConfig", "RedisSTMConfig"]

# KEYS: stm entries, stm timeline, im entries, im timeline. ARGV[1]: how many steps.
# One script, so a concurrent STM->IM move can neither hide a step nor show it twice.
_RECENT_SCRIPT = LuaScript("""
local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, 500 do
    local chunk = redis.call('HMGET', key, unpack(fields, i, math.min(i + 499, #fields)))
    for j = 1, #chunk do values[#values + 1] = chunk[j] end
  end
  return values
end
local n = tonumber(ARGV[1])
local stm_steps = redis.call('ZREVRANGE', KEYS[2], 0, n - 1)
local stm_values = hmget(KEYS[1], stm_steps)
local im_steps, im_values = {}, {}
if #stm_steps < n then
  local below = '+inf'
  if #stm_steps > 0 then below = '(' .. stm_steps[#stm_steps] end
  im_steps = redis.call('ZREVRANGEBYSCORE', KEYS[4], below, '-inf', 'LIMIT', 0, n - #stm_steps)
  im_values = hmget(KEYS[3], im_steps)
end
return {stm_steps, stm_values, im_steps, im_values}
""")

_SQL_COLUMNS = [schema.agent_states.c[name] for name in STATE_COLUMNS]


class RecentStates:
    """Reads agents' recent states from the Redis tiers, falling back to SQL.

    ``client`` must be a binary client (no ``decode_responses``) on the Redis the producer
    writes to; ``namespace`` and the tier configs must be the producer's. ``engine`` is the SQL
    sink; without it, a step Redis no longer holds is simply absent from the answer.
    """

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE,
                 stm: RedisSTMConfig | None = None, im: RedisIMConfig | None = None,
                 engine: Engine | None = None) -> None:
        self.client = client
        self.keys = TierKeys(namespace, stm or RedisSTMConfig(), im or RedisIMConfig())
        self.engine = engine

    def recent_states(self, simulation_id: str, agent_id: str, n: int) -> list[dict[str, Any]]:
        """The agent's ``n`` latest states, newest first: the short-term tier's, then the
        intermediate tier's (the steps just below), then SQL's below those.

        Redis answers only while its short-term tier is whole, since only that tier proves it
        holds the newest steps: if it expired or lost a key, SQL answers alone (without an
        ``engine``, the answer is then empty).
        """
        if n <= 0:
            return []
        stm_hash, _, stm_timeline = self.keys.stm_keys(simulation_id, agent_id)
        im_hash, im_timeline = self.keys.im_keys(simulation_id, agent_id)
        stm_steps, stm_values, im_steps, im_values = _RECENT_SCRIPT.run(
            self.client, [stm_hash, stm_timeline, im_hash, im_timeline], [n])
        if not stm_steps or None in stm_values or None in im_values:
            return self._sql_recent(simulation_id, agent_id, n, None) if self.engine is not None else []
        found = [unpack_entry(value) for value in stm_values]
        found += [unpack_entry(value, compressed=True) for value in im_values]
        if len(found) < n and self.engine is not None:
            found += self._sql_recent(simulation_id, agent_id, n - len(found), found[-1]["step_number"])
        return found

    def state_at(self, simulation_id: str, agent_id: str, step: int) -> dict[str, Any] | None:
        """The agent's state at ``step`` from whichever tier holds it, else SQL, else None."""
        stm_hash = self.keys.stm_keys(simulation_id, agent_id)[0]
        im_hash = self.keys.im_keys(simulation_id, agent_id)[0]
        pipe = self.client.pipeline(transaction=True)  # atomic against a concurrent move
        pipe.hget(stm_hash, step)
        pipe.hget(im_hash, step)
        in_stm, in_im = pipe.execute()
        if in_stm is not None:
            return unpack_entry(in_stm)
        if in_im is not None:
            return unpack_entry(in_im, compressed=True)
        return self._sql_state_at(simulation_id, agent_id, step) if self.engine is not None else None

    def _sql_recent(self, simulation_id: str, agent_id: str, n: int, below: int | None) -> list[dict[str, Any]]:
        table = schema.agent_states
        query = (select(*_SQL_COLUMNS)
                 .where(table.c.simulation_id == simulation_id, table.c.agent_id == agent_id)
                 .order_by(table.c.step_number.desc()).limit(n))
        if below is not None:
            query = query.where(table.c.step_number < below)
        with self.engine.connect() as connection:
            return [_sql_entry(row) for row in connection.execute(query)]

    def _sql_state_at(self, simulation_id: str, agent_id: str, step: int) -> dict[str, Any] | None:
        query = select(*_SQL_COLUMNS).where(schema.agent_states.c.id == f"{simulation_id}:{agent_id}-{step}")
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return _sql_entry(row) if row is not None else None


def _sql_entry(row: Any) -> dict[str, Any]:
    entry = dict(row._mapping)
    entry["is_defending"] = bool(entry["is_defending"])
    return entry
