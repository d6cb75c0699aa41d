"""Table layouts: which tables a simulation's rows land in, announced by its producer.

- ``standalone``: :mod:`common.schema`, keyed by simulation and agent, so one database (SQLite
  or PostgreSQL) holds many simulations. The default.
- ``agentfarm``: :mod:`common.agentfarm_schema`, the reference simulation's own schema, keyed by
  agent alone: one simulation per SQLite file (``--db 'sqlite:///OUT/simulation_{simulation_id}.db'``).

A producer names its layout in the simulation's meta hash with every batch (and in its
``simulation`` record, from which a journal replay takes it); consumers follow it and never guess
it from the data. A simulation whose meta hash carries sequence numbers but no layout was written
by a producer older than layouts: it is ``standalone``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import MetaData, Table

from common import agentfarm_schema, schema
from common.errors import ConfigurationError

STANDALONE = "standalone"
AGENTFARM = "agentfarm"
META_FIELD = "layout"
"""The meta hash field (and ``simulation`` record field) a producer announces its layout in."""


@dataclass(frozen=True)
class Layout:
    """One layout: its tables, and how a kind's rows differ in it."""

    name: str
    metadata: MetaData
    one_simulation_per_file: bool
    kinds_without_simulation_id: frozenset[str] = frozenset()

    def table_for(self, kind_name: str, standalone_table: Table) -> Table | None:
        """The table a kind's rows land in here (None: this layout has no such table)."""
        return self.metadata.tables.get(standalone_table.name)


LAYOUTS: dict[str, Layout] = {
    STANDALONE: Layout(STANDALONE, schema.metadata, one_simulation_per_file=False),
    AGENTFARM: Layout(AGENTFARM, agentfarm_schema.metadata, one_simulation_per_file=True,
                      kinds_without_simulation_id=frozenset({"death_incident"})),
}


def layout_named(name: str) -> Layout:
    """The layout called ``name``; ConfigurationError listing the known ones otherwise."""
    try:
        return LAYOUTS[name]
    except (KeyError, TypeError):
        raise ConfigurationError(f"unknown table layout {name!r}; known layouts: {sorted(LAYOUTS)}") from None
