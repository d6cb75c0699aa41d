"""Operator tools: the ``simstream`` command, ``status`` and its health verdicts, progress, the
metrics endpoint, dead letters, the demo and the embedded Redis server. Nothing on the persist
path imports them, except the supervisor's progress bar."""
