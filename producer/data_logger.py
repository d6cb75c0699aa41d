"""RedisBufferedDataLogger: the reference simulation's logger methods, streaming to Redis.

Same method names, argument names, defaults and validation as the reference ``DataLogger``
(and its database's ``update_agent_death``); each call becomes one or more
:class:`StreamProducer` records, so the simulation pays microseconds per row instead of an ORM
flush.

What a call checks, one rule: it raises (and logs nothing) where the reference raises, with the
same exception type and a sentence naming the argument: a negative ``step_number`` (ValueError)
or one that is not a number (TypeError) in ``log_agent_action`` and ``log_interaction_edge``, a
position that is not an (x, y) pair (TypeError or IndexError), a batch agent without a required
key (ValueError), a metric name ``simulation_steps`` has no column for (TypeError, also a
ValueError), a state tuple too short (IndexError, also a ValueError). simstream's own checks are
structural and cheap: the record kind and field names (ValueError, in ``StreamProducer.log``), a
state tuple longer than the layout (ValueError). Values are not type-checked on the simulation
thread: the consumer checks each against its column, and a record whose value the table cannot
take is written to ``dead_letters`` with the reason.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from common.records import KINDS
from common.tiers import RedisIMConfig, RedisSTMConfig
from producer.stream_producer import FlushReport, StreamProducer

_AGENT_STATE_COLUMNS = ("agent_id", "position_x", "position_y", "resource_level", "current_health",
                        "starting_health", "starvation_counter", "is_defending", "total_reward", "age")
_RESOURCE_STATE_COLUMNS = ("resource_id", "amount", "position_x", "position_y")
_AGENT_KEYS = ("agent_id", "birth_time", "agent_type", "position", "initial_resources",
               "starting_health")
_DEATH_DETAILS = {"final_state": "dead"}


class _UnknownMetric(TypeError, ValueError):
    """A metric name ``simulation_steps`` has no column for: a TypeError as the reference's
    ``SimulationStepModel(**metrics)`` raises, and the ValueError of simstream's name checks."""


class _ShortTuple(IndexError, ValueError):
    """A state tuple shorter than the reference layout: an IndexError as the reference's
    ``state[9]`` raises, and the ValueError of simstream's own length check."""


def _check_step(step_number: int) -> None:
    try:
        negative = step_number < 0
    except TypeError:  # the reference's own comparison fails the same way, with a TypeError
        raise TypeError(f"step_number must be an int, got {type(step_number).__name__} {step_number!r:.40}") from None
    if negative:
        raise ValueError("step_number must be non-negative")


def _xy(name: str, position: Sequence[float]) -> tuple[Any, Any]:
    """``position``'s x and y; the reference's exception type (TypeError, IndexError) if it is
    not an (x, y) pair, with a sentence naming the argument."""
    try:
        return position[0], position[1]
    except (TypeError, IndexError, KeyError) as exc:
        raise type(exc)(f"{name} must be an (x, y) pair, got {position!r:.60}") from None


