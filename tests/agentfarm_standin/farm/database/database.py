"""The reference's SimulationDatabase, as far as its logger and lifecycle calls go."""

import json
import time

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from .data_logging import DataLogger, DataLoggingConfig
from .models import AgentModel, Base, HealthIncident, Simulation, SimulationConfig


class SimulationDatabase:
    def __init__(self, db_path, config=None, simulation_id=None):
        self.db_path, self.simulation_id = db_path, simulation_id
        self.engine = create_engine(f"sqlite:///{db_path}")
        self.Session = sessionmaker(bind=self.engine, expire_on_commit=False)
        Base.metadata.create_all(self.engine)
        # Looked up in this module when the database is built: what install() replaces.
        self.logger = DataLogger(self, simulation_id=simulation_id, config=DataLoggingConfig())

    def _execute_in_transaction(self, func):
        session = self.Session()
        try:
            result = func(session)
            session.commit()
            return result
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()

    def add_simulation_record(self, simulation_id, start_time, status, parameters):
        self._execute_in_transaction(lambda s: s.add(Simulation(
            simulation_id=simulation_id, start_time=start_time, status=status, parameters=parameters,
            simulation_db_path=self.db_path)))

    def save_configuration(self, config):
        self._execute_in_transaction(lambda s: s.add(SimulationConfig(
            simulation_id=self.simulation_id, timestamp=int(time.time()), config_data=json.dumps(config))))

    def update_simulation_record(self, simulation_id, *, status=None, end_time=None, results_summary=None,
                                 simulation_db_path=None):
        def update(session):
            sim = session.query(Simulation).filter_by(simulation_id=simulation_id).one_or_none()
            if sim is None:
                return
            for name, value in (("status", status), ("end_time", end_time), ("results_summary", results_summary),
                                ("simulation_db_path", simulation_db_path)):
                if value is not None:
                    setattr(sim, name, value)
        self._execute_in_transaction(update)

    def update_agent_death(self, agent_id, death_time, cause="starvation"):
        def update(session):
            agent = session.query(AgentModel).filter(AgentModel.agent_id == agent_id).first()
            if agent:
                agent.death_time = death_time
                session.add(HealthIncident(step_number=death_time, agent_id=agent_id, health_before=0,
                                           health_after=0, cause=cause, details=json.dumps({"final_state": "dead"})))
        self._execute_in_transaction(update)

    def close(self):
        self.engine.dispose()
