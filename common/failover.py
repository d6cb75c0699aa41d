"""Carrying a Redis Cluster failover: which errors mean "ask again who owns the slot", how to ask,
and how to send a simulation's commands straight to the master owning its hash slot.

When a master dies its replica is promoted within seconds (``cluster-node-timeout`` plus an
election), but a client keeps its slot map until told otherwise: connections to the dead master
are refused or reset, a node that lost the slot answers ``MOVED``, and the whole cluster may answer
``CLUSTERDOWN`` until the promotion (unless ``cluster-require-full-coverage no``). Every path that
talks to a simulation's slot (the consumer's raw reads, claims, acks and retention, the producer's
EVAL) treats these as *failover errors*: it refreshes the slot map and retries against the owner it
then names, with jittered backoff, while simulations on healthy masters carry on.

Some commands are sent to the owning master's own client (:func:`slot_client`) rather than
through the cluster client: raw replies the cluster client would parse, and a batch whose
``WAIT`` must run on the connection that wrote it. Those bypass redis-py's redirection handling,
so :func:`refresh_slots` after a failover error is what points them at the new owner.
"""

from __future__ import annotations

import logging

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError

from common.errors import ConfigurationError
from common.events import event

log = logging.getLogger(__name__)

FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError,  # the master died, hangs, or its connection was reset
    AskError,                                   # MOVED (a subclass) and ASK: the slot is elsewhere now
    TryAgainError,                              # the slot is being migrated
    ClusterError,                               # CLUSTERDOWN, MASTERDOWN
    redis.ReadOnlyError,                        # a demoted master that came back as a replica
    RedisClusterException,                      # no node answered the client's own slot-map refresh
)
"""Errors after which the slot map may be stale: refresh it, back off, retry."""

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException)
"""Everything a Redis call may raise: redis-py's cluster client raises some errors (no node
answers, a slot not covered) outside the RedisError tree."""


_PROBE_TTL_MS = 60_000


class ReplicaAckMissing(redis.RedisError):
    """``WAIT`` returned before enough replicas confirmed a write: it does not count as sent."""


def is_failover_error(exc: BaseException) -> bool:
    """True if ``exc`` may mean the cluster's slot owners changed (see :data:`FAILOVER_ERRORS`)."""
    return isinstance(exc, FAILOVER_ERRORS)


def refresh_slots(client: redis.Redis | RedisCluster) -> bool:
    """Ask the cluster again which master owns each slot; nothing to do on a single server.

    Never raises: when no node answers, the next command fails and is retried later. Returns
    True if the map was refreshed.
    """
    if not isinstance(client, RedisCluster):
        return False
    try:
        client.nodes_manager.initialize()
        return True
    except (RedisClusterException, redis.RedisError) as exc:
        event(log, logging.DEBUG, "redis.slot_refresh_failed", error=exc)
        return False


def slot_client(client: redis.Redis | RedisCluster, key: str) -> redis.Redis:
    """A plain client on the master that owns ``key``'s slot (``client`` itself if not a cluster).

    Its commands are not redirected: a stale owner answers MOVED or refuses the connection, which
    callers treat as a failover error (refresh, back off, retry).
    """
    if not isinstance(client, RedisCluster):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def confirm_replicas(pipe: redis.client.Pipeline, wanted: int, wait_ms: int) -> list:
    """Execute ``pipe`` followed by ``WAIT wanted wait_ms`` on the same connection; return the
    replies of its own commands. ReplicaAckMissing if fewer than ``wanted`` replicas confirmed
    every write (the caller sends the batch again, or journals it). ``wanted=0``: no WAIT."""
    if wanted <= 0:
        return pipe.execute()
    pipe.execute_command("WAIT", wanted, wait_ms)
    *replies, confirmed = pipe.execute()
    if int(confirmed) < wanted:
        raise ReplicaAckMissing(f"{confirmed} of {wanted} replica(s) confirmed the batch within {wait_ms} ms")
    return replies


def connected_replicas(client: redis.Redis | RedisCluster, key: str) -> int:
    """How many replicas the master owning ``key`` has connected now."""
    return int(slot_client(client, key).info("replication").get("connected_slaves", 0))


def require_replicas(client: redis.Redis | RedisCluster, probe_key: str, wanted: int, wait_ms: int) -> None:
    """ReplicaAckMissing (retried later) unless ``wanted`` replicas confirm a tiny write now.

    Sent before a journal is replayed, so that the whole journal is not re-sent to a master whose
    replicas cannot confirm it (a replica that died may still count as connected for a while).
    ``probe_key`` (in the stream's slot) expires by itself.
    """
    if wanted <= 0:
        return
    pipe = slot_client(client, probe_key).pipeline(transaction=False)
    pipe.set(probe_key, b"1", px=_PROBE_TTL_MS)
    confirm_replicas(pipe, wanted, wait_ms)


def check_replicas(client: redis.Redis | RedisCluster, key: str, wanted: int) -> None:
    """ConfigurationError if the master owning ``key`` has fewer than ``wanted`` replicas connected."""
    connected = connected_replicas(client, key)
    if connected < wanted:
        raise ConfigurationError(
            f"replica_acks={wanted}, but the Redis master holding {key!r} has {connected} connected "
            f"replica(s): no batch could ever be confirmed; add replicas or set replica_acks=0")
