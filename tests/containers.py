"""Redis in a container (testcontainers), for machines where a Docker engine answers.

Tests marked ``every_deployment`` also run against it there: the same fault tests against the
official image, not only against local binaries. Where no Docker engine answers (CI here), the
deployment is simply not generated. The server keeps the interface of ``tests.conftest.RedisServer``:
a fixed host port, so ``kill()`` then ``restart()`` keeps the URL, and an AOF inside the container.
"""

from __future__ import annotations

import functools
import time

import redis

from consumer.ops.embedded_redis import free_port

REDIS_IMAGE = "redis:7.2"


@functools.cache
def docker_answers() -> bool:
    """True when a Docker engine answers a ping within two seconds."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no client library, no socket, no engine: all mean "no Docker here"
        return False


class ContainerRedisServer:
    """A redis-server container bound to 127.0.0.1:port, which a test may kill and restart."""

    def __init__(self) -> None:
        from testcontainers.redis import RedisContainer

        self.port = free_port()
        self.container = (RedisContainer(REDIS_IMAGE)
                          .with_bind_ports(6379, ("127.0.0.1", self.port))
                          .with_command("redis-server --appendonly yes --appendfsync always --save ''"))
        self.container.start()
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """SIGKILL the server: the container stops, its AOF stays."""
        self.container.get_wrapped_container().kill()

    def restart(self) -> None:
        """Start the same container again: same port, same AOF."""
        self.container.get_wrapped_container().start()
        self._wait_ready()

    def stop(self) -> None:
        self.container.stop()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client().ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
