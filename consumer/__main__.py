"""``python -m consumer`` is the ``simstream`` command."""

from consumer.ops.cli import main

main()
