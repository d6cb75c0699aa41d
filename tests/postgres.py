"""A throwaway PostgreSQL schema per test, on the server named by SIMSTREAM_TEST_PG_URL.

Without that variable the local server at 127.0.0.1:5432, database ``test``, is tried as user
``postgres`` and then as the current user (trust authentication). Each test gets its own schema,
selected through the URL's ``options=-csearch_path=...`` so that consumer subprocesses given the
URL write into it too, and the schema is dropped afterwards. Its name doubles as the connections'
``application_name``, so a test can find (and cut) exactly its own consumers' connections.
"""

from __future__ import annotations

import getpass
import os
import uuid
from functools import lru_cache

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

ENV_TEST_PG_URL = "SIMSTREAM_TEST_PG_URL"
DEFAULT_TEST_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _candidates() -> list[URL]:
    configured = os.environ.get(ENV_TEST_PG_URL)
    if configured:
        return [make_url(configured)]
    default = make_url(DEFAULT_TEST_PG_URL)
    return [default, default.set(username=getpass.getuser())]


@lru_cache(maxsize=1)
def server_url() -> tuple[URL | None, str]:
    """The first candidate URL that answers, or None and why none did."""
    reasons = []
    for url in _candidates():
        engine = create_engine(url.update_query_dict({"connect_timeout": "3"}))
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return url, ""
        except (SQLAlchemyError, ModuleNotFoundError) as exc:
            reasons.append(f"{url.render_as_string(hide_password=True)}: {str(exc).splitlines()[0]}")
        finally:
            engine.dispose()
    return None, "no PostgreSQL answers (set SIMSTREAM_TEST_PG_URL): " + "; ".join(reasons)


class PostgresSchema:
    """A schema created for one test; ``url`` points a sink into it; ``drop()`` removes it."""

    def __init__(self, server: URL) -> None:
        self.name = f"simstream_test_{uuid.uuid4().hex[:10]}"
        self._admin = create_engine(server)
        with self._admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = server.update_query_dict(
            {"options": f"-csearch_path={self.name}", "application_name": self.name}
        ).render_as_string(hide_password=False)

    def admin(self, *statements: str) -> None:
        """Run ``statements`` as the server's administrative user, in one transaction."""
        with self._admin.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))

    def terminate_connections(self) -> int:
        """Cut every server connection opened through ``url`` (as a crash or failover would)."""
        with self._admin.begin() as connection:
            return len(connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                {"name": self.name}).all())

    def drop(self) -> None:
        self.terminate_connections()
        with self._admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._admin.dispose()
