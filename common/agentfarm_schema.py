"""AgentFarm's own schema, for the ``agentfarm`` layout: one simulation per SQLite file.

The tables are the reference simulation's as its current models define them: names, types,
NOT NULLs, primary keys, declared foreign keys and indexes. Consumers that reach a simulation's
file before the simulation does create exactly these tables, so the simulation's own
``create_all`` finds them and adds nothing.

What simstream needs beyond that schema, added so that the simulation's code never notices it
(it names the columns it reads and writes, and leaves the ones it does not know NULL):

- ``record_key`` on ``agent_actions``, ``resource_states`` and ``health_incidents`` (tables without
  a natural key), with a unique index: a replayed record is ignored. Rows the simulation writes
  itself have NULL there, which a unique index allows any number of times.
- ``simstream_simulations``: simstream's lifecycle bookkeeping (start, end, status). The
  simulation owns ``simulations``, ``simulation_config`` and ``experiments``; simstream never
  writes them.
- ``simstream_retracted_agents``: agents whose creation the simulation rolled back. An agent row
  that commits after its retraction is removed in the same transaction, so the retraction holds
  whatever order the rows commit in.
- ``dead_letters``: records that could not be stored, with the reason.

Foreign keys are declared, as the simulation declares them, but SQLite enforces them only on
connections that switch them on, and the sink's connections do not: rows of one simulation may
commit out of order.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)

from common import schema

metadata = MetaData()

experiments = Table(
    "experiments", metadata,
    Column("experiment_id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("description", String(4096)),
    Column("hypothesis", String(2048)),
    Column("creation_date", DateTime),
    Column("last_updated", DateTime),
    Column("status", String(50)),
    Column("tags", JSON),
    Column("variables", JSON),
    Column("results_summary", JSON),
    Column("notes", String(4096)),
)

simulations = Table(
    "simulations", metadata,
    Column("simulation_id", String(64), primary_key=True),
    Column("experiment_id", String(64), ForeignKey("experiments.experiment_id")),
    Column("start_time", DateTime),
    Column("end_time", DateTime),
    Column("status", String(50)),
    Column("parameters", JSON, nullable=False),
    Column("results_summary", JSON),
    Column("simulation_db_path", String(255), nullable=False),
)

simulation_config = Table(
    "simulation_config", metadata,
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("config_id", Integer, primary_key=True),
    Column("timestamp", Integer, nullable=False),
    Column("config_data", String(4096), nullable=False),
)

agents = Table(
    "agents", metadata,
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("agent_id", String(64), primary_key=True),
    Column("birth_time", Integer),
    Column("death_time", Integer),
    Column("agent_type", String(50)),
    Column("position_x", Float(precision=6)),
    Column("position_y", Float(precision=6)),
    Column("initial_resources", Float(precision=6)),
    Column("starting_health", Float(precision=4)),
    Column("genome_id", String(64)),
    Column("generation", Integer),
    Column("action_weights", JSON),
    Index("idx_agents_agent_type", "agent_type"),
    Index("idx_agents_birth_time", "birth_time"),
    Index("idx_agents_death_time", "death_time"),
)

agent_states = Table(
    "agent_states", metadata,
    Column("id", String(128), primary_key=True, nullable=False),
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("step_number", Integer),
    Column("agent_id", String(64), ForeignKey("agents.agent_id")),
    Column("position_x", Float),
    Column("position_y", Float),
    Column("position_z", Float),
    Column("resource_level", Float),
    Column("current_health", Float),
    Column("starting_health", Float(precision=4)),
    Column("starvation_counter", Integer),
    Column("is_defending", Boolean),
    Column("total_reward", Float),
    Column("age", Integer),
    Index("idx_agent_states_agent_id", "agent_id"),
    Index("idx_agent_states_step_number", "step_number"),
    Index("idx_agent_states_agent_step", "agent_id", "step_number"),
    sqlite_autoincrement=False,
)

resource_states = Table(
    "resource_states", metadata,
    Column("id", Integer, primary_key=True),
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("step_number", Integer),
    Column("resource_id", String(64)),
    Column("amount", Float),
    Column("position_x", Float),
    Column("position_y", Float),
    Index("idx_resource_states_step_number", "step_number"),
    Index("idx_resource_states_resource_id", "resource_id"),
)

simulation_steps = Table(
    "simulation_steps", metadata,
    Column("step_number", Integer),
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("total_agents", Integer),
    Column("agent_type_counts", JSON),
    Column("total_resources", Float),
    Column("average_agent_resources", Float),
    Column("births", Integer),
    Column("deaths", Integer),
    Column("current_max_generation", Integer),
    Column("resource_efficiency", Float),
    Column("resource_distribution_entropy", Float),
    Column("average_agent_health", Float),
    Column("average_agent_age", Integer),
    Column("average_reward", Float),
    Column("genetic_diversity", Float),
    Column("dominant_genome_ratio", Float),
    Column("resources_consumed", Float),
    PrimaryKeyConstraint("step_number", "simulation_id"),
    Index("idx_simulation_steps_step_number", "step_number"),
    Index("idx_simulation_steps_simulation_id", "simulation_id"),
)

agent_actions = Table(
    "agent_actions", metadata,
    Column("action_id", Integer, primary_key=True),
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("step_number", Integer, nullable=False),
    Column("agent_id", String(64), ForeignKey("agents.agent_id"), nullable=False),
    Column("action_type", String(20), nullable=False),
    Column("action_target_id", String(64)),
    Column("reward", Float(precision=6)),
    Column("details", String(1024)),
    Column("module_type", String(50)),
    Column("module_id", String(64)),
    Index("idx_agent_actions_step_number", "step_number"),
    Index("idx_agent_actions_agent_id", "agent_id"),
    Index("idx_agent_actions_action_type", "action_type"),
    Index("idx_agent_actions_module_type", "module_type"),
)

health_incidents = Table(
    "health_incidents", metadata,
    Column("incident_id", Integer, primary_key=True),
    Column("simulation_id", String(64), ForeignKey("simulations.simulation_id")),
    Column("step_number", Integer, nullable=False),
    Column("agent_id", String(64), ForeignKey("agents.agent_id"), nullable=False),
    Column("health_before", Float(precision=4)),
    Column("health_after", Float(precision=4)),
    Column("cause", String(50), nullable=False),
    Column("details", String(512)),
    Index("idx_health_incidents_step_number", "step_number"),
    Index("idx_health_incidents_agent_id", "agent_id"),
)

AGENTFARM_TABLES = (experiments, simulations, simulation_config, agents, agent_states,
                    resource_states, simulation_steps, agent_actions, health_incidents)
"""The simulation's own tables, exactly as its schema defines them."""

KEYED_TABLES = (agent_actions, resource_states, health_incidents)
"""Tables without a natural key: simstream adds ``record_key`` and its unique index to them."""

RECORD_KEY_TYPE = String(64)

for _table in KEYED_TABLES:
    # Added after AGENTFARM_TABLES were declared as the simulation declares them; created with
    # the table by simstream, or added to the simulation's own table by ensure_agentfarm_schema.
    _table.append_column(Column("record_key", RECORD_KEY_TYPE))
    Index(f"simstream_ux_{_table.name}_record_key", _table.c.record_key, unique=True)

simstream_simulations = schema.simstream_simulations.to_metadata(metadata)
retracted_agents = schema.retracted_agents.to_metadata(metadata)
dead_letters = schema.dead_letters.to_metadata(metadata)
