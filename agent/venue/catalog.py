"""Sync once, fan out: the leader's sync results on the bus, and every gate's cache from them.

The catalog is one JetStream stream per venue, `VENUE_<name>_CATALOG`, on its own subjects
(`venuecat.<name>.>`: streams may not share subjects with the scans' stream):
- `venuecat.<name>.events`            the served events (as the platform sent them),
- `venuecat.<name>.zones.<event>`     one event's zones,
- `venuecat.<name>.i.<event>.<item>`  one item, as the platform sent it minus personal data,
                                      or `{"removed":true}` when a full pass no longer lists
                                      it (a tombstone: gates remove it with the pass),
- `venuecat.<name>.pass.<event>`      the end of one pass: its `listEndTime` (the delta cursor)
                                      and whether it was a full listing;
- `venuecat.<name>.pair.<event>.<item>` a pairing a station just made on the platform
                                      (`nfcId`): every gate knows the wristband at once,
                                      before the leader's next delta brings the platform's copy.
The stream keeps the *last message per subject* (`max_msgs_per_subject = 1`) rather than a
KV bucket: it is the same storage (a KV bucket is such a stream) but lets a gate read
everything in stream order with one ordered consumer, and the order is what makes a pass
atomic. A gate that joins late reads at most one message per item (100,000 items = 100,000
small messages) and no history; the stream never grows beyond the catalog's size.

Applying (`CatalogFollower`): items are buffered until their pass's marker arrives, then the
buffered items, the pass's cursor and the stream position go into the cache in one
transaction, so the cache holds a pass of up to `FLUSH_ITEMS` items entirely or not at all,
and a restart resumes from the position with exactly the effects the file holds (rewriting an
item is harmless anyway). A bigger pass (a venue's first listing, a daily full pass, a gate
joining late, which reads the whole catalog before the first marker) is written in chunks of
`FLUSH_ITEMS`, each with the position it reached; its cursor comes with its marker. Until
session 18 the whole pass was held in memory: about 4 KB an item, 400 MB on a gate joining a
venue of 95,000 items and ~4 GB at 1M (`bench/follower_bench.py`). Each item written is the
leader's version of it, and the leader itself writes a pass page by page, so a gate deciding
between two chunks sees what the leader saw between two pages.
Every message carries the leader's term (agent.venue.term: ordered across a lease bucket
made again, in headers every version of the agent reads); a message of an older term than the
newest seen is dropped (a frozen leader's late publish, see agent.venue.lease), and one whose
term cannot be read is refused (`term_unreadable`, with why). A message that cannot be read is
skipped and counted, never guessed at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.js.api import StorageType, StreamConfig

from agent.core.codes import normalize_nfc_id, utc_iso
from agent.core.model import (
    EntryPage,
    Event,
    Item,
    Zone,
    parse_activated_events,
    parse_item,
    parse_zones,
    strip_personal,
)
from agent.platform.workers import in_thread
from agent.store.cache import TicketCache
from agent.venue import streams
from agent.venue.lease import Lease
from agent.venue.streamread import StreamReader
from agent.venue.term import (
    Stamp,
    Term,
    TermUnreadable,
    newer_or_same,
    read_stamp,
    stamp_headers,
)

log = logging.getLogger("gate_agent.venue.catalog")

PUBLISH_WINDOW = 1000  # publishes in flight at once (one full page)
FLUSH_ITEMS = 1000  # a follower writes what it buffered of a pass after this many item messages
QUEUE_MESSAGES = 2000  # messages received and not yet applied, at most (then the bus waits)
TOMBSTONE = b'{"removed":true}'  # an item's subject: the platform lists it no more


def stream_name(venue: str) -> str:
    return f"VENUE_{venue.replace('-', '_')}_CATALOG"


def prefix(venue: str) -> str:
    return f"venuecat.{venue}"


async def ensure_stream(js: Any, venue: str, replicas: int,
                        drift: dict[str, str] | None = None,
                        waiting: streams.Waiting | None = None) -> None:
    """The catalog stream (one message per item's subject), made to fit when it exists with
    other settings (agent.venue.streams)."""
    config = StreamConfig(name=stream_name(venue), subjects=[f"{prefix(venue)}.>"],
                          storage=StorageType.FILE, num_replicas=replicas,
                          max_msgs_per_subject=1)
    await streams.ensure_stream(js, config, [
        streams.Want("num_replicas", replicas, streams.REPLICAS_KEY),
        streams.Want("max_msgs_per_subject", 1), streams.Want("storage", StorageType.FILE)],
        drift, waiting)


class CatalogPublisher:
    """The leader's `SyncObserver`: every write of a pass, published under its term."""

    def __init__(self, js: Any, venue: str, lease: Lease):
        self.js = js
        self.prefix = prefix(venue)
        self.lease = lease
        self.published = 0
        self.removed_items = 0

    async def _send(self, items: list[tuple[str, bytes]]) -> None:
        headers = stamp_headers(self.lease.stamp())  # not leading (any more): stops here
        for start in range(0, len(items), PUBLISH_WINDOW):
            chunk = items[start:start + PUBLISH_WINDOW]
            await asyncio.gather(*(self.js.publish(s, b, headers=headers) for s, b in chunk))
            self.published += len(chunk)

    async def events(self, events: list[Event]) -> None:
        await self._send([(f"{self.prefix}.events",
                           orjson.dumps([e.raw for e in events]))])

    async def zones(self, event_id: int, zones: list[Zone]) -> None:
        await self._send([(f"{self.prefix}.zones.{event_id}",
                           orjson.dumps([z.raw for z in zones]))])

    async def page(self, event_id: int, page: EntryPage) -> None:
        await self._send([(f"{self.prefix}.i.{event_id}.{item.id}",
                           orjson.dumps(strip_personal(item.raw))) for item in page.items])

    async def removed(self, event_id: int, item_ids: list[int]) -> None:
        """Items a full pass no longer lists: a tombstone on each item's subject replaces
        the item's last message, so a gate removes it with the pass and a gate joining later
        never reads it."""
        await self._send([(f"{self.prefix}.i.{event_id}.{item_id}", TOMBSTONE)
                          for item_id in item_ids])
        self.removed_items += len(item_ids)

    async def pass_done(self, event_id: int, end_time: str | None, full: bool) -> None:
        await self._send([(f"{self.prefix}.pass.{event_id}", orjson.dumps(
            {"endTime": end_time, "full": full, "at": utc_iso(datetime.now(UTC))}))])



async def publish_pairing(js: Any, venue: str, event_id: int, item_id: int, nfc_id: str,
                          request_uuid: str) -> None:
    """A pairing station's news, after the platform accepted the pairing. Not a leader write:
    it carries no term and is not fenced (the platform already holds the pairing)."""
    await js.publish(f"{prefix(venue)}.pair.{event_id}.{item_id}",
                     orjson.dumps({"nfcId": nfc_id, "at": utc_iso(datetime.now(UTC))}),
                     headers={"Nats-Msg-Id": f"pair-{request_uuid}"})


class CatalogFollower:
    """Applies the catalog stream to this gate's cache (see the module docstring)."""

    def __init__(self, js: Any, venue: str, cache: TicketCache, own_term: Any = None,
                 on_change: Callable[[], None] | None = None):
        """`own_term()`: this device's current `Term` as leader, None when not leading (its
        own messages are already in its cache: skipped, position still advanced).
        `on_change()`: after events, zones or a pass were written (the daemon reloads its
        lanes' caches)."""
        self.on_change = on_change
        self.js = js
        self.venue = venue
        self.stream = stream_name(venue)
        self.prefix = prefix(venue)
        self.cache = cache
        self.own_term = own_term or (lambda: None)
        self.position, epoch, revision = cache.catalog_position(self.stream)
        self.term = Term(epoch, revision)
        self.counters = {"items_applied": 0, "passes_applied": 0, "stale_dropped": 0,
                         "bad_messages": 0, "pairings": 0, "items_removed": 0,
                         "full_passes_applied": 0, "term_unreadable": 0,
                         "chunks_applied": 0}
        self.term_refused: str | None = None  # why the last message's term was unreadable
        self.pass_ages: dict[int, str] = {}  # event -> when the leader finished its last pass
        self._items: dict[int, dict[int, Item | None]] = {}  # None: removed (a tombstone)
        self._buffered = 0  # item messages in `_items` (a chunk is written at FLUSH_ITEMS)
        self._pairs: list[tuple[int, int, str]] = []  # after the buffered items, in order
        # Bounded: a full queue holds the reader, which asks the bus for the next batch only
        # when there is room (agent.venue.streamread).
        self._queue: asyncio.Queue[tuple[int, str, bytes, Stamp | TermUnreadable, int]] = \
            asyncio.Queue(maxsize=QUEUE_MESSAGES)

    async def subscribe(self) -> StreamReader:
        """A reader from the first message not yet applied here (agent.venue.streamread: a
        batch at a time, as the queue has room)."""

        async def on_message(msg: Any) -> None:
            term: Stamp | TermUnreadable
            try:
                term = read_stamp(msg.headers)
            except TermUnreadable as exc:
                term = exc
            meta = msg.metadata
            await self._queue.put((meta.sequence.stream, msg.subject, msg.data, term,
                                   meta.num_pending or 0))

        return StreamReader(self.js, self.stream, f"{self.prefix}.>", self.position + 1,
                            on_message)

    async def catch_up(self, timeout_s: float = 120.0) -> int:
        """Apply everything the stream holds now (a new gate's whole cache). Returns the
        stream position reached."""
        info = await self.js.stream_info(self.stream)
        target = info.state.last_seq
        if target <= self.position:
            return self.position
        sub = await self.subscribe()
        try:
            await asyncio.wait_for(self._drain_until(target), timeout_s)
        finally:
            await sub.unsubscribe()
        return self.position

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply new messages as they come, until `stop`."""
        sub = await self.subscribe()
        try:
            while not stop.is_set():
                await self._drain_until(None, stop)
        finally:
            await sub.unsubscribe()

    async def _drain_until(self, target: int | None, stop: asyncio.Event | None = None) -> None:
        seen = self.position
        while target is None or seen < target:
            try:
                seq, subject, data, term, _pending = await asyncio.wait_for(
                    self._queue.get(), 0.5)
            except TimeoutError:
                if stop is not None and stop.is_set():
                    return
                continue
            seen = seq
            if await self._handle(seq, subject, data, term) and self.on_change is not None:
                self.on_change()

    async def _handle(self, seq: int, subject: str, data: bytes,
                      term: Stamp | TermUnreadable) -> bool:
        """Apply (or buffer) one message; True when the cache changed."""
        rest = subject[len(self.prefix) + 1:].split(".")
        if rest[0] == "pair" and len(rest) == 3:  # a station's, not the leader's: no term
            return await self._pairing(seq, int(rest[1]), int(rest[2]), data)
        if isinstance(term, TermUnreadable):
            self.counters["term_unreadable"] += 1
            self.term_refused = f"message {seq} on {subject}: {term}"
            log.error("venue catalog message %d on %s refused: its leader term cannot be read "
                      "(%s)", seq, subject, term)
            return False
        newest = newer_or_same(term, self.term)
        if newest is None:
            self.counters["stale_dropped"] += 1
            log.warning("venue catalog message %d of term %s dropped (term %s leads)",
                        seq, term, self.term)
            return False
        self.term = newest
        own = self.own_term()
        mine = own is not None and term.epoch is not None \
            and Term(term.epoch, term.revision) == own
        try:
            body = orjson.loads(data)
            if rest[0] == "i" and len(rest) == 3:
                if body == {"removed": True}:
                    if not mine:
                        self._buffer(int(rest[1]), int(rest[2]), None)
                else:
                    item = parse_item(body)
                    if item is None:
                        raise ValueError("item without a usable id")
                    if not mine:
                        self._buffer(int(rest[1]), item.id, item)
                if self._buffered >= FLUSH_ITEMS:
                    await in_thread(self._flush, seq)
                return False
            elif rest[0] == "pass" and len(rest) == 2:
                await in_thread(self._apply_pass, int(rest[1]), body, seq, mine)
            elif rest[0] == "events" and len(rest) == 1:
                events = parse_activated_events(body)
                await in_thread(self._write, seq, mine, lambda stamp:
                                        self.cache.put_events(events, stamp))
            elif rest[0] == "zones" and len(rest) == 2:
                zones = parse_zones(body, int(rest[1]))
                await in_thread(self._write, seq, mine, lambda stamp:
                                        self.cache.put_zones(int(rest[1]), zones, stamp))
            else:
                raise ValueError(f"unknown catalog subject {subject}")
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            self.counters["bad_messages"] += 1
            log.error("venue catalog message %d on %s unreadable (%s): skipped", seq, subject,
                      exc)
            return False
        return not mine

    async def _pairing(self, seq: int, event_id: int, item_id: int, data: bytes) -> bool:
        """Pair at once; while a pass is half read, after its items (stream order)."""
        try:
            nfc_id = normalize_nfc_id(str(orjson.loads(data)["nfcId"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            nfc_id = None
        if nfc_id is None:
            self.counters["bad_messages"] += 1
            log.error("venue pairing message %d unreadable: skipped", seq)
            return False
        self.counters["pairings"] += 1
        if self._items:
            self._pairs.append((event_id, item_id, nfc_id))
            return False
        await in_thread(self._write, seq, False, lambda _stamp:
                                self.cache.pair_nfc(event_id, item_id, nfc_id))
        return True

    def _write(self, seq: int, mine: bool, action: Any) -> None:
        """Events or zones: at once, with the position only when no pass is half-read."""
        with self.cache.transaction():
            if not mine:
                action(utc_iso(datetime.now(UTC)))
            if not self._items:
                self.cache.set_catalog_position(self.stream, seq,
                                                (self.term.epoch, self.term.revision))
                self.position = seq

    def _buffer(self, event_id: int, item_id: int, item: Item | None) -> None:
        self._items.setdefault(event_id, {})[item_id] = item
        self._buffered += 1

    def _write_buffered(self) -> None:
        """The buffered items, removals (a full pass's tombstones) and the pairings read
        after them, in this order (call inside a cache transaction)."""
        buffered, pairs = self._items, self._pairs
        self._items, self._pairs, self._buffered = {}, [], 0
        for ev, items in buffered.items():
            kept = [it for it in items.values() if it is not None]
            self.cache.put_items(ev, kept)
            self.counters["items_applied"] += len(kept)
            gone = [i for i, it in items.items() if it is None]
            if gone:
                self.counters["items_removed"] += self.cache.remove_items(ev, gone)
        for ev, item_id, nfc_id in pairs:
            self.cache.pair_nfc(ev, item_id, nfc_id)

    def _flush(self, seq: int) -> None:
        """A chunk of a big pass: what is buffered, and the position reached, in one
        transaction (every message up to `seq` has its effect in the file)."""
        with self.cache.transaction():
            self._write_buffered()
            self.cache.set_catalog_position(self.stream, seq,
                                            (self.term.epoch, self.term.revision))
        self.position = seq
        self.counters["chunks_applied"] += 1

    def _apply_pass(self, event_id: int, body: dict[str, Any], seq: int, mine: bool) -> None:
        """The rest of one pass's items and removals, its cursor and the stream position in
        one transaction."""
        stamp = utc_iso(datetime.now(UTC))
        with self.cache.transaction():
            self._write_buffered()
            if body.get("full"):
                self.counters["full_passes_applied"] += 1
            if not mine:
                self.cache.set_cursor(event_id, body.get("endTime"), stamp,
                                      full=bool(body.get("full")))
            self.cache.set_catalog_position(self.stream, seq,
                                                (self.term.epoch, self.term.revision))
        self.position = seq
        self.counters["passes_applied"] += 1
        if isinstance(body.get("at"), str):
            self.pass_ages[event_id] = body["at"]

    def get_status(self) -> dict[str, Any]:
        return {"catalog_position": self.position, "catalog_term": str(self.term),
                "term_refused": self.term_refused,
                "leader_pass_at": {str(k): v for k, v in self.pass_ages.items()},
                **self.counters}
