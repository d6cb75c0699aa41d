"""The CLI as a new user first runs it: a wrong port, a taken port, a typo in a path, a database
number the server lacks. Each is one line on stderr with a named exit code, and creates nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
import redis


def simstream(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSTREAM_")}
    return subprocess.run([sys.executable, "-m", "consumer", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("command, url", [("consume", "redis://127.0.0.1:notaport/0"),
                                          ("status", "redis://127.0.0.1:99999/0")])
def test_a_port_that_is_not_a_port_is_one_line(command, url, tmp_path):
    assert_one_line(simstream(command, "--redis-url", url, cwd=tmp_path), 2, "a port is a number from 1 to 65535")


def test_simstream_redis_on_a_port_another_server_holds_fails_and_leaves_that_server_alone(redis_server, tmp_path):
    # Given: a Redis server already listening on the port
    other = redis_server.client()
    other.set("mine", "1")

    # When: simstream redis is asked to serve on the same port
    result = simstream("redis", "--dir", str(tmp_path / "data"), "--port", str(redis_server.port))

    # Then: it says so in one line and fails, instead of claiming the other server as its own
    assert "listening at" not in result.stdout
    assert_one_line(result, 3, f"cannot start Redis at redis://127.0.0.1:{redis_server.port}/0",
                    "another process already listens there")
    assert other.get("mine") == b"1"


def test_an_unreachable_redis_reads_as_one_sentence(tmp_path):
    result = simstream("status", "--redis-url", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert_one_line(result, 3, "cannot reach Redis at redis://127.0.0.1:1/0", "start one (`simstream redis`)")
    assert ".;" not in result.stderr


def test_a_database_number_the_server_lacks_points_at_the_url_not_at_starting_a_server(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    result = simstream("status", "--redis-url", url)
    assert_one_line(result, 2, f"Redis at {url} refused the connection: DB index is out of range",
                    "check the database number")
    assert "simstream redis" not in result.stderr


def test_a_typo_in_a_single_sqlite_path_is_refused_without_creating_folders(redis_server, tmp_path):
    typo = tmp_path / "typo" / "dir" / "x.db"
    for command in (("consume", "--redis-url", redis_server.url), ("demo",)):
        result = simstream(*command, "--db", str(typo), cwd=tmp_path)
        assert_one_line(result, 2, f"the folder {typo.parent} of", "does not exist")
        assert not (tmp_path / "typo").exists()


def test_dlq_commands_read_and_never_create_a_database(tmp_path):
    # A file that does not exist: one line, and still no file
    missing = tmp_path / "new.db"
    for command in (("dlq", "list"), ("dlq", "purge", "--yes")):
        assert_one_line(simstream(*command, "--db", str(missing), cwd=tmp_path), 2, f"no database file at {missing}")
        assert not missing.exists()

    # A database without simstream's tables: no dead letters, and no table created
    sqlite3.connect(tmp_path / "other.db").close()
    result = simstream("dlq", "list", "--db", str(tmp_path / "other.db"))
    assert result.returncode == 0 and result.stdout.strip() == "0 dead letter(s)", result.stderr
    with sqlite3.connect(tmp_path / "other.db") as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
