"""Which incarnation of the venue's stream this gate's venue.db counts in.

venue.db is derived from the stream by position (agent.store.venue). A stream deleted and made
again (by an operator, or by the gates' own setup once it is gone) restarts its sequences at 1:
a gate that kept its old position would skip the new stream's first messages, and its claims
would expect subject sequences of the old stream and conflict every time (ending in the offline
policy). So the stream's creation time (`stream_info().created`) is stored beside the position;
at session start a different one, or a stream whose last sequence is below the position
applied here, resets the derived data and consumes the new stream from its first message.

A gate with no record (a new gate, or venue.db deleted) has nothing to compare, so it cannot
see that a stream or bucket was made again while it was away; it takes the safe side instead of
trusting what it holds: a position kept elsewhere is not trusted (`replaced`), the venue bus
publishes its granted claims again (agent.venue.bus `_adopt_stream`), and for the leader's
buckets and the upload stream the server's own clock tells one made after the venue's other
streams (`made_again_unseen`: made again at some time). docs/venue.md, "A gate with no record".

While a session runs, the stream is looked at every CHECK_EVERY_S: not found for
STREAM_GONE_S, or made again, ends the session (`VenueStreamLost`) so setup runs again: it
creates the stream if it is still missing, then the check above applies.

Only the stream leader's answer is judged. A clustered stream without a leader (a node lost,
the election under way, or no quorum at all) has its replicas answer stream info themselves,
each with what it holds: a replica that had not applied the last messages the old leader
committed says a last sequence below the position this gate applied from that leader, which is
no sign of a stream made again. Taken as one, it ended the session just as the cluster lost
its quorum (whose set-up then could not complete) and reset venue.db for nothing
(`leader_answer`, tests/venue/test_quorum_lost.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from nats.js.errors import NotFoundError

from agent.errors import VenueNoStreamLeader, VenueStreamLost
from agent.store.cache import TicketCache
from agent.store.venue import VenueStore

log = logging.getLogger("gate_agent.venue.stream_identity")

T = TypeVar("T")

CHECK_EVERY_S = 2.0
STREAM_GONE_S = 5.0
# A new venue's streams and buckets are all made by its first gate's session setup, seconds
# apart: one made this much later than another of them was made again (`made_again_unseen`).
MADE_WITH_VENUE_S = 10.0


def created_of(info: Any) -> str:
    """The stream's creation time as stored (ISO, UTC); "" when the server gives none."""
    return info.created.isoformat() if info.created is not None else ""


def replaced(recorded: str | None, created: str, last_seq: int, position: int) -> str | None:
    """Why a position applied here no longer counts in this stream (None: it does).

    `recorded` None: venue.db holds no creation time for it (a venue.db deleted, or from before
    identities were stored). A position kept elsewhere (the catalog's, in the ticket cache) may
    then be one of a stream made again while the gate was away, which the sequences cannot
    always tell (the new one may have grown past it): followed from there, the new stream's
    first messages (refunds, blocks) would never be applied. So no record and a position is
    "cannot tell": the stream is applied again from its first message (once; the creation
    time is recorded then)."""
    if recorded is not None and recorded != created:
        return f"the stream was made again at {created} (venue.db counts in the one of {recorded})"
    if last_seq < position:
        return (f"the stream's last message is {last_seq}, below the position {position} applied "
                "here (deleted and made again)")
    if recorded is None and position > 0:
        return (f"venue.db has no record of the stream this gate applied up to {position} (deleted "
                "or older): it may have been made again meanwhile")
    return None


def leaderless(info: Any) -> bool:
    """The answer came from a replica of a stream that has no leader now (see the module
    docstring); a server that is not clustered answers with no cluster part, or names itself."""
    cluster = getattr(info, "cluster", None)
    return cluster is not None and not cluster.leader


async def leader_answer(js: Any, stream: str) -> Any:
    """`stream`'s info as its leader says it, for a decision on its identity; a replica's
    answer while the stream has no leader raises `VenueNoStreamLeader` (tried again later:
    nothing is decided on it)."""
    info = await js.stream_info(stream)
    if leaderless(info):
        raise VenueNoStreamLeader(f"stream {stream} has no leader now (no quorum, or an "
                                  "election under way): its identity is not judged on a "
                                  "replica's answer")
    return info


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
        except Exception:  # noqa: BLE001 - the bus does not answer: other reasons say so
            return
        self._missing_since = None
        if leaderless(info):  # a replica's word on what it holds: looked at again next round
            return
        why = replaced(self.created, created_of(info), info.state.last_seq, applied_seq)
        if why is not None:
            raise VenueStreamLost(f"stream {self.stream}: {why}")


