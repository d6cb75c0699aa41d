"""What ``simstream consume --drain`` prints on a terminal (a pseudo-terminal here): the progress
bar and log lines never share a line, and a clean drain says nothing at WARNING or above."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from producer import RedisBufferedDataLogger
from tests.helpers import produce_workload

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \d+ ")


def run_on_a_terminal(command: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as stdin, stdout and stderr; (exit code, all it wrote)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: every process writing to it has exited
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return process.wait(10), output.decode(errors="replace")


def segments(output: str) -> list[str]:
    """What each carriage return or newline starts: one bar frame, or one log line, or a mix."""
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]", output) if ANSI.sub("", part).strip()]


def test_a_drain_on_a_terminal_keeps_log_lines_out_of_the_bar_and_warns_about_nothing(cli, redis_server, namespace):
    # Given: two finished simulations waiting in Redis
    for n in range(2):
        logger = RedisBufferedDataLogger(f"sim-{n}", redis_server.url, namespace=namespace)
        produce_workload(logger, steps=20, agents=10)
        assert logger.close().all_in_redis

    # When: two consumer processes drain them with the progress bar on a terminal
    env = {**cli.env, "TERM": "xterm-256color", "COLUMNS": "120"}
    code, output = run_on_a_terminal(cli.command("consume", "--processes", "2", "--drain"), env)

    # Then: the bar was drawn, every log line starts a line of its own, and nothing was a warning
    assert code == 0, output
    parts = segments(output)
    assert any(part.startswith("persisted") and "rec/s" in part for part in parts), output
    log_lines = [part for part in parts if LOG_LINE.search(part)]
    assert any("worker.started" in line for line in log_lines) and any("supervisor.summary" in line
                                                                        for line in log_lines)
    inside_a_frame = [line for line in log_lines if not LOG_LINE.match(line)]
    assert inside_a_frame == [], inside_a_frame[:3]
    assert not re.search(r" (WARNING|ERROR|CRITICAL) \d+ ", output), [l for l in log_lines if " INFO " not in l]
