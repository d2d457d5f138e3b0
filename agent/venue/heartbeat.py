"""Heartbeats: every gate's compact state on the venue bus, with a time-to-live.

Two JetStream key-value buckets per venue, one key per gate (its device name):
- `gates_<venue>` (live): the gate's latest heartbeat. The bucket's TTL (`[venue]
  heartbeat_ttl_s`) removes a heartbeat nobody renewed, and the server then places a delete
  marker ("MaxAge") that every watcher receives, so a gate that dies shows as offline within
  its TTL without anyone polling. A gate that stops cleanly deletes its key at once.
- `roster_<venue>` (kept a day): the same heartbeat, so a gate that went offline is still listed
  (worst first, with when it was last seen) instead of silently vanishing from the table.

Why a KV bucket, not a plain subject: a reader that starts late (the CLI, a browser refreshed,
a gate restarted) gets every gate's latest heartbeat at once from the bucket, and expiry is
done by the server, the same for every reader.

A gate is *online* while its heartbeat is younger than STALE_BEATS intervals, *stale* after
that while the live key still exists, and *offline* once the key is gone — or *stopped* when
it went away cleanly (its last roster entry says so): a gate switched off at the end of the
day is not an alarm, a gate that died is. Ages are measured
from the bus server's timestamp of the heartbeat (one clock for every gate) against the
reader's clock; the heartbeat's own `sent_at` is shown beside it.

The body is built by agent.ops.heartbeat (from the gate's status report); this module only
stores, watches and ranks them. Heartbeats never carry a scanned code or any credential.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyValueLimitMarkerTTLNotSupportedError

from agent.errors import VenueStreamLost
from agent.venue.kvkeys import CONFIRM_PAUSE_S, CONFIRM_READS
from agent.venue.stream_identity import CHECK_EVERY_S, StreamWatch, created_of, leader_answer
from agent.venue.streams import kv_stream

log = logging.getLogger("gate_agent.venue")

ROSTER_KEEP_S = 24 * 3600.0
STALE_BEATS = 2.5  # heartbeats missed before a gate is shown stale
OFFSET_SAMPLES = 20  # live deliveries kept to measure this clock against the bus server's
BOUND_RETRY_S = 1.0  # a bucket's last sequence not read after a reconnect: read again after
UPDATES_WAIT_S = 1.0  # a watcher's wait for an entry, after which it looks again (`_next_entry`)
STATE_RANK = {"offline": 0, "stale": 1, "stopped": 9}
HEALTH_RANK = {"fail": 2, "warn": 3, "pass": 4}
STATES = ("online", "stale", "offline", "stopped")


def bucket_names(venue: str) -> tuple[str, str]:
    """(live, roster) bucket names of a venue (names are letters, digits, - and _)."""
    return f"gates_{venue}", f"roster_{venue}"


@dataclass(frozen=True)
class Beat:
    """One heartbeat as a reader received it: the body and the bus's timestamp (epoch s)."""

    body: dict[str, Any]
    stamped: float


def gate_state(live: bool, age_s: float, interval_s: float, stopped: bool = False,
               ttl_s: float = float("inf"), deleted: bool = True) -> str:
    """A gate's state from its newest beat's age and the live bucket's word on it.

    `live`: the live bucket holds the gate's key. When it does not, `deleted` says whether the
    bucket said so (the gate's delete at a clean stop, or the server's expiry marker) or merely
    lacks the key: the live bucket is in memory, and NATS restarts a memory stream empty when a
    node that lost it (restarted) becomes its leader (seen in the demo: a 3-node venue after a
    node's restart held 1 of 3 keys, first sequence 1). A missing key with a beat younger than
    the TTL is then no sign of an offline gate: its age decides, as it does past the TTL
    (offline even if no expiry marker came)."""
    if age_s > ttl_s or (not live and (deleted or stopped)):
        return "stopped" if stopped else "offline"
    return "stale" if age_s > STALE_BEATS * interval_s else "online"


