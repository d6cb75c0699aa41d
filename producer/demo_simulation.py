"""A small synthetic agent simulation that logs through :class:`RedisBufferedDataLogger`.

Run as ``python -m producer.demo_simulation``; ``simstream demo`` starts it as its own process,
as a real simulation would be. It counts the rows it asked for, per table, independently of the
producer, and prints them as one JSON line at the end so the demo can compare them with SQL.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter

from producer.data_logger import RedisBufferedDataLogger

ACTIONS = ("move", "gather", "share", "attack", "defend", "reproduce")


def run_simulation(logger: RedisBufferedDataLogger, agents: int, steps: int, resources: int = 20,
                   seed: int = 7) -> Counter:
    """Run the simulation; return the number of rows logged per table."""
    rng = random.Random(seed)
    rows: Counter = Counter()
    population = {f"agent-{i}": [rng.uniform(0, 100), rng.uniform(0, 100), 10.0, 100.0]
                  for i in range(agents)}
    logger.log_agents_batch([
        {"agent_id": agent_id, "birth_time": 0, "agent_type": rng.choice(("system", "independent")),
         "position": (state[0], state[1]), "initial_resources": state[2], "starting_health": 100.0,
         "generation": 0, "action_weights": {name: 1 / len(ACTIONS) for name in ACTIONS}}
        for agent_id, state in population.items()])
    rows["agents"] += agents
    for resource_id in range(resources):
        logger.log_resource(f"resource_{resource_id}", 50.0, (rng.uniform(0, 100), rng.uniform(0, 100)))
    rows["resource_states"] += resources
    for step in range(1, steps + 1):
        states = []
        for agent_id, state in population.items():
            for _ in range(2):
                action = rng.choice(ACTIONS)
                reward = rng.uniform(-1, 1)
                logger.log_agent_action(step, agent_id, action, reward=reward,
                                        details={"dx": rng.randint(-1, 1)}, action_taken=ACTIONS.index(action))
                rows["agent_actions"] += 1
                state[3] += reward
            if rng.random() < 0.01:
                logger.log_health_incident(step, agent_id, 100.0, 90.0, "combat", {"by": "agent-0"})
                rows["health_incidents"] += 1
            if rng.random() < 0.01:
                logger.log_interaction_edge(step, "agent", agent_id, "resource", "0", "gather")
                rows["interactions"] += 1
            state[0] = min(100.0, max(0.0, state[0] + rng.uniform(-1, 1)))
            state[1] = min(100.0, max(0.0, state[1] + rng.uniform(-1, 1)))
            states.append((agent_id, state[0], state[1], state[2], 100.0, 100.0, 0, False, state[3], step))
        if step % 10 == 0:
            logger.log_reproduction_event(step, "agent-0", None, False, 10.0, 10.0, None,
                                          "not enough resources", 0, None, (1.0, 1.0))
            rows["reproduction_events"] += 1
        resource_rows = [(r, 50.0 + math.sin(step + r), float(r), float(r)) for r in range(resources)]
        logger.log_step(step, states, resource_rows, {
            "total_agents": agents, "births": 0, "deaths": 0, "current_max_generation": 0,
            "average_agent_age": float(step), "agent_type_counts": {"system": agents},
            "total_resources": 50.0 * resources, "average_reward": 0.0})
        rows["agent_states"] += len(states)
        rows["resource_states"] += resources
        rows["simulation_steps"] += 1
    rows["simstream_simulations"] += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulation-id", required=True)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logger = RedisBufferedDataLogger(args.simulation_id, args.redis_url,
                                     parameters={"agents": args.agents, "steps": args.steps})
    rows = run_simulation(logger, args.agents, args.steps, seed=args.seed)
    report = logger.close()
    print(json.dumps({"simulation_id": args.simulation_id, "rows": dict(rows),
                      "records": report.logged, "in_redis": report.in_redis,
                      "complete": report.complete}), flush=True)
    return 0 if report.all_in_redis and report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
