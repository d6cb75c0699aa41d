"""``python -m consumer`` is the ``simstream`` command."""

from consumer.cli import main

main()
