"""A real Redis Cluster of redis-server processes on free 127.0.0.1 ports, for tests: 3 masters,
optionally each with a replica.

Slots are assigned and the nodes introduced with plain commands (CLUSTER ADDSLOTS, CLUSTER MEET,
CLUSTER REPLICATE) through redis-py, so redis-cli is not needed: with ``replicas=1`` the result
is what ``redis-cli --cluster create ... --cluster-replicas 1`` builds. ``url`` names one node, as a
user would configure. A test may SIGKILL a master (``kill``) and wait for its replica to take over
(``wait_for_new_master``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from consumer.ops.embedded_redis import EmbeddedRedis

SLOTS = 16384
_BUS_PORT_OFFSET = 10_000  # Redis 6.2 has no --cluster-port: the bus listens on port + 10000


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        bus = port + _BUS_PORT_OFFSET
        if bus < 65536 and not {port, bus} & taken and _port_is_free(bus):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO as text fields, whether or not the client already parsed the reply."""
    reply = client.execute_command("CLUSTER INFO")
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _node_id(client: redis.Redis) -> str:
    reply = client.execute_command("CLUSTER MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _replica_in_sync(client: redis.Redis) -> bool:
    info = client.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up" \
        and not info.get("master_sync_in_progress")


class RedisClusterServers:
    """``masters`` masters, each owning an equal share of the slots, and ``replicas`` replicas of
    each (``nodes``: masters first, then replicas in master order); all killed at ``stop()``.

    ``extra_args`` go to every node (``--cluster-require-full-coverage no``, ...), ``replica_args``
    to the replicas only.
    """

    def __init__(self, binary: str, data_dir: Path, masters: int = 3, timeout_s: float = 30.0, *,
                 replicas: int = 0, node_timeout_ms: int = 5000, extra_args: tuple[str, ...] = (),
                 replica_args: tuple[str, ...] = ()) -> None:
        self.nodes: list[EmbeddedRedis] = []
        self.masters = masters
        taken: set[int] = set()
        try:
            for index in range(masters * (1 + replicas)):
                port = free_cluster_port(taken)
                taken |= {port, port + _BUS_PORT_OFFSET}
                node = EmbeddedRedis(data_dir / f"node{index}", port=port, binary=binary, extra_args=(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0", *extra_args,
                    *(replica_args if index >= masters else ())))
                self.nodes.append(node.start())
            self._form(timeout_s)
        except Exception:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """Any one node's address: clients discover the rest."""
        return self.nodes[0].url

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url)

    def _form(self, timeout_s: float) -> None:
        clients = [redis.Redis.from_url(node.url) for node in self.nodes]
        try:
            share = SLOTS // self.masters
            for index, client in enumerate(clients[:self.masters]):
                last = SLOTS - 1 if index == self.masters - 1 else (index + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(index * share, last + 1))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + timeout_s
            self._wait(clients, deadline, "every node to know every other",
                       lambda info, _client: info.get("cluster_known_nodes") == str(len(clients)))
            master_ids = [_node_id(client) for client in clients[:self.masters]]
            for index, client in enumerate(clients[self.masters:]):
                client.execute_command("CLUSTER REPLICATE", master_ids[index % self.masters])
            self._wait(clients, deadline, "cluster_state:ok", lambda info, _client: info.get("cluster_state") == "ok")
            if len(clients) > self.masters:
                self._wait(clients[self.masters:], deadline, "every replica to be in sync",
                           lambda _info, client: _replica_in_sync(client))
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _wait(clients: list[redis.Redis], deadline: float, what: str, condition) -> None:
        while time.monotonic() < deadline:
            try:
                if all(condition(_cluster_info(client), client) for client in clients):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the test cluster did not get {what} in time")

    def master_of(self, key: str) -> EmbeddedRedis:
        """The node that owns ``key``'s slot now, as a live node's CLUSTER SLOTS says."""
        slot = key_slot(key.encode())
        for node in self.live_nodes():
            with redis.Redis.from_url(node.url) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = master[1]
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live node knows who owns {key!r}")

    def live_nodes(self) -> list[EmbeddedRedis]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def replica_of(self, master: EmbeddedRedis) -> EmbeddedRedis:
        """The replica this test cluster gave ``master`` when it was formed."""
        index = self.nodes.index(master)
        return self.nodes[self.masters + index]

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL one node: no shutdown, its clients see their connections reset."""
        node.kill()

    def restart(self, node: EmbeddedRedis, timeout_s: float = 30.0) -> EmbeddedRedis:
        """Start a killed node again on its port and data folder and wait until it has rejoined:
        a master that was failed over comes back as a replica of its successor, in sync."""
        index = self.nodes.index(node)
        fresh = EmbeddedRedis(node.data_dir, port=node.port, binary=node.binary, extra_args=node.extra_args)
        self.nodes[index] = fresh.start()
        with redis.Redis.from_url(fresh.url) as client:
            self._wait([client], time.monotonic() + timeout_s, "the restarted node to sync as a replica",
                       lambda _info, c: _replica_in_sync(c))
        return fresh

    def wait_for_new_master(self, key: str, old: EmbeddedRedis, timeout_s: float = 30.0) -> EmbeddedRedis:
        """Wait until a live node other than ``old`` owns ``key``'s slot and answers as a master."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                owner = self.master_of(key)
                if owner is not old:
                    with redis.Redis.from_url(owner.url) as client:
                        if client.info("replication").get("role") == "master":
                            return owner
            except (redis.RedisError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over {key!r}'s slot in {timeout_s}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
