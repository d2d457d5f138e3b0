"""Where a venue session's set-up is, and why it waits: one record for the gate's bus session
(agent.venue.bus), the venue role's (agent.venue.leader), and the leader's term's
(agent.venue.leader_work: the batches and quarantine buckets its uploads need, made when this
device takes the lease, inside a session already running).

A session's set-up is a row of JetStream steps (make the streams and buckets, adopt them,
subscribe). Without a quorum, or while a cluster elects its meta leader, JetStream answers none
of them, and a create is tried again for `streams.CREATE_RETRY_S` by itself. Said nowhere, that
looked like a healthy link for half a minute, then like a session that ended. So each failed
try is recorded at once with the step it was at (`failed`, also the `waiting` of
`streams.ensure_stream` / `ensure_bucket`), and status shows `session_step`, `setup_error` and
`setup_since` (agent.ops.status, reason venue_degraded) until the session runs. `setup_since`
is kept across sessions that fail during their set-up, so "for how long" is the outage's, not
the last retry's.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from agent.core.codes import utc_iso

RUNNING = "running"
NOT_STARTED = "not started"


class SetUp:
    """One session's set-up state (see the module docstring). `what` names the session in the
    log ("venue bus session", "venue role session")."""

    def __init__(self, log: logging.Logger, what: str):
        self.log = log
        self.what = what
        self.step = NOT_STARTED
        self.error: str | None = None  # the last failed try's, until the session runs
        self.since: str | None = None  # when the set-up began (None once running)

    def begin(self, step: str) -> None:
        """A session's set-up starts at `step` (its clock keeps running if the last one did
        not get through)."""
        self.step = step
        if self.since is None:
            self.since = utc_iso(datetime.now(UTC))

    def at(self, step: str) -> None:
        self.step = step

    def describe(self, exc: BaseException) -> str:
        """An error as status and the log show it: with the step it happened at (a long
        error is cut, never the step)."""
        step = f" (while {self.step})"
        return f"{type(exc).__name__}: {exc}"[:max(100, 300 - len(step))] + step

    def failed(self, exc: BaseException) -> str:
        """A try of the current step failed: recorded (and logged once per distinct error);
        returns the text, which names the step."""
        error = self.describe(exc)
        if error != self.error:
            self.log.warning("%s not set up: %s; trying again", self.what, error)
        self.error = error
        return error

    def idle(self) -> None:
        """Nothing to set up now (a leader term over): as before its first step."""
        self.step, self.error, self.since = NOT_STARTED, None, None

    def running(self) -> None:
        self.step, self.error, self.since = RUNNING, None, None

    @property
    def is_running(self) -> bool:
        return self.step == RUNNING

    def get_status(self) -> dict[str, Any]:
        return {"session_step": self.step, "setup_error": self.error,
                "setup_since": self.since}
