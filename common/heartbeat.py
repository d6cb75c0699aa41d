"""A simulation's heartbeat: when its producer was last heard from, by the Redis server's clock.

Producers write the field ``heartbeat`` of the simulation's meta hash (milliseconds since the
epoch, as text) with every batch and at least every ``heartbeat_interval_s`` while idle; a journal
replay writes it too. The time is the server's own (Lua ``TIME``), written and read on the node
that owns the simulation's slot, so producer and consumer clocks never need to agree.

A stream written before heartbeats existed has no such field: its newest entry's id (whose first
part is the server's time in milliseconds when it was added) stands in for it.
"""

from __future__ import annotations

from typing import Any

from common.replies import text
from common.scripts import LuaScript

HEARTBEAT_FIELD = "heartbeat"

NOW_MS_LUA = "local t = redis.call('TIME') local now = t[1] .. string.format('%03d', math.floor(t[2] / 1000)) "
"""Lua that sets ``now`` to the server's time in whole milliseconds, as a decimal string (Lua
numbers are doubles: concatenating the seconds and the milliseconds avoids any exponent format)."""
TOUCH_SCRIPT = LuaScript(NOW_MS_LUA + f"redis.call('HSET', KEYS[1], '{HEARTBEAT_FIELD}', now) return now")
"""Run with the meta key: set the heartbeat to the server's time now; returns it."""
_NOW_SCRIPT = LuaScript(NOW_MS_LUA + "return now")


def touch_command(meta_key: str) -> tuple[Any, ...]:
    """The command refreshing a simulation's heartbeat, for ``execute_command`` or a pipeline."""
    return TOUCH_SCRIPT.command([meta_key])


def server_time_ms(client: Any, meta_key: str) -> int:
    """The server's time in ms, asked of the node owning ``meta_key`` (the clock heartbeats use)."""
    return int(text(_NOW_SCRIPT.run(client, [meta_key])))


def producer_idle_ms(meta: dict[str, Any], last_entry_id: str | None, now_ms: int) -> int | None:
    """How long since the simulation's producer was last heard from: its heartbeat, else (a stream
    of an older producer) its newest entry's age; None if there is neither."""
    heartbeat = meta.get(HEARTBEAT_FIELD)
    if heartbeat:
        try:
            return max(0, now_ms - int(heartbeat))
        except ValueError:
            pass  # not ours; fall back to the newest entry
    if last_entry_id and last_entry_id not in ("0-0", "0"):
        return max(0, now_ms - int(last_entry_id.split("-", 1)[0]))
    return None
