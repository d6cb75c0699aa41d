"""AgentFarm through simstream, installed in one call: ``producer.agentfarm.install()``.

After ``install()``, every ``SimulationDatabase`` that AgentFarm creates writes through simstream,
with no file of AgentFarm edited:

- its logger is an :class:`AgentFarmDataLogger` (AgentFarm looks the name ``DataLogger`` up in
  ``farm.database.database`` when it builds a database, so replacing that attribute is enough);
  the producer starts with the first record and announces the ``agentfarm`` layout, so
  consumers write AgentFarm's own tables into the simulation's own file;
- ``SimulationDatabase.update_agent_death`` goes through the logger (the agent row may still be
  in Redis, where AgentFarm's own method would not find it and would write nothing);
- the end of the simulation (``update_simulation_record(status=...)`` with a final status, or
  ``close()``) marks it complete, so ``simstream consume --drain`` ends; only the database that
  logged the simulation's records does that;
- AgentFarm's post-run validation (``validate_simulation_database``) waits until consumers have
  committed what the simulation logged (bounded by ``validation_wait_s``), since it reads the file
  right after the run.

AgentFarm stays an optional dependency, imported only by ``install()``. Not covered: AgentFarm's
in-memory database (refused with one line: it never reaches a file), its experiment-level
database, and the sharded database.
"""

from __future__ import annotations

import importlib
import logging
import threading
import weakref
from dataclasses import asdict
from typing import Any, Callable

from common.errors import ConfigurationError, SimstreamError
from common.events import event
from common.layouts import AGENTFARM
from common.settings import ProducerSettings
from common.tiers import RedisIMConfig, RedisSTMConfig
from producer.data_logger import RedisBufferedDataLogger

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "canceled", "aborted", "error", "stopped"})
"""``update_simulation_record`` statuses that end a simulation (anything but running/pending)."""

_IN_MEMORY_PATHS = ("", ":memory:")


class AgentFarmDataLogger(RedisBufferedDataLogger):
    """AgentFarm's ``DataLogger`` for one ``SimulationDatabase``, streaming through simstream.

    Same constructor as AgentFarm's (``database, simulation_id, config``; ``config``, AgentFarm's
    buffer settings, is accepted and not needed: the producer sends continuously), plus the
    recent-state tier configs and simstream's producer options. Rows land in AgentFarm's tables
    (the ``agentfarm`` layout). The producer starts with the first record, so a database that only
    reads an old file sends nothing.
    """

    def __init__(self, database: Any, simulation_id: str | None = None, config: Any = None,
                 redis_stm_config: RedisSTMConfig | None = None, redis_im_config: RedisIMConfig | None = None,
                 *, redis_url: str | None = None, **producer_options: Any) -> None:
        if not simulation_id:
            raise ValueError("simulation_id is required for DataLogger")
        db_path = getattr(database, "db_path", None)
        if db_path is None or str(db_path) in _IN_MEMORY_PATHS:
            raise ConfigurationError(
                "simstream writes AgentFarm's rows into the simulation's own file, and an in-memory "
                "AgentFarm database has none; set config.database.use_in_memory_db = False")
        self.database = database
        self.config = config
        producer_options["layout"] = AGENTFARM
        super().__init__(simulation_id, redis_url, redis_stm_config=redis_stm_config,
                         redis_im_config=redis_im_config, start_on_first_record=True, **producer_options)

    def finish(self, status: str | None = None) -> None:
        """The simulation ended: send everything and mark it complete (once; later calls do nothing)."""
        if self.started and not self.producer.closed:
            report = self.close(status=status or "completed")
            event(log, logging.INFO, "agentfarm.simulation_finished", simulation=self.simulation_id,
                  status=status or "completed", **asdict(report))


