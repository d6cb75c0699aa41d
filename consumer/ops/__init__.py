"""Operator tools: the ``simstream`` command, ``status`` and its health verdicts, progress, the
metrics endpoint, dead letters, the demo and the embedded Redis server. Nothing on the persist
path imports them, except the supervisor, which starts the progress bar and the metrics endpoint.

Its public names are what a program reaches for without the command: the health verdict of a
stream, the status report, dead letters, and the embedded Redis server. The command itself is
``consumer.ops.cli:main`` (the ``simstream`` script), not re-exported here: importing it would load
the whole CLI, and ``import consumer`` loads this package.
"""

from consumer.ops.health import HealthThresholds, verdict
from consumer.ops.dead_letters import RetryResult, list_dead_letters, purge_dead_letters, retry_dead_letters
from consumer.ops.embedded_redis import EmbeddedRedis
from consumer.ops.status_view import status_report

__all__ = ["EmbeddedRedis", "HealthThresholds", "RetryResult", "list_dead_letters", "purge_dead_letters",
           "retry_dead_letters", "status_report", "verdict"]
