"""The embedded Redis dies with its owner; the CLI's small commands work and fail in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import redis

from consumer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.helpers import wait_for

OWNER = textwrap.dedent("""
    import sys, time
    from consumer.ops.embedded_redis import EmbeddedRedis
    server = EmbeddedRedis(sys.argv[1], binary=sys.argv[2]).start()
    print(server.process.pid, server.url, flush=True)
    time.sleep(300)
""")


def test_embedded_redis_stops_when_its_owner_is_killed(redis_binary, tmp_path):
    # Given: a process that owns an embedded Redis (Unix socket, AOF on)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "r"), redis_binary],
                             stdout=subprocess.PIPE, text=True)
    server_pid, url = owner.stdout.readline().split()
    assert url.startswith("unix://") and redis.Redis.from_url(url).ping()
    assert redis.Redis.from_url(url).config_get("appendonly")["appendonly"] in (b"yes", "yes")

    # When: the owner is killed with SIGKILL (no cleanup code runs)
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)

    # Then: the kernel takes the server down with it
    wait_for(lambda: not psutil.pid_exists(int(server_pid))
             or psutil.Process(int(server_pid)).status() == psutil.STATUS_ZOMBIE,
             timeout_s=10, what="the orphaned redis-server to exit")


def test_simstream_redis_serves_in_the_foreground_until_sigterm(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "consumer", "redis", "--dir", str(tmp_path / "data"),
                               "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert f"127.0.0.1:{port}" in server.stdout.readline()
        assert redis.Redis(port=port).ping()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    assert (tmp_path / "data" / "redis.log").exists()


def test_status_json_lists_a_simulation_stream(cli, redis_server, namespace, simulation_id):
    from producer import StreamProducer

    with StreamProducer(simulation_id, redis_server.url, namespace=namespace) as producer:
        producer.log("agent_action", step_number=1, agent_id="a1", action_type="move")
    result = cli.run("status", "--json")
    assert result.returncode == 0, result.stderr
    [stream] = json.loads(result.stdout)["streams"]
    assert stream["simulation_id"] == simulation_id and stream["complete"] and stream["length"] >= 1
    assert stream["logged"] == stream["records_added"] == 3 and not stream["group_exists"]
    # no consumer has created the group yet: nothing was delivered, so every entry is lag and
    # every record (start, action, end) is backlog
    assert stream["lag"] == stream["backlog_entries"] == stream["length"] and stream["backlog"] == 3


def test_bad_configuration_is_one_line_with_a_named_exit_code(cli, tmp_path):
    result = cli.run("consume", "--redis-url", "http://localhost:6379")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "redis://HOST:PORT/DB" in result.stderr
    unreachable = cli.run("consume", "--redis-url", "redis://127.0.0.1:1/0")
    assert unreachable.returncode == 3 and "cannot reach Redis" in unreachable.stderr
    unwritable = cli.run("consume", "--db", "sqlite:////proc/no/such/dir/x.db")
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr, unwritable.stderr
    unknown = cli.run("consume", "--no-such-option")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
