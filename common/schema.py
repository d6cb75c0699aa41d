"""The SQL schema: the reference simulation's tables and columns, as SQLAlchemy 2 Core tables.

This is the ``standalone`` layout: many simulations in one database (SQLite or PostgreSQL). Table
and column names and types are the reference simulation's, so its analysis code reads a simstream
database unchanged. Deliberate differences make an at-least-once feed idempotent and let one
database hold many simulations:

- tables without a natural key (actions, resource states, health incidents, interactions,
  reproduction events) carry ``record_key``, unique: the producer's id and sequence number;
- ``agents`` is keyed on (simulation_id, agent_id);
- simstream's own bookkeeping lives in tables with simstream's names: ``simstream_simulations``
  (lifecycle: start, end, status), ``simstream_retracted_agents`` (rolled-back agents) and
  ``dead_letters``. The reference's ``simulations`` table belongs to the simulation.

The ``agentfarm`` layout (one simulation per file, the reference's exact schema) is in
:mod:`common.agentfarm_schema`.

No foreign keys: rows of one simulation may commit out of order across consumers (a state before
its agent), and none may be rejected for that.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()


def _record_key() -> Column:
    return Column("record_key", String(64), nullable=False, unique=True)


simstream_simulations = Table(
    "simstream_simulations", metadata,
    Column("simulation_id", String(200), primary_key=True),
    Column("experiment_id", String(200)),
    Column("start_time", Float),
    Column("end_time", Float),
    Column("status", String(50)),
    Column("parameters", JSON),
    Column("results_summary", JSON),
    Column("simulation_db_path", String(500)),
    Column("layout", String(20)),
)

agents = Table(
    "agents", metadata,
    Column("simulation_id", String(200), primary_key=True),
    Column("agent_id", String(200), primary_key=True),
    Column("birth_time", Integer),
    Column("death_time", Integer),
    Column("agent_type", String(100)),
    Column("position_x", Float),
    Column("position_y", Float),
    Column("initial_resources", Float),
    Column("starting_health", Float),
    Column("genome_id", String(200)),
    Column("generation", Integer),
    Column("action_weights", JSON),
)

agent_states = Table(
    "agent_states", metadata,
    Column("id", String(400), primary_key=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("agent_id", String(200)),
    Column("position_x", Float),
    Column("position_y", Float),
    Column("position_z", Float),
    Column("resource_level", Float),
    Column("current_health", Float),
    Column("starting_health", Float),
    Column("starvation_counter", Integer),
    Column("is_defending", Boolean),
    Column("total_reward", Float),
    Column("age", Integer),
)

resource_states = Table(
    "resource_states", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("resource_id", String(64)),
    Column("amount", Float),
    Column("position_x", Float),
    Column("position_y", Float),
    _record_key(),
)

simulation_steps = Table(
    "simulation_steps", metadata,
    Column("step_number", Integer, primary_key=True),
    Column("simulation_id", String(200), primary_key=True),
    Column("total_agents", Integer),
    Column("births", Integer),
    Column("deaths", Integer),
    Column("current_max_generation", Integer),
    # As the reference: an INTEGER column on SQLite, whose affinity keeps a fractional age as REAL;
    # a floating-point one on PostgreSQL, which would otherwise round it.
    Column("average_agent_age", Integer().with_variant(Float, "postgresql")),
    Column("agent_type_counts", JSON),
    Column("total_resources", Float),
    Column("average_agent_resources", Float),
    Column("resource_efficiency", Float),
    Column("resource_distribution_entropy", Float),
    Column("average_agent_health", Float),
    Column("average_reward", Float),
    Column("genetic_diversity", Float),
    Column("dominant_genome_ratio", Float),
    Column("resources_consumed", Float),
)

agent_actions = Table(
    "agent_actions", metadata,
    Column("action_id", Integer, primary_key=True, autoincrement=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("agent_id", String(200)),
    Column("action_type", String(100)),
    Column("action_target_id", String(200)),
    Column("reward", Float),
    Column("details", Text),
    Column("module_type", String(100)),
    Column("module_id", String(200)),
    _record_key(),
)

health_incidents = Table(
    "health_incidents", metadata,
    Column("incident_id", Integer, primary_key=True, autoincrement=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("agent_id", String(200)),
    Column("health_before", Float),
    Column("health_after", Float),
    Column("cause", String(200)),
    Column("details", Text),
    _record_key(),
)

interactions = Table(
    "interactions", metadata,
    Column("interaction_id", Integer, primary_key=True, autoincrement=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("source_type", String(100)),
    Column("source_id", String(200)),
    Column("target_type", String(100)),
    Column("target_id", String(200)),
    Column("interaction_type", String(100)),
    Column("action_type", String(100)),
    Column("details", JSON),
    _record_key(),
)

reproduction_events = Table(
    "reproduction_events", metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("simulation_id", String(200), index=True),
    Column("step_number", Integer),
    Column("parent_id", String(200)),
    Column("offspring_id", String(200)),
    Column("success", Boolean),
    Column("parent_resources_before", Float),
    Column("parent_resources_after", Float),
    Column("offspring_initial_resources", Float),
    Column("failure_reason", String(500)),
    Column("parent_generation", Integer),
    Column("offspring_generation", Integer),
    Column("parent_position_x", Float),
    Column("parent_position_y", Float),
    _record_key(),
)

retracted_agents = Table(
    "simstream_retracted_agents", metadata,
    Column("simulation_id", String(200), primary_key=True),
    Column("agent_id", String(200), primary_key=True),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(400), nullable=False),
    Column("entry_id", String(64), nullable=False),
    Column("simulation_id", String(200)),
    Column("raw", LargeBinary),
    Column("error", Text, nullable=False),
    Column("delivery_count", Integer),
    Column("created_at", Float, nullable=False),
    # Which record of the entry (0 while an entry holds one record): several dead letters may come
    # from one entry. Added in place to older databases by common.connections.ensure_schema.
    Column("entry_index", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("stream", "entry_id", "entry_index", name="uq_dead_letters_record"),
)

Index("ix_agents_simulation", agents.c.simulation_id)

DATA_TABLES = (
    simstream_simulations, agents, agent_states, resource_states, simulation_steps,
    agent_actions, health_incidents, interactions, reproduction_events,
)
"""Tables that hold the simulation's records (every table but ``dead_letters`` and the retractions)."""
