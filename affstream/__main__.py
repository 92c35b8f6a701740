"""``python -m affstream`` is the same as the ``affstream`` command."""

import sys

try:
    from .cli import run
except KeyboardInterrupt:  # Ctrl-C while the command line itself is imported
    sys.stderr.write("interrupted: nothing was started\n")
    sys.exit(130)

run()