def beat_interval(body: dict[str, Any], own_s: float) -> float:
    """How often the gate that sent `body` beats: its own word (`interval_s`, a positive
    number), else this reader's `venue.heartbeat_s` (a gate of a version before it said).
    Judged by the reader's interval, a gate beating every 10 s read by one configured for 2 s
    showed `stale` between its beats; the other way, a stalled gate showed `online`."""
    said = body.get("interval_s")
    if isinstance(said, int | float) and not isinstance(said, bool) \
            and 0 < said < float("inf"):
        return float(said)
    return own_s


def rank(row: dict[str, Any]) -> tuple[int, str]:
    """Worst first: offline, stale, online gates by health (fail, warn, pass), then stopped."""
    state = row.get("state", "offline")
    level = STATE_RANK.get(state, HEALTH_RANK.get(str(row.get("health")), 1))
    return level, str(row.get("device"))


class GateBoard:
    """What one reader knows of every gate of the venue, fed by the two buckets' watchers.

    Thread-safe: the bus thread feeds it, the status server (another thread) reads it."""

    def __init__(self, interval_s: float, ttl_s: float = float("inf"),
                 clock: Callable[[], float] = time.time):
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.clock = clock
        self._live: dict[str, Beat] = {}
        self._deleted: set[str] = set()  # live keys the bucket said were deleted or expired
        self._known: dict[str, Beat] = {}
        self._lock = threading.Lock()
        self._delays: deque[float] = deque(maxlen=OFFSET_SAMPLES)
        # told of each beat taken in (device, body, stamp, live), on the feeding thread, after
        # it is on the board (agent.venue.bus: the leader's time for a member's clock)
        self.on_seen: Callable[[str, dict[str, Any], float, bool], None] | None = None

    def calibrate(self, delay_s: float) -> None:
        """A heartbeat received live `delay_s` after the bus stamped it (by this clock). The
        smallest recent delay is this clock's offset from the bus server's (plus the least
        delivery time), taken out of every age: a reader whose clock is off by more than the
        TTL must not show every gate offline."""
        with self._lock:
            self._delays.append(delay_s)

    @property
    def calibrated(self) -> bool:
        with self._lock:
            return bool(self._delays)

    @property
    def offset_s(self) -> float:
        measured = self.measured_offset_s()
        return 0.0 if measured is None else measured

    def samples(self) -> list[float]:
        """The delivery delays kept (oldest first): what `measured_offset_s` is the least of."""
        with self._lock:
            return list(self._delays)

    def measured_offset_s(self) -> float | None:
        """`offset_s`, or None before the first live delivery measured it (one read: a venue
        scan's hot path asks for both at once)."""
        with self._lock:
            return min(self._delays) if self._delays else None

    def seen(self, device: str, body: dict[str, Any], stamped: float, live: bool) -> None:
        beat = Beat(body, stamped)
        with self._lock:
            if live:
                self._live[device] = beat
                self._deleted.discard(device)
            known = self._known.get(device)
            if known is None or known.stamped <= stamped:
                self._known[device] = beat
        if self.on_seen is not None:
            self.on_seen(device, body, stamped, live)

    def gone(self, device: str) -> None:
        """The live key expired (TTL) or was deleted (a clean stop)."""
        with self._lock:
            self._live.pop(device, None)
            self._deleted.add(device)

    def forget(self, device: str) -> None:
        with self._lock:
            self._known.pop(device, None)
            self._live.pop(device, None)
            self._deleted.discard(device)

    def clear_live(self) -> None:
        """A new watch replays every live key: start from nothing."""
        with self._lock:
            self._live.clear()
            self._deleted.clear()

    def rows(self) -> list[dict[str, Any]]:
        """Every gate known, worst first, each its heartbeat plus state, age and last_seen."""
        now = self.clock() - self.offset_s
        with self._lock:
            known = dict(self._known)
            live = set(self._live)
            deleted = set(self._deleted)
        rows = []
        for device, beat in known.items():
            age = max(0.0, now - beat.stamped)
            state = gate_state(device in live, age, beat_interval(beat.body, self.interval_s),
                               bool(beat.body.get("stopped")), self.ttl_s, device in deleted)
            rows.append({**beat.body, "device": device, "state": state,
                         "age_s": round(age, 1), "last_seen": beat.stamped})
        return sorted(rows, key=rank)

    def counts(self) -> dict[str, int]:
        """Gates by state (for /status and the gate_venue_gates metric)."""
        found = dict.fromkeys(STATES, 0)
        for row in self.rows():
            found[row["state"]] += 1
        return found


