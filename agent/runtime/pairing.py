"""Pairing NFC tags (wristbands) to tickets at a pairing station, and optionally admitting.

The platform owns pairings (`POST /tickets/pair`), so a pairing is only real once the platform
accepted it: this module asks the platform first and changes the local cache only after a
success. Offline, nothing is changed anywhere (a half pairing — local but not on the platform —
would admit a tag that every other gate refuses after its next sync).

After a success the platform's re-pairing rules are applied to the local cache at once
(`TicketCache.pair_nfc`: the tag moves off any other ticket of the event, the ticket's old tag
is replaced), so the very next tap at this device is decided with the new pairing instead of
waiting for the next delta sync. With an admit lane, the tag is then scanned through
`Gate.scan` like any reader's scan: decided, journaled and uploaded later.

`Pairing` is those steps, once; `PairingStation` runs them on the store itself (no daemon), the
daemon's control op `pair_tag` on its own stores, client and lanes (agent.runtime.controlops).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from agent.config import Config, LaneConfig
from agent.core.codes import clean_code, normalize_nfc_id
from agent.errors import ApiError, GateAgentError, RateLimited, Transport, Validation
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.token import load_token
from agent.runtime import work
from agent.runtime.clock import GateClock
from agent.runtime.gate import Gate, ScanResult
from agent.runtime.opening import opened_gate
from agent.runtime.storeaccess import as_store_owner_call
from agent.store.cache import CachedItem, TicketCache
from agent.venue.bus import connect_options
from agent.venue.catalog import publish_pairing
from agent.venue.election import connect

log = logging.getLogger(__name__)

T = TypeVar("T")
Blocking = Callable[..., Awaitable[Any]]
OnAdmit = Callable[[str, "ScanResult", datetime, float], None]


class PairingRefused(GateAgentError):
    """This ticket/tag cannot be paired (unknown barcode, platform said no); nothing changed."""

    exit_code = 1


class PairingOffline(GateAgentError):
    """The platform could not be reached; nothing changed locally or on the platform."""

    exit_code = 3


@dataclass(frozen=True)
class PairResult:
    """A pairing the platform accepted, and what it changed in the local cache."""

    barcode: str
    nfc_id: str
    event_id: int
    item_id: int
    replaced: str | None  # the ticket's previous tag, as the cache knew it
    moved_from: tuple[int, ...]  # items of the event that had this tag before
    local_error: str | None = None  # the cache could not be updated (the next sync will)
    admit: ScanResult | None = None


def find_ticket(cache: TicketCache, raw_code: str, event_id: int | None) -> CachedItem:
    """The one cached item with this barcode (in `event_id` when given); PairingRefused else.

    The cache is what this device decides on, so a barcode it does not know is refused here
    rather than paired blind: the operator learns at once that the code or the sync is wrong.
    """
    code = clean_code(raw_code)
    if not code:
        raise PairingRefused("no barcode given")
    hits = cache.find_barcode(code)
    if event_id is not None:
        elsewhere = sorted({h.event_id for h in hits if h.event_id != event_id})
        hits = [h for h in hits if h.event_id == event_id]
        if not hits and elsewhere:
            raise PairingRefused(f"ticket {code} belongs to event(s) "
                                 f"{', '.join(map(str, elsewhere))}, not event {event_id}")
    if not hits:
        if cache.find_historic(code):
            raise PairingRefused(f"{code} is a replaced barcode; scan the ticket's current one")
        raise PairingRefused(f"ticket {code} is not in this gate's ticket cache (wrong code, or "
                             "not synced yet: check `gate-agent status`); nothing paired")
    if len(hits) > 1:
        events = ", ".join(str(h.event_id) for h in hits)
        raise PairingRefused(f"ticket {code} is in several events ({events}); pass --event ID")
    return hits[0]


def ticket_answer(item: CachedItem) -> dict[str, Any]:
    """`find_ticket`'s hit as the station prompts with it, made here or by the daemon."""
    return {"barcode": item.item.barcode, "event_id": item.event_id, "item_id": item.item.id,
            "customer_name": item.item.customer_name}


def pair_answer(result: PairResult) -> dict[str, Any]:
    """A pairing as `pair-tag` prints it, made here or by the daemon (JSON over its socket)."""
    admit = result.admit
    return {"barcode": result.barcode, "nfc_id": result.nfc_id, "event_id": result.event_id,
            "item_id": result.item_id, "replaced": result.replaced,
            "moved_from": list(result.moved_from), "local_error": result.local_error,
            "admit": None if admit is None else work.answer(admit.decision, admit.uuid)}


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


