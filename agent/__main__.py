"""`python -m agent` is the same as the `gate-agent` console script (tests use it)."""

import sys

try:
    from agent.cli import main
except KeyboardInterrupt:  # Ctrl-C before the CLI is even loaded: the same exit as after
    sys.stderr.write("gate-agent: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
