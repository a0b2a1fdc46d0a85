"""`python -m reader`: the `fbsd-vmcore` command line."""

from .cli import main

raise SystemExit(main())
