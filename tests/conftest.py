"""Shared fixtures: throwaway Redis servers (6.2 bundled, 7.x from PATH), SQLite files, the CLI.

Where a Docker engine answers, ``every_deployment`` tests also run against Redis in a container
(testcontainers, ``tests/containers.py``).

Every Redis test runs once per available server version. Servers listen on free ports of
127.0.0.1 and are killed at teardown; a test may kill and restart its server on the same AOF.

A test (or module) marked ``every_deployment`` also runs, on one Redis version, against the other
deployments: one SQLite file per simulation, PostgreSQL, and a 3-master Redis Cluster. Its body
stays the same: ``redis_server``, ``sqlite_url`` (the sink URL, whatever the sink) and
``sink_engine`` follow the deployment.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine

from consumer.ops.embedded_redis import EmbeddedRedis, bundled_binary, free_port, newest_on_path, server_version
from tests.cluster import RedisClusterServers
from tests.containers import ContainerRedisServer, docker_answers
from consumer.worker import Worker
from tests.helpers import (WORKER_TIMEOUT_S, PerSimulationEngines, fast_settings, run_to_exit, wait_for,
                           worker_running)
from tests.postgres import PostgresSchema, server_url


def _redis_binaries() -> list[tuple[str, str]]:
    found = []
    bundled = bundled_binary()
    if bundled:
        found.append((f"redis{'.'.join(map(str, server_version(bundled)[:2]))}", bundled))
    on_path = newest_on_path()  # not PATH's first: an activated venv lists the bundled 6.2 first
    if on_path and server_version(on_path)[0] >= 7:
        found.append((f"redis{'.'.join(map(str, server_version(on_path)[:2]))}", on_path))
    return found


REDIS_BINARIES = _redis_binaries()


@dataclass(frozen=True)
class Deployment:
    """Where a test's records go: which redis-server, standalone or cluster, and which SQL sink."""

    label: str
    binary: str
    sink: str = "sqlite"  # "sqlite", "sqlite-per-simulation" or "postgresql"
    cluster: bool = False
    container: bool = False  # Redis in a testcontainers container (only where Docker answers)

    @property
    def id(self) -> str:
        extra = [self.sink] if self.sink != "sqlite" else []
        return "-".join([self.label, *extra, *(["cluster"] if self.cluster else []),
                         *(["container"] if self.container else [])])


def _deployments(every: bool) -> list[Deployment]:
    plain = [Deployment(label, binary) for label, binary in REDIS_BINARIES]
    if not every or not REDIS_BINARIES:
        return plain
    label, binary = REDIS_BINARIES[-1]  # the 7.x on PATH if there is one, else the bundled 6.2
    return plain + [Deployment(label, binary, sink="sqlite-per-simulation"),
                    Deployment(label, binary, sink="postgresql"),
                    Deployment(label, binary, cluster=True)] + _container_deployments()


def _container_deployments() -> list[Deployment]:
    """Redis from the official image through testcontainers, where a Docker engine answers."""
    if not docker_answers():
        return []
    return [Deployment("redis7.2", "", container=True)]


def pytest_generate_tests(metafunc) -> None:
    if "deployment" in metafunc.fixturenames:
        deployments = _deployments(metafunc.definition.get_closest_marker("every_deployment") is not None)
        if metafunc.definition.get_closest_marker("newest_redis") is not None:
            deployments = deployments[len(REDIS_BINARIES) - 1:len(REDIS_BINARIES)]
        metafunc.parametrize("deployment", deployments, ids=[d.id for d in deployments], indirect=True)


