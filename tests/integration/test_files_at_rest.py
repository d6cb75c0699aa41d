"""Simulation data at rest is its owner's alone: journals are 0600 in a 0700 folder; the embedded
Redis listens on a Unix socket (0700) or 127.0.0.1, never on another interface.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import psutil
import pytest
import redis

from consumer.ops.embedded_redis import EmbeddedRedis, free_port
from producer import StreamProducer

pytestmark = pytest.mark.timeout(60)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses a process accepts TCP connections on."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


@pytest.fixture
def permissive_umask():
    """A umask that would leave new files readable by everyone: the journal must not rely on it."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_a_producer_journal_is_readable_by_its_owner_only(tmp_path, simulation_id, permissive_umask):
    # Given: a producer whose Redis does not answer, journaling into a folder that does not exist yet
    journal_dir = tmp_path / "runs" / "journal"
    producer = StreamProducer(simulation_id, f"redis://127.0.0.1:{free_port()}/0", journal_dir=str(journal_dir),
                              spill_after_s=0.2, close_timeout_s=1.0, journal_retry_interval_s=0.2)

    # When: it logs and is closed while Redis is away
    producer.log("agent_action", step_number=1, agent_id="a1", action_type="move")
    report = producer.close()

    # Then: the records wait in a journal file only its owner can read, in an owner-only folder
    assert report.journaled >= 1, report
    [journal] = journal_dir.iterdir()
    assert mode(journal) == 0o600
    assert mode(journal_dir) == 0o700


def test_the_embedded_redis_on_a_unix_socket_opens_no_tcp_port(redis_binary, tmp_path):
    # Given / When: the embedded Redis as the demo starts it (no port asked for)
    with EmbeddedRedis(tmp_path / "r", binary=redis_binary) as server:
        # Then: it answers on its socket, which only its owner may open, and on no TCP address
        assert server.url.startswith("unix://") and redis.Redis.from_url(server.url).ping()
        assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode) and mode(server.socket_path) == 0o700
        assert listening_addresses(server.process.pid) == set()


def test_simstream_redis_listens_on_127_0_0_1_only(tmp_path):
    # Given / When: `simstream redis` on a TCP port
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "consumer", "redis", "--dir", str(tmp_path / "data"),
                                "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        [server] = [child for child in psutil.Process(process.pid).children() if "redis-server" in child.name()]

        # Then: the server accepts connections on the loopback address only
        assert listening_addresses(server.pid) == {"127.0.0.1"}
        assert redis.Redis(port=port).config_get("bind")["bind"] == "127.0.0.1"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
