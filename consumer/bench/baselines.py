"""The two designs simstream replaces, measured on the same record mix.

- direct SQLite: the reference simulation's own logger path, on the simulation thread. SQLAlchemy
  ORM models of the reference tables; actions are buffered and flushed 1000 at a time
  (``bulk_insert_mappings``, commit per flush); each ``log_step`` is one transaction with its
  states (bulk), resource states (bulk) and the step row (``session.add``).
- list queue: the design note's first design. The logger RPUSHes each record as JSON to a list
  per table (one round trip per record); a worker LRANGEs 1000, ORM-inserts them, commits, LTRIMs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import redis
from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common.workload import Mix, step_records

FLUSH_EVERY = 1000


class ReferenceBase(DeclarativeBase):
    """The reference schema's ORM models (its own metadata, not simstream's)."""


class AgentStateModel(ReferenceBase):
    __tablename__ = "agent_states"
    id: Mapped[str] = mapped_column(String(400), primary_key=True)
    simulation_id: Mapped[str] = mapped_column(String(200), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(String(200))
    position_x: Mapped[float] = mapped_column(Float)
    position_y: Mapped[float] = mapped_column(Float)
    position_z: Mapped[float | None] = mapped_column(Float)
    resource_level: Mapped[float] = mapped_column(Float)
    current_health: Mapped[float] = mapped_column(Float)
    starting_health: Mapped[float] = mapped_column(Float)
    starvation_counter: Mapped[int] = mapped_column(Integer)
    is_defending: Mapped[bool] = mapped_column(Boolean)
    total_reward: Mapped[float] = mapped_column(Float)
    age: Mapped[int] = mapped_column(Integer)


class ResourceStateModel(ReferenceBase):
    __tablename__ = "resource_states"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    simulation_id: Mapped[str] = mapped_column(String(200), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    resource_id: Mapped[int] = mapped_column(Integer)
    amount: Mapped[float] = mapped_column(Float)
    position_x: Mapped[float] = mapped_column(Float)
    position_y: Mapped[float] = mapped_column(Float)


class SimulationStepModel(ReferenceBase):
    __tablename__ = "simulation_steps"
    step_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    simulation_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    total_agents: Mapped[int | None] = mapped_column(Integer)
    births: Mapped[int | None] = mapped_column(Integer)
    deaths: Mapped[int | None] = mapped_column(Integer)
    current_max_generation: Mapped[int | None] = mapped_column(Integer)
    average_agent_age: Mapped[float | None] = mapped_column(Float)
    agent_type_counts: Mapped[Any] = mapped_column(JSON, nullable=True)
    total_resources: Mapped[float | None] = mapped_column(Float)
    average_reward: Mapped[float | None] = mapped_column(Float)


class ActionModel(ReferenceBase):
    __tablename__ = "agent_actions"
    action_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    simulation_id: Mapped[str] = mapped_column(String(200), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(String(200))
    action_type: Mapped[str] = mapped_column(String(100))
    action_target_id: Mapped[str | None] = mapped_column(String(200))
    reward: Mapped[float | None] = mapped_column(Float)
    details: Mapped[str | None] = mapped_column(Text)


MODELS = {"agent_action": ActionModel, "agent_state": AgentStateModel,
          "resource_state": ResourceStateModel, "simulation_step": SimulationStepModel}


def reference_engine(db_url: str):
    """An engine on a fresh SQLite file with the reference tables, WAL and synchronous=NORMAL."""
    engine = create_engine(db_url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        dbapi_connection.execute("PRAGMA synchronous = NORMAL")

    ReferenceBase.metadata.create_all(engine)
    return engine


def _mapping(kind: str, simulation_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    row = {"simulation_id": simulation_id, **fields}
    if kind == "agent_state":
        row["id"] = f"{fields['agent_id']}-{fields['step_number']}"
    elif kind == "agent_action" and fields.get("details") is not None:
        row["details"] = json.dumps(fields["details"])
    return row


class ReferenceLogger:
    """The reference logger's write path (see the module docstring), on the caller's thread."""

    def __init__(self, engine, simulation_id: str) -> None:
        self.session = Session(engine)
        self.simulation_id = simulation_id
        self.actions: list[dict[str, Any]] = []

    def log_agent_action(self, fields: dict[str, Any]) -> None:
        """Buffer one action; flush the buffer (one commit) when it is full."""
        self.actions.append(_mapping("agent_action", self.simulation_id, fields))
        if len(self.actions) >= FLUSH_EVERY:
            self.flush()

    def log_step(self, states: list[dict], resources: list[dict], metrics: dict[str, Any]) -> None:
        """One transaction: the step's agent states, resource states and step row."""
        self.session.bulk_insert_mappings(AgentStateModel, [_mapping("agent_state", self.simulation_id, s)
                                                            for s in states])
        self.session.bulk_insert_mappings(ResourceStateModel, [_mapping("resource_state", self.simulation_id, r)
                                                               for r in resources])
        self.session.add(SimulationStepModel(simulation_id=self.simulation_id, **metrics))
        self.session.commit()

    def flush(self) -> None:
        """Insert and commit the buffered actions."""
        if self.actions:
            self.session.bulk_insert_mappings(ActionModel, self.actions)
            self.session.commit()
            self.actions = []


def direct_sqlite(db_url: str, simulation_id: str, mix: Mix) -> dict[str, float]:
    """Simulation-thread time of the reference logger over the mix: µs/record and records/s."""
    engine = reference_engine(db_url)
    logger = ReferenceLogger(engine, simulation_id)
    spent = 0.0
    clock = time.perf_counter
    for step in range(1, mix.steps + 1):
        by_kind = defaultdict(list)
        for kind, fields in step_records(mix, step):
            by_kind[kind].append(fields)
        before = clock()
        for fields in by_kind["agent_action"]:
            logger.log_agent_action(fields)
        logger.log_step(by_kind["agent_state"], by_kind["resource_state"], by_kind["simulation_step"][0])
        spent += clock() - before
    before = clock()
    logger.flush()
    spent += clock() - before
    logger.session.close()
    engine.dispose()
    return {"us_per_record": spent / mix.total * 1e6, "rps": mix.total / spent}


def list_queue(redis_url: str, db_url: str, simulation_id: str, mix: Mix) -> dict[str, float]:
    """The list design: producer RPUSH rate, then the worker's list -> committed rows rate."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench:{simulation_id}"
    spent, clock, dumps = 0.0, time.perf_counter, json.dumps
    for step in range(1, mix.steps + 1):
        for kind, fields in step_records(mix, step):
            before = clock()
            client.rpush(f"{prefix}:{kind}", dumps({"simulation_id": simulation_id, **fields}))
            spent += clock() - before
    engine = reference_engine(db_url)
    started = clock()
    with Session(engine) as session:
        for kind, model in MODELS.items():
            _drain_list(client, session, f"{prefix}:{kind}", kind, model)
    worker_s = clock() - started
    engine.dispose()
    client.close()
    return {"producer_us_per_record": spent / mix.total * 1e6, "producer_rps": mix.total / spent,
            "worker_rps": mix.total / worker_s}


def _drain_list(client: redis.Redis, session: Session, key: str, kind: str, model) -> None:
    while True:
        items = client.lrange(key, 0, FLUSH_EVERY - 1)
        if not items:
            return
        rows = []
        for item in items:
            record = json.loads(item)
            rows.append(_mapping(kind, record.pop("simulation_id"), record))
        session.bulk_insert_mappings(model, rows)
        session.commit()
        client.ltrim(key, len(items), -1)