class Installation:
    """What ``install()`` changed in AgentFarm; ``uninstall()`` (or leaving the ``with`` block)
    puts every original back. Loggers created meanwhile keep working until their simulation ends."""

    def __init__(self, redis_url: str | None, producer_options: dict[str, Any], validation_wait_s: float) -> None:
        self.redis_url = redis_url
        self.producer_options = producer_options
        self.validation_wait_s = validation_wait_s
        self._loggers: weakref.WeakValueDictionary[str, AgentFarmDataLogger] = weakref.WeakValueDictionary()
        self._originals: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    def logger_for(self, simulation_id: str) -> AgentFarmDataLogger | None:
        """The live logger of ``simulation_id`` created since install, if any."""
        return self._loggers.get(simulation_id)

    def make_logger(self, database: Any, simulation_id: str | None = None, config: Any = None,
                    **extra: Any) -> AgentFarmDataLogger:
        """AgentFarm's ``DataLogger(database, simulation_id=..., config=...)`` call, answered."""
        logger = AgentFarmDataLogger(database, simulation_id, config, redis_url=self.redis_url,
                                     **{**self.producer_options, **extra})
        self._loggers[logger.simulation_id] = logger
        return logger

    def replace(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` to ``value``, remembering the original for ``uninstall()``."""
        self._originals.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, value)

    def uninstall(self) -> None:
        """Restore AgentFarm's own logger and methods; idempotent."""
        with self._lock:
            while self._originals:
                owner, name, original = self._originals.pop()
                setattr(owner, name, original)
        global _current
        if _current is self:
            _current = None

    @property
    def installed(self) -> bool:
        """True until ``uninstall()``."""
        return bool(self._originals)

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()


_current: Installation | None = None


def install(redis_url: str | None = None, *, validation_wait_s: float = 120.0,
            **producer_options: Any) -> Installation:
    """Make every ``SimulationDatabase`` AgentFarm creates from now on write through simstream.

    ``redis_url`` and ``producer_options`` are the producer's (see ``ProducerSettings``; the
    environment's ``SIMSTREAM_*`` variables apply as for any producer). ``validation_wait_s``
    bounds how long AgentFarm's post-run validation waits for consumers to commit the run.
    Raises ConfigurationError (one line) if AgentFarm is not importable or an option is wrong.
    Calling it again replaces the previous installation.
    """
    ProducerSettings.from_env(redis_url=redis_url, layout=AGENTFARM, **producer_options)  # fail now, not mid-run
    database_module = _import("farm.database.database")
    global _current
    if _current is not None:
        _current.uninstall()
    installation = Installation(redis_url, producer_options, validation_wait_s)
    database_class = database_module.SimulationDatabase
    installation.replace(database_module, "DataLogger", installation.make_logger)
    installation.replace(database_class, "update_agent_death", _death_hook(database_class.update_agent_death))
    installation.replace(database_class, "update_simulation_record",
                         _status_hook(database_class.update_simulation_record))
    installation.replace(database_class, "close", _close_hook(database_class.close))
    try:
        validation_module = importlib.import_module("farm.database.validation")
    except ImportError:
        validation_module = None  # an AgentFarm without post-run validation: nothing to wait for
    if validation_module is not None and hasattr(validation_module, "validate_simulation_database"):
        installation.replace(validation_module, "validate_simulation_database",
                             _validation_hook(installation, validation_module.validate_simulation_database))
    _current = installation
    return installation


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"AgentFarm is not importable here ({exc}); install it in this environment "
            "(pip install -e path/to/AgentFarm) before producer.agentfarm.install()") from None


def _ours(database: Any) -> AgentFarmDataLogger | None:
    logger = getattr(database, "logger", None)
    return logger if isinstance(logger, AgentFarmDataLogger) else None


def _death_hook(original: Callable) -> Callable:
    def update_agent_death(self, agent_id: str, death_time: int, cause: str = "starvation"):
        logger = _ours(self)
        if logger is None:
            return original(self, agent_id, death_time, cause)
        logger.update_agent_death(agent_id, death_time, cause)
        return None
    update_agent_death.__doc__ = original.__doc__
    return update_agent_death


def _status_hook(original: Callable) -> Callable:
    def update_simulation_record(self, simulation_id: str, **changes: Any):
        result = original(self, simulation_id, **changes)  # AgentFarm's own row, in its own file
        logger = _ours(self)
        status = changes.get("status")
        if logger is not None and status is not None and str(status).lower() in FINAL_STATUSES:
            logger.finish(str(status))
        return result
    update_simulation_record.__doc__ = original.__doc__
    return update_simulation_record


def _close_hook(original: Callable) -> Callable:
    def close(self):
        logger = _ours(self)
        if logger is not None:
            logger.finish()
        return original(self)
    close.__doc__ = original.__doc__
    return close


def _validation_hook(installation: Installation, original: Callable) -> Callable:
    def validate_simulation_database(db_path: Any, simulation_id: str | None = None, *args: Any, **kwargs: Any):
        logger = installation.logger_for(simulation_id) if simulation_id else None
        if logger is not None and logger.started:
            try:
                logger.producer.wait_persisted(installation.validation_wait_s)
            except SimstreamError as exc:  # not persisted in time, or no consumers: validate what is there
                event(log, logging.WARNING, "agentfarm.validation_not_waited", simulation=simulation_id, reason=exc)
        return original(db_path, simulation_id, *args, **kwargs)
    validate_simulation_database.__doc__ = original.__doc__
    return validate_simulation_database
