"""The reference simulation's tables as its own SQLAlchemy ORM models, written from its schema.

Deliberately independent of ``common/schema.py``: a test reads a simstream database through
these models the way the reference's analysis code would, so a renamed table or column, or a
value stored in another shape, fails the test. Only the reference's columns are mapped; the
columns simstream adds (``record_key``) are invisible here, as they are to the reference.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class Simulation(Base):
    # The standalone layout keeps the lifecycle rows in simstream's own table (the simulation owns "simulations")
    __tablename__ = "simstream_simulations"
    simulation_id = Column(String, primary_key=True)
    experiment_id = Column(String)
    start_time = Column(Float)
    end_time = Column(Float)
    status = Column(String)
    parameters = Column(JSON)
    results_summary = Column(JSON)
    simulation_db_path = Column(String)


class AgentModel(Base):
    __tablename__ = "agents"
    simulation_id = Column(String)
    agent_id = Column(String, primary_key=True)
    birth_time = Column(Integer)
    death_time = Column(Integer)
    agent_type = Column(String)
    position_x = Column(Float)
    position_y = Column(Float)
    initial_resources = Column(Float)
    starting_health = Column(Float)
    genome_id = Column(String)
    generation = Column(Integer)
    action_weights = Column(JSON)


class AgentStateModel(Base):
    __tablename__ = "agent_states"
    id = Column(String, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    agent_id = Column(String)
    position_x = Column(Float)
    position_y = Column(Float)
    position_z = Column(Float)
    resource_level = Column(Float)
    current_health = Column(Float)
    starting_health = Column(Float)
    starvation_counter = Column(Integer)
    is_defending = Column(Boolean)
    total_reward = Column(Float)
    age = Column(Integer)


class ResourceModel(Base):
    __tablename__ = "resource_states"
    id = Column(Integer, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    resource_id = Column(String(64))
    amount = Column(Float)
    position_x = Column(Float)
    position_y = Column(Float)


class SimulationStepModel(Base):
    __tablename__ = "simulation_steps"
    step_number = Column(Integer, primary_key=True)
    simulation_id = Column(String, primary_key=True)
    total_agents = Column(Integer)
    births = Column(Integer)
    deaths = Column(Integer)
    current_max_generation = Column(Integer)
    average_agent_age = Column(Integer)
    agent_type_counts = Column(JSON)
    total_resources = Column(Float)
    average_agent_resources = Column(Float)
    resource_efficiency = Column(Float)
    resource_distribution_entropy = Column(Float)
    average_agent_health = Column(Float)
    average_reward = Column(Float)
    genetic_diversity = Column(Float)
    dominant_genome_ratio = Column(Float)
    resources_consumed = Column(Float)


class ActionModel(Base):
    __tablename__ = "agent_actions"
    action_id = Column(Integer, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    agent_id = Column(String)
    action_type = Column(String)
    action_target_id = Column(String)
    reward = Column(Float)
    details = Column(Text)
    module_type = Column(String)
    module_id = Column(String)


class HealthIncident(Base):
    __tablename__ = "health_incidents"
    incident_id = Column(Integer, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    agent_id = Column(String)
    health_before = Column(Float)
    health_after = Column(Float)
    cause = Column(String)
    details = Column(Text)


class InteractionModel(Base):
    __tablename__ = "interactions"
    interaction_id = Column(Integer, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    source_type = Column(String)
    source_id = Column(String)
    target_type = Column(String)
    target_id = Column(String)
    interaction_type = Column(String)
    action_type = Column(String)
    details = Column(JSON)


class ReproductionEventModel(Base):
    __tablename__ = "reproduction_events"
    event_id = Column(Integer, primary_key=True)
    simulation_id = Column(String)
    step_number = Column(Integer)
    parent_id = Column(String)
    offspring_id = Column(String)
    success = Column(Boolean)
    parent_resources_before = Column(Float)
    parent_resources_after = Column(Float)
    offspring_initial_resources = Column(Float)
    failure_reason = Column(String)
    parent_generation = Column(Integer)
    offspring_generation = Column(Integer)
    parent_position_x = Column(Float)
    parent_position_y = Column(Float)


AUTOINCREMENT_KEYS = {"resource_states": "id", "agent_actions": "action_id", "health_incidents": "incident_id",
                      "interactions": "interaction_id", "reproduction_events": "event_id"}
"""Surrogate keys the database assigns: compared as present, not by value."""

MODELS = (AgentModel, AgentStateModel, ResourceModel, SimulationStepModel, ActionModel, HealthIncident,
          InteractionModel, ReproductionEventModel)
"""The per-row tables a scripted run's expectations are compared against."""
