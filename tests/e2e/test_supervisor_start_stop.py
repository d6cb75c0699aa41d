"""The supervisor stops cleanly even when the stop comes while its workers are still starting."""

from __future__ import annotations

import signal
import time

import psutil

from tests.helpers import wait_for
from tests.log_events import has_event


def workers(supervisor) -> list[psutil.Process]:
    """The supervisor's worker processes (not its resource tracker)."""
    return [c for c in psutil.Process(supervisor.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def test_sigterm_while_workers_are_still_starting_stops_them_cleanly(cli):
    # Given: a supervisor that has just spawned its workers (still importing, no handler yet)
    supervisor = cli.start("consume", "--processes", "2", "--block-ms", "100", "--log-json")
    wait_for(lambda: len(workers(supervisor)) == 2, interval_s=0.005, what="workers spawned")

    # When: it is asked to stop at once
    supervisor.send_signal(signal.SIGTERM)

    # Then: every worker stops cleanly (by its handler, or before it had read anything)
    assert supervisor.wait(60) == 0, cli.output(supervisor)
    assert has_event(cli.output(supervisor), "supervisor.stopped", workers=2, exit_codes="[0, 0]")


def test_a_worker_killed_while_starting_does_not_hold_up_the_stop(cli):
    # Given: a supervisor whose worker is SIGKILLed before it could get ready
    supervisor = cli.start("consume", "--processes", "1", "--block-ms", "100")
    [worker] = wait_for(lambda: workers(supervisor), interval_s=0.005, what="worker spawned")
    worker.kill()

    # When: the supervisor is asked to stop right away
    supervisor.send_signal(signal.SIGTERM)
    started = time.monotonic()

    # Then: it does not wait for the dead worker to report ready
    assert supervisor.wait(60) is not None
    assert time.monotonic() - started < 20, cli.output(supervisor)
