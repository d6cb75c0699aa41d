"""Runs N worker processes and restarts one that dies; forwards SIGTERM/SIGINT to all.

Each worker gets a fixed slot (0..N-1) and so a stable consumer name: a worker restarted after a
crash replays the entries its predecessor held. A worker that exits 0 (stopped, or drained) is
not restarted. The supervisor exits 0 only if every worker finished with 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess

from common.errors import ExitCode
from common.settings import ConsumerSettings
from consumer.worker import run_worker

log = logging.getLogger(__name__)

_RESTART_BACKOFF_MAX_S = 10.0
_STOP_GRACE_S = 60.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Supervisor:
    """Keeps ``processes`` workers alive until they finish or a stop is requested."""

    def __init__(self, settings: ConsumerSettings, processes: int, log_level: str = "INFO",
                 log_json: bool = False) -> None:
        self.settings = settings
        self.processes = processes
        self.log_level = log_level
        self.log_json = log_json
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._finished: dict[int, int] = {}
        self._restarts: dict[int, int] = {}
        self._stop = threading.Event()

    def run(self) -> int:
        """Start the workers and watch them; returns the exit code for the whole group."""
        self._install_signal_handlers()
        for slot in range(self.processes):
            self._start(slot)
        while len(self._finished) < self.processes:
            self._watch()
            if self._stop.wait(0.2):
                return self._stop_all()
        return ExitCode.OK if all(code == 0 for code in self._finished.values()) else ExitCode.FAILED

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=run_worker, name=f"simstream-worker-{slot}",
            args=(self.settings, slot, os.getpid(), self.log_level, self.log_json))
        # Meant to hold a stop signal back until the child's handler is installed; a spawned child
        # may start with an empty mask (CPython 3.11 does), so _stop_all also accepts that death.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self._workers[slot] = process
        log.info("supervisor.worker_started slot=%d pid=%d", slot, process.pid)

    def _watch(self) -> None:
        for slot, process in list(self._workers.items()):
            if slot in self._finished or process.exitcode is None:
                continue
            if process.exitcode == 0:
                self._finished[slot] = 0
                log.info("supervisor.worker_finished slot=%d", slot)
            elif process.exitcode in (ExitCode.BAD_CONFIGURATION,):
                self._finished[slot] = process.exitcode  # restarting cannot fix the configuration
                log.error("supervisor.worker_failed slot=%d exit=%d", slot, process.exitcode)
            else:
                self._restart(slot, process.exitcode)

    def _restart(self, slot: int, exitcode: int) -> None:
        restarts = self._restarts.get(slot, 0) + 1
        self._restarts[slot] = restarts
        backoff_s = min(_RESTART_BACKOFF_MAX_S, 0.1 * 2 ** min(restarts - 1, 7))
        log.warning("supervisor.worker_died slot=%d exit=%s restarts=%d restart_in_s=%.1f",
                    slot, exitcode, restarts, backoff_s)
        if not self._stop.wait(backoff_s):
            self._start(slot)

    def _stop_all(self) -> int:
        """Ask every live worker to finish its batch and exit; wait, then kill stragglers."""
        live = [p for slot, p in self._workers.items() if slot not in self._finished and p.is_alive()]
        for process in live:
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("supervisor.worker_killed pid=%d (did not stop in %.0fs)", process.pid, _STOP_GRACE_S)
                process.kill()
                process.join()
        # A worker still importing has no handler yet and dies of the SIGTERM itself (a spawned
        # child does not keep the blocked mask): it had not read anything, so that is a clean stop.
        codes = [0 if p.exitcode == -signal.SIGTERM else p.exitcode for p in live] + list(self._finished.values())
        log.info("supervisor.stopped workers=%d exit_codes=%s", len(self._workers), codes)
        return ExitCode.OK if all(code == 0 for code in codes) else ExitCode.FAILED

    def _install_signal_handlers(self) -> None:
        def on_signal(signum, _frame) -> None:
            if self._stop.is_set():
                os._exit(ExitCode.INTERRUPTED)
            log.info("supervisor.stopping signal=%s", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
