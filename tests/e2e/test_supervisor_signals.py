"""A stop signal that reaches workers while they are still starting is a clean stop."""

from __future__ import annotations

import signal

import psutil

from tests.helpers import wait_for
from tests.log_events import has_event


def spawned_workers(supervisor) -> list[psutil.Process]:
    return [child for child in psutil.Process(supervisor.pid).children()
            if "spawn_main" in " ".join(child.cmdline())]


def test_sigterm_while_every_worker_is_still_importing_exits_zero(cli):
    # Given: a supervisor whose two workers have just been spawned (imports take far longer than this)
    supervisor = cli.start("consume", "--processes", "2", "--log-json")
    wait_for(lambda: len(spawned_workers(supervisor)) == 2, interval_s=0.005, what="two spawned workers")

    # When: it is told to stop at once
    supervisor.send_signal(signal.SIGTERM)

    # Then: every worker (the first one too) stops through its handler and exits 0
    assert supervisor.wait(60) == 0, cli.output(supervisor)
    assert has_event(cli.output(supervisor), "supervisor.stopped", workers=2, exit_codes="[0, 0]")
