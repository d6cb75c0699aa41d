"""Retention: trim what every group has persisted, remove simulations that are finished.

The trim point is the lowest id any group still needs: its oldest pending entry, or, with nothing
pending, the entry right after its last delivered one. ``XTRIM MINID ~`` at that point removes only
entries below it (approximate trimming removes less, never more), so nothing unpersisted is lost.
A group created later starts from what is left, which is why removal also waits for every group.

On a Redis Cluster the same code runs: the WATCH/MULTI transactions touch only one simulation's
stream and meta, which share a hash slot, and redis-py's ClusterPipeline (>= 6.1) runs such
single-slot transactions. The registry is changed outside them, with single-key commands.
"""

from __future__ import annotations

import logging

import redis

from common.events import event
from common.keys import Keys
from common.replies import text, text_dict
from consumer.stream_status import entry_id_tuple

log = logging.getLogger(__name__)

_TRIM_STEP = 10_000
_TRIM_STEPS_PER_PASS = 50


def _next_id(entry_id: str) -> str:
    millis, seq = entry_id_tuple(entry_id)
    return f"{millis}-{seq + 1}"


def trim_point(client: redis.Redis, stream: str) -> str | None:
    """The lowest entry id any group of ``stream`` still needs; None if there is no group."""
    needed = []
    for group in map(text_dict, client.xinfo_groups(stream)):
        if int(group["pending"]) > 0:
            oldest = client.xpending(stream, group["name"])["min"]
            needed.append(text(oldest))
        else:
            needed.append(_next_id(group["last-delivered-id"]))
    return min(needed, key=entry_id_tuple) if needed else None


def trim_persisted(client: redis.Redis, stream: str) -> int:
    """Trim entries every group has persisted; returns how many Redis removed.

    An approximate XTRIM removes at most ``_TRIM_STEP`` entries per call (Redis's own default
    LIMIT for ``~``), so a consumer persisting faster than that per retention pass would leave
    a growing tail. Trimming repeats in such bounded steps, each short for the server, until a
    step removes nothing or ``_TRIM_STEPS_PER_PASS`` are done. (A step removes whole stream
    nodes only, so a step that still had work to do may remove a little less than the limit.)
    """
    point = trim_point(client, stream)
    if point is None:
        return 0
    removed = 0
    for _ in range(_TRIM_STEPS_PER_PASS):
        step = client.xtrim(stream, minid=point, approximate=True, limit=_TRIM_STEP)
        removed += step
        if step == 0:
            break
    return removed


def finished(client: redis.Redis, keys: Keys, simulation_id: str) -> bool:
    """Complete, and every entry of its stream delivered to and acknowledged by every group."""
    if client.hget(keys.meta(simulation_id), "complete") not in (b"1", "1"):
        return False
    stream = keys.stream(simulation_id)
    try:
        last_id = text_dict(client.xinfo_stream(stream))["last-generated-id"]
        groups = [text_dict(g) for g in client.xinfo_groups(stream)]
    except redis.ResponseError:
        return False
    return bool(groups) and all(int(g["pending"]) == 0 and entry_id_tuple(g["last-delivered-id"]) >= entry_id_tuple(last_id)
                                for g in groups)


def remove_finished(client: redis.Redis, keys: Keys, simulation_id: str) -> bool:
    """Remove a finished simulation's registry entry, stream and meta; False if not finished.

    The stream and meta are watched: if a producer writes to them between the check and the
    delete (a journal replayed late), the delete is abandoned and the registry entry restored.
    """
    stream, meta = keys.stream(simulation_id), keys.meta(simulation_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(stream, meta)
        if not finished(pipe, keys, simulation_id):
            return False
        client.srem(keys.registry, simulation_id)  # first, so no consumer re-discovers it meanwhile
        pipe.multi()
        pipe.delete(stream, meta)  # one hash slot, so one transaction
        try:
            pipe.execute()
        except redis.WatchError:
            # Changed under us. Deleted by another consumer: done. Written by a producer: keep it.
            if client.exists(stream):
                client.sadd(keys.registry, simulation_id)
            return False
    event(log, logging.INFO, "retention.simulation_removed", simulation=simulation_id)
    return True


def drop_if_recreated(client: redis.Redis, keys: Keys, simulation_id: str) -> bool:
    """Delete ``simulation_id``'s stream if it is empty and no longer registered.

    A consumer that read the registry just before a finished simulation was removed re-creates
    its stream (XGROUP CREATE ... MKSTREAM); this undoes that, and only that.
    """
    stream = keys.stream(simulation_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(stream)
        if client.sismember(keys.registry, simulation_id) or pipe.xlen(stream) > 0:
            return False
        pipe.multi()
        pipe.delete(stream)
        try:
            pipe.execute()
        except redis.WatchError:
            return False
    return True