@pytest.fixture(autouse=True, scope="session")
def journals_out_of_the_repository(tmp_path_factory):
    """Producers that spill without a journal_dir of their own write into a temporary folder, not
    into the working directory (a journal once left there was committed by mistake)."""
    previous = os.environ.get("SIMSTREAM_JOURNAL_DIR")
    os.environ["SIMSTREAM_JOURNAL_DIR"] = str(tmp_path_factory.mktemp("journals"))
    yield
    if previous is None:
        os.environ.pop("SIMSTREAM_JOURNAL_DIR", None)
    else:
        os.environ["SIMSTREAM_JOURNAL_DIR"] = previous


@pytest.fixture
def deployment(request) -> Deployment:
    return request.param


# With "everysec", Redis may postpone writing the AOF while a background fsync is slow, so an
# acknowledged write can die with a SIGKILLed server. Tests that kill Redis assert that nothing
# acknowledged is lost; "always" makes that the server's promise instead of a race with the disk.
_TEST_AOF = ("--appendfsync", "always")


class RedisServer:
    """A test's own redis-server on 127.0.0.1:port, which the test may kill and restart."""

    def __init__(self, binary: str, data_dir: Path, appendonly: bool = True) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.appendonly = appendonly
        self.server = EmbeddedRedis(data_dir, port=self.port, binary=binary, appendonly=appendonly,
                                    extra_args=_TEST_AOF)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF rewrite."""
        self.server.kill()

    def restart(self) -> None:
        """Start again at the same address on the same data folder."""
        self.server = EmbeddedRedis(self.data_dir, port=self.port, binary=self.binary, appendonly=self.appendonly,
                                    extra_args=_TEST_AOF)
        self.server.start()

    def stop(self) -> None:
        self.server.kill()


@pytest.fixture
def redis_binary(deployment) -> str:
    return deployment.binary


@pytest.fixture
def redis_server(deployment, tmp_path) -> RedisServer | RedisClusterServers:
    if deployment.cluster:
        server = RedisClusterServers(deployment.binary, tmp_path / "cluster")
    elif deployment.container:
        server = ContainerRedisServer()
    else:
        server = RedisServer(deployment.binary, tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path) -> RedisClusterServers:
    """A 3-master Redis Cluster on the newest redis-server available, for cluster-only tests."""
    cluster = RedisClusterServers(REDIS_BINARIES[-1][1], tmp_path / "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_schema() -> PostgresSchema:
    """A fresh PostgreSQL schema, dropped after the test; skips (saying why) if none answers."""
    server, reason = server_url()
    if server is None:
        pytest.skip(reason)
    schema = PostgresSchema(server)
    yield schema
    schema.drop()


@pytest.fixture
def postgres_url(postgres_schema) -> str:
    """A sink URL writing into the test's own PostgreSQL schema."""
    return postgres_schema.url


@pytest.fixture
def sqlite_url(request, tmp_path) -> str:
    """The sink URL: a SQLite file, unless the test's deployment names another sink."""
    sink = request.getfixturevalue("deployment").sink if "deployment" in request.fixturenames else "sqlite"
    if sink == "postgresql":
        return request.getfixturevalue("postgres_url")
    if sink == "sqlite-per-simulation":
        return f"sqlite:///{tmp_path / 'runs'}/{{simulation_id}}.db"
    return f"sqlite:///{tmp_path / 'sink.db'}"


@pytest.fixture
def sink_engine(sqlite_url):
    """An engine on the sink; for per-simulation files, one that finds each simulation's file."""
    engine = PerSimulationEngines(sqlite_url) if "{simulation_id}" in sqlite_url else create_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def simulation_id() -> str:
    return f"sim-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:6]}"