class RedisBufferedDataLogger:
    """A drop-in for the reference ``DataLogger`` that writes through Redis Streams.

    Buffering and flushing are the producer's: ``flush_all_buffers()`` waits until everything is
    in Redis (with ``wait_persisted=True``, until consumers committed it to SQL),
    ``flush_if_needed()`` is a no-op kept for compatibility (the sender flushes continuously).
    With ``recent_state=True`` (or a ``redis_stm_config`` / ``redis_im_config``) each agent's
    latest states are also kept in the Redis short-term and intermediate tiers, read back with
    :class:`common.recent_state.RecentStates`.
    """

    def __init__(self, simulation_id: str, redis_url: str | None = None, *,
                 producer: StreamProducer | None = None, recent_state: bool = False,
                 redis_stm_config: RedisSTMConfig | None = None,
                 redis_im_config: RedisIMConfig | None = None, start_on_first_record: bool = False,
                 **producer_options: Any) -> None:
        self.simulation_id = simulation_id
        self._producer = producer

        def start() -> StreamProducer:
            return StreamProducer(simulation_id, redis_url, recent_state=recent_state,
                                  redis_stm_config=redis_stm_config, redis_im_config=redis_im_config,
                                  **producer_options)

        self._start_producer = start
        if producer is None and not start_on_first_record:
            self._producer = start()

    @property
    def producer(self) -> StreamProducer:
        """The producer streaming this logger's records; started by the first record if it was
        not at construction (``start_on_first_record=True``)."""
        if self._producer is None:
            self._producer = self._start_producer()
        return self._producer

    @property
    def started(self) -> bool:
        """True once a producer exists: something was (or is being) logged."""
        return self._producer is not None

    def log_agent_action(self, step_number: int, agent_id: str, action_type: str,
                         action_target_id: str | None = None, reward: float | None = None,
                         details: dict | None = None, module_type: str | None = None,
                         module_id: str | None = None, action_taken: int | None = None,
                         action_taken_mapped: str | None = None) -> None:
        """One ``agent_actions`` row; ``action_taken(_mapped)`` are merged into ``details``."""
        _check_step(step_number)
        if action_taken is not None or action_taken_mapped is not None:
            details = dict(details or {})
            if action_taken is not None:
                details["action_taken"] = action_taken
            if action_taken_mapped is not None:
                details["action_taken_mapped"] = action_taken_mapped
        self.producer.log("agent_action", step_number=step_number, agent_id=agent_id,
                          action_type=action_type if isinstance(action_type, str) else str(action_type),
                          action_target_id=action_target_id, reward=reward, details=details or None,
                          module_type=module_type, module_id=module_id)

    def log_health_incident(self, step_number: int, agent_id: str, health_before: float,
                            health_after: float, cause: str, details: dict | None = None) -> None:
        """One ``health_incidents`` row."""
        self.producer.log("health_incident", step_number=step_number, agent_id=agent_id,
                          health_before=health_before, health_after=health_after, cause=cause,
                          details=details or None)

    def update_agent_death(self, agent_id: str, death_time: int, cause: str = "starvation") -> None:
        """The agent's death: ``agents.death_time`` set and a ``health_incidents`` row (health 0
        to 0, ``cause``, details ``{"final_state": "dead"}``), as the reference records it. The
        incident's ``simulation_id`` is filled in the standalone layout (a shared database needs
        it) and left NULL in the agentfarm layout, as the reference's own method leaves it.

        Safe at least once and in any order: if the death commits before the agent's own row
        (another consumer, a later batch), the agent row fills in the rest and keeps death_time.
        """
        self.producer.log("agent_death", agent_id=agent_id, death_time=death_time)
        self.producer.log("death_incident", step_number=death_time, agent_id=agent_id,
                          health_before=0, health_after=0, cause=cause, details=dict(_DEATH_DETAILS))

    def log_agent(self, agent_id: str, birth_time: int, agent_type: str,
                  position: Sequence[float], initial_resources: float, starting_health: float,
                  genome_id: str | None = None, generation: int = 0,
                  action_weights: dict | None = None) -> None:
        """One ``agents`` row."""
        x, y = _xy("position", position)
        self.producer.log("agent", agent_id=agent_id, birth_time=birth_time, agent_type=agent_type,
                          position_x=x, position_y=y,
                          initial_resources=initial_resources, starting_health=starting_health,
                          genome_id=genome_id, generation=generation,
                          action_weights=_weights(action_weights))

    def log_agents_batch(self, agent_data_list: Iterable[Mapping[str, Any]]) -> None:
        """Several ``agents`` rows; each dict has ``log_agent``'s keys (``simulation_id`` ignored)."""
        agent_data_list = list(agent_data_list)
        for data in agent_data_list:  # all checks first: a rejected batch logs nothing, as in one transaction
            missing = [key for key in _AGENT_KEYS if key not in data]
            if missing:
                raise ValueError(f"Missing required field '{missing[0]}' in agent data")
            _xy("position", data["position"])
        for data in agent_data_list:
            self.log_agent(data["agent_id"], data["birth_time"], data["agent_type"],
                           data["position"], data["initial_resources"], data["starting_health"],
                           genome_id=data.get("genome_id"), generation=data.get("generation", 0),
                           action_weights=data.get("action_weights"))

    def log_step(self, step_number: int, agent_states: Iterable[Sequence[Any]],
                 resource_states: Iterable[Sequence[Any]], metrics: Mapping[str, Any]) -> None:
        """One ``agent_states`` row per agent (the last tuple wins if an agent appears twice, as in
        the reference), one ``resource_states`` row per resource tuple and one
        ``simulation_steps`` row with ``metrics`` (``resources_consumed`` defaults to 0.0)."""
        latest = {state[0]: state for state in agent_states}
        states = [_columns(_AGENT_STATE_COLUMNS, state) for state in latest.values()]
        resources = [_columns(_RESOURCE_STATE_COLUMNS, resource) for resource in resource_states]
        step = {"step_number": step_number, "resources_consumed": 0.0, **metrics}
        unknown = sorted(set(step) - KINDS["simulation_step"].allowed)
        if unknown:  # all checks first: a rejected call logs nothing
            # The reference's SimulationStepModel(**metrics) raises TypeError for such a name.
            raise _UnknownMetric(f"metrics has names simulation_steps has no column for: {unknown}; "
                                    f"its columns are {sorted(KINDS['simulation_step'].allowed - {'step_number'})}")
        log = self.producer.log
        for columns in states:
            columns["is_defending"] = bool(columns["is_defending"])
            log("agent_state", step_number=step_number, **columns)
        for columns in resources:
            log("resource_state", step_number=step_number, **columns)
        log("simulation_step", **step)

    def log_resource(self, resource_id: int, initial_amount: float, position: Sequence[float]) -> None:
        """A resource's initial state: a ``resource_states`` row at step 0."""
        x, y = _xy("position", position)
        self.producer.log("resource_state", step_number=0, resource_id=resource_id,
                          amount=initial_amount, position_x=x, position_y=y)

    def log_interaction_edge(self, step_number: int, source_type: str, source_id: str,
                             target_type: str, target_id: str, interaction_type: str,
                             action_type: str | None = None, details: dict | None = None) -> None:
        """One ``interactions`` row."""
        _check_step(step_number)
        self.producer.log("interaction", step_number=step_number, source_type=str(source_type),
                          source_id=str(source_id), target_type=str(target_type),
                          target_id=str(target_id), interaction_type=str(interaction_type),
                          action_type=str(action_type) if action_type else None, details=details)

    def log_reproduction_event(self, step_number: int, parent_id: str, offspring_id: str | None,
                               success: bool, parent_resources_before: float,
                               parent_resources_after: float,
                               offspring_initial_resources: float | None,
                               failure_reason: str | None, parent_generation: int,
                               offspring_generation: int | None,
                               parent_position: Sequence[float]) -> None:
        """One ``reproduction_events`` row."""
        x, y = _xy("parent_position", parent_position)
        self.producer.log("reproduction_event", step_number=step_number, parent_id=parent_id,
                          offspring_id=offspring_id, success=success,
                          parent_resources_before=parent_resources_before,
                          parent_resources_after=parent_resources_after,
                          offspring_initial_resources=offspring_initial_resources,
                          failure_reason=failure_reason, parent_generation=parent_generation,
                          offspring_generation=offspring_generation,
                          parent_position_x=x, parent_position_y=y)

    def flush_all_buffers(self, *, wait_persisted: bool = False, timeout_s: float | None = None) -> FlushReport:
        """Wait until everything logged so far is in Redis (bounded by ``timeout_s``, default the
        producer's ``close_timeout_s``).

        With ``wait_persisted=True``, then also wait until consumers have committed it to SQL, so
        the rows can be read back (:meth:`StreamProducer.wait_persisted`; bounded by ``timeout_s``,
        default the producer's ``persist_timeout_s``): raises PersistTimeout naming the backlog,
        or GroupMissing at once if no consumer group reads the simulation. A logger that has not
        logged anything (its producer not started) has nothing to wait for.
        """
        if not self.started:
            return FlushReport(logged=0, in_redis=0, journaled=0, waiting=0)
        if wait_persisted:
            return self.producer.wait_persisted(timeout_s)
        return self.producer.flush(timeout_s)

    def flush_if_needed(self) -> None:
        """Kept for the reference protocol: the sender thread already flushes continuously."""

    def discard_pending_agents(self, agent_ids: Iterable[str]) -> int:
        """Roll back the creation of ``agent_ids``: drop their actions and health incidents that
        have not left this process yet, and return how many were dropped (the reference's
        meaning); their ``agents`` rows are retracted.

        A retracted agent's row is removed from SQL, now if it is there and later if it commits
        after the retraction (the sink keeps the retraction), so the database ends as the
        reference's does after its own rollback, whatever order the rows commit in. Records of
        the agent that had already left (actions, states) are kept, as the reference keeps what
        it had flushed. "Not left yet" is exact: a record leaves when the producer's sender
        thread takes it from the buffer, under a lock this call also holds. Call it from the
        thread that logs.
        """
        agent_ids = [agent_id for agent_id in agent_ids]
        if not agent_ids or not self.started:
            return 0  # nothing was logged, so nothing of these agents can be anywhere
        producer = self.producer
        producer.discard_pending(("agent",), "agent_id", agent_ids)
        dropped = producer.discard_pending(("agent_action", "health_incident"), "agent_id", agent_ids)
        for agent_id in agent_ids:
            producer.log("agent_retraction", agent_id=agent_id)
        return dropped

    def close(self, timeout_s: float | None = None, status: str = "completed") -> FlushReport:
        """Send everything and mark the simulation complete (its end recorded with ``status``).

        A logger that never logged anything (its producer not started) sends nothing and marks
        nothing: there is no simulation of its own to complete.
        """
        if not self.started:
            return FlushReport(logged=0, in_redis=0, journaled=0, waiting=0)
        return self.producer.close(timeout_s, status=status)

    def __enter__(self) -> RedisBufferedDataLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _weights(action_weights: Mapping[Any, Any] | None) -> dict[str, float] | None:
    """Action weights as the reference stores them: string keys, float values."""
    if action_weights is None:
        return None
    return {str(key): float(value) for key, value in action_weights.items()}


def _columns(names: tuple[str, ...], values: Sequence[Any]) -> dict[str, Any]:
    """A state tuple as named columns; ValueError if its length is not the reference layout's
    (a short one also an IndexError, as the reference's ``state[9]`` raises)."""
    if len(values) != len(names):
        error = _ShortTuple if len(values) < len(names) else ValueError
        raise error(f"expected a tuple of {len(names)} values {names}, got {len(values)}: {tuple(values)!r:.80}")
    return dict(zip(names, values))
