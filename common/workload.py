"""The benchmark's record mix: the reference simulation's steps, deterministic and cheap to make.

Per step, as the reference simulation logs them: ``2 * agents`` agent actions (during the step),
then ``agents`` agent states, ``resources`` resource states and one ``simulation_steps`` row
(``log_step``). The producer side (``producer.bench``) and the consumer side
(``consumer.bench``) both build their records here, so every measurement of a run sees the same
records, field for field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from common.codec import make_encoder

ACTIONS = ("move", "gather", "share", "attack", "defend", "reproduce")


@dataclass(frozen=True)
class Mix:
    """How many agents and resources a step has, and how many steps make ``records``."""

    records: int
    agents: int = 100
    resources: int = 20

    @property
    def per_step(self) -> int:
        """Records logged per step: 2N actions, N states, R resource states, 1 step row."""
        return 3 * self.agents + self.resources + 1

    @property
    def steps(self) -> int:
        """Steps needed for at least ``records`` records."""
        return max(1, math.ceil(self.records / self.per_step))

    @property
    def total(self) -> int:
        """Records in the mix (``records`` rounded up to whole steps)."""
        return self.steps * self.per_step

    def rows_by_table(self) -> dict[str, int]:
        """Rows the mix becomes, per table."""
        return {"agent_actions": 2 * self.agents * self.steps, "agent_states": self.agents * self.steps,
                "resource_states": self.resources * self.steps, "simulation_steps": self.steps}


def step_records(mix: Mix, step: int) -> list[tuple[str, dict[str, Any]]]:
    """The (kind, fields) records of one step, in the order the reference logs them."""
    records: list[tuple[str, dict[str, Any]]] = []
    for a in range(mix.agents):
        for k in range(2):
            records.append(("agent_action", {
                "step_number": step, "agent_id": f"agent-{a}", "action_type": ACTIONS[(step + a + k) % 6],
                "reward": ((step * 31 + a * 7 + k) % 200) / 100 - 1.0, "details": {"dx": k - 1 + a % 2}}))
    for a in range(mix.agents):
        records.append(("agent_state", {
            "step_number": step, "agent_id": f"agent-{a}", "position_x": float((a * 13 + step) % 100),
            "position_y": float((a * 7 + step * 3) % 100), "resource_level": 10.0 + a % 5,
            "current_health": 100.0 - a % 10, "starting_health": 100.0, "starvation_counter": step % 7,
            "is_defending": a % 3 == 0, "total_reward": step * 0.25, "age": step}))
    for r in range(mix.resources):
        records.append(("resource_state", {
            "step_number": step, "resource_id": f"resource_{r}", "amount": 50.0 + math.sin(step + r),
            "position_x": float(r * 5), "position_y": float(r * 3)}))
    records.append(("simulation_step", {
        "step_number": step, "total_agents": mix.agents, "births": 0, "deaths": 0,
        "current_max_generation": 0, "average_agent_age": float(step),
        "agent_type_counts": {"system": mix.agents}, "total_resources": 50.0 * mix.resources,
        "average_reward": 0.0}))
    return records


def mix_records(mix: Mix) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record of the mix, step 1 first."""
    for step in range(1, mix.steps + 1):
        yield from step_records(mix, step)


def encoded_payloads(mix: Mix, producer_id: str) -> list[bytes]:
    """The mix as stream payloads, exactly as a producer with ``producer_id`` encodes them."""
    encode = make_encoder()
    return [encode(kind, producer_id, seq, fields)
            for seq, (kind, fields) in enumerate(mix_records(mix), start=1)]