class Cli:
    """Runs ``simstream`` subcommands as real processes with a test's environment.

    Background processes write their output to files (a pipe nobody reads would fill and block
    them); ``output(process)`` reads it.
    """

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[subprocess.Popen] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "consumer", *args]

    def run(self, *args: str, timeout: float = 120, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
        log_path = self.log_dir / f"process-{len(self.started)}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(self.command(*args), env={**self.env, **(extra_env or {})},
                                       stdout=log_file, stderr=subprocess.STDOUT, text=True)
        process.log_path = log_path
        self.started.append(process)
        return process

    @staticmethod
    def output(process: subprocess.Popen) -> str:
        """Everything a background process has printed so far."""
        return process.log_path.read_text()

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def cli(redis_server, sqlite_url, namespace, tmp_path):
    env = {**os.environ, "SIMSTREAM_REDIS_URL": redis_server.url, "SIMSTREAM_DB_URL": sqlite_url,
           "SIMSTREAM_NAMESPACE": namespace, "PYTHONUNBUFFERED": "1"}
    for name in [n for n in env if n.startswith("SIMSTREAM_TEST_")]:
        del env[name]
    runner = Cli(env, tmp_path)
    yield runner
    runner.cleanup()


class WorkerFactory:
    """Builds in-process workers with fast settings on a test's Redis, sink and namespace.

    ``worker.drain()`` runs one until every simulation is persisted; ``worker.run_until(condition)``
    runs one in a thread until ``condition()`` holds, then stops it; ``worker.start()`` leaves one
    running until ``worker.stop(w)`` or the test's end. Keyword arguments override the settings
    (``redis_url``, ``db_url`` and ``namespace`` too); every run is bounded by ``timeout_s``. A worker
    is named ``consumer-{slot}`` unless the test names it.
    """

    def __init__(self, redis_url: str, db_url: str, namespace: str) -> None:
        self.redis_url, self.db_url, self.namespace = redis_url, db_url, namespace
        self._running: dict[int, contextlib.AbstractContextManager] = {}

    def settings(self, **overrides):
        where = {"redis_url": self.redis_url, "db_url": self.db_url, "namespace": self.namespace}
        where.update({k: overrides.pop(k) for k in list(where) if k in overrides})
        return fast_settings(where["redis_url"], where["db_url"], where["namespace"], **overrides)

    def __call__(self, slot: int = 0, name: str | None = None, **overrides) -> Worker:
        """A worker, not started."""
        return Worker(self.settings(**overrides), slot=slot, name=name or f"consumer-{slot}")

    def drain(self, slot: int = 0, name: str | None = None, timeout_s: float = WORKER_TIMEOUT_S,
              **overrides) -> Worker:
        """Run a worker until every simulation is persisted; it must exit 0."""
        worker = self(slot=slot, name=name, drain=True, **overrides)
        assert run_to_exit(worker, timeout_s) == 0
        return worker

    def start(self, slot: int = 0, name: str | None = None, **overrides) -> Worker:
        """A worker running in a thread until ``stop`` (or the test's end)."""
        running = worker_running(self.settings(**overrides), slot=slot, name=name or f"consumer-{slot}")
        worker = running.__enter__()
        self._running[id(worker)] = running
        return worker

    def stop(self, worker: Worker) -> None:
        """Stop a started worker cleanly (finishing its batch in hand) and wait for its thread."""
        self._running.pop(id(worker)).__exit__(None, None, None)

    def run_until(self, condition, what: str = "condition", slot: int = 0, name: str | None = None,
                  timeout_s: float = WORKER_TIMEOUT_S, **overrides) -> Worker:
        """Run a worker until ``condition()`` holds (failing after ``timeout_s``), then stop it."""
        worker = self.start(slot=slot, name=name, **overrides)
        try:
            wait_for(condition, timeout_s=timeout_s, what=what)
        finally:
            self.stop(worker)
        return worker

    def cleanup(self) -> None:
        for running in list(self._running.values()):
            running.__exit__(None, None, None)
        self._running.clear()


@pytest.fixture
def worker(redis_server, sqlite_url, namespace) -> WorkerFactory:
    """A factory of fast in-process workers on the test's Redis, sink and namespace (arq's ``worker``);
    any still running at the test's end are stopped."""
    factory = WorkerFactory(redis_server.url, sqlite_url, namespace)
    yield factory
    factory.cleanup()
