"""The reference logger's behaviour: actions and incidents buffered, the rest written at once."""

import json
from dataclasses import dataclass

from farm.database.models import ActionModel, AgentModel, AgentStateModel, HealthIncident, ResourceModel, SimulationStepModel


@dataclass
class DataLoggingConfig:
    buffer_size: int = 1000
    commit_interval: int = 30


class DataLogger:
    def __init__(self, database, simulation_id=None, config=None):
        if not simulation_id:
            raise ValueError("simulation_id is required for DataLogger")
        self.simulation_id, self.db = simulation_id, database
        self._action_buffer, self._health_incident_buffer = [], []

    def log_agent_action(self, step_number, agent_id, action_type, action_target_id=None, reward=None,
                         details=None, module_type=None, module_id=None, action_taken=None,
                         action_taken_mapped=None):
        if step_number < 0:
            raise ValueError("step_number must be non-negative")
        details = dict(details) if details else {}
        if action_taken is not None:
            details["action_taken"] = action_taken
        if action_taken_mapped is not None:
            details["action_taken_mapped"] = action_taken_mapped
        self._action_buffer.append({
            "simulation_id": self.simulation_id, "step_number": step_number, "agent_id": agent_id,
            "action_type": str(action_type), "action_target_id": action_target_id, "reward": reward,
            "details": json.dumps(details) if details else None, "module_type": module_type,
            "module_id": str(module_id) if module_id is not None else None})

    def log_health_incident(self, step_number, agent_id, health_before, health_after, cause, details=None):
        self._health_incident_buffer.append({
            "simulation_id": self.simulation_id, "step_number": step_number, "agent_id": agent_id,
            "health_before": health_before, "health_after": health_after, "cause": cause,
            "details": json.dumps(details) if details else None})

    def flush_all_buffers(self):
        def flush(session):
            session.bulk_insert_mappings(ActionModel, self._action_buffer)
            session.bulk_insert_mappings(HealthIncident, self._health_incident_buffer)
            self._action_buffer.clear()
            self._health_incident_buffer.clear()
        self.db._execute_in_transaction(flush)

    def flush_if_needed(self):
        pass

    def discard_pending_agents(self, agent_ids):
        targets, before = set(agent_ids), len(self._action_buffer) + len(self._health_incident_buffer)
        self._action_buffer[:] = [a for a in self._action_buffer if a["agent_id"] not in targets]
        self._health_incident_buffer[:] = [h for h in self._health_incident_buffer if h["agent_id"] not in targets]
        return before - len(self._action_buffer) - len(self._health_incident_buffer)

    def log_agents_batch(self, agent_data_list):
        mappings = [{"simulation_id": d["simulation_id"], "agent_id": d["agent_id"], "birth_time": d["birth_time"],
                     "agent_type": d["agent_type"], "position_x": d["position"][0], "position_y": d["position"][1],
                     "initial_resources": d["initial_resources"], "starting_health": d["starting_health"],
                     "genome_id": d.get("genome_id"), "generation": d.get("generation", 0),
                     "action_weights": d.get("action_weights")} for d in agent_data_list]
        self.db._execute_in_transaction(lambda session: session.bulk_insert_mappings(AgentModel, mappings))

    def log_step(self, step_number, agent_states, resource_states, metrics):
        def insert(session):
            metrics.setdefault("resources_consumed", 0.0)
            states = {}
            for s in agent_states:
                state_id = f"{self.simulation_id}:{s[0]}-{step_number}"
                states[state_id] = {
                    "id": state_id, "simulation_id": self.simulation_id, "step_number": step_number,
                    "agent_id": s[0], "position_x": s[1], "position_y": s[2], "resource_level": s[3],
                    "current_health": s[4], "starting_health": s[5], "starvation_counter": s[6],
                    "is_defending": bool(s[7]), "total_reward": s[8], "age": s[9]}
            session.bulk_insert_mappings(AgentStateModel, states.values())
            session.bulk_insert_mappings(ResourceModel, [
                {"simulation_id": self.simulation_id, "step_number": step_number, "resource_id": r[0],
                 "amount": r[1], "position_x": r[2], "position_y": r[3]} for r in resource_states])
            session.add(SimulationStepModel(simulation_id=self.simulation_id, step_number=step_number, **metrics))
        self.db._execute_in_transaction(insert)

    def log_resource(self, resource_id, initial_amount, position):
        row = {"simulation_id": self.simulation_id, "step_number": 0, "resource_id": resource_id,
               "amount": initial_amount, "position_x": position[0], "position_y": position[1]}
        self.db._execute_in_transaction(lambda session: session.bulk_insert_mappings(ResourceModel, [row]))
