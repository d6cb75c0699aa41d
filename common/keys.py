"""Redis key naming.

One stream per simulation. Every key of a simulation carries the hash tag ``{simulation_id}``, so
on a Redis Cluster they share one slot and a pipeline of them never crosses slots. The registry
(a set of simulation ids) is the one key outside any simulation's slot; it is only ever used in
single-key commands. A non-transactional pipeline may still mix it with a simulation's keys (the
producer's batches do): the cluster client sends each command to the node owning its key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import ConfigurationError
from common.settings import DEFAULT_NAMESPACE

_SIMULATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def validate_simulation_id(simulation_id: str) -> str:
    """Return ``simulation_id`` if it is safe in keys and file names, else raise."""
    if not isinstance(simulation_id, str) or not _SIMULATION_ID.match(simulation_id):
        raise ConfigurationError(
            f"simulation_id {simulation_id!r} must be 1-200 characters of letters, digits, "
            "'_', '.', ':' or '-'"
        )
    return simulation_id


@dataclass(frozen=True)
class Keys:
    """Names of every Redis key simstream uses, under one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    @property
    def registry(self) -> str:
        """Set of the simulation ids that have (or had) a stream."""
        return f"{self.namespace}:simulations"

    def stream(self, simulation_id: str) -> str:
        """The stream holding the simulation's records."""
        return f"{self.namespace}:{{{simulation_id}}}:stream"

    def meta(self, simulation_id: str) -> str:
        """Hash with the simulation's lifecycle: producers' last sequence numbers, completion, heartbeat."""
        return f"{self.namespace}:{{{simulation_id}}}:meta"

    def simulation_of(self, stream_key: str | bytes) -> str:
        """The simulation id inside a stream key built by :meth:`stream`."""
        if isinstance(stream_key, bytes):
            stream_key = stream_key.decode()
        start, end = stream_key.find("{"), stream_key.rfind("}")
        if start < 0 or end < start:
            raise ValueError(f"{stream_key!r} is not a simstream stream key")
        return stream_key[start + 1:end]
