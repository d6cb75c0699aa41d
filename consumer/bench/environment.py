"""Fresh, throwaway servers and processes for each benchmark configuration.

Each configuration gets its own embedded Redis (free 127.0.0.1 port, AOF ``everysec`` as the
embedded default) and its own database: a new SQLite file, or a new PostgreSQL schema that is
dropped afterwards. The producer runs as its own process (``python -m producer.bench``) and the
consumers as the real ``simstream consume`` processes, as in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from common.connections import create_sink_engine
from consumer.ops.embedded_redis import EmbeddedRedis, free_port
from common.errors import SimstreamError
from common.masking import mask_secrets
from common import replies
from common.settings import ENV_DB_URL, ENV_REDIS_URL
from common.workload import Mix

_PRODUCER_TIMEOUT_S = 900.0


class BenchError(SimstreamError):
    """A benchmark step did not complete (a process failed, rows are missing)."""


@contextlib.contextmanager
def fresh_redis() -> Iterator[EmbeddedRedis]:
    """A new embedded Redis on a free TCP port with its own data folder; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="simstream-bench-redis-") as data_dir:
        with EmbeddedRedis(data_dir, port=free_port()) as server:
            yield server


def database_factory(scratch: Path, base_url: str | None):
    """A ``fresh_database(label)`` context manager factory for SQLite files or PostgreSQL schemas."""

    @contextlib.contextmanager
    def fresh_database(label: str) -> Iterator[str]:
        if base_url is None or make_url(base_url).get_backend_name() == "sqlite":
            yield from _fresh_sqlite(scratch, label)
        else:
            yield from _fresh_postgres_schema(base_url, label)

    return fresh_database


@contextlib.contextmanager
def fresh_sqlite(scratch: Path, label: str) -> Iterator[str]:
    """A new SQLite file in ``scratch`` (its URL), deleted afterwards."""
    yield from _fresh_sqlite(scratch, label)


def _fresh_sqlite(scratch: Path, label: str) -> Iterator[str]:
    path = scratch / f"{label}-{secrets.token_hex(3)}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def postgres_unreachable(url: str) -> str | None:
    """Why no PostgreSQL answers at ``url`` (masked, one line), or None when it does."""
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except (SQLAlchemyError, ImportError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        return mask_secrets(f"no PostgreSQL answers at {url} ({reason})")
    return None


def _fresh_postgres_schema(base_url: str, label: str) -> Iterator[str]:
    schema = f"simstream_bench_{label.replace('-', '_')}_{secrets.token_hex(3)}"
    admin = create_sink_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def producer_command(redis_url: str, namespace: str, simulation_id: str, mix: Mix,
                     mode: str = "flat", rate: float | None = None, hold_after: int | None = None,
                     wait_go: bool = False) -> list[str]:
    """The command line of the producer process."""
    command = [sys.executable, "-m", "producer.bench", "--redis-url", redis_url, "--namespace", namespace,
               "--simulation-id", simulation_id, "--records", str(mix.records), "--agents", str(mix.agents),
               "--resources", str(mix.resources), "--mode", mode]
    command += ["--rate", str(rate)] if rate else []
    command += ["--hold-after", str(hold_after)] if hold_after else []
    return command + (["--wait-go"] if wait_go else [])


def run_producer(redis_url: str, namespace: str, simulation_id: str, mix: Mix) -> dict[str, Any]:
    """Run the producer process flat out to completion; its JSON result."""
    result = subprocess.run(producer_command(redis_url, namespace, simulation_id, mix),
                            capture_output=True, text=True, timeout=_PRODUCER_TIMEOUT_S)
    return _last_json(result.stdout, result.stderr, result.returncode)


def _last_json(stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    if returncode not in (0, None) or not lines:
        raise BenchError(f"the producer process failed (exit {returncode}): {stderr.strip()[-400:]}")
    return json.loads(lines[-1])


class WaitingProducer:
    """The producer process started ahead of its run: its simulation (and stream) exists, and it
    waits for ``go()`` to log. ``rate``: ``--mode paced`` at that many records/s, else flat out.
    With ``hold_after`` (paced), it stops after that step until ``resume()`` (``held()`` says when)."""

    def __init__(self, redis_url: str, namespace: str, simulation_id: str, mix: Mix, rate: float | None = None,
                 hold_after: int | None = None) -> None:
        self.hold_after = hold_after
        mode = "paced" if rate else "flat"
        command = producer_command(redis_url, namespace, simulation_id, mix, mode, rate, hold_after, wait_go=True)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        if not ready:
            raise BenchError(f"the producer process exited before it was ready (exit {self.process.wait()})")

    def go(self) -> None:
        """Start logging."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def held(self) -> bool:
        """True once the producer has stopped at its hold step (never blocks)."""
        if not select.select([self.process.stdout], [], [], 0)[0]:
            return False
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"the producer process exited before its hold step (exit {self.process.wait()})")
        return "held" in json.loads(line)

    def resume(self) -> None:
        """Let a held producer log the rest."""
        self.go()

    def result(self, timeout_s: float = _PRODUCER_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the process; its JSON result."""
        stdout, _ = self.process.communicate(timeout=timeout_s)
        return _last_json(stdout, "", self.process.returncode)

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def consumer_processes(redis_url: str, db_url: str, namespace: str, processes: int,
                       log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``simstream consume --processes N --drain`` as its own process tree; stopped afterwards."""
    command = [sys.executable, "-m", "consumer", "consume", "--processes", str(processes), "--drain",
               "--namespace", namespace, "--log-level", "WARNING"]
    # URLs travel in the environment, not the command line, where any user could read a password
    env = {**os.environ, ENV_REDIS_URL: redis_url, ENV_DB_URL: db_url}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**env, **(extra_env or {})})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_exit(process: subprocess.Popen, timeout_s: float, what: str, log_path: Path) -> None:
    """Wait for ``process`` to exit 0; BenchError with its log's tail otherwise."""
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout_s:.0f} s; see {log_path}") from None
    if code != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"{what} exited {code}: {tail}")


def group_progress(client: redis.Redis, stream: str, group: str) -> tuple[str, int, int] | None:
    """(last delivered id, pending entries, consumers) of ``group`` on ``stream``; None if gone."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None  # the stream was removed: its simulation is complete and fully persisted
    for info in groups:
        if replies.text(info["name"]) == group:
            return (replies.text(info["last-delivered-id"]), int(info["pending"]),
                    int(info["consumers"]))
    return ("0-0", 0, 0)


def poll_until(condition, timeout_s: float, interval_s: float, what: str):
    """Call ``condition`` every ``interval_s`` until it returns a truthy value; BenchError after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
