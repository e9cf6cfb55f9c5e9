"""``python -m fastad``: the ``fastad`` command line (see :mod:`fastad.cli`)."""
from .cli import main

raise SystemExit(main())
