"""The connection to the venue bus, on an asyncio loop in a thread of its own.

Lanes decide in their own threads (agent.runtime.lane), so the bus cannot live on the daemon's
loop without putting that loop on the scan path. `VenueBus` owns one thread and one loop with:
- the NATS connection (reconnecting forever; the gate works alone meanwhile),
- the consumer: every message of the venue's stream, from the last position applied in
  venue.db, applied in order with that position in one transaction (agent.store.venue),
- the publisher: this gate's journal rows after the last one the bus acknowledged, each with
  `Nats-Msg-Id` = scan uuid (`<uuid>/refused` for a refusal: agent.venue.messages
  `scan_msg_id`), woken after each commit and once a second,
- the void sweep: this gate's claims whose admit never reached the journal are voided,
- heartbeats (agent.venue.heartbeat): this gate's out, every gate's into `board`.

`publish_claim()` is the one call a lane makes into the loop; it waits at most the time given.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import re
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from agent.access import held_hint, store_write_failure
from agent.core.codes import utc_iso
from agent.errors import StoreError, VenueStreamLost
from agent.files import require_private
from agent.store.journal import Journal
from agent.store.venue import VENUE_FILE, Applied, BusScan, VenueStore, scan_as_held
from agent.venue import clockprobe, messages, stream_identity, streams
from agent.venue.claim_channel import (
    Answered,
    ClaimAnswer,
    ClaimChannel,
    PendingAnswer,
    start_via_js_publish,
)
from agent.venue.failing import Failing
from agent.venue.heartbeat import GateBoard, HeartbeatLink
from agent.venue.setup import SetUp
from agent.venue.status_read import StatusRead

log = logging.getLogger("gate_agent.venue")

T = TypeVar("T")

DUPLICATE_WINDOW_S = 600.0
RESTART_SEQ = -1  # an applier queue item: the stream was made again, reset venue.db first
SWEEP_FROM = -(2**63)  # below every stream_seq venue.db holds (kept scans are negative)
# An admit journaled while its claim is in flight normally settles within milliseconds; one
# still waiting after this long (the bus went away, the process restarted without it) is
# shown in status (`claims_unanswered`, reason venue_claims_unanswered): held from the upload
# and the publisher until the sweep settles it (connected, the stream applied to its end).
# Rows an earlier process left are counted whatever their time (by journal seq).
UNANSWERED_AFTER_S = 5.0
SWEEP_AFTER_S = 30.0  # a claim this old with no admit in the journal cannot be in flight
# Occupancy is folded from every scan of the venue (0.2 s for 100k scans here): at most this
# often, whatever the number of dashboards polling it.
OCCUPANCY_EVERY_S = 5.0
STATUS_READ_EVERY_S = 1.0  # the conflict count in status: read again at most this often
# While a lane of this gate is between its claim and its journal commit, the consumer holds
# back what it receives (this very claim, typically) for at most this long, so the applier
# thread does not wake and take the GIL from the lane at that moment (docs/venue.md, figures).
HOLD_WHILE_CLAIMING_S = 0.05
# How often the settled passages of exits whose journal row was pruned are let go when the
# venue no longer awaits them (agent.store.journal `forget_exit_outcomes`): prune is hourly.
FORGET_EXITS_EVERY_S = 3600.0
SETTLE_EVERY_S = 0.2  # how soon a row handed over by a lane (settle_later) is marked
STOP_GRACE_S = 1.0  # how long a stopping bus lets its session end by itself
# a session set-up step JetStream did not answer (no quorum) is tried again on the same link
# after this pause, doubling up to the second figure (VenueBus._set_up_step)
SETUP_RETRY_S = (0.5, 4.0)
# a batch venue.db refused (disk full, locked) is tried again after this pause, doubling up to
# the second figure; no later batch is applied meanwhile (see VenueBus._apply)
APPLY_RETRY_S = (0.1, 2.0)
# venue.db or journal.db not opened as the bus starts (another process holds it `PRAGMA
# locking_mode=EXCLUSIVE`, a momentary permission or disk problem): the bus loop (and for
# venue.db the applier) try it again this often (the daemon's STORE_RETRY_S for one it could
# not open at all), the bus down meanwhile and status saying why (VenueBus._opened)
OPEN_RETRY_S = 5.0
# A scan decided before this process measured its clock against the bus server's: the
# publisher holds it (and the rows after it) after connecting, for the first measurement of
# the offset its clock had when it decided (see `scan_offset`): taken as the session connects
# (agent.venue.clockprobe), or else by the first heartbeat delivered, which may come a whole
# `heartbeat_s` later (the next beat of any gate). So the hold is that interval plus this
# (a fixed 5 s ran out before the first beat when heartbeat_s was above about 5 s, and those
# scans went out unmeasured: `unmeasured_hold_s`).
UNMEASURED_HOLD_S = 5.0
CLOCK_STEP_S = 1.0  # the decision clock moved this much against the monotonic one: stepped
UNMEASURED_KEPT = 100_000  # scans kept in memory for a later measurement, at most
# A member's clock is checked against the platform's time that the leader's heartbeat carries
# (the daemon's `_follow_leader_clock`, agent.runtime.clock `leader_reading`) once a watchdog
# period (15 s under WatchdogSec=30), and a wrong clock is corrected on the second agreeing
# reading: half a minute after the session came up, deciding by the wrong time meanwhile. So
# the first leader beats of each session are told at once (`on_leader_time`); the period
# goes on after them.
LEADER_TIME_KEY = "platform_minus_bus_s"  # agent.ops.heartbeat: in the leader's beat
LEADER_TIMES_AT_ONCE = 2  # agent.runtime.clock: two agreeing readings start a correction

# a message of the stream on its way to the applier: stream sequence, subject, body, messages
# still pending after it, and the server's timestamp of it (the scan's bus time: messages.py)
Inbound = tuple[int, str, bytes, int, datetime | None]


def device_name(venue: dict[str, Any]) -> str:
    """`venue.device`, or the host name made safe for a subject."""
    return str(venue["device"]) or re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())


def connect_options(venue: dict[str, Any], config_path: str | None = None) -> dict[str, Any]:
    """nats.connect() keyword arguments from `[venue]`; the credentials file must be 0600."""
    opts: dict[str, Any] = {"servers": list(venue["servers"]), "name": device_name(venue)}
    creds = venue["credentials"]
    if creds:
        path = Path(creds).expanduser()
        require_private(path, key="venue.credentials", config_path=config_path)
        text = path.read_text(encoding="utf-8", errors="replace")
        if "BEGIN NATS USER JWT" in text:
            opts["user_credentials"] = str(path)
        else:
            opts["nkeys_seed"] = str(path)
    if venue["tls_ca"] or any(s.startswith("tls://") for s in venue["servers"]):
        ctx = ssl.create_default_context(cafile=venue["tls_ca"] or None)
        opts["tls"] = ctx
    return opts


class VenueBus:
    """This gate's link to the venue's stream (see the module docstring)."""

    def __init__(self, venue: dict[str, Any], store_dir: Path, journal_path: Path | None,
                 config_path: str | None = None, *, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] | None = None, open_retry_s: float = OPEN_RETRY_S):
        """`wall`: this device's wall clock (epoch s), which the heartbeats measure against
        the bus server's; `clock`: the one this gate decides by and stamps its scans with (the
        daemon's agent.runtime.clock GateClock: the platform's time while the wall clock is
        known wrong), the wall clock if None. Tests give a gate clocks of its own.
        `open_retry_s`: how often venue.db or journal.db is tried again when it cannot be
        opened as the bus starts (`_opened`); this bus's own, so a test shortens it for its
        bus alone."""
        self.venue = venue
        self.name = venue["name"]
        self.device = device_name(venue)
        self.stream = messages.stream_name(self.name)
        self.timeout_s = venue["claim_timeout_ms"] / 1000.0
        self.store_path = store_dir / VENUE_FILE
        self.journal_path = journal_path
        self.options = connect_options(venue, config_path)  # fails fast on an exposed creds file
        # Rows and claims of an earlier process are told from this one's by position, never
        # by wall time (a clock stepped back at boot would stamp this process's scans before
        # the last one's): journal rows up to this seq (read as the bus starts, before any
        # claim of this process can be journaled), and claims not sent by this bus (_mine).
        self.left_through_seq = 0
        # the link to a bus server is up (status `connected`); the session on it is set up
        # only once JetStream answered every set-up step (`ready`: claims go out then)
        self.connected = False
        self._session_ready = False
        self.last_error: str | None = None
        # where the current session is (its set-up steps, then "running"): a session that
        # fails says where, in its log line and `last_error` (a timeout alone says nothing);
        # while a set-up step fails on a link that is up (no quorum): its error, and since
        # when the set-up runs (status reason venue_degraded; both None once running)
        self.setup = SetUp(log, "venue bus session")
        # while venue.db refuses a batch: why, and since when (status reason venue_db_failing)
        self.apply_failing = Failing()
        self.settings_drift: dict[str, str] = {}  # stream settings used as the server has them
        self.stream_restarts = 0  # times venue.db was reset for a stream made again
        self._restarted = threading.Event()  # the applier reset venue.db (RESTART_SEQ)
        # journal seq up to which granted claims go out again with the reset of venue.db
        # (`_adopt_stream`; VenueStore.restart_stream writes it in the reset's transaction)
        self._republish_through = 0
        # while venue.db cannot be opened as the bus starts: why (naming the file and what
        # holds it), since when (status reason venue_db_failing), and who has not opened it
        # yet ("bus": the loop's connection, "applier": its thread's); see `_opened`
        self.open_retry_s = open_retry_s
        self.db_open_failing = Failing()
        self._unopened = {"bus", "applier"}
        # the same for the bus loop's connection to journal.db (reason venue_journal_failing)
        self.journal_open_failing = Failing()
        self._opening_lock = threading.Lock()
        self._stopping = threading.Event()  # ends the applier's retries of a refused batch
        store = VenueStore(self.store_path)
        try:
            self.applied_seq = store.position(self.stream)
            conflicts = store.conflict_count()
        finally:
            store.close()
        # status's figures of venue.db, read off the daemon's loop (agent.venue.status_read)
        self._conflicts = StatusRead(self.store_path, VenueStore.conflict_count, conflicts,
                                     STATUS_READ_EVERY_S, "the conflict count")
        self._occupancy: StatusRead[list[dict[str, Any]]] = StatusRead(
            self.store_path, VenueStore.occupancy, [],
            OCCUPANCY_EVERY_S, "the occupancy")
        self.stream_last_seq = self.applied_seq
        self.counters = {"claims_granted": 0, "claims_conflicted": 0, "claims_timed_out": 0,
                         "claims_not_sent": 0,
                         "voids": 0, "published": 0, "republished": 0, "bad_messages": 0,
                         "conflicts_found": 0, "exits_confirmed": 0}
        self._forget_exits_at = 0.0  # monotonic: `_settle_exits` prunes exits' outcomes then
        # while connected, is the bus doing its work? (status reason venue_degraded): the
        # claims that timed out in a row since the last answered one (reset on connecting),
        # the last one's time and error; the publisher's failure and since when (cleared by a
        # round that worked: `last_error` keeps the last error of any kind until a reconnect)
        self.claims_timing_out = 0
        self.claims_last_timeout: str | None = None
        self.claims_timeout_error: str | None = None
        self.publish_failing = Failing()
        # the journal seq up to which the bus acknowledged this gate's rows while venue.db
        # would not record it (locked by another process, full): the publisher goes on after
        # it meanwhile (`_published_through`); 0 once venue.db has it
        self._unsaved_through = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._nc: Any = None
        self._js: Any = None
        self._caught_up = False
        # claims up to this stream position have been picked up: from the lowest, so claims
        # kept from a stream made again (renumbered below it: VenueStore.restart_stream) are too
        self._swept_seq = SWEEP_FROM
        # picked up, not old enough yet: claim, and when it was picked up (monotonic)
        self._unchecked: dict[str, tuple[dict[str, Any], float]] = {}
        # uuids of claims this bus sent (lane threads append; the sweep drains them into
        # _mine: uuid -> when sent, monotonic); a claim not in it is an earlier process's
        self._sent: collections.deque[tuple[str, float]] = collections.deque()
        self._mine: dict[str, float] = {}
        # uuids of claims a lane of this process sent and is not done with yet (its journal
        # commit may still come, however late): never voided by the sweep meanwhile
        self._open: set[str] = set()
        self._open_lock = threading.Lock()
        # claims whose void `void_now` could not publish (lane threads append): the sweep
        # judges them again by the journal, whenever it looked at them before
        self._recheck: collections.deque[dict[str, Any]] = collections.deque()
        self._inbox: queue.Queue[Inbound | None] = queue.Queue()
        self.board = GateBoard(venue["heartbeat_s"], venue["heartbeat_ttl_s"], clock=wall)
        self.wall = wall
        self.clock = clock or wall
        self._heartbeats: HeartbeatLink | None = None
        # claims between publish and journal commit (lane threads), and what the consumer
        # holds back meanwhile (bus loop only); see HOLD_WHILE_CLAIMING_S
        self.hold_while_claiming = True
        self._claiming = 0
        self._hold_until = 0.0
        self._held: list[Inbound] = []
        self._hold_lock = threading.Lock()
        # claims as one HPUB on the loop, answered in the client's reader (claim_channel);
        # off: js.publish() through run_coroutine_threadsafe (kept for A/B in the bench)
        self.lean_claims = True
        # after a claim's commit, no loop wake-up for a granted claim (claim_settled); off: two
        self.lean_settle = True
        self._claims = ClaimChannel()
        # rows of claims in flight, answered, that this thread settles (settle_later)
        self._to_settle: collections.deque[tuple[str, str, str]] = collections.deque()
        # scans this process decided before its first measurement: uuid -> the decision
        # clock minus the monotonic one then (`scan_offset`, `published_offset`)
        self._unmeasured: dict[str, float] = {}
        self._connected_at = 0.0  # monotonic: when this session connected
        # when this process first connected without a measured clock (status:
        # venue_clock_unmeasured); a measurement is never lost, so it is said until the first
        self._unmeasured_since: str | None = None
        self.unmeasured_hold_s = venue["heartbeat_s"] + UNMEASURED_HOLD_S
        self._probe: asyncio.Task[None] | None = None  # a measurement after a reconnect
        # told (on the bus thread) of another gate's beat with the leader's time, for the
        # first LEADER_TIMES_AT_ONCE of each session set up: the daemon checks its clock then
        self.on_leader_time: Callable[[], object] | None = None
        self._leader_times_left = 0
        self._leader_time_told = 0.0  # the stamp of the last beat told
        self.board.on_seen = self._beat_seen

    @property
    def session_step(self) -> str:
        return self.setup.step

    @property
    def setup_error(self) -> str | None:
        return self.setup.error

    @property
    def ready(self) -> bool:
        """Connected, and the session set up on the link: claims and voids go out."""
        return self.connected and self._session_ready

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        with self._opening_lock:
            self._unopened = {"bus", "applier"}
        self._applier = threading.Thread(target=self._applying, name="venue applier",
                                         daemon=True)
        self._applier.start()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="venue bus",
                                        daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self, timeout: float = 3.0) -> None:
        loop, stop, wake = self._loop, self._stop, self._wake
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
                if wake is not None:  # the session's round ends now, not after its 1 s wait
                    loop.call_soon_threadsafe(wake.set)  # (which STOP_GRACE_S would cut short)
            except RuntimeError:  # the loop ended and closed in between: nothing to wake
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopping.set()
        self._inbox.put(None)
        self._applier.join(timeout)
        self._conflicts.close()
        self._occupancy.close()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            # the client's own tasks (reconnect, pings, flusher) end here, before the loop does
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        assert self._stop is not None
        journal: Journal | None = None
        if self.journal_path is not None:
            journal = await self._opened(self._try_journal)
            if journal is None:  # stopped before journal.db opened: nothing was handed over
                return
        settler = asyncio.ensure_future(self._settling(journal))
        store: VenueStore | None = None
        try:
            # None: stopped before venue.db opened
            store = await self._opened(lambda: self._try_open("bus"))
            while store is not None and not self._stop.is_set():
                try:
                    await self._session_until_stopped(store, journal)
                except Exception as exc:  # noqa: BLE001 - any bus failure: retry, gate goes on
                    await self._close_connection()
                    self.last_error = self.setup.describe(exc)
                    log.warning("venue bus: %s; retrying", self.last_error)
                await self._sleep(0.5)
        finally:
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)
            await self._settle_rows(journal)  # what the lanes handed over last
            await self._close_connection()
            if store is not None:
                store.close()
            if journal is not None:
                journal.close()

    async def _opened(self, attempt: Callable[[], T | None]) -> T | None:
        """The bus loop's connection to journal.db, then to venue.db (`attempt`: one try,
        None when it failed), tried every `open_retry_s` until it opens (None: the bus
        stopped first). venue.db opened when the bus was made and journal.db when the daemon
        started, but another process may hold either by the bus's start (a `sqlite3` shell
        with `PRAGMA locking_mode=EXCLUSIVE`), or a permission or the disk fail for a moment:
        opened once, that ended the bus thread for good — no scan published or applied, no
        claim answered, and status said only "connecting" (tests/venue/
        test_venue_db_at_start.py, test_journal_db_at_start.py). The session starts once both
        open; this gate's scans journaled meanwhile go out then (the publisher's cursor is in
        venue.db). Each try runs in a worker thread: it may wait out SQLite's busy timeout."""
        assert self._stop is not None
        while not self._stop.is_set():
            opened = await asyncio.to_thread(attempt)
            if opened is not None:
                return opened
            await self._sleep(self.open_retry_s)
        return None

    def _open_for_applier(self) -> VenueStore | None:
        """The applier thread's connection to venue.db, tried as `_opened` tries the
        loop's (None: the bus stopped first; what was received meanwhile is applied after the
        next start, from the stream: venue.db's position has not moved)."""
        while True:
            store = self._try_open("applier")
            if store is not None:
                return store
            if self._stopping.wait(self.open_retry_s):
                return None

    def _try_open(self, who: str) -> VenueStore | None:
        """One try at opening venue.db for `who` ("bus" or "applier"). A failure is kept for
        status (`db_open_error`, naming the file and what holds it: reason venue_db_failing)
        and logged once per distinct error; cleared once both have it open."""
        try:
            store = VenueStore(self.store_path)
        except (StoreError, OSError) as exc:  # OSError: making a file gone meanwhile failed
            self._open_failed(self.db_open_failing, str(exc) if isinstance(exc, StoreError)
                              else f"venue state {self.store_path} cannot be opened: {exc}")
            return None
        with self._opening_lock:
            self._unopened.discard(who)
            if not self._unopened:
                self._opens_again(self.db_open_failing, f"venue state {self.store_path}")
        return store

    def _try_journal(self) -> Journal | None:
        """One try at opening journal.db for the bus loop, and reading its newest row
        (`left_through_seq`: before the session, so no claim of this bus is journaled yet).
        A failure is kept for status (`journal_open_error`, naming the file and what holds
        it: reason venue_journal_failing) and logged once per distinct error."""
        assert self.journal_path is not None
        try:
            journal = Journal(self.journal_path)
        except (StoreError, OSError) as exc:  # JournalUnavailable, or its directory gone
            self._open_failed(self.journal_open_failing, (
                str(exc) if isinstance(exc, StoreError)  # names the file, and who holds it
                else f"scan journal {self.journal_path} cannot be opened: {exc}"))
            return None
        try:
            self.left_through_seq = journal.last_seq()
        except sqlite3.Error as exc:  # locked again in between: the next try
            journal.close()
            self._open_failed(self.journal_open_failing,
                              f"scan journal {self.journal_path} cannot be read: {exc}"
                              f"{held_hint(self.journal_path, exc)}")
            return None
        with self._opening_lock:
            self._opens_again(self.journal_open_failing, f"scan journal {self.journal_path}")
        return journal

    def _open_failed(self, failing: Failing, error: str) -> None:
        """A file the bus needs to start not opened: in status (`failing`, and `last_error`)
        and logged once per distinct error (a try every `open_retry_s`)."""
        error = error[:600]
        with self._opening_lock:
            if failing.fail(error):
                log.error("venue bus not running: %s — tried again every %g s", error,
                          self.open_retry_s)
            self.last_error = error

    def _opens_again(self, failing: Failing, what: str) -> None:
        """`what` opened after failing (`_opening_lock` held): said, and cleared."""
        error = failing.error
        if error is None:
            return
        log.warning("%s can be opened again: the venue bus starts", what)
        if self.last_error == error:
            self.last_error = None
        failing.clear()

    async def _session_until_stopped(self, store: VenueStore, journal: Journal | None) -> None:
        """A session that `stop()` can end. A connected session sees the stop and ends by
        itself; one still connecting does not (nats-py retries a first connect to a bus it
        never reached for ever), so after STOP_GRACE_S it is cancelled: a gate whose bus is
        down stops at once instead of after the thread's join timeout."""
        assert self._stop is not None
        session = asyncio.ensure_future(self._session(store, journal))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done() and self._nc is not None:  # connected: it ends by itself
                await asyncio.wait({session}, timeout=STOP_GRACE_S)
            if not session.done():
                session.cancel()
                await asyncio.gather(session, return_exceptions=True)
                return
            await session  # its own outcome: an error is retried by the caller
        finally:
            stopping.cancel()

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _session(self, store: VenueStore, journal: Journal | None) -> None:
        """One connection's life: connect, set the session up (make sure the stream exists,
        adopt it, subscribe), consume and publish until the connection closes or the bus
        stops. `connected` is the link; `ready` the session set up on it (claims go out)."""
        assert self._stop is not None and self._wake is not None
        closed = asyncio.Event()

        async def on_disconnect() -> None:
            self.connected = False

        async def on_reconnect() -> None:
            self.connected = True
            if not self._session_ready:  # the set-up's steps go on by themselves
                return
            self._claims_answered_again()
            self._connected_at = time.monotonic()
            self._connected_unmeasured()
            if not self.board.calibrated:  # decided unmeasured meanwhile: measure it now
                self._probe = asyncio.ensure_future(self._measure_clock())

        async def on_closed() -> None:
            closed.set()

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]

        self.setup.begin("connecting")
        self._nc = await nats.connect(
            **self.options, connect_timeout=2, reconnect_time_wait=0.25,
            max_reconnect_attempts=-1, allow_reconnect=True,
            disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, closed_cb=on_closed,
            error_cb=on_error)
        self.connected = True  # the link is up, whatever JetStream answers on it
        self._js = self._nc.jetstream(timeout=max(self.timeout_s, 2.0))
        sub: Any = None
        try:
            await self._set_up_step("making sure the stream exists", closed,
                                    self._ensure_stream)
            watch = await self._set_up_step("checking the stream's identity", closed,
                                            lambda: self._adopt_stream(store, journal))
            self.setup.at("measuring the clock")
            await self._measure_clock()  # before anything is published or decided as connected
            await self._set_up_step("opening the claims channel", closed,
                                    lambda: self._claims.open(self._nc))
            nc = self._nc
            self._heartbeats = HeartbeatLink(self.name, self.device, self.board,
                                             self.venue["heartbeat_ttl_s"],
                                             lambda: int(nc.stats["reconnects"]))
            self._heartbeats.start(self._js, 3 if len(self.venue["servers"]) >= 3 else 1)
            sub = await self._set_up_step("subscribing to the stream", closed,
                                          lambda: self._subscribe(store))
            info = await self._set_up_step("reading the stream's position", closed,
                                           lambda: self._js.stream_info(self.stream))
            with self._cond:
                self.stream_last_seq = max(self.stream_last_seq, info.state.last_seq)
                if self.applied_seq >= info.state.last_seq:
                    self._caught_up = True  # nothing to replay: the sweep may run
            self._claims_answered_again()
            self._connected_at = time.monotonic()
            self._connected_unmeasured()
            self._session_ready = True
            self._leader_times_left = LEADER_TIMES_AT_ONCE
            self._leader_time_on_board()
            self.last_error = None
            self.setup.running()
            log.info("venue bus connected: %s as %s", self.stream, self.device)
            await self._running(store, journal, watch, closed)
        finally:
            beats, self._heartbeats = self._heartbeats, None
            if beats is not None:
                await beats.close(clean=self._stop.is_set() and self.ready)
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001 - the connection may already be gone
                    pass
            await self._close_connection()

    async def _set_up_step(self, step: str, closed: asyncio.Event,
                           action: Callable[[], Awaitable[T]]) -> T:
        """One step of a session's set-up, tried again on this link until it works: a
        JetStream without quorum (or a stream without a leader) answers no step, and neither
        a new connection nor anything but time mends that. Meanwhile the link is said to be
        up and the session not (`setup_error`, `session_step`: status reason venue_degraded),
        lanes decide by the offline policy, and the session goes on by itself once JetStream
        answers. Tearing the session down instead (as before) said "not connected", and a
        session whose set-up began as the quorum went never came back to say otherwise.
        Raises once the bus stops or the connection is closed (the caller starts anew)."""
        assert self._stop is not None
        self.setup.at(step)
        pause = SETUP_RETRY_S[0]
        while True:
            try:
                return await action()
            except Exception as exc:
                if self._stop.is_set() or closed.is_set():
                    raise
                self._set_up_failed(exc)
                await self._sleep(pause)
                if self._stop.is_set() or closed.is_set():
                    raise
            pause = min(pause * 2, SETUP_RETRY_S[1])

    def _set_up_failed(self, exc: BaseException) -> None:
        """A try of the set-up's current step that failed, in status (`setup_error`: reason
        venue_degraded, with why) and in the log once per distinct error. Also each failed try
        of a step that retries by itself (the stream's create while JetStream has no meta
        leader: `streams.ensure_stream`'s `waiting`), which said nothing for CREATE_RETRY_S."""
        self.last_error = self.setup.failed(exc)

    async def _running(self, store: VenueStore, journal: Journal | None,
                       watch: stream_identity.StreamWatch, closed: asyncio.Event) -> None:
        """The set-up session's rounds: publish, sweep, settle, look at the stream."""
        assert self._stop is not None and self._wake is not None
        while not self._stop.is_set() and not closed.is_set():
            if self.connected:
                try:
                    await self._publish_pending(store, journal)
                    await self._sweep(store, journal)
                    await self._settle_exits(store, journal)
                except Exception as exc:  # noqa: BLE001 - a timeout mid-outage: next round
                    self._publishing_failed(f"{type(exc).__name__}: {exc}")
                else:
                    self.publish_failing.clear()
                # deleted or made again: VenueStreamLost, the session's setup runs again
                await watch.check(self._js, self.applied_seq)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass
        if self.connected:  # stopping: the last scans the lanes journaled go out first
            try:
                await asyncio.wait_for(self._publish_pending(store, journal), 1.5)
            except Exception as exc:  # noqa: BLE001 - published after the next start
                log.info("venue: last scans not published (%s); they go out next start", exc)

    async def _measure_clock(self) -> None:
        """One sample of this clock against the bus server's (agent.venue.clockprobe), so
        this gate places other gates' scans from the moment it connects rather than from the
        first heartbeat delivered; the heartbeats keep measuring it from there."""
        js = self._js
        if js is None:
            return
        delay = await clockprobe.server_delay(js, self.stream, self.board.clock)
        if delay is not None:
            self.board.calibrate(delay)
            if self._wake is not None:  # rows held for a measurement may go out now
                self._wake.set()

    def _publishing_failed(self, error: str) -> None:
        self.last_error = f"publishing: {error}"[:300]
        self.publish_failing.fail(error[:300])

    def count_claim(self, outcome: str, error: str = "") -> None:
        """A claim's outcome (granted | conflicted | timed_out | not_sent, called from lane
        threads): the counter, and the run of claims timing out in a row that any answer ends
        (a bus that is connected but never answers: no quorum, the stream missing). A claim
        not sent (no link, the session not set up: other reasons say so) neither extends nor
        ends that run: the bus was not asked."""
        self.counters[f"claims_{outcome}"] += 1
        if outcome == "not_sent":
            return
        if outcome != "timed_out":
            self.claims_timing_out = 0
            return
        self.claims_timing_out += 1
        self.claims_last_timeout = utc_iso(datetime.now(UTC))
        self.claims_timeout_error = error[:300] or None

    def _claims_answered_again(self) -> None:
        """Connecting again: claims that failed while away say nothing of the bus now."""
        self.claims_timing_out = 0

    async def _close_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._claims.close()
        self.connected = self._session_ready = False
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 1.0)
            except Exception:  # noqa: BLE001 - closing a dead link
                pass

    async def _ensure_stream(self) -> None:
        """Create the venue's stream (replicas 3 with three or more servers). Creating an
        existing stream with the same settings is accepted by the server, so every gate may;
        one made with other settings is updated or used as it is (agent.venue.streams)."""
        replicas = 3 if len(self.venue["servers"]) >= 3 else 1
        config = StreamConfig(name=self.stream, subjects=[messages.stream_subjects(self.name)],
                              storage=StorageType.FILE, num_replicas=replicas,
                              duplicate_window=DUPLICATE_WINDOW_S)
        await streams.ensure_stream(self._js, config, [
            streams.Want("num_replicas", replicas, streams.REPLICAS_KEY),
            streams.Want("duplicate_window", DUPLICATE_WINDOW_S),
            streams.Want("storage", StorageType.FILE)], self.settings_drift,
            waiting=self._set_up_failed)

    async def _adopt_stream(self, store: VenueStore,
                            journal: Journal | None) -> stream_identity.StreamWatch:
        """Session setup: venue.db must count in this incarnation of the stream. One made
        again since (agent.venue.stream_identity) resets venue.db's derived data first, so the
        consumer starts at the new stream's first message and claims expect its sequences.
        Either way, and when venue.db has no record of the stream, this gate's granted claims
        journaled so far go out again (`VenueStore.set_republish_through`). Judged on the
        stream leader's answer only: a replica's while the stream has no leader may hold less
        than venue.db applied (`stream_identity.leader_answer`; this step is tried again)."""
        # a session publishes from venue.db's cursor: rows acknowledged while venue.db did
        # not record it may not be on this stream (made again), and are stored once if they are
        self._unsaved_through = 0
        info = await stream_identity.leader_answer(self._js, self.stream)
        created = stream_identity.created_of(info)
        recorded = await asyncio.to_thread(store.stream_created, self.stream)
        position = await asyncio.to_thread(store.position, self.stream)
        why = stream_identity.replaced(recorded, created, info.state.last_seq, position)
        journaled = await asyncio.to_thread(journal.last_seq) if journal is not None else 0
        if why is not None:
            self._republish_through = journaled
            log.warning("venue: %s; venue.db's scans are dropped and the stream applied from "
                        "its first message; this gate's scans are published again", why)
            self._restarted.clear()
            with self._hold_lock:  # held messages are the old stream's
                self._held.clear()
            self._inbox.put((RESTART_SEQ, created, b"", 0, None))
            if not await asyncio.to_thread(self._restarted.wait, 30.0):
                raise VenueStreamLost(
                    f"venue.db not reset for the new stream: {self.apply_failing.error}")
            # its claims are kept under new (negative) sequences: all looked at again, those
            # waiting keep their time (VenueStore.restart_stream)
            self._swept_seq = SWEEP_FROM
            self.stream_restarts += 1
        elif recorded != created:
            if recorded is None:
                # A venue.db with no record (a new gate, or the file deleted) cannot tell
                # whether the stream was made again while this gate was away: if it was, its
                # granted claims (on the bus already, so never published again) are not on
                # the new stream, and a gate that learns the venue from it admits them again.
                # So all of its journal goes out, claims too (stored once: Nats-Msg-Id and
                # the uuid; a gate with a new journal has nothing to send). Marked before the
                # record: a restart in between finds no record and marks again.
                await asyncio.to_thread(store.set_republish_through, journaled)
            await asyncio.to_thread(store.set_stream_created, self.stream, created)
        return stream_identity.StreamWatch(self.stream, created)

    def _restart_applied(self, store: VenueStore, created: str) -> None:
        """The applier's part of a reset (in order: what it applied before is the old
        stream's; nothing of the old stream is queued after the marker)."""
        try:
            store.restart_stream(self.stream, created, self._republish_through)
        except Exception as exc:  # noqa: BLE001 - the session fails and tries again
            self.apply_failing.fail(f"{type(exc).__name__}: {exc}"[:300])
            return
        with self._cond:
            self.applied_seq = self.stream_last_seq = 0
        self._caught_up = False
        self._restarted.set()

    async def _subscribe(self, store: VenueStore) -> Any:
        """An ordered push consumer from the first message not yet applied here (the
        position read off the loop: venue.db held by another process makes it wait SQLite's
        busy timeout, and claims are answered on this loop)."""
        start = await asyncio.to_thread(store.position, self.stream) + 1

        async def on_message(msg: Msg) -> None:
            # handed to the applier thread (a SQLite commit here would delay the acks of
            # claims waiting on this loop), or held back while a lane of this gate is between
            # its claim and its commit (the order is kept: held messages go first)
            meta = msg.metadata
            item = (meta.sequence.stream, msg.subject, msg.data, meta.num_pending or 0,
                    meta.timestamp)
            with self._hold_lock:
                if self._claiming > 0 and time.monotonic() < self._hold_until:
                    if not self._held:
                        assert self._loop is not None
                        self._loop.call_later(HOLD_WHILE_CLAIMING_S, self._release_held)
                    self._held.append(item)
                    return
                self._release_held_locked()
                self._inbox.put(item)

        return await self._js.subscribe(
            messages.stream_subjects(self.name), stream=self.stream, cb=on_message,
            ordered_consumer=True, idle_heartbeat=1.0, flow_control=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=start))

    def _release_held(self) -> None:
        """Hand what the consumer held back to the applier, in order (the bus loop's timer, or
        the lane whose claim settled: no loop wake-up needed for it)."""
        with self._hold_lock:
            self._release_held_locked()

    def _release_held_locked(self) -> None:
        held, self._held = self._held, []
        for item in held:
            self._inbox.put(item)

    def _applying(self) -> None:
        """The applier thread: messages in stream order, in batches, one transaction each."""
        store = self._open_for_applier()
        if store is None:
            return
        carried: Inbound | None = None  # a reset marker ends a batch
        try:
            while True:
                item, carried = carried or self._inbox.get(), None
                if item is None:
                    return
                if item[0] == RESTART_SEQ:
                    self._restart_applied(store, item[1])
                    continue
                batch = [item]
                while len(batch) < 500:
                    try:
                        nxt = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._inbox.put(None)
                        break
                    if nxt[0] == RESTART_SEQ:
                        carried = nxt
                        break
                    batch.append(nxt)
                self._apply(store, batch)
                if self._stopping.is_set() and self.apply_failing.error is not None:
                    return  # stopped while venue.db refused it: applied after the next start
        finally:
            store.close()

    def _apply(self, store: VenueStore, batch: list[Inbound]) -> None:
        """Apply `batch`, trying again while venue.db refuses it (disk full, locked, read-only).

        Nothing replays a batch that was skipped: the next one would store a position past it,
        so this gate would never see those scans (its claims on those tickets would conflict
        until the offline policy decided: a double admit under `local`). So the batch stays at
        the head and no later one is applied first; status says why meanwhile. Returns early
        when the bus stops first (the batch is then applied after the next start, from the
        stream)."""
        decoded = self._decode(batch)
        pause = APPLY_RETRY_S[0]
        while True:
            try:
                found = store.apply(self.stream, decoded, utc_iso(datetime.now(UTC)))
            except Exception as exc:  # noqa: BLE001 - any failure: the same batch again
                # with why, when it is venue.db's access or the disk (and what to type)
                error = f"{type(exc).__name__}: {store_write_failure(store.path, exc)}"[:600]
                if self.apply_failing.error is None:  # once a run (the free space varies)
                    log.error("venue: messages %d-%d not applied to venue.db (%s); trying "
                              "again", batch[0][0], batch[-1][0], error)
                self.apply_failing.fail(error)
                if self._stopping.wait(pause):
                    return
                pause = min(pause * 2, APPLY_RETRY_S[1])
                continue
            if self.apply_failing.clear():
                log.warning("venue: venue.db takes messages again (from %d)", batch[0][0])
            self._applied(batch, found)
            return

    def _decode(self, batch: list[Inbound]) -> list[Applied]:
        decoded = []
        for seq, subject, data, _pending, stored in batch:
            try:
                decoded.append(messages.decode(seq, subject, data, stored))
            except messages.BadMessage as exc:
                self.counters["bad_messages"] += 1
                log.error("venue message %d on %s unreadable (%s): skipped", seq, subject, exc)
                decoded.append(Applied(seq, subject))
        return decoded

    def _applied(self, batch: list[Inbound], found: list[str]) -> None:
        for uuid in found:
            self.counters["conflicts_found"] += 1
            log.error("venue conflict: scan %s admitted a ticket beyond its limit "
                      "(gates that could not see each other); see gate-agent venue conflicts",
                      uuid)
        seq, pending = batch[-1][0], batch[-1][3]
        with self._cond:
            self.applied_seq = max(self.applied_seq, seq)
            self.stream_last_seq = max(self.applied_seq, seq + pending)
            self._cond.notify_all()
        if not pending:
            self._caught_up = True

    # -- publishing -----------------------------------------------------------------------

    def wake(self) -> None:
        """A scan was journaled: publish it now (called from lane threads)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def beat(self, body: bytes) -> None:
        """Publish this gate's heartbeat (called from the daemon's loop; dropped while the bus
        is away: a heartbeat is only worth its latest value)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self.connected:
            return

        async def put() -> None:
            beats = self._heartbeats
            if beats is not None:
                try:
                    await beats.publish(body)
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    self.last_error = f"heartbeat: {type(exc).__name__}: {exc}"[:300]

        asyncio.run_coroutine_threadsafe(put(), loop)

    async def _publish_pending(self, store: VenueStore, journal: Journal | None) -> None:
        """This gate's journal rows the bus has not acknowledged yet, pipelined; the cursor
        moves only past rows acknowledged. Rows whose claim was granted are on the bus already
        (the claim is the same scan under the same uuid) and are not sent again. SQLite work
        runs in a worker thread so the loop stays free for claims' acks."""
        if journal is None:
            return
        if self._unsaved_through:  # venue.db refused it: tried once a round
            await self._published_through(store, self._unsaved_through)
        while True:
            since, again = await asyncio.to_thread(store.cursors)
            since = max(since, self._unsaved_through)
            rows = await asyncio.to_thread(journal.after, since, 200)
            if not rows:
                return
            # a row whose claim is in flight stops the walk until its answer settles it
            flying = next((i for i, row in enumerate(rows) if row.get("venue") == "claiming"),
                          None)
            if flying is not None:
                rows = rows[:flying]
                if not rows:
                    return
            sends, through, held = [], since, False
            for row in rows:
                if row.get("venue") == "void" or (  # never was on the bus / is on it already,
                        row.get("venue") == "claimed" and row["seq"] > again):  # unless the
                    through = row["seq"]  # stream may not hold it (_adopt_stream)
                    continue
                offset, held = self.published_offset(row)
                if held:  # decided unmeasured: its offset may be measured in a moment
                    break
                subject = messages.ticket_subject(self.name, row["event_id"], row["item_id"],
                                                  self.device)
                sends.append(self._js.publish(
                    subject, messages.encode_scan(scan_from_row(row, self.device, offset)),
                    headers={"Nats-Msg-Id": messages.scan_msg_id(row["uuid"],
                                                                 bool(row["admit"]))}))
                through = row["seq"]
            for ack in await asyncio.gather(*sends):
                if not self._count_stored("published", ack):
                    self.counters["republished"] += 1
            if through > since:
                if self._unsaved_through:  # not asked again this round (a 5 s wait each)
                    self._unsaved_through = through
                else:
                    await self._published_through(store, through)
            for row in rows:
                if row["seq"] <= through:
                    self._unmeasured.pop(row["uuid"], None)
            if held:
                return

    async def _published_through(self, store: VenueStore, through: int) -> None:
        """Record that the bus acknowledged this gate's rows up to journal seq `through`.

        venue.db locked by another process (a CLI, `sqlite3` left in a transaction) refuses
        it after its busy timeout. Raised, that ended every round at its first 200 rows,
        already on the bus: they went out again each round while every row after them waited,
        unpublished, for as long as the lock was held (found in session 13). So the position
        is kept here and publishing goes on after it; venue.db is asked again once a round.
        Nothing is lost if the process stops meanwhile: the rows after venue.db's cursor go out
        again at the next start, stored once (their msg id; `republished`). Status says why
        meanwhile: this gate's own scans come back to the applier, which fails on the same
        lock (`apply_error`, reason venue_db_failing, naming the file)."""
        try:
            await asyncio.to_thread(store.set_published_through, through)
        except StoreError as exc:
            if not self._unsaved_through:
                log.error("venue: publishing goes on, but venue.db does not record how far "
                          "(%s); tried again each round", exc)
            self._unsaved_through = through
            return
        if self._unsaved_through:
            log.warning("venue: venue.db records the publishing position again (%d)", through)
        self._unsaved_through = 0

    async def _sweep(self, store: VenueStore, journal: Journal | None) -> None:
        """Void this gate's standing claims with no admit in the journal: claims this bus did
        not send (an earlier process's: a crash between claim and commit) at once, its own
        SWEEP_AFTER_S after they were picked up (a commit that failed, or a claim that timed
        out here but reached the bus). Each claim is looked at once: new ones are picked up by
        stream position and wait in memory until they are old enough (after a restart, every
        claim is looked at again). Ages are monotonic: a clock stepped back at boot neither
        keeps an earlier process's claims standing nor makes this one's look old."""
        if not self._caught_up or journal is None:
            return
        await self._settle_claiming(store, journal)
        now = time.monotonic()
        found = await asyncio.to_thread(store.claims_after, self.device, self._swept_seq)
        # After the pick-up, never before: a lane notes its claim in `_sent` before sending
        # it, so every claim the pick-up found in venue.db is noted by now. Taken in before
        # it, a claim sent, stored and applied while the pick-up waited for its thread looked
        # like an earlier process's, and was voided at once if its lane had not committed the
        # admit yet; the lane then journaled it as granted and opened the gate, and every
        # other gate saw the ticket free again (tests/venue/test_sweep_race.py).
        while self._sent:
            scan_uuid, sent = self._sent.popleft()
            self._mine[scan_uuid] = sent
        while self._recheck:  # judged by the journal at once, however old (void_now)
            claim = self._recheck.popleft()
            self._unchecked[claim["uuid"]] = (claim, float("-inf"))
        for claim in found:
            mine = self._mine.pop(claim["uuid"], None) is not None
            self._unchecked.setdefault(claim["uuid"], (claim, now if mine else float("-inf")))
            self._swept_seq = max(self._swept_seq, claim["stream_seq"])
        for scan_uuid in [u for u, sent in self._mine.items() if now - sent > DUPLICATE_WINDOW_S]:
            del self._mine[scan_uuid]  # never stored (no answer, never resent): forgotten
        # Before the journal's read, never after: a lane is done with its claim only once its
        # commit is over, so a claim not open here has its admit in the journal by the read
        # below if it ever will. Voided while open, a claim whose commit was merely late (a
        # stalled fsync, lanes queued on the journal's lock, the daemon stopped and continued)
        # was admitted by its lane after the void, and every other gate saw the ticket free
        # again (tests/venue/test_sweep_stalled_commit.py). Open ones wait for the next round.
        with self._open_lock:
            lanes_hold = set(self._open)
        due = [c for c, picked in self._unchecked.values()
               if now - picked >= SWEEP_AFTER_S and c["uuid"] not in lanes_hold]
        if not due:
            return
        # never admitted here; a claim whose row may have been pruned is not among them
        gone = await asyncio.to_thread(journal.unjournaled, due)
        for claim in due:
            if claim["uuid"] in gone:
                await self._void(claim, "no admit in this gate's journal")
            del self._unchecked[claim["uuid"]]

    async def _settle_exits(self, store: VenueStore, journal: Journal | None) -> None:
        """This gate's exits the bus still holds as awaiting their passage (venue.db, as the
        stream has them) whose wait the journal has settled: confirmed (passed, or standing:
        its input was not watched) -> the scan again without the flag (`confirm_msg_id`), so
        every gate counts the exit; voided -> the void. Whoever settled the wait: the lane
        (which wakes this loop), the upload's bound while the daemon runs (the leader's or
        the fallback uploader's `settle_stale_waits`: its void reached the venue only at the
        next restart's sweep), a restart. Driven by what the stream holds, so a confirmation
        or a void lost with the connection or a crash goes out the next round; one sent twice
        is stored once (its id). A journal row pruned before the confirmation got out (sent
        past retention while the bus was down, or before venue.db had the claim) is settled
        by its `passages` row, which prune keeps (`_confirming`)."""
        if journal is None:
            return
        # venue.db holds every exit of this gate's the stream does (read before the exits)
        complete = self._caught_up and self.applied_seq >= self.stream_last_seq
        awaiting = await asyncio.to_thread(store.awaiting_exits, self.device)
        if complete and time.monotonic() >= self._forget_exits_at:
            self._forget_exits_at = time.monotonic() + FORGET_EXITS_EVERY_S
            await asyncio.to_thread(journal.forget_exit_outcomes, [e["uuid"] for e in awaiting])
        if not awaiting:
            return
        settled = await asyncio.to_thread(journal.exit_outcomes, [e["uuid"] for e in awaiting])
        for claim in awaiting:
            if claim["uuid"] not in settled:
                continue  # still waiting (or its commit not there: the sweep's)
            stands, row = settled[claim["uuid"]]
            if not stands:
                await self._void(claim, "exit not passed: its turnstile never confirmed it")
                continue
            subject = messages.ticket_subject(self.name, claim["event_id"], claim["item_id"],
                                              self.device)
            ack = await self._js.publish(
                subject, messages.encode_scan(self._confirming(claim, row)),
                headers={"Nats-Msg-Id": messages.confirm_msg_id(claim["uuid"])})
            self._count_stored("exits_confirmed", ack)

    def _confirming(self, held: dict[str, Any], row: dict[str, Any] | None) -> BusScan:
        """An exit's confirmation: its journal row without the flag, with the offset it goes
        out with; the row pruned, the scan as venue.db `held` it from the stream, at its bus
        time (agent.store.venue `scan_as_held`): the same scan either way, what a reader
        that never had the claim stores."""
        if row is None:
            return scan_as_held(held, awaiting=False)
        offset, _held = self.published_offset(row)
        return scan_from_row({**row, "passage_awaited": False}, self.device, offset)

    def settle_later(self, scan_uuid: str, outcome: str, reason: str = "") -> None:
        """Settle the row of a claim in flight ('claiming', durable) here, within
        SETTLE_EVERY_S, connected or not (the publisher and the upload hold the row till then):
        `outcome` claimed | offline | void (with `reason`). A lane hands over what it need not
        wait for (a grant: a write transaction less on its hot path) and what its own write
        failed to do (retried here until the journal takes it). If the process stops first,
        the sweep of the next start settles the row from the stream."""
        self._to_settle.append((scan_uuid, outcome, reason))

    async def _settling(self, journal: Journal | None) -> None:
        """Settle handed-over rows every SETTLE_EVERY_S, whether or not a session is up: the
        marks are the journal's, not the bus's (a row waits for its mark, not for the bus)."""
        assert self._stop is not None
        while not self._stop.is_set():
            await self._settle_rows(journal)
            await self._sleep(SETTLE_EVERY_S)

    async def _settle_rows(self, journal: Journal | None) -> None:
        taken: list[tuple[str, str, str]] = []
        while self._to_settle:
            taken.append(self._to_settle.popleft())
        if taken and journal is not None:
            try:
                await asyncio.to_thread(settle_rows, journal, taken)
            except Exception as exc:  # noqa: BLE001 - kept for the next round
                log.error("venue: %d answered claims' rows not settled yet (%s)", len(taken), exc)
                self._to_settle.extendleft(reversed(taken))

    async def _settle_claiming(self, store: VenueStore, journal: Journal) -> None:
        """Journal rows left 'claiming' (the process stopped between the commit of a claimed
        admit and the bus's answer, or before the row was settled): with the stream applied
        up to its end, the claim is in venue.db if the bus stored it. Stored: the admit stands
        (the gate may have opened); not stored: it never was granted, so the gate never
        opened, and the row is voided."""
        # only rows of an earlier process (by seq): this one's lanes settle their own
        rows = await asyncio.to_thread(journal.claiming_rows, self.left_through_seq)
        if not rows:
            return
        stored = await asyncio.to_thread(store.standing, [r["uuid"] for r in rows])
        for row in rows:
            if row["uuid"] in stored:
                await asyncio.to_thread(journal.settle_claim, row["uuid"], "claimed")
                log.warning("scan %s: its claim was on the bus; the admit stands", row["uuid"])
            else:
                await asyncio.to_thread(
                    journal.void_claim, row["uuid"],
                    "its venue claim never reached the bus (the agent stopped before the answer)")
                log.warning("scan %s: its claim never reached the bus; the admit is voided",
                            row["uuid"])

    async def _void(self, claim: dict[str, Any], reason: str) -> None:
        subject = messages.ticket_subject(self.name, claim["event_id"], claim["item_id"],
                                          self.device)
        ack = await self._js.publish(
            subject, messages.encode_void(claim["uuid"], self.device, reason),
            headers={"Nats-Msg-Id": f"void-{claim['uuid']}"})
        if self._count_stored("voids", ack):
            log.warning("venue claim %s voided: %s", claim["uuid"], reason)

    def _count_stored(self, counter: str, ack: Any) -> bool:
        """Count a scan, confirmation or void the stream stored now. The same one sent again
        (the next round before venue.db applied the first, a restart or a reconnect in
        between, an ack lost with the link, or a publishing cursor venue.db did not keep) has
        the same msg id, and JetStream answers it `duplicate` without storing it: counted,
        status said two exits confirmed (or scans published) for one. False for such a
        duplicate (the publisher counts it in `republished`)."""
        if getattr(ack, "duplicate", None):
            return False
        self.counters[counter] += 1
        return True

    # -- claims (called from lane threads) -----------------------------------------------------

    def publish_claim(self, subject: str, body: bytes, scan_uuid: str, expected_seq: int,
                      timeout_s: float) -> ClaimAnswer:
        """Publish a claim expecting `expected_seq` to be the subject's last; wait `timeout_s`."""
        pending = self.start_claim(subject, body, scan_uuid, expected_seq, timeout_s)
        return self.claim_answered(pending.wait(timeout_s))

    def start_claim(self, subject: str, body: bytes, scan_uuid: str, expected_seq: int,
                    timeout_s: float) -> PendingAnswer:
        """Send a claim; its answer comes from the result's `wait()`, which the caller passes
        to `claim_answered` (the consumer holds back from here until the claim is settled)."""
        self._begin_claim()
        with self._open_lock:  # the sweep leaves it to its lane until `claims_done`
            self._open.add(scan_uuid)
        self._sent.append((scan_uuid, time.monotonic()))  # the sweep's: not an earlier process's
        loop = self._loop
        if loop is None or loop.is_closed() or not self.ready or self._js is None:
            return Answered(ClaimAnswer("unavailable", sent=False, error=self.last_error or (
                "not connected" if not self.connected else "the bus session is not set up")))
        headers = {"Nats-Msg-Id": scan_uuid,
                   "Nats-Expected-Last-Subject-Sequence": str(expected_seq)}
        if self.lean_claims and self._claims.usable:
            return self._claims.start(subject, body, headers)
        return start_via_js_publish(self._js, loop, subject, body, headers, timeout_s)

    def claims_done(self, scan_uuids: list[str]) -> None:
        """A lane is done with these claims (called from lane threads after the scan's journal
        commit, or its failure): the sweep may judge them by the journal from now on."""
        with self._open_lock:
            self._open.difference_update(scan_uuids)

    def claim_answered(self, answer: ClaimAnswer) -> ClaimAnswer:
        """A started claim's answer: anything but a grant settles it here (a conflict waits for
        the consumer: nothing may be held back); a grant is settled after its commit."""
        if answer.outcome != "granted":
            self.claim_settled()
        return answer

    def _begin_claim(self) -> None:
        if self.hold_while_claiming:
            with self._cond:
                now = time.monotonic()
                if now >= self._hold_until:
                    self._claiming = 0  # earlier claims are past holding (or never settled)
                self._claiming += 1
                self._hold_until = now + HOLD_WHILE_CLAIMING_S

    def claim_settled(self, publish: bool = False) -> None:
        """A lane's claim is committed, refused or given up: the consumer may apply again, and
        with `publish` the journal has a row for the publisher. The lane hands what was held
        back to the applier itself, so the loop is woken only for the publisher (a wake-up
        as the lane returns takes the GIL from it)."""
        with self._cond:
            self._claiming = max(0, self._claiming - 1)
            idle = self._claiming == 0
        if idle and self.lean_settle:
            self._release_held()
        loop = self._loop
        release = idle and not self.lean_settle
        if (release or publish) and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._settled, release, publish)

    def _settled(self, release: bool, publish: bool) -> None:
        if release:
            self._release_held()
        if publish and self._wake is not None:
            self._wake.set()

    def void_now(self, claim: dict[str, Any], reason: str) -> None:
        """Void a claim whose admit is not (or no longer) in the journal: now if the bus takes
        it, else handed to the sweep, which voids it once connected if the journal still
        holds no admit for it. Not left to the sweep's usual pick-up: that looks at each claim
        once, and a claim it judged while its admit stood (a passage voided after a wait
        longer than the sweep's age) would stand until a restart, the patron refused
        `alreadyIn` at every gate meanwhile (tests/venue/test_void_retried.py)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self.ready:
            self._recheck.append(claim)
            log.warning("venue claim %s not voided yet (the bus session is not up); voided "
                        "once the bus is back", claim["uuid"])
            return
        future = asyncio.run_coroutine_threadsafe(self._void(claim, reason), loop)
        try:
            future.result(max(self.timeout_s, 0.5))
        except Exception as exc:  # noqa: BLE001 - the sweep retries
            self._recheck.append(claim)
            log.warning("venue claim %s not voided yet (%s); retried later", claim["uuid"], exc)

    def offset_s(self) -> float | None:
        """The clock this gate stamps its scans with minus the bus server's: the wall clock's
        measured offset plus how far the decision clock is from the wall clock now; None
        before the first measurement (at connect, `_measure_clock`, or a heartbeat's delivery):
        other gates' scans cannot be placed among this gate's then (agent.venue.claims
        `VenueLink.scans`). Measured on the wall clock, so a correction that starts or ends
        (GateClock) moves it at once: the samples, kept for their smallest delay, stay samples
        of the one clock. One read of the board: a venue scan's hot path asks for it."""
        measured = self.board.measured_offset_s()
        return None if measured is None else measured + self._correction()

    def _correction(self) -> float:
        """How far the decision clock is from the wall clock now (a GateClock correction)."""
        return self.clock() - self.wall() if self.clock is not self.wall else 0.0

    def clock_offset(self) -> float | None:
        """`offset_s` as every scan this gate publishes carries it (None before the first
        heartbeat measured it: readers then place the scan on the safe side, see
        agent.venue.messages `bus_time`). Asked for every venue scan: one read of the board."""
        offset = self.offset_s()
        return None if offset is None else round(offset, 3)

    def scan_offset(self, scan_uuid: str) -> float | None:
        """The offset a scan decided now is journaled with (called from lane threads). None
        before the first measurement; the scan is then remembered with where the decision
        clock stood against the monotonic one, so that a measurement made later in this
        process, with that clock not stepped since, is the offset it was decided under
        (`published_offset`). A scan of an earlier process has no such link: it stays
        unmeasured."""
        offset = self.clock_offset()
        if offset is None and len(self._unmeasured) < UNMEASURED_KEPT:
            self._unmeasured[scan_uuid] = self.clock() - time.monotonic()
        return offset

    def published_offset(self, row: dict[str, Any]) -> tuple[float | None, bool]:
        """(the offset a journal row goes out with, whether to hold it back for now).
        The journaled one; for a row decided unmeasured by this process, the offset measured
        since if its clock has not stepped meanwhile (held back for `unmeasured_hold_s` after
        connecting while nothing is measured yet); otherwise None, said as such."""
        if row.get("clock_offset_s") is not None:
            return float(row["clock_offset_s"]), False
        anchor = self._unmeasured.get(row["uuid"])
        if anchor is None:
            return None, False
        offset = self.clock_offset()
        if offset is None:
            return None, time.monotonic() - self._connected_at < self.unmeasured_hold_s
        if abs(self.clock() - time.monotonic() - anchor) > CLOCK_STEP_S:
            return None, False  # stepped since the scan: today's offset is not its clock's
        return offset, False

    def wait_applied(self, seq: int, timeout_s: float) -> bool:
        """Block until the consumer has applied the stream up to `seq` (a conflict's re-read)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.applied_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _beat_seen(self, device: str, body: dict[str, Any], stamped: float, live: bool) -> None:
        """A beat on the board (bus thread): another gate's with the leader's time, new, while
        this session is set up and this clock measured against the bus (the reading needs
        both), is told to `on_leader_time` — the first LEADER_TIMES_AT_ONCE of a session."""
        value = body.get(LEADER_TIME_KEY)
        if (not live or device == self.device or self.on_leader_time is None
                or self._leader_times_left <= 0 or not self._session_ready
                or isinstance(value, bool) or not isinstance(value, (int, float))
                or stamped <= self._leader_time_told or not self.board.calibrated):
            return
        self._leader_time_told = stamped
        self._leader_times_left -= 1
        self.on_leader_time()

    def _leader_time_on_board(self) -> None:
        """The session is set up: a leader beat already on the board is told now."""
        rows = [r for r in self.board.rows() if r["state"] == "online"
                and r["device"] != self.device and LEADER_TIME_KEY in r]
        for row in sorted(rows, key=lambda r: float(r["last_seen"]))[-1:]:
            self._beat_seen(row["device"], row, float(row["last_seen"]), True)

    def _connected_unmeasured(self) -> None:
        """Connected: from now on, until a measurement comes, the only thing between ops and
        a row of `clockUnmeasured` refusals is status saying why (the server answered without
        its time, heartbeats are not delivered)."""
        if self._unmeasured_since is None and not self.board.calibrated:
            self._unmeasured_since = utc_iso(datetime.now(UTC))

    # -- status ---------------------------------------------------------------------------------

    def occupancy(self) -> list[dict[str, Any]]:
        """Tickets inside each zone, from every gate's scans applied here (the dashboard, on
        the daemon's loop: as last read, read again off it at most every OCCUPANCY_EVERY_S)."""
        return self._occupancy.get()

    def get_status(self, journal: Journal | None = None) -> dict[str, Any]:
        """For /status (called from the daemon's loop: venue.db's figures as last read off
        it, agent.venue.status_read)."""
        marks = journal.venue_counts() if journal is not None else {}
        # rows an earlier process left (whatever their time), and this one's waiting too long
        waited = utc_iso(datetime.fromtimestamp(self.clock() - UNANSWERED_AFTER_S, UTC))
        unanswered = (len(journal.claiming_rows(self.left_through_seq, waited))
                      if journal is not None else 0)
        return {
            "venue": self.name, "device": self.device, "stream": self.stream,
            "connected": self.connected, "last_error": self.last_error,
            # set up on the link: claims go out (until then the offline policy decides)
            "ready": self.ready,
            # the session on the link: its set-up step ("running" once set up), and while a
            # step fails on a link that is up (no quorum), why and since when (venue_degraded)
            **self.setup.get_status(),
            **self.apply_failing.fields("apply"),
            # venue.db not opened as the bus started: the bus is not running (why, naming the
            # file and what holds it, since when: reason venue_db_failing; tried again)
            **self.db_open_failing.fields("db_open"),
            # the same for journal.db (reason venue_journal_failing)
            **self.journal_open_failing.fields("journal_open"),
            "settings_drift": sorted(self.settings_drift.values()),
            "stream_restarts": self.stream_restarts,
            "applied_seq": self.applied_seq,
            "lag": max(0, self.stream_last_seq - self.applied_seq),
            "conflicts": self._conflicts.get(),  # as last read (agent.venue.status_read)
            # a status read venue.db refused (another process holds it): the file and since
            # when (reason venue_db_failing)
            **(self._conflicts.failing if self._conflicts.failing.error is not None
               else self._occupancy.failing).fields("db_read"),
            "gates": self.board.counts(),
            # this clock against the bus server's (the sample at connect, heartbeats' delivery
            # delays; None before the first: entries whose answer depends on how other gates'
            # scans interleave with this gate's are then refused, clockUnmeasured, and this
            # gate's scans go out without an offset)
            "clock_offset_s": round(self.board.offset_s, 1) if self.board.calibrated else None,
            "clock_unmeasured_since": None if self.board.calibrated else self._unmeasured_since,
            "decided_claimed": marks.get("claimed", 0),
            "decided_offline": marks.get("offline", 0),
            "claims_unanswered": unanswered,
            "claims_timing_out": self.claims_timing_out,
            "claims_last_timeout": self.claims_last_timeout,
            "claims_timeout_error": self.claims_timeout_error,
            **self.publish_failing.fields("publish"),
            "claims_voided_here": marks.get("void", 0),
            **self.counters,
        }


def settle_rows(journal: Journal, answered: list[tuple[str, str, str]]) -> None:
    """Rows of answered claims in flight (`VenueBus.settle_later`): admits that stand in one
    transaction, voids one by one."""
    journal.settle_claims([(u, outcome) for u, outcome, _r in answered if outcome != "void"])
    for scan_uuid, outcome, reason in answered:
        if outcome == "void":
            journal.void_claim(scan_uuid, reason)


def scan_from_row(row: dict[str, Any], device: str, clock_offset_s: float | None) -> BusScan:
    """A journal row as the bus carries it, with the limits its lane applied and the sender's
    clock offset as it was when the scan was decided (`VenueBus.published_offset`; None: not
    measured, said so on the bus)."""
    return BusScan(
        uuid=row["uuid"], device=device, lane=row["lane"], event_id=row["event_id"],
        item_id=row["item_id"], zone_id=row["zone_id"],
        zone_is_default=bool(row["zone_is_default"]), direction=row["direction"],
        admit=bool(row["admit"]), status=row["status"], scanned_on=row["scanned_on"],
        offline=row.get("venue") == "offline", max_entries=row.get("max_entries") or 0,
        tracks_exits=bool(row.get("tracks_exits")), clock_offset_s=clock_offset_s,
        awaiting=bool(row.get("passage_awaited")))

