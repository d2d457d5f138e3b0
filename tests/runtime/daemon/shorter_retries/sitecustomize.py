"""Loaded at start by a daemon a test runs with this folder on PYTHONPATH (Python imports
`sitecustomize` from the path by itself): the daemon tries a journal.db or venue.db it could not
open, and a status port that was taken, again every GATE_AGENT_TEST_RETRY_S instead of every
5 s (agent.runtime.daemon STORE_RETRY_S, STATUS_RETRY_S).

Why: tests/faults/test_store_at_start.py and tests/runtime/daemon/test_e2e.py wait for the
daemon to open the file, or to take the port, once it can; waiting out 5 s of each retry proves
nothing that half a second does not. What changes is the daemon's own constructor arguments
(`Daemon(config, store_retry_s=..., status_retry_s=...)`), in that child process only: nothing
else of the daemon changes, and no other test's daemon sees it.
"""

import functools
import os

from agent.runtime import daemon

_RETRY_S = float(os.environ["GATE_AGENT_TEST_RETRY_S"])
daemon.Daemon.__init__ = functools.partialmethod(  # type: ignore[method-assign]
    daemon.Daemon.__init__, store_retry_s=_RETRY_S, status_retry_s=_RETRY_S)