def decode_beat(value: bytes | None) -> dict[str, Any] | None:
    """A heartbeat body, or None when it cannot be read (never guessed at)."""
    if not value:
        return None
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def open_buckets(js: Any, venue: str, ttl_s: float, replicas: int) -> tuple[Any, Any]:
    """Create (or bind to) the live and roster buckets. A bucket another gate created with
    other settings (a different TTL) is used as it is: one venue, one TTL."""
    live_name, roster_name = bucket_names(venue)
    live = await _bucket(js, KeyValueConfig(
        bucket=live_name, history=1, ttl=ttl_s, storage=StorageType.MEMORY,
        replicas=replicas, limit_marker_ttl=max(1.0, ttl_s)))
    roster = await _bucket(js, KeyValueConfig(
        bucket=roster_name, history=1, ttl=ROSTER_KEEP_S, storage=StorageType.FILE,
        replicas=replicas))
    return live, roster


async def _bucket(js: Any, config: KeyValueConfig) -> Any:
    try:
        return await js.create_key_value(config)
    except KeyValueLimitMarkerTTLNotSupportedError:
        # nats-server before 2.11 places no expiry markers: readers then judge by age alone
        log.warning("venue bus server too old for expiry markers: offline gates are shown "
                    "by the age of their last heartbeat")
        return await _bucket(js, config.evolve(limit_marker_ttl=None))
    except Exception:  # noqa: BLE001 - exists with other settings: bind to it as it is
        return await js.key_value(config.bucket)


def adopt_bucket_ttl(board: GateBoard, max_age_s: float | None) -> None:
    """Judge gates by the live bucket's TTL as the server has it: the first gate of the venue
    set it, and a device configured with another `heartbeat_ttl_s` (a technician's laptop, a
    gate whose config differs) binds to the bucket as it is. Judged by its own, longer TTL, a
    gate dead for longer than the bucket's showed `stale` or `online` once the server's
    expiry marker had itself expired (`venue status` run a few seconds later)."""
    if max_age_s:
        board.ttl_s = float(max_age_s)


async def put_beat(live: Any, roster: Any, device: str, body: bytes) -> None:
    await asyncio.gather(live.put(device, body), roster.put(device, body))


class LiveSamples:
    """Which deliveries of one bucket's watch measure this clock against the bus server's.

    A delivery's delay since the server stored the entry is this clock's offset plus the
    travel time only when it was delivered as it was stored. One that waited is no sample: a
    bus outage's catch-up (this gate's link down while other gates' beats were stored, or a
    roster entry of a gate that stopped meanwhile) is too large by up to the outage's length,
    and enough of them push every good sample out of the board. What this gate knows for sure:
    - stored before the watch began (`measure_after`, the bucket's last sequence then): a
      replay (the rule nats-py's early end of the initial values called for, see `watch`);
    - `pending > 0` when delivered: newer entries were stored already, so it waited;
    - delivered right after one with `pending > 0`: it was stored when that one went out;
    - stored before the link's last reconnect: after a reconnect (the connection's count of
      them moved) samples are held until the bucket's last sequence is read again, and only
      entries stored after it count (`bound`).
    A live sample dropped by these rules costs nothing: the next live beat is one."""

    def __init__(self, board: GateBoard, measure_after: int, links: int):
        self.board = board
        self.after = measure_after
        self.links = links  # the connection's reconnects as of `after`
        self._behind = False  # the last delivery said newer entries were pending
        self.held: list[tuple[int, float]] | None = None  # while no bound since a reconnect

    def delivered(self, revision: int, pending: int, delay_s: float, links: int) -> None:
        """An entry delivered after the initial values: its sequence, the entries pending
        after it, its delay (this clock minus the server's stamp) and the reconnects now."""
        waited, self._behind = self._behind or pending > 0, pending > 0
        if links != self.links:  # stored before the reconnect or not: known from the bound
            self.links, self.held = links, []
        if waited or revision <= self.after:
            return
        if self.held is not None:
            self.held = [*self.held, (revision, delay_s)][-OFFSET_SAMPLES:]
            return
        self.board.calibrate(delay_s)

    @property
    def waiting(self) -> bool:
        """Reconnected: samples are held until `bound` is given."""
        return self.held is not None

    def bound(self, last_seq: int, links: int) -> None:
        """The bucket's last sequence, read after the reconnect numbered `links`: entries up
        to it were stored before the link was back or with it, none a live sample. A bound
        read before a later reconnect leaves the samples held."""
        if links != self.links or self.held is None:
            return
        self.after = max(self.after, last_seq)
        held, self.held = self.held, None
        for revision, delay_s in held:
            if revision > self.after:
                self.board.calibrate(delay_s)


