"""A real 3-master Redis Cluster of redis-server processes on free 127.0.0.1 ports, for tests.

Slots are assigned and the nodes introduced with plain commands (CLUSTER ADDSLOTS, CLUSTER MEET)
through redis-py, so redis-cli is not needed. ``url`` names one node, as a user would configure.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from common.embedded_redis import EmbeddedRedis

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


class RedisClusterServers:
    """Three masters, each owning a third of the slots; killed at ``stop()``."""

    def __init__(self, binary: str, data_dir: Path, masters: int = 3, timeout_s: float = 30.0) -> None:
        self.nodes: list[EmbeddedRedis] = []
        taken: set[int] = set()
        try:
            for index in range(masters):
                port = free_cluster_port(taken)
                taken |= {port, port + _BUS_PORT_OFFSET}
                node = EmbeddedRedis(data_dir / f"node{index}", port=port, binary=binary, extra_args=(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"))
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
            share = SLOTS // len(clients)
            for index, client in enumerate(clients):
                last = SLOTS - 1 if index == len(clients) - 1 else (index + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(index * share, last + 1))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            self._wait_ok(clients, timeout_s)
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _wait_ok(clients: list[redis.Redis], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [_cluster_info(client) for client in clients]
            if all(info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(len(clients))
                   for info in infos):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the test cluster did not reach cluster_state:ok in {timeout_s}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
