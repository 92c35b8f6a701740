"""``python -m affstream`` is the same as the ``affstream`` command."""

from .cli import main

main()