async def watch(kv: Any, board: GateBoard, live: bool, stop: asyncio.Event,
                measure_after: int = 0, *, relinks: Callable[[], int] = lambda: 0,
                last_seq: Callable[[], Awaitable[int]] | None = None) -> None:
    """Feed `board` from one bucket until `stop` (the bus's session ends).

    A delivery after the watcher's initial values measures this clock (its delay since the
    server stored it) only when it was live (`LiveSamples`). Entries stored up to
    `measure_after` (the bucket's last sequence just before the watch began) never are:
    nats-py may end the initial values before those already on their way arrive (see
    `read_board`), and such a replayed heartbeat, up to a TTL old (a roster entry up to a
    day), taken as live, measured the clock that much ahead. As a gate's first sample it stood
    until a smaller one came: other gates' scans read that late. `relinks()`: the connection's
    reconnects so far; `last_seq()`: the bucket's last sequence now (read after a reconnect)."""
    watcher = await kv.watchall()
    replayed = False
    samples = LiveSamples(board, measure_after, relinks())
    bounding: asyncio.Task[None] | None = None

    async def read_bound() -> None:
        assert last_seq is not None
        while not stop.is_set() and samples.waiting:
            links = samples.links
            try:
                samples.bound(await last_seq(), links)
            except Exception as exc:  # noqa: BLE001 - no answer (no quorum): samples wait
                log.info("venue heartbeats: bucket position not read after a reconnect "
                         "(%s: %s); its deliveries measure nothing meanwhile",
                         type(exc).__name__, exc)
                try:
                    await asyncio.wait_for(stop.wait(), BOUND_RETRY_S)
                except TimeoutError:
                    pass

    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            try:
                entry = await _next_entry(watcher, stopping)
            except Exception:  # noqa: BLE001 - nats TimeoutError: nothing new, look again
                continue
            if entry is _STOPPED:
                break
            if entry is None:  # the initial values have all been delivered
                replayed = True
                continue
            if replayed and entry.created:
                samples.delivered(entry.revision, entry.delta or 0,
                                  board.clock() - entry.created.timestamp(), relinks())
                if samples.waiting and last_seq is not None and (
                        bounding is None or bounding.done()):
                    bounding = asyncio.create_task(read_bound())
            if entry.operation in ("DEL", "PURGE"):
                if live:
                    board.gone(entry.key)
                else:
                    board.forget(entry.key)
                continue
            body = decode_beat(entry.value)
            if body is None:
                continue
            stamped = entry.created.timestamp() if entry.created else time.time()
            board.seen(entry.key, body, stamped, live)
    finally:
        stopping.cancel()
        if bounding is not None:
            bounding.cancel()
            await asyncio.gather(bounding, return_exceptions=True)
        try:
            await watcher.stop()
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass


_STOPPED = object()


