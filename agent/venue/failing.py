"""An error, and since when it has been failing: one record for every part of the venue bus
that status reports that way.

The bus's publisher, its applier, its opens of venue.db and journal.db as it starts, and
status's own reads of venue.db (agent.venue.status_read) each kept two fields, set and cleared
by hand in five places, and read by agent.ops.status as `<what>_error` and
`<what>_failing_since`. Here the pair is one value, replaced at once: the threads that fail
(the bus loop, the applier, a status read) and the daemon's loop that reads it for `/status`
never see an error with another failure's time, or a time with no error.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.core.codes import utc_iso


class Failing:
    """What failed last (`error`) and since when (`since`, UTC ISO), both None while it works.

    `fail` keeps the time of the first failure of a run and the latest error; `clear` ends
    the run. Each tells its caller what changed, so that it logs once, not at every try."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: tuple[str, str] | None = None  # (error, since): replaced, never mutated

    @property
    def error(self) -> str | None:
        state = self._state
        return None if state is None else state[0]

    @property
    def since(self) -> str | None:
        state = self._state
        return None if state is None else state[1]

    def fail(self, error: str) -> bool:
        """Failing with `error` now; True when it is another error than the one held (the
        first of a run included): the caller logs it."""
        state = self._state
        if state is not None and state[0] == error:
            return False
        self._state = (error, state[1] if state is not None else utc_iso(datetime.now(UTC)))
        return True

    def clear(self) -> bool:
        """Working again; True when it was failing (the caller says it recovered)."""
        was, self._state = self._state, None
        return was is not None

    def fields(self, what: str) -> dict[str, str | None]:
        """Status's pair, from one read: `<what>_error` and `<what>_failing_since`."""
        state = self._state
        error, since = state if state is not None else (None, None)
        return {f"{what}_error": error, f"{what}_failing_since": since}
