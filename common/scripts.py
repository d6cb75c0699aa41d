"""Lua scripts: each defined once, as a :class:`LuaScript`, and run one way.

The scripts live with the module that owns what they do (the append in
:mod:`common.stream_append`, the ack in :mod:`consumer.stream_reader`, the heartbeat in
:mod:`common.heartbeat`, the tiers in :mod:`common.tiers`, ...); this module is the only place
that spells the commands that run them.

- :meth:`LuaScript.command` is the ``EVAL`` for a pipeline (cluster pipelines included) or for
  ``execute_command``; :meth:`LuaScript.run` sends it on a client and returns the reply.
- Why EVAL and not redis-py's ``register_script`` (EVALSHA, then SCRIPT LOAD on NOSCRIPT): the
  least-privilege ACL users of the README grant ``+eval`` only, the scripts are short, and a
  pipeline cannot recover from NOSCRIPT half-way through. The one exception is the tier script,
  large and sent once per agent per batch: :meth:`LuaScript.load_command` plus
  :meth:`LuaScript.sha_command` (SCRIPT LOAD leading the same pipeline, so a restarted Redis never
  answers NOSCRIPT), with the ACL the README gives for ``recent_state=True``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence


class LuaScript:
    """One Lua script: its source, defined once, and the commands that run it."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The ``EVAL`` of this script, for a pipeline or ``execute_command``."""
        return ("EVAL", self.source, len(keys), *keys, *args)

    def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script on ``client`` (a Redis, RedisCluster or node client) and return its reply."""
        return client.execute_command(*self.command(keys, args))

    def load_command(self) -> tuple[Any, ...]:
        """``SCRIPT LOAD`` of this script, to lead a pipeline of :meth:`sha_command` calls."""
        return ("SCRIPT", "LOAD", self.source)

    def sha_command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The ``EVALSHA`` of this script, for a pipeline that :meth:`load_command` leads."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"LuaScript(sha={self.sha[:12]})"