async def _next_entry(watcher: Any, stopping: asyncio.Future[Any]) -> Any:
    """The watcher's next entry, or _STOPPED as soon as the bus's session ends: a stopping bus
    no longer waits up to UPDATES_WAIT_S for each of its watchers (nats-py's `updates` knows
    no stop; a daemon's shutdown and every bus a test stops paid it). Raises nats'
    TimeoutError when no entry came within UPDATES_WAIT_S. An entry cut off by the stop is
    of no use to a board that stops being fed."""
    getting = asyncio.ensure_future(watcher.updates(timeout=UPDATES_WAIT_S))
    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if getting.done():
        return getting.result()
    getting.cancel()
    await asyncio.gather(getting, return_exceptions=True)
    return _STOPPED


async def _last_seq(js: Any, stream: str) -> int:
    """A bucket's last sequence as its stream's leader says it (a replica's may lag)."""
    return int((await leader_answer(js, stream)).state.last_seq)


class HeartbeatLink:
    """One bus session's heartbeats: this gate's beats out, every gate's beats into `board`.

    Lives on the bus's loop; `publish()` is called there (VenueBus.beat hops threads)."""

    def __init__(self, venue: str, device: str, board: GateBoard, ttl_s: float,
                 relinks: Callable[[], int] = lambda: 0):
        """`relinks()`: the bus connection's reconnects so far (deliveries of entries stored
        before the last one measure nothing: `LiveSamples`)."""
        self.venue, self.device, self.board, self.ttl_s = venue, device, board, ttl_s
        self.relinks = relinks
        self._live: Any = None
        self._roster: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last: bytes | None = None
        self.buckets_made_again = 0  # the buckets found deleted or made again, opened again

    def start(self, js: Any, replicas: int) -> None:
        """Open the buckets and watch them in the background, retrying while the bus cannot
        make them (no quorum yet): heartbeats never delay the session's claims."""
        self._tasks = [asyncio.create_task(self._run(js, replicas))]

    async def _run(self, js: Any, replicas: int) -> None:
        """Open the buckets and watch them; a bucket deleted or made again under the link
        (`nats kv rm`, a node's data wiped) is looked for as the venue's streams are
        (agent.venue.stream_identity `StreamWatch`) and the buckets opened again: otherwise
        every beat failed and every watcher stayed silent until the gate restarted — every
        gate shown stale, and no new measurement of this clock against the bus server's."""
        while not self._stop.is_set():
            opened = await self._open(js, replicas)
            if opened is None:
                return
            live, roster, watches, seqs = opened
            self._live, self._roster = live, roster
            self.board.clear_live()
            if self._last is not None:
                try:
                    await put_beat(live, roster, self.device, self._last)
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.warning("venue heartbeat not put: %s: %s", type(exc).__name__, exc)
            ended = asyncio.Event()  # these buckets' watchers end with it
            live_stream, roster_stream = (kv_stream(name) for name in bucket_names(self.venue))
            watchers = asyncio.gather(
                watch(roster, self.board, False, ended, seqs[1], relinks=self.relinks,
                      last_seq=functools.partial(_last_seq, js, roster_stream)),
                watch(live, self.board, True, ended, seqs[0], relinks=self.relinks,
                      last_seq=functools.partial(_last_seq, js, live_stream)))
            try:
                while not self._stop.is_set():
                    try:
                        await asyncio.wait_for(self._stop.wait(), CHECK_EVERY_S)
                    except TimeoutError:
                        pass
                    for bucket_watch in watches:
                        await bucket_watch.check(js, 0)
            except VenueStreamLost as exc:
                self.buckets_made_again += 1
                log.warning("venue heartbeats: %s", exc)
            finally:
                self._live = self._roster = None  # beats are kept (`_last`) meanwhile
                ended.set()
                await asyncio.gather(watchers, return_exceptions=True)

    async def _open(self, js: Any, replicas: int
                    ) -> tuple[Any, Any, list[StreamWatch], list[int]] | None:
        """The two buckets, a watch on each and each one's last sequence now (what is stored
        up to it is replayed, never a measurement: `watch`), retried while the bus cannot make
        them (no quorum yet); None once the link stops."""
        while not self._stop.is_set():
            try:
                live, roster = await open_buckets(js, self.venue, self.ttl_s, replicas)
                streams = [kv_stream(name) for name in bucket_names(self.venue)]
                infos = [await js.stream_info(stream) for stream in streams]
                watches = [StreamWatch(stream, created_of(info))
                           for stream, info in zip(streams, infos, strict=True)]
                adopt_bucket_ttl(self.board, infos[0].config.max_age)
                return live, roster, watches, [info.state.last_seq for info in infos]
            except Exception as exc:  # noqa: BLE001 - retried; the gate works without them
                log.warning("venue heartbeats not started yet: %s: %s", type(exc).__name__, exc)
                try:
                    await asyncio.wait_for(self._stop.wait(), 2.0)
                except TimeoutError:
                    pass
        return None

    async def publish(self, body: bytes) -> None:
        """Put a beat (kept, and put as soon as the buckets are open if they are not yet)."""
        self._last = body
        if self._live is not None:
            await put_beat(self._live, self._roster, self.device, body)

    async def close(self, clean: bool) -> None:
        """End the watchers; on a clean stop mark the roster entry stopped and delete this
        gate's live key (shown stopped at once, not offline)."""
        if clean and self._live is not None:
            try:
                last = decode_beat(self._last) or {}
                await asyncio.wait_for(self._roster.put(
                    self.device, orjson.dumps({**last, "stopped": True})), 1.0)
                await asyncio.wait_for(self._live.delete(self.device), 1.0)
            except Exception:  # noqa: BLE001 - then the TTL says offline a little later
                pass
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for task in self._tasks:
            task.cancel()


