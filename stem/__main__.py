"""Allow ``python -m stem``, the same as the ``stem`` command."""

from stem.cli import main

main()
