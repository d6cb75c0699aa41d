"""A scripted run that calls every logger method the way the reference simulation does, persisted
by real consumer processes, then read back through the reference's own ORM models: every column
of every row must hold what the reference's DataLogger would have written."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from common import RecentStates, RedisSTMConfig
from producer import RedisBufferedDataLogger
from tests.reference_models import AUTOINCREMENT_KEYS, MODELS, Simulation

ACTIONS = ("move", "gather", "attack", "share")


class ReferenceRun:
    """Drives a logger like the reference simulation and records the rows its DataLogger writes."""

    def __init__(self, logger: RedisBufferedDataLogger) -> None:
        self.logger = logger
        self.sim = logger.simulation_id
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.agents: dict[str, dict[str, Any]] = {}
        self.alive: list[str] = []

    def setup(self, agents: int, resources: int) -> None:
        for r in range(resources):
            self.logger.log_resource(f"resource_{r}", 10.0 + r, (float(r), r + 0.5))
            self._row("resource_states", step_number=0, resource_id=f"resource_{r}", amount=10.0 + r,
                      position_x=float(r), position_y=r + 0.5)
        batch = [{"simulation_id": self.sim, "agent_id": f"a{a}", "birth_time": 0,
                  "agent_type": ("system", "independent", "control")[a % 3], "position": (a * 1.5, 2.0),
                  "initial_resources": 5.0 + a, "starting_health": 10.0, "genome_id": f"g{a}",
                  "generation": 0, "action_weights": {"move": 0.5, "gather": 0.5} if a % 2 else None}
                 for a in range(agents)]
        self.logger.log_agents_batch(batch)
        for data in batch:
            self._agent(data["agent_id"], 0, data["agent_type"], data["position"], data["initial_resources"],
                        data["starting_health"], data["genome_id"], 0, data["action_weights"])

    def step(self, step: int, resources: int) -> None:
        for index, agent_id in enumerate(self.alive):
            self._action(step, agent_id, index)
            self.logger.log_interaction_edge(step, "agent", agent_id, "resource", index % resources, "gather",
                                             action_type="gather" if index % 2 else None,
                                             details={"amount": 1.5} if index % 2 else None)
            self._row("interactions", step_number=step, source_type="agent", source_id=agent_id,
                      target_type="resource", target_id=str(index % resources), interaction_type="gather",
                      action_type="gather" if index % 2 else None,
                      details={"amount": 1.5} if index % 2 else None)
        self._events(step)
        self._log_step(step, resources)
        self.logger.flush_if_needed()

    def _action(self, step: int, agent_id: str, index: int) -> None:
        action = ACTIONS[(step + index) % len(ACTIONS)]
        target = self.alive[(index + 1) % len(self.alive)] if action == "attack" else None
        details = {"dx": index, "note": "z-before-a"} if index % 3 else None
        learned = index % 2 == 0
        self.logger.log_agent_action(step, agent_id, action, action_target_id=target, reward=0.25 * index,
                                     details=details, module_type="dqn" if learned else None,
                                     module_id=f"m-{agent_id}" if learned else None,
                                     action_taken=index if learned else None,
                                     action_taken_mapped=action if learned else None)
        stored = dict(details or {})
        if learned:
            stored.update(action_taken=index, action_taken_mapped=action)
        self._row("agent_actions", step_number=step, agent_id=agent_id, action_type=action,
                  action_target_id=target, reward=0.25 * index, details=json.dumps(stored) if stored else None,
                  module_type="dqn" if learned else None, module_id=f"m-{agent_id}" if learned else None)

    def _events(self, step: int) -> None:
        if step == 2:
            self.logger.log_health_incident(2, "a1", 10.0, 6.5, "combat", {"attacker": "a0", "damage": 3.5})
            self._row("health_incidents", step_number=2, agent_id="a1", health_before=10.0, health_after=6.5,
                      cause="combat", details=json.dumps({"attacker": "a0", "damage": 3.5}))
            self.logger.log_health_incident(2, "a3", 9.0, 8.0, "starvation")
            self._row("health_incidents", step_number=2, agent_id="a3", health_before=9.0, health_after=8.0,
                      cause="starvation", details=None)
        if step == 3:
            self._reproduce(3)
        if step == 4:
            # A birth rolled back: the reference's file then holds no row for it, whether the row
            # had left the process or not (it is retracted), and no pending record of it
            self.logger.log_agent("a99", 4, "independent", (0.0, 0.0), 1.0, 10.0, genome_id="g99", generation=2)
            assert self.logger.discard_pending_agents(["a99"]) == 0  # no pending action or incident of it
        if step == 5:
            self.logger.update_agent_death("a2", 5, cause="combat")
            self.agents["a2"]["death_time"] = 5
            self.alive.remove("a2")
            self._row("health_incidents", step_number=5, agent_id="a2", health_before=0.0, health_after=0.0,
                      cause="combat", details=json.dumps({"final_state": "dead"}))

    def _reproduce(self, step: int) -> None:
        self.logger.log_reproduction_event(step, "a0", "a0-1", True, 8.0, 4.0, 3.0, None, 0, 1, (0.0, 2.0))
        self._row("reproduction_events", step_number=step, parent_id="a0", offspring_id="a0-1", success=True,
                  parent_resources_before=8.0, parent_resources_after=4.0, offspring_initial_resources=3.0,
                  failure_reason=None, parent_generation=0, offspring_generation=1,
                  parent_position_x=0.0, parent_position_y=2.0)
        self.logger.log_agent("a0-1", step, "system", (0.5, 2.5), 3.0, 10.0, genome_id="g0-1", generation=1,
                              action_weights={"move": 1})
        self._agent("a0-1", step, "system", (0.5, 2.5), 3.0, 10.0, "g0-1", 1, {"move": 1.0})
        self.logger.log_reproduction_event(step, "a1", None, False, 2.0, 2.0, None, "insufficient resources",
                                           0, None, (1.5, 2.0))
        self._row("reproduction_events", step_number=step, parent_id="a1", offspring_id=None, success=False,
                  parent_resources_before=2.0, parent_resources_after=2.0, offspring_initial_resources=None,
                  failure_reason="insufficient resources", parent_generation=0, offspring_generation=None,
                  parent_position_x=1.5, parent_position_y=2.0)

    def _log_step(self, step: int, resources: int) -> None:
        states = [(agent_id, 1.0 + i, 2.0, 3.5, 9.0, 10.0, i % 2, i % 2, 0.5 * step, step)
                  for i, agent_id in enumerate(self.alive)]
        resource_states = [(f"resource_{r}", 9.0 - step * 0.5, float(r), r + 0.5) for r in range(resources)]
        metrics = {"total_agents": len(self.alive), "births": int(step == 3), "deaths": int(step == 5),
                   "current_max_generation": 1 if step >= 3 else 0, "average_agent_age": step + 0.5,
                   "agent_type_counts": {"system": 2, "independent": 2}, "total_resources": 27.0,
                   "average_agent_resources": 3.5, "resource_efficiency": 0.75,
                   "resource_distribution_entropy": 0.5, "average_agent_health": 9.0, "average_reward": 0.5,
                   "genetic_diversity": 0.25, "dominant_genome_ratio": 0.5}
        if step % 2:
            metrics["resources_consumed"] = 1.25
        self.logger.log_step(step, states, resource_states, metrics)
        for state in states:
            self._row("agent_states", id=f"{self.sim}:{state[0]}-{step}", step_number=step, agent_id=state[0],
                      position_x=state[1], position_y=state[2], position_z=None, resource_level=state[3],
                      current_health=state[4], starting_health=state[5], starvation_counter=state[6],
                      is_defending=bool(state[7]), total_reward=state[8], age=state[9])
        for resource in resource_states:
            self._row("resource_states", step_number=step, resource_id=resource[0], amount=resource[1],
                      position_x=resource[2], position_y=resource[3])
        self._row("simulation_steps", step_number=step, **{"resources_consumed": 0.0, **metrics})

    def _agent(self, agent_id, birth_time, agent_type, position, initial_resources, starting_health,
               genome_id, generation, action_weights, alive: bool = True) -> None:
        self.agents[agent_id] = {"simulation_id": self.sim, "agent_id": agent_id, "birth_time": birth_time,
                                 "death_time": None, "agent_type": agent_type, "position_x": position[0],
                                 "position_y": position[1], "initial_resources": initial_resources,
                                 "starting_health": starting_health, "genome_id": genome_id,
                                 "generation": generation, "action_weights": action_weights}
        if alive:
            self.alive.append(agent_id)

    def _row(self, table: str, **columns: Any) -> None:
        self.rows[table].append({"simulation_id": self.sim, **columns})

    def expected(self) -> dict[str, list[dict[str, Any]]]:
        return {**self.rows, "agents": list(self.agents.values())}


def _read_through_models(db_url: str, simulation_id: str) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(db_url)
    found = {}
    with Session(engine) as session:
        for model in MODELS:
            columns = [attr.key for attr in inspect(model).mapper.column_attrs]
            surrogate = AUTOINCREMENT_KEYS.get(model.__tablename__)
            rows = []
            for obj in session.scalars(select(model).where(model.simulation_id == simulation_id)):
                row = {name: getattr(obj, name) for name in columns}
                if surrogate:
                    assert row.pop(surrogate) is not None
                rows.append(row)
            found[model.__tablename__] = rows
    engine.dispose()
    return found


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


@pytest.mark.parametrize("recent_state", [False, True], ids=["plain", "recent-state"])
def test_a_reference_style_run_reads_back_column_for_column_through_reference_models(
        redis_server, cli, sqlite_url, simulation_id, namespace, recent_state):
    # Given: a run that calls every logger method as the reference simulation does
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace,
                                     experiment_id="exp-7", parameters={"agents": 6, "steps": 8},
                                     redis_stm_config=RedisSTMConfig(memory_limit=3) if recent_state else None)
    run = ReferenceRun(logger)
    run.setup(agents=6, resources=3)
    for step in range(1, 9):
        run.step(step, resources=3)
    assert logger.flush_all_buffers().all_in_redis
    assert logger.close().complete

    # When: two real consumer processes persist it
    result = cli.run("consume", "--processes", "2", "--drain", "--block-ms", "100")
    assert result.returncode == 0, result.stderr

    # Then: through the reference's own models, every row and every column is the reference's
    found = _read_through_models(sqlite_url, simulation_id)
    expected = run.expected()
    assert set(found) == {model.__tablename__ for model in MODELS}
    for table, rows in found.items():
        assert _canonical(rows) == _canonical(expected.get(table, [])), table
    engine = create_engine(sqlite_url)
    with Session(engine) as session:
        [simulation] = session.scalars(select(Simulation).where(Simulation.simulation_id == simulation_id))
        assert (simulation.experiment_id, simulation.status, simulation.parameters) == (
            "exp-7", "completed", {"agents": 6, "steps": 8})
        assert simulation.end_time >= simulation.start_time > 0 and simulation.results_summary is None
    if recent_state:  # the tiers (3 steps in STM, 2 from IM) answer exactly what SQL holds
        client = redis_server.client()
        tiers = RecentStates(client, namespace, RedisSTMConfig(memory_limit=3))
        sql_only = RecentStates(client, "a-namespace-without-tiers", engine=engine)
        for agent_id in run.alive:
            sql_rows = sql_only.recent_states(simulation_id, agent_id, 5)
            assert tiers.recent_states(simulation_id, agent_id, 5) == sql_rows and len(sql_rows) == 5
        client.close()
    engine.dispose()
