"""`python -m ingest_server` runs the ingest server (see cli.py)."""

from .cli import main

raise SystemExit(main())
