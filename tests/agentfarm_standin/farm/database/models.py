"""ORM models of the reference simulation's current schema (tables, types, keys, indexes)."""

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer,
                        PrimaryKeyConstraint, String)
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class ExperimentModel(Base):
    __tablename__ = "experiments"
    experiment_id = Column(String(64), primary_key=True)
    name = Column(String(255), nullable=False)
    description = Column(String(4096))
    hypothesis = Column(String(2048))
    creation_date = Column(DateTime)
    last_updated = Column(DateTime)
    status = Column(String(50))
    tags = Column(JSON)
    variables = Column(JSON)
    results_summary = Column(JSON)
    notes = Column(String(4096))


class Simulation(Base):
    __tablename__ = "simulations"
    simulation_id = Column(String(64), primary_key=True)
    experiment_id = Column(String(64), ForeignKey("experiments.experiment_id"))
    start_time = Column(DateTime)
    end_time = Column(DateTime)
    status = Column(String(50))
    parameters = Column(JSON, nullable=False)
    results_summary = Column(JSON)
    simulation_db_path = Column(String(255), nullable=False)


class SimulationConfig(Base):
    __tablename__ = "simulation_config"
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    config_id = Column(Integer, primary_key=True)
    timestamp = Column(Integer, nullable=False)
    config_data = Column(String(4096), nullable=False)


class AgentModel(Base):
    __tablename__ = "agents"
    __table_args__ = (Index("idx_agents_agent_type", "agent_type"), Index("idx_agents_birth_time", "birth_time"),
                      Index("idx_agents_death_time", "death_time"))
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    agent_id = Column(String(64), primary_key=True)
    birth_time = Column(Integer)
    death_time = Column(Integer)
    agent_type = Column(String(50))
    position_x = Column(Float(precision=6))
    position_y = Column(Float(precision=6))
    initial_resources = Column(Float(precision=6))
    starting_health = Column(Float(precision=4))
    genome_id = Column(String(64))
    generation = Column(Integer)
    action_weights = Column(JSON)


class AgentStateModel(Base):
    __tablename__ = "agent_states"
    __table_args__ = (Index("idx_agent_states_agent_id", "agent_id"),
                      Index("idx_agent_states_step_number", "step_number"),
                      Index("idx_agent_states_agent_step", "agent_id", "step_number"),
                      {"sqlite_autoincrement": False})
    id = Column(String(128), primary_key=True, nullable=False)
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    step_number = Column(Integer)
    agent_id = Column(String(64), ForeignKey("agents.agent_id"))
    position_x = Column(Float)
    position_y = Column(Float)
    position_z = Column(Float)
    resource_level = Column(Float)
    current_health = Column(Float)
    starting_health = Column(Float(precision=4))
    starvation_counter = Column(Integer)
    is_defending = Column(Boolean)
    total_reward = Column(Float)
    age = Column(Integer)


class ResourceModel(Base):
    __tablename__ = "resource_states"
    __table_args__ = (Index("idx_resource_states_step_number", "step_number"),
                      Index("idx_resource_states_resource_id", "resource_id"))
    id = Column(Integer, primary_key=True)
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    step_number = Column(Integer)
    resource_id = Column(String(64))
    amount = Column(Float)
    position_x = Column(Float)
    position_y = Column(Float)


class SimulationStepModel(Base):
    __tablename__ = "simulation_steps"
    __table_args__ = (PrimaryKeyConstraint("step_number", "simulation_id"),
                      Index("idx_simulation_steps_step_number", "step_number"),
                      Index("idx_simulation_steps_simulation_id", "simulation_id"))
    step_number = Column(Integer)
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    total_agents = Column(Integer)
    agent_type_counts = Column(JSON)
    total_resources = Column(Float)
    average_agent_resources = Column(Float)
    births = Column(Integer)
    deaths = Column(Integer)
    current_max_generation = Column(Integer)
    resource_efficiency = Column(Float)
    resource_distribution_entropy = Column(Float)
    average_agent_health = Column(Float)
    average_agent_age = Column(Integer)
    average_reward = Column(Float)
    genetic_diversity = Column(Float)
    dominant_genome_ratio = Column(Float)
    resources_consumed = Column(Float, default=0.0)


class ActionModel(Base):
    __tablename__ = "agent_actions"
    __table_args__ = (Index("idx_agent_actions_step_number", "step_number"),
                      Index("idx_agent_actions_agent_id", "agent_id"),
                      Index("idx_agent_actions_action_type", "action_type"),
                      Index("idx_agent_actions_module_type", "module_type"))
    action_id = Column(Integer, primary_key=True)
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    step_number = Column(Integer, nullable=False)
    agent_id = Column(String(64), ForeignKey("agents.agent_id"), nullable=False)
    action_type = Column(String(20), nullable=False)
    action_target_id = Column(String(64))
    reward = Column(Float(precision=6))
    details = Column(String(1024))
    module_type = Column(String(50))
    module_id = Column(String(64))


class HealthIncident(Base):
    __tablename__ = "health_incidents"
    __table_args__ = (Index("idx_health_incidents_step_number", "step_number"),
                      Index("idx_health_incidents_agent_id", "agent_id"))
    incident_id = Column(Integer, primary_key=True)
    simulation_id = Column(String(64), ForeignKey("simulations.simulation_id"))
    step_number = Column(Integer, nullable=False)
    agent_id = Column(String(64), ForeignKey("agents.agent_id"), nullable=False)
    health_before = Column(Float(precision=4))
    health_after = Column(Float(precision=4))
    cause = Column(String(50), nullable=False)
    details = Column(String(512))
