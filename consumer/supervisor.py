"""Runs N worker processes and restarts one that dies; forwards SIGTERM/SIGINT to all.

Each worker gets a fixed slot (0..N-1) and so a stable consumer name: a worker restarted after a
crash replays the entries its predecessor held. A worker that exits 0 (stopped, or drained) is
not restarted. The supervisor exits 0 only if every worker finished with 0.

With ``--drain`` and no simulation registered yet, the supervisor first waits up to
``wait_for_simulation_s`` for one (a drain started before its simulation), then starts the
workers; if none comes it raises NoSimulation (the CLI prints one line and exits 1). With
``wait_for_simulation_s=0`` it does not wait: nothing registered is nothing to drain (exit 0).

The supervisor also owns the run's metrics folder (workers count into it, see
:mod:`consumer.metrics`), serves ``/metrics`` when given a port, shows ``--drain`` progress read
from Redis, and logs one ``supervisor.summary`` line for the whole run when it exits. While it
draws a progress bar on a terminal, workers send their log lines to it (a queue) and it prints
them above the bar, so no line lands inside the bar.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

import redis

from common.errors import ExitCode, NoSimulation
from common.events import event
from common.keys import Keys
from common.retry import SUPERVISOR_RESTART
from common.settings import ConsumerSettings
from consumer.logs import forward_logs
from consumer.metrics import MetricsDir
from consumer.worker import consumer_name, run_worker

log = logging.getLogger(__name__)

_STABLE_RUN_S = 30.0
_STOP_GRACE_S = 60.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Supervisor:
    """Keeps ``processes`` workers alive until they finish or a stop is requested."""

    def __init__(self, settings: ConsumerSettings, processes: int, log_level: str = "INFO",
                 log_json: bool = False, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 progress: bool = False) -> None:
        self.settings = settings
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.progress = progress
        self.processes = processes
        self.log_level = log_level
        self.log_json = log_json
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._finished: dict[int, int] = {}
        self._restarts: dict[int, int] = {}  # restarts per slot, for metrics and the summary
        self._crash_streak: dict[int, int] = {}  # crashes in a row without a stable run: the backoff
        self._started_at: dict[int, float] = {}
        self._restart_due: dict[int, float] = {}  # slot -> when to start it again
        self._stop = threading.Event()
        self._log_queue = None  # workers' log lines, while a progress bar is drawn on the terminal

    def run(self) -> int:
        """Start the workers and watch them; returns the exit code for the whole group.

        With ``drain``, first waits for a simulation to exist (see the module docstring).
        """
        self._install_signal_handlers()
        if self.settings.drain and self.settings.wait_for_simulation_s > 0 and not self._wait_for_simulation():
            return ExitCode.OK  # stopped while waiting: nothing was started
        if self.progress and self.settings.drain and sys.stdout.isatty():
            self._log_queue = self._context.Queue()
        metrics_dir = MetricsDir()
        try:
            observers = self._start_observers(metrics_dir)
        except BaseException:
            metrics_dir.close()  # e.g. the metrics port is taken: nothing ran, nothing to summarise
            raise
        try:
            return self._supervise()
        finally:
            for observer in observers:
                observer()
            self._log_summary(metrics_dir)
            metrics_dir.close()

    def _wait_for_simulation(self) -> bool:
        """True once a simulation is registered; False if a stop was requested first.

        Raises NoSimulation if none is registered within ``wait_for_simulation_s``.
        """
        from common.connections import redis_client

        registry = Keys(self.settings.namespace).registry
        deadline = time.monotonic() + self.settings.wait_for_simulation_s
        client = redis_client(self.settings.redis_url, socket_timeout_s=5.0)
        waiting = warned = False
        try:
            while True:
                try:
                    if client.scard(registry):
                        return True
                except redis.RedisError as exc:
                    if not warned:
                        event(log, logging.WARNING, "supervisor.registry_unreadable", error=exc)
                    warned = True
                if time.monotonic() >= deadline:
                    raise NoSimulation(
                        f"no simulation appeared in namespace {self.settings.namespace!r} within "
                        f"{self.settings.wait_for_simulation_s:g}s (--wait-for-simulation-s); is its producer "
                        "running, on this Redis and namespace?")
                if not waiting:
                    waiting = True
                    event(log, logging.INFO, "supervisor.waiting_for_simulation", namespace=self.settings.namespace,
                          timeout_s=self.settings.wait_for_simulation_s)
                if self._stop.wait(0.2):
                    return False
        finally:
            client.close()

    def restarts_by_consumer(self) -> dict[str, int]:
        """How often each worker slot was restarted after a crash, by consumer name."""
        return {consumer_name(slot): count for slot, count in self._restarts.items()}

    def _start_observers(self, metrics_dir: MetricsDir) -> list:
        """Metrics endpoint and drain progress; returns their stop functions."""
        from consumer.ops.metrics_server import start_metrics_endpoint
        from consumer.ops.progress import start_drain_progress

        stops = []
        if self.metrics_port is not None:
            stops.append(start_metrics_endpoint(self, metrics_dir))
        if self._log_queue is not None:
            stops.append(forward_logs(self._log_queue))  # stopped before the bar: its last lines go above it
        if self.progress and self.settings.drain:
            stops.append(start_drain_progress(self.settings))
        return stops

    def _log_summary(self, metrics_dir: MetricsDir) -> None:
        totals = metrics_dir.totals()
        event(log, logging.INFO, "supervisor.summary", workers=self.processes, restarts=sum(self._restarts.values()),
              persisted=totals["persisted"], dead_lettered=totals["dead_lettered"], claimed=totals["claimed"],
              retried=totals["retried"], batches=totals["batches"])

    def _supervise(self) -> int:
        for slot in range(self.processes):
            self._start(slot)
        while len(self._finished) < self.processes:
            self._watch()
            if self._stop.wait(0.2):
                return self._stop_all()
        return ExitCode.OK if all(code == 0 for code in self._finished.values()) else ExitCode.FAILED

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=_worker_main, name=f"simstream-worker-{slot}",
            args=(self.settings, slot, os.getpid(), self.log_level, self.log_json, self._log_queue))
        # The child inherits this mask across exec and unblocks once its handler is installed,
        # so a stop signal that arrives while it is still importing is a clean stop, not a kill.
        # Start multiprocessing's resource tracker first: starting it unblocks SIGINT/SIGTERM
        # in this process, which would otherwise leave the first worker unmasked.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self._workers[slot] = process
        self._started_at[slot] = time.monotonic()
        event(log, logging.INFO, "supervisor.worker_started", slot=slot, worker_pid=process.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._restart_due.items()):
            if now >= due:
                del self._restart_due[slot]
                self._start(slot)
        for slot, process in list(self._workers.items()):
            if slot in self._finished or slot in self._restart_due or process.exitcode is None:
                continue
            if process.exitcode == 0:
                self._finished[slot] = 0
                event(log, logging.INFO, "supervisor.worker_finished", slot=slot)
            elif process.exitcode in (ExitCode.BAD_CONFIGURATION,):
                self._finished[slot] = process.exitcode  # restarting cannot fix the configuration
                event(log, logging.ERROR, "supervisor.worker_failed", slot=slot, exit=process.exitcode)
            else:
                self._restart(slot, process.exitcode)

    def _restart(self, slot: int, exitcode: int) -> None:
        """Schedule the slot's restart, backing off while it keeps crashing; other slots carry on.

        The backoff (``SUPERVISOR_RESTART``) doubles per crash in a row and starts over once a
        worker has run for ``_STABLE_RUN_S``: a worker killed now and then comes back at once, a
        crash loop slowly.
        """
        restarts = self._restarts[slot] = self._restarts.get(slot, 0) + 1
        stable = time.monotonic() - self._started_at.get(slot, 0.0) >= _STABLE_RUN_S
        streak = self._crash_streak[slot] = 1 if stable else self._crash_streak.get(slot, 0) + 1
        pause_s = SUPERVISOR_RESTART.pause_s(streak)
        event(log, logging.WARNING, "supervisor.worker_died", slot=slot, exit=exitcode, restarts=restarts,
              restart_in_s=round(pause_s, 1))
        self._restart_due[slot] = time.monotonic() + pause_s

    def _stop_all(self) -> int:
        """Ask every live worker to finish its batch and exit; wait, then kill stragglers."""
        live = [p for slot, p in self._workers.items() if slot not in self._finished and p.is_alive()]
        for process in live:
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        stragglers: set[int] = set()
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                event(log, logging.ERROR, "supervisor.worker_killed", worker_pid=process.pid,
                      grace_s=round(_STOP_GRACE_S))
                process.kill()
                process.join()
                stragglers.add(process.pid)
        codes = [int(ExitCode.FAILED) if p.pid in stragglers else _stop_code(p.exitcode) for p in live]
        codes += list(self._finished.values())
        event(log, logging.INFO, "supervisor.stopped", workers=len(self._workers), exit_codes=codes)
        return ExitCode.OK if all(code == 0 for code in codes) else ExitCode.FAILED

    def _install_signal_handlers(self) -> None:
        def on_signal(signum, _frame) -> None:
            if self._stop.is_set():
                os._exit(ExitCode.INTERRUPTED)
            event(log, logging.INFO, "supervisor.stopping", signal=signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def _stop_code(exitcode: int) -> int:
    """A worker's exit code after a stop; killed by that SIGTERM, or by another signal from outside
    as the stop began, counts as a clean stop (a straggler the supervisor had to kill does not).

    Only a worker still starting (before ``_worker_main`` blocked the signal) can die of SIGTERM:
    afterwards its handler turns SIGTERM into a clean stop. So it had read nothing yet.
    """
    if exitcode == -signal.SIGTERM:
        event(log, logging.INFO, "supervisor.worker_stopped_while_starting")
        return int(ExitCode.OK)
    if exitcode is not None and exitcode < 0:
        # Killed from outside (kill -9, the OOM killer) as the stop began: the crash a restart
        # would have answered, had the consumers not been stopping. Its entries stay pending and
        # the next consumer replays them, as after any crash; the stop itself went as asked.
        event(log, logging.WARNING, "supervisor.worker_died_while_stopping", exit=exitcode)
        return int(ExitCode.OK)
    return exitcode


def _worker_main(settings: ConsumerSettings, slot: int, parent_pid: int, log_level: str, log_json: bool,
                 log_queue=None) -> None:
    """Worker process entry: hold stop signals until the worker's own handler is installed.

    The worker unblocks them once its handler is in place, so a stop that arrives while it is
    setting up is a clean stop; one that arrives even earlier kills it before it read anything.
    Its own session keeps a terminal's Ctrl-C (sent to the whole foreground process group) from
    reaching it next to the supervisor's SIGTERM, which it would take as a second, forcing signal.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    os.setsid()
    run_worker(settings, slot, parent_pid, log_level, log_json, log_queue)
