"""Which incarnation of the venue's stream this gate's venue.db counts in.

venue.db is derived from the stream by position (agent.store.venue). A stream deleted and made
again (by an operator, or by the gates' own setup once it is gone) restarts its sequences at 1:
a gate that kept its old position would skip the new stream's first messages, and its claims
would expect subject sequences of the old stream and conflict every time (ending in the offline
policy). So the stream's creation time (`stream_info().created`) is stored beside the position;
at session start a different one, or a stream whose last sequence is below the position
applied here, resets the derived data and consumes the new stream from its first message.

While a session runs, the stream is looked at every CHECK_EVERY_S: not found for
STREAM_GONE_S, or made again, ends the session (`VenueStreamLost`) so setup runs again: it
creates the stream if it is still missing, then the check above applies.
"""

from __future__ import annotations

import time
from typing import Any

from nats.js.errors import NotFoundError

from agent.errors import VenueStreamLost

CHECK_EVERY_S = 2.0
STREAM_GONE_S = 5.0


def created_of(info: Any) -> str:
    """The stream's creation time as stored (ISO, UTC); "" when the server gives none."""
    return info.created.isoformat() if info.created is not None else ""


def replaced(recorded: str | None, created: str, last_seq: int, position: int) -> str | None:
    """Why venue.db no longer counts in this stream (None: it does). `recorded` None: a
    venue.db from before identities were stored; only the sequences can tell then."""
    if recorded is not None and recorded != created:
        return f"the stream was made again at {created} (venue.db counts in the one of {recorded})"
    if last_seq < position:
        return (f"the stream's last message is {last_seq}, below the position {position} applied "
                "here (deleted and made again)")
    return None


class StreamWatch:
    """A session's look at its stream: `await check(js, applied_seq)` every round; raises
    `VenueStreamLost` once the stream is gone for STREAM_GONE_S or was made again."""

    def __init__(self, stream: str, created: str):
        self.stream = stream
        self.created = created
        self._next = time.monotonic() + CHECK_EVERY_S
        self._missing_since: float | None = None

    async def check(self, js: Any, applied_seq: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + CHECK_EVERY_S
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            if self._missing_since is None:
                self._missing_since = now
            if now - self._missing_since >= STREAM_GONE_S:
                raise VenueStreamLost(f"stream {self.stream} not found for "
                                      f"{now - self._missing_since:.0f} s: setting it up "
                                      "again") from None
            return
        self._missing_since = None
        why = replaced(self.created, created_of(info), info.state.last_seq, applied_seq)
        if why is not None:
            raise VenueStreamLost(f"stream {self.stream}: {why}")
