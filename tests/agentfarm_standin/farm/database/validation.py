"""The reference's post-run validation reads the file right after the run; here it counts rows."""

import sqlite3


def validate_simulation_database(db_path, simulation_id=None, **options):
    connection = sqlite3.connect(db_path)
    try:
        return {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("agents", "agent_states", "agent_actions", "health_incidents", "resource_states",
                              "simulation_steps")}
    finally:
        connection.close()