async def read_board(js: Any, venue: str, interval_s: float, ttl_s: float,
                     timeout_s: float = 3.0) -> tuple[GateBoard, list[str]]:
    """One look at every gate (the CLI): both buckets' current values, then done. Returns the
    board and the buckets that could not be read (tried three times; the table says so).

    nats-py's watcher may end its initial values ("no more") before the values already on
    their way arrive, as its `keys()` may say "no keys" (agent.venue.kvkeys, seen in CI: an
    empty `venue status` beside two gates): an empty bucket is believed when read empty three
    times, a moment apart."""
    board = GateBoard(interval_s, ttl_s)
    live_name, roster_name = bucket_names(venue)
    unread = []
    for name, live in ((roster_name, False), (live_name, True)):
        for attempt in range(1, CONFIRM_READS + 1):
            try:
                if await _read_bucket(js, name, board, live, timeout_s) \
                        or attempt == CONFIRM_READS:
                    break
                await asyncio.sleep(CONFIRM_PAUSE_S)
            except _NoBucket:
                break  # no gate has put a heartbeat yet
            except Exception as exc:  # noqa: BLE001 - e.g. no stream leader yet: once more
                if attempt == CONFIRM_READS:
                    unread.append(f"{name} ({type(exc).__name__}: {exc})")
    return board, unread


class _NoBucket(Exception):
    pass


async def _read_bucket(js: Any, name: str, board: GateBoard, live: bool,
                       timeout_s: float) -> int:
    """The bucket's current values onto `board`; how many entries the watcher gave."""
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError as exc:
        raise _NoBucket(name) from exc
    if live:
        adopt_bucket_ttl(board, (await kv.status()).ttl)
    watcher = await kv.watchall()
    entries = 0
    try:
        while True:
            entry = await watcher.updates(timeout=timeout_s)
            if entry is None:
                return entries
            entries += 1
            body = decode_beat(entry.value)
            if entry.operation in ("DEL", "PURGE"):
                if live:  # a clean stop's delete or an expiry marker: said, not merely missing
                    board.gone(entry.key)
            elif body is not None:
                stamped = entry.created.timestamp() if entry.created else time.time()
                board.seen(entry.key, body, stamped, live)
            if not entry.delta:
                return entries
    finally:
        await watcher.stop()
