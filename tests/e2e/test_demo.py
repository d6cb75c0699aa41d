"""``simstream demo`` end to end, as a user runs it: its own Redis, real processes, a verdict."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("consumers", [2])
def test_demo_on_embedded_redis_persists_every_row(tmp_path, consumers):
    # Given: no Redis configured for the demo (it starts its own)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSTREAM_")}

    # When: the demo runs a small simulation
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "demo", "--agents", "15", "--steps", "40",
         "--consumers", str(consumers), "--db", str(tmp_path / "demo.db"), "--embedded-redis"],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)

    # Then: it reports every table matching and exits 0
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded" in result.stdout
    assert "ok:" in result.stdout and "MISMATCH" not in result.stdout
    for table in ("agents", "agent_states", "agent_actions", "resource_states", "simulation_steps"):
        assert any(line.startswith(table) and line.endswith("ok") for line in result.stdout.splitlines())
    assert (tmp_path / "demo.db").exists()
    # progress counts records against records (not rows), and ends with every one of them persisted
    progress = re.findall(r"^persisted (\d+)/(\d+)", result.stdout, re.MULTILINE)
    assert progress and all(0 < int(total) for _, total in progress), result.stdout
    done, total = progress[-1]
    assert done == total


def test_demo_with_an_unreachable_redis_says_what_to_do(tmp_path):
    # Given: a Redis URL nothing answers at
    env = {**os.environ, "SIMSTREAM_REDIS_URL": "redis://127.0.0.1:1/0"}

    # When / Then: one line, a named exit code, no traceback
    result = subprocess.run([sys.executable, "-m", "consumer", "demo", "--db", str(tmp_path / "d.db")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
