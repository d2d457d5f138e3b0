"""`python -m agent` is the same as the `gate-agent` console script (tests use it)."""

from agent.cli import main

raise SystemExit(main())
