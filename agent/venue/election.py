"""Keeping (or winning) the venue's leader lease, on an asyncio loop.

`Election` owns one NATS connection of its own (the claims' connection in agent.venue.bus stays
off this loop), makes sure the lease bucket exists, and every `ttl / 4` renews the lease it
holds or tries to create it. It also reads who leads, for the status of every gate.

Leader work (agent.venue.catalog, agent.venue.uplink) asks `lease.guard()` before each action
and stamps its writes with the term: see agent.venue.lease for how an old leader is fenced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType

from agent.core.codes import utc_iso
from agent.venue import streams
from agent.venue.lease import LeaderInfo, Lease, bucket_name, read_leader
from agent.venue.term import epoch_text

log = logging.getLogger("gate_agent.venue.leader")


FIRST_CONNECT_S = 5.0  # how long one first connect may try before the caller takes over


async def connect(options: dict[str, Any], timeout_s: float,
                  first_connect_s: float = FIRST_CONNECT_S) -> tuple[Any, Any]:
    """A NATS connection and JetStream context for leader work (reconnecting forever once
    connected).

    nats-py retries a *first* connect for ever when `max_reconnect_attempts` is -1, so a
    gate started while its node is down would never return from here and never reach its
    fallback (agent.venue.leader `_connect`). The first connect is therefore bounded by
    `first_connect_s`: TimeoutError, the half-made client closed, and the caller tries again.
    """
    nc = NATS()
    last_failure = ["no answer"]

    async def failed(exc: Exception) -> None:  # instead of nats-py's traceback every 0.25 s
        last_failure[0] = f"{type(exc).__name__}: {exc}"[:200]
        log.debug("venue leader link: %s", last_failure[0])

    settings: dict[str, Any] = {"connect_timeout": 2, "reconnect_time_wait": 0.25,
                                "max_reconnect_attempts": -1, "allow_reconnect": True,
                                "error_cb": failed}
    try:
        await asyncio.wait_for(nc.connect(**options, **settings), first_connect_s)
    except BaseException as exc:
        try:
            await asyncio.wait_for(nc.close(), 1.0)
        except Exception:  # noqa: BLE001 - closing a client that never connected
            pass
        if isinstance(exc, TimeoutError):
            raise TimeoutError(f"no venue node answered within {first_connect_s:g} s"
                               f" ({last_failure[0]})") from None
        raise
    return nc, nc.jetstream(timeout=timeout_s)


async def lease_bucket(js: Any, venue: str, ttl_s: float, replicas: int,
                       drift: dict[str, str] | None = None,
                       waiting: streams.Waiting | None = None) -> Any:
    """The lease bucket (created by whoever comes first; same settings are accepted, a new
    `venue.lease_ttl_s` updates its TTL: agent.venue.streams)."""
    return await streams.ensure_bucket(js, KeyValueConfig(
        bucket=bucket_name(venue), history=1, ttl=ttl_s, storage=StorageType.FILE,
        replicas=replicas), drift, ttl_key="venue.lease_ttl_s", waiting=waiting)


def cancelled() -> bool:
    """True inside a task being cancelled. The nats client can turn a cancellation that lands
    mid-request into an ordinary error; a loop that catches `Exception` must check this, or
    a cancelled leader would keep renewing (and its owner would wait for it forever)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Handover(Protocol):
    """When to give the lease up or leave a free one to another gate (agent.venue.stepdown)."""

    async def release_why(self) -> str | None: ...

    def stepped_down(self, why: str) -> None: ...

    def may_acquire(self) -> bool: ...


class Election:
    """Hold the venue's lease if possible; `on_change(leading)` when that changes."""

    def __init__(self, kv: Any, device: str, ttl_s: float,
                 on_change: Callable[[bool], Awaitable[None]] | None = None,
                 candidate: bool = True, handover: Handover | None = None):
        """`candidate`: False for a device that may not lead (`venue.leader = false`): it
        only reads who leads, for its status. `handover`: asked before each renewal whether
        to release the lease instead, and before each try for a free one."""
        self.candidate = candidate
        self.handover = handover
        self.lease = Lease(kv, device, ttl_s)
        self.kv = kv
        self.ttl_s = ttl_s
        self.on_change = on_change
        self.leader: LeaderInfo | None = None
        self.leading = False
        self.terms_won = 0
        # Since when the lease bucket has said nobody leads (None: someone does, or not read
        # yet): a venue left without a leader syncs no tickets and uploads no scans, which no
        # other figure says until the backlog is 10 minutes old (status `venue_no_leader`).
        # Monotonic for the age, the wall clock's ISO time only to show.
        self._leaderless: tuple[float, str] | None = None
        self._stop = asyncio.Event()

    async def step(self) -> bool:
        """One round: renew or acquire, then read who leads. Returns whether we lead."""
        why = await self.handover.release_why() if self.handover and self.lease.valid() \
            else None
        if why is not None:
            assert self.handover is not None
            self.handover.stepped_down(why)  # logs why, then the lease is given up
            await self.lease.release()
        elif self.lease.term:
            await self.lease.renew()
        elif self.candidate and (self.handover is None or self.handover.may_acquire()):
            if await self.lease.acquire(utc_iso(datetime.now(UTC))):
                self.terms_won += 1
                log.warning("venue leader: %s leads (term %d)", self.lease.holder,
                            self.lease.term)
        try:
            self.leader, answered = await read_leader(self.kv), True
        except Exception:  # noqa: BLE001 - no answer: who leads is not known
            self.leader, answered = None, False
        if self.leader is not None:
            self._leaderless = None
        elif answered and self._leaderless is None:
            self._leaderless = (time.monotonic(), utc_iso(datetime.now(UTC)))
        leading = self.lease.valid()
        if leading != self.leading:
            self.leading = leading
            if self.on_change is not None:
                await self.on_change(leading)
        return leading

    async def run(self) -> None:
        """Until `stop()`: a round every quarter TTL while leading, every tenth otherwise."""
        while not self._stop.is_set():
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - the bus is away: not leading
                if cancelled():
                    raise asyncio.CancelledError from exc
                self.lease.last_error = f"{type(exc).__name__}: {exc}"[:200]
                if self.leading and not self.lease.valid():
                    self.leading = False
                    if self.on_change is not None:
                        await self.on_change(False)
            # a waiting candidate tries every TTL/10: the takeover comes at most that long
            # after the lease expired (a failed create is one small request)
            pause = self.ttl_s / 4 if self.leading else self.ttl_s / 10
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
            except TimeoutError:
                pass
        await self.lease.release()

    def stop(self) -> None:
        self._stop.set()

    def get_status(self) -> dict[str, Any]:
        leader = self.leader
        return {
            "leader": leader.holder if leader else None,
            "leader_since": leader.since if leader else None,
            "leader_term": leader.term if leader else None,
            # the term's epoch (agent.venue.term: the lease bucket's creation time): None while
            # nobody leads or the leader wrote none (a version of before)
            "leader_term_epoch": epoch_text(leader.epoch) if leader and leader.epoch else None,
            "this_device_leads": self.lease.valid(),
            "term": self.lease.term or None,
            "lease_ttl_s": self.ttl_s,
            "terms_won": self.terms_won,
            "lease_error": self.lease.last_error,
            "leaderless_since": self._leaderless[1] if self._leaderless else None,
            "leaderless_s": round(time.monotonic() - self._leaderless[0], 1)
            if self._leaderless else None,
            "candidate": self.candidate,
        }