async def adopt(js: Any, stream: str, venue_db: Path,
                made_again: Callable[[str], T] | None = None, *,
                record: bool = True,
                unrecorded: Callable[[], Awaitable[T | None]] | None = None
                ) -> tuple[str, T | None]:
    """Session setup for a stream or KV bucket (`KV_<bucket>`) whose loss this gate acts on:
    its creation time now (for the session's `StreamWatch`), and, when venue.db recorded
    another one, `made_again(recorded)`'s result (run in a worker thread, before the new
    time is recorded: a crash between repeats it, which the callers make harmless). When
    venue.db has no record (a new gate, or venue.db deleted) there is nothing to compare:
    `await unrecorded()`'s result then, before the time is recorded (None without it:
    recorded, nothing to deal with). `record=False`: a time whose loss the caller deals with
    (a result not None) is not recorded here; the caller does it once it has
    (`record_created`), so a restart meanwhile deals with it again."""
    created = created_of(await js.stream_info(stream))
    first: T | None = None
    if unrecorded is not None and await asyncio.to_thread(_recorded, venue_db, stream) is None:
        first = await unrecorded()
        if first is not None and not record:
            return created, first

    def fit() -> T | None:
        identities = VenueStore(venue_db)
        try:
            recorded = identities.stream_created(stream)
            out = first
            if recorded is not None and recorded != created and made_again is not None:
                out = made_again(recorded)
                if not record:
                    return out
            if recorded != created:
                identities.set_stream_created(stream, created)
            return out
        finally:
            identities.close()

    return created, await asyncio.to_thread(fit)


def _recorded(venue_db: Path, stream: str) -> str | None:
    identities = VenueStore(venue_db)
    try:
        return identities.stream_created(stream)
    finally:
        identities.close()


async def raw_stream_info(js: Any, stream: str, timeout_s: float | None = None
                          ) -> dict[str, Any]:
    """JetStream's stream info answer as the server sent it, through the client's own request
    helper (its errors: NotFoundError, timeouts): nats-py's StreamInfo drops the server's time
    (`ts`, since nats-server 2.10), which the bus's clock probe and `server_age_s` read."""
    resp: dict[str, Any] = await js._api_request(
        f"{js._prefix}.STREAM.INFO.{stream}", b"",
        timeout=js._timeout if timeout_s is None else timeout_s)
    return resp


async def server_age_s(js: Any, stream: str) -> float | None:
    """How long ago `stream` was made, on the bus server's own clock (its stream info says
    the server's time, `ts`; None from a server that does not, or a stream not found). This
    gate's clock plays no part: it may be hours off."""
    try:
        resp = await raw_stream_info(js, stream)
        now, created = resp.get("ts"), resp.get("created")
        if not isinstance(now, str) or not isinstance(created, str):
            return None
        return (datetime.fromisoformat(now) - datetime.fromisoformat(created)).total_seconds()
    except (NotFoundError, ValueError):
        return None


async def made_again_unseen(js: Any, stream: str, venue_streams: list[str]) -> float | None:
    """For a gate whose venue.db has no record of `stream`: its age (the server's clock) when
    it was made MADE_WITH_VENUE_S or more after another of `venue_streams`, the venue's
    streams and buckets the same session setup makes: a new venue makes them all at once,
    so it was made again at some time, perhaps while this gate was away. None: made with
    them (a new venue; or every one of them made again together, which no gate without a
    record can tell from a new venue: docs/venue.md). A server that does not say its time:
    0.0 (taken as made again just now: the safe side)."""
    age = await server_age_s(js, stream)
    if age is None:
        return 0.0
    for other in venue_streams:
        older = await server_age_s(js, other)
        if older is not None and older - age >= MADE_WITH_VENUE_S:
            return age
    return None


async def record_created(venue_db: Path, stream: str, created: str) -> None:
    """Record `created` as the incarnation of `stream` this gate has dealt with."""
    def write() -> None:
        identities = VenueStore(venue_db)
        try:
            identities.set_stream_created(stream, created)
        finally:
            identities.close()

    await asyncio.to_thread(write)


async def adopt_catalog(js: Any, stream: str, cache: TicketCache, venue_db: Path) -> str:
    """The leader role's session setup for the catalog stream (its position and newest term
    live in the cache, its identity in venue.db's table of identities): one made again
    since makes the follower start at its first message and accept its terms. Returns the
    stream's creation time (for the session's `StreamWatch`). Judged on the stream leader's
    answer only (`leader_answer`)."""
    info = await leader_answer(js, stream)
    created = created_of(info)

    def fit() -> None:
        identities = VenueStore(venue_db)
        try:
            recorded = identities.stream_created(stream)
            position, _epoch, _term = cache.catalog_position(stream)
            why = replaced(recorded, created, info.state.last_seq, position)
            if why is not None:
                log.warning("venue catalog: %s; applied again from its first message", why)
                cache.forget_catalog_position(stream)
            if recorded != created:  # after the cache: a crash between resets again, no harm
                identities.set_stream_created(stream, created)
        finally:
            identities.close()

    await asyncio.to_thread(fit)
    return created