class Pairing:
    """One pairing's steps on a gate (cache + journal) and a platform client, written once:
    the station runs them on its own when no daemon runs, the daemon on its own stores and
    client when one does (control op `pair_tag`), so every rule is the same either way: the
    cache must know the ticket, the platform first, its re-pairing rules in the cache at once,
    the news on the venue bus, the admit through `Gate.scan`.

    `blocking(fn, *args)` runs the gate's SQLite work: inline on the station's private loop,
    `asyncio.to_thread` on the daemon's. `on_admit(lane, result, wall, latency_s)`: the
    daemon shows the admit on its lane and counts it like a manual scan."""

    def __init__(self, config: Config, gate: Gate, client: PlatformClient, clock: GateClock,
                 *, blocking: Blocking = _inline, on_admit: OnAdmit | None = None):
        self.config = config
        self.gate = gate
        self.client = client
        self.clock = clock
        self.blocking = blocking
        self.on_admit = on_admit
        self._bus: tuple[Any, Any] | None = None  # (nats connection, jetstream), with [venue]

    async def aclose(self) -> None:
        if self._bus is not None:
            await self._bus[0].close()
            self._bus = None

    async def pair(self, barcode: str, tag: str, *, event_id: int | None = None,
                   again: bool = False, admit_lane: LaneConfig | None = None) -> PairResult:
        """Pair `tag` to the ticket `barcode` on the platform, then locally, then maybe admit."""
        hit = await self.blocking(find_ticket, self.gate.cache, barcode, event_id)
        nfc_id = normalize_nfc_id(tag)
        if nfc_id is None:
            raise PairingRefused(f"{tag!r} is not an NFC tag id (expected hex, e.g. 0x04A1B2C3D4E5F6)")
        code = hit.item.barcode or clean_code(barcode)
        request_uuid = str(uuidlib.uuid4())
        try:
            await self.client.pair_tag(code, nfc_id, hit.event_id, again, request_uuid)
        except Transport as exc:
            raise PairingOffline(f"pairing needs the platform, which cannot be reached ({exc}); "
                                 "nothing changed locally, the tag is not paired") from None
        except Validation as exc:
            raise PairingRefused(_refusal(exc, code, hit.item.nfc_id)) from None
        except RateLimited as exc:
            raise PairingOffline(f"the platform's rate limit is used up; try again in "
                                 f"{exc.wait_s:.0f} s. Nothing changed locally") from None
        except ApiError as exc:
            raise PairingRefused(f"the platform did not pair the tag ({exc}); nothing changed "
                                 "locally") from None
        replaced = hit.item.nfc_id if hit.item.nfc_id != nfc_id else None
        moved, local_error = await self.blocking(self._apply, hit, nfc_id)
        await self._tell_venue(hit.event_id, hit.item.id, nfc_id, request_uuid)
        admitted = None
        if admit_lane is not None:
            admitted = await self.blocking(self._admit, nfc_id, admit_lane)
        return PairResult(code, nfc_id, hit.event_id, hit.item.id, replaced, tuple(moved),
                          local_error, admitted)

    def _apply(self, hit: CachedItem, nfc_id: str) -> tuple[list[int], str | None]:
        """The platform's re-pairing rules in the cache at once; a failure here is a warning:
        the platform has the pairing, the next delta sync brings it anyway."""
        try:
            with self.gate.cache.transaction():
                return self.gate.cache.pair_nfc(hit.event_id, hit.item.id, nfc_id), None
        except (sqlite3.Error, GateAgentError) as exc:
            local_error = f"paired on the platform, but the local cache was not updated ({exc})"
            log.warning("%s", local_error)
            return [], local_error

    def _admit(self, nfc_id: str, lane: LaneConfig) -> ScanResult:
        started, wall = time.perf_counter(), self.clock.now()
        result = self.gate.scan(nfc_id, lane, wall, kind="nfc",
                                mono_ms=time.monotonic_ns() // 1_000_000)
        if self.on_admit is not None:
            self.on_admit(lane.name, result, wall, time.perf_counter() - started)
        return result

    async def _tell_venue(self, event_id: int, item_id: int, nfc_id: str,
                          request_uuid: str) -> None:
        """With `[venue]`: publish the pairing so every gate knows the wristband at once
        (agent.venue.catalog). Best effort: the leader's next delta brings it anyway."""
        venue = self.config.venue
        if venue is None:
            return
        try:
            await asyncio.wait_for(self._publish(venue, event_id, item_id, nfc_id,
                                                 request_uuid), 5.0)
        except Exception as exc:  # noqa: BLE001 - the bus is away: the delta sync follows
            log.warning("pairing not published on the venue bus (%s: %s); gates learn it with "
                        "the leader's next sync", type(exc).__name__, exc)

    async def _publish(self, venue: dict[str, Any], event_id: int, item_id: int, nfc_id: str,
                       request_uuid: str) -> None:
        if self._bus is None:
            self._bus = await connect(connect_options(venue, str(self.config.path)), 3.0)
        await publish_pairing(self._bus[1], venue["name"], event_id, item_id, nfc_id,
                              request_uuid)


class PairingStation:
    """One session without a daemon: the cache + journal (a Gate) and one platform client on
    one event loop, running `Pairing`.

    Use as a context manager. The client lives on a private asyncio loop (`asyncio.Runner`),
    so the station itself is plain blocking code that fits around blocking reader waits.

    Run by root (`sudo gate-agent pair-tag`), each of its steps on the store (opening it, each
    look-up, each pairing written, each admit, closing) runs as the store's owner, and only
    those: every file made there is the service's, while the rest of the session (the platform
    request, the venue bus, the token file only root may read, and the readers' threads, which
    reopen a device whose cable was pulled) keeps root's rights (agent.runtime.storeaccess).
    """

    def __init__(self, config: Config, *, client: PlatformClient | None = None):
        self.config = config
        self._client = client
        self._stack = ExitStack()
        self._runner: asyncio.Runner | None = None
        self._pairing: Pairing | None = None
        self.gate: Gate | None = None
        self.clock = GateClock()  # the admit's time: the platform's if this clock is wrong

    def __enter__(self) -> PairingStation:
        try:
            store = ExitStack()  # opened and closed as the store's owner
            self.gate = self._owned(store.enter_context, opened_gate(self.config))
            self._stack.callback(self._owned, store.close)
            self._runner = self._stack.enter_context(asyncio.Runner())
            if self._client is None:
                token = load_token(self.config.api, config_path=self.config.path)
                governor = Governor.from_config(self.config.api)
                self._client = PlatformClient.from_config(self.config.api, token, governor,
                                                          max_retries=1)
            client, runner = self._client, self._runner
            client.on_server_time = self.clock.observe
            self._stack.callback(lambda: runner.run(client.aclose()))
            pairing = self._pairing = Pairing(self.config, self.gate, client, self.clock,
                                              blocking=self._owned_step)
            self._stack.callback(lambda: runner.run(pairing.aclose()))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _owned(self, fn: Callable[..., T], *args: Any) -> T:
        """One step on the store, as its owner (nothing changes unless root runs this)."""
        return as_store_owner_call(self.config.store_dir, fn, *args)

    async def _owned_step(self, fn: Callable[..., T], *args: Any) -> T:
        """`Pairing`'s `blocking`: its SQLite work, inline on this loop, as the store's owner."""
        return self._owned(fn, *args)

    def ticket(self, barcode: str, event_id: int | None = None) -> CachedItem:
        assert self.gate is not None, "use PairingStation as a context manager"
        return self._owned(find_ticket, self.gate.cache, barcode, event_id)

    def pair(self, barcode: str, tag: str, *, event_id: int | None = None, again: bool = False,
             admit_lane: LaneConfig | None = None) -> PairResult:
        """Pair `tag` to the ticket `barcode` on the platform, then locally, then maybe admit."""
        assert self._runner is not None and self._pairing is not None
        return self._runner.run(self._pairing.pair(barcode, tag, event_id=event_id,
                                                   again=again, admit_lane=admit_lane))


def _refusal(exc: Validation, code: str, cached_tag: str | None) -> str:
    """A 422 in the operator's words: the re-pair case gets its flag named."""
    errors: dict[str, Any] = exc.errors
    if "pair-barcode-again" in errors:
        had = f" ({cached_tag})" if cached_tag else ""
        return (f"ticket {code} already has a tag{had}; to replace it, pair again with --again. "
                "Nothing changed")
    if "barcode" in errors:
        return f"the platform does not know ticket {code} ({' '.join(errors['barcode'])}); " \
               "nothing changed"
    return f"the platform refused the pairing ({exc}); nothing changed"
