"""The Sink of each simulation: one shared database, or one SQLite file per simulation.

With a plain URL every simulation shares one Sink (the standalone layout), opened and its schema
ensured at once, so a bad database fails at start-up. With a ``{simulation_id}`` template each
simulation gets its own file, opened when first written, in the layout its producer announced.

A simulation may remove its own file and start a new one under the same name (the reference
simulation does at the start of a run). A per-simulation Sink remembers which file it opened:
before a batch, a file replaced or removed since is reopened (created anew if missing), and a
batch that committed into a file replaced meanwhile is reported as not persisted, so it is not
acknowledged and is written again into the file that is there now. No row is left only in a
deleted file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from common.connections import create_sink_engine, ensure_schema, simulation_db_url
from common.events import event
from common.masking import mask_secrets
from common.errors import ConfigurationError, DatabaseUnavailable
from common.layouts import STANDALONE, layout_named
from common.schema_setup import SchemaUnusable
from common.settings import is_per_simulation
from consumer.sink import DeadLetter, Sink, WriteResult
from consumer.stream_reader import Entry

log = logging.getLogger(__name__)


@dataclass
class _OpenFile:
    sink: Sink
    path: Path | None
    identity: tuple[int, int] | None

    def replaced(self) -> bool:
        """True if the file this Sink opened is no longer the one at its path."""
        return self.path is not None and _identity(self.path) != self.identity


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


class SinkPool:
    """Opens, reuses and releases the Sink of each simulation; see the module docstring."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._files: dict[str, _OpenFile] = {}
        self._shared = None if is_per_simulation(db_url) else _open_sink(db_url, STANDALONE)

    def for_simulation(self, simulation_id: str, layout: str = STANDALONE) -> Sink:
        """The Sink writing ``simulation_id``'s rows in ``layout``.

        Raises DatabaseUnavailable if it cannot open now, SchemaUnusable if its database can
        never take the layout's rows as it is (the message says what to do).
        """
        if self._shared is not None:
            if layout_named(layout).one_simulation_per_file:
                raise SchemaUnusable(
                    f"simulation {simulation_id} uses the {layout} layout, one SQLite file per simulation; "
                    "run its consumers with --db 'sqlite:///OUT/simulation_{simulation_id}.db'")
            return self._shared
        return self._open_file(simulation_id, layout).sink

    def write(self, simulation_id: str, layout: str, stream: str, entries: list[Entry],
              dead_letters: list[DeadLetter]) -> WriteResult:
        """Commit a batch through the simulation's Sink; DatabaseUnavailable (nothing may be
        acknowledged) if its file was replaced while the batch committed."""
        sink = self.for_simulation(simulation_id, layout)
        result = sink.write(stream, simulation_id, entries, dead_letters)
        opened = self._files.get(simulation_id)
        if opened is not None and opened.replaced():
            self.release(simulation_id)
            raise DatabaseUnavailable(f"the file of simulation {simulation_id} was replaced while a batch "
                                      "committed; writing the batch again into the new file")
        return result

    def _open_file(self, simulation_id: str, layout: str) -> _OpenFile:
        opened = self._files.get(simulation_id)
        if opened is not None and (opened.sink.layout.name != layout or opened.replaced()):
            event(log, logging.INFO, "sink.file_replaced", simulation=simulation_id, action="reopen")
            self.release(simulation_id)
            opened = None
        if opened is None:
            url = simulation_db_url(self.db_url, simulation_id)
            try:
                sink = _open_sink(url, layout)
            except SchemaUnusable:
                raise
            except ConfigurationError as exc:
                # The template was checked at start; a folder that cannot be made now (disk full,
                # permissions changed) may be fixed while the entries wait: retry, do not exit.
                raise DatabaseUnavailable(str(exc)) from exc
            path = _sqlite_path(url)
            opened = self._files[simulation_id] = _OpenFile(sink, path, _identity(path) if path else None)
            event(log, logging.INFO, "sink.opened", simulation=simulation_id, layout=layout, database=mask_secrets(url))
        return opened

    @property
    def open_simulations(self) -> list[str]:
        """Simulations whose own database file is open now (always empty for a shared database)."""
        return sorted(self._files)

    def release(self, simulation_id: str) -> None:
        """Close ``simulation_id``'s own engine (it is reopened if the simulation comes back)."""
        opened = self._files.pop(simulation_id, None)
        if opened is not None:
            opened.sink.engine.dispose()

    def close(self) -> None:
        """Close every engine."""
        for simulation_id in list(self._files):
            self.release(simulation_id)
        if self._shared is not None:
            self._shared.engine.dispose()


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(os.path.abspath(os.path.expanduser(parsed.database)))


def _open_sink(url: str, layout: str) -> Sink:
    engine = create_sink_engine(url)
    try:
        ensure_schema(engine, layout)
    except Exception:
        engine.dispose()
        raise
    return Sink(engine, layout)
