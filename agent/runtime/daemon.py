"""`gate-agent run`: the program that runs for weeks on a turnstile.

One asyncio loop holds the background work — scheduled sync and upload jobs, the status server,
signals, the systemd watchdog — while each lane decides in a thread of its own (`agent.runtime.lane`),
so the scan -> journal -> relay path never waits on the loop, the network or another lane.

Start-up order: the journal first (without it no scan may be admitted; a damaged journal is
kept as it is and the gate refuses every scan; one that cannot be opened is tried again every
STORE_RETRY_S and the lanes record scans again by themselves once it opens), then the cache (a
damaged cache is moved aside, the gate starts degraded on an empty cache and a full resync is
scheduled at once; an interrupted rebuild is discarded and redone), then drivers (a missing device is reported and retried), then
READY. With [venue], a venue.db that cannot be opened (not this user's, immutable, a read-only or
full disk, damaged; or by a lane's own link as the lanes open: agent.runtime.venuewiring)
does not stop the start: the gate runs, its lanes refuse every scan
(storeUnavailable, journaled) with the relays shut but an emergency release still working,
status says why (`venue_db_unavailable`) and venue.db is tried again every STORE_RETRY_S; once
it opens the bus starts and the lanes start anew with it. Neither file is ever moved aside or
made anew for that: a lost journal loses scans, a lost venue.db record can double-admit.
SIGTERM/SIGINT: readers stop, queued scans are decided, relays off, exit 0. SIGHUP:
the configuration is re-read; lanes whose settings changed are restarted after finishing their
queued scans, the others keep running with the fresh settings; a change that needs a restart
refuses the whole reload, naming the key (agent.runtime.reload).

This module holds the daemon's state, its start and stop, its lanes and what they report back
(decisions, alarms, releases); each other part of its work is a module of its own, given the
daemon: opening the stores at start (agent.runtime.storestart), the jobs' schedule and the
stores' retries (agent.runtime.daemonjobs), the live cache's swap and rebuild
(agent.runtime.cachecare), the venue wiring (agent.runtime.venuewiring), a SIGHUP reload
applied (agent.runtime.reloadapply), and status, its endpoint and the watchdog
(agent.runtime.statusserve).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, LaneConfig, load_config
from agent.core.codes import utc_iso
from agent.errors import ConfigError, GateAgentError
from agent.ops.logs import setup_logging
from agent.ops.metrics import Metrics
from agent.ops.server import split_listen
from agent.ops.status import summary_line
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.sync import Syncer
from agent.platform.token import InsecureTokenFile, load_token
from agent.platform.upload import Uploader
from agent.runtime import cachecare, daemonjobs, reloadapply, statusserve, storestart, venuewiring
from agent.runtime.bindings import effective_lanes
from agent.runtime.clock import GateClock
from agent.runtime.control import ControlServer, socket_path
from agent.runtime.controlops import DaemonOps
from agent.runtime.gate import Gate, ScanResult
from agent.runtime.lane import LaneEvent, LaneRunner
from agent.runtime.notify import Notifier
from agent.runtime.opening import CACHE_FILE, JOURNAL_FILE
from agent.runtime.release import EmergencyInput, ReleaseDesk
from agent.runtime.scheduler import Jobs
from agent.runtime.statusserve import STATUS_RETRY_S, StatusServer
from agent.runtime.storeaccess import DaemonLock, not_mine, refuse_root_daemon
from agent.runtime.venuewiring import VENUE_CLOCK_WAIT_S
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.store.passages import PassageLog, now_iso
from agent.venue.bus import VenueBus
from agent.venue.leader import VenueRole
from drivers import Scan

log = logging.getLogger("gate_agent.daemon")

MANUAL_READER = "manual"  # the reader a `gate-agent scan` decided by the daemon is logged with
STORE_RETRY_S = 5.0  # how often a journal.db or venue.db that could not be opened is tried again
decisions_log = logging.getLogger("gate_agent.decisions")


class Daemon:
    def __init__(self, config: Config, *, store_retry_s: float = STORE_RETRY_S,
                 status_retry_s: float = STATUS_RETRY_S,
                 venue_clock_wait_s: float = VENUE_CLOCK_WAIT_S):
        """`store_retry_s`, `status_retry_s`: how often a store that could not be opened and a
        status port that was taken are tried again; `venue_clock_wait_s`: see
        agent.runtime.venuewiring.venue_clock_measured. This daemon's own, so a test shortens them for the daemon it
        runs (tests/runtime/daemon/shorter_retries) and for no other."""
        self.config = config
        self.store_retry_s = store_retry_s
        self.status_retry_s = status_retry_s
        self.venue_clock_wait_s = venue_clock_wait_s
        self.started = time.time()
        self.notifier = Notifier()
        self.lanes: dict[str, LaneRunner] = {}
        self.journal: Journal | None = None
        self.journal_error: str | None = None
        self.cache_degraded: str | None = None
        self.cache_in_memory = False  # store.dir would not let a damaged cache be moved aside
        self.platform_disabled: str | None = None
        self.client: PlatformClient | None = None
        self.syncer: Syncer | None = None
        self.uploader: Uploader | None = None
        self.jobs = Jobs()
        self.clock = GateClock()  # the platform's time when this clock is known wrong
        self._leader_beat_seen = 0.0  # the last leader heartbeat the clock was checked by
        self.start_token: str | None = None  # what the token sources gave at start
        self.pushed_token: str | None = None  # a newer one given over the control socket
        self.control: ControlServer | None = None
        self.pairings_error: str | None = None
        self.reload_error: str | None = None  # why the last SIGHUP was refused (status)
        self.cache_unreadable: str | None = None  # cache.db not ours (owner/mode), kept as is
        self.status_cache: TicketCache | None = None
        self.cache_swaps = cachecare.SwapHold()  # control commands' own cache connections
        self.stop_event = asyncio.Event()
        self.server: StatusServer | None = None
        self.listen_address: str | None = None
        self.status_error: str | None = None  # the status endpoint cannot listen (retrying)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bus: VenueBus | None = None  # the venue bus, with [venue] only
        # venue.db could not be opened (why, with the fix): no bus, every scan refused, retried
        self.venue_error: str | None = None
        self._beats: asyncio.Task[None] | None = None  # venue heartbeats, once the bus runs
        self._lane_events: PassageLog | None = None  # alarms and releases: lane_event_log()
        self._lane_events_lock = threading.Lock()
        self.emergency = EmergencyInput(config.device["emergency_input"],
                                        self._emergency_changed)
        self.releases = ReleaseDesk(lambda: self.lanes, self.lane_event_log)
        self.role: VenueRole | None = None  # venue leader/member work, with [venue] and a token
        self._role_task: asyncio.Task[None] | None = None
        self.metrics = Metrics(self.report, lambda: datetime.now(UTC))  # last: it reads report()

    # -- paths ----------------------------------------------------------------------------

    @property
    def cache_path(self) -> Path:
        return self.config.store_dir / CACHE_FILE

    @property
    def journal_path(self) -> Path:
        return self.config.store_dir / JOURNAL_FILE

    # -- start-up -------------------------------------------------------------------------

    def open_stores(self) -> bool:
        """Journal, then cache (agent.runtime.storestart). Returns True when a full resync
        must run at once."""
        return storestart.open_stores(self)

    def _open_cache(self, check: bool = True) -> TicketCache:
        path = Path(":memory:") if self.cache_in_memory else self.cache_path
        return TicketCache(path, keep_personal_data=self.config.store["keep_personal_data"],
                           check=check)

    def _gate(self) -> Gate:
        """A lane's own connections; without a journal, or without its link to venue.db
        (agent.runtime.venuewiring.lane_link), the gate refuses (fail closed)."""
        journal = None if self.journal_error else Journal(self.journal_path)
        venue, shut = venuewiring.lane_link(self)
        return Gate(self._open_cache(), journal, self.config, venue, shut=shut)

    def start_venue(self) -> None:
        """The venue bus, before the lanes (agent.runtime.venuewiring)."""
        venuewiring.start_venue(self)

    def start_lanes(self, lanes: tuple[LaneConfig, ...],
                    gates: dict[str, Gate] | None = None) -> None:
        """Start `lanes`, each with its gate from `gates` (built beforehand by a reload, so a
        gate that cannot be opened refuses the reload before any lane stops) or a new one; a
        lane's link to venue.db that does not open shuts them all (venuewiring.lane_gates)."""
        opened = venuewiring.lane_gates(self, lanes, gates)
        for lane in lanes:
            gate = opened[lane.name]
            runner = LaneRunner(lane, gate, self._on_decision, self._on_alarm,
                                self._void_claim if self.bus is not None else None,
                                clock=self.clock)
            runner.start()
            if self.emergency.active:
                runner.set_release("emergency", True)
            self.lanes[lane.name] = runner
            log.info("lane %s ready: %d reader(s), relay %s", lane.name, len(lane.readers),
                     lane.relay or "none")

    def _lanes_with_pairings(self, config: Config) -> tuple[LaneConfig, ...]:
        """Lanes with their paired devices; an unreadable devices.json leaves the configured
        devices running (status says why) instead of a restart loop."""
        try:
            lanes = effective_lanes(config)
        except ConfigError as exc:
            path = config.store_dir / "devices.json"
            self.pairings_error = not_mine(path) or str(exc)
            log.error("paired devices not used: %s", self.pairings_error)
            return config.lanes
        self.pairings_error = None
        return lanes

    def setup_platform(self, token: str | None = None) -> None:
        if token is None and self.config.api["offline"]:
            self.platform_disabled = "offline by configuration ([api] offline = true)"
            log.info("platform link off: %s", self.platform_disabled)
            return
        if token is None:
            try:
                token = load_token(self.config.api, config_path=self.config.path)
            except InsecureTokenFile:
                raise  # refuse to start rather than run with an exposed token
            except ConfigError as exc:
                self.platform_disabled = str(exc)
                log.warning("platform link off (the gate works offline): %s", exc)
                return
            self.start_token = token
        self.platform_disabled = None
        if self.config.venue is not None:
            # venue mode: the elected leader syncs and uploads for the venue; this gate's
            # cache comes from the bus and its scans go to the bus (agent.venue.leader)
            self.role = VenueRole(self.config, token, config_path=str(self.config.path),
                                  on_catalog_change=lambda: cachecare.catalog_changed(self),
                                  on_server_time=self.clock.observe)
        governor = Governor.from_config(self.config.api)
        self.client = PlatformClient.from_config(self.config.api, token, governor)
        self.client.on_server_time = self.clock.observe
        self.syncer = Syncer(self.config, self.client, self.cache_path,
                             swap_hook=self._swap_cache, swap_guard=self.cache_swaps.swapping)
        self._start_uploader()

    def _start_uploader(self) -> None:
        """The uploader, once there is a platform link and a journal to upload from."""
        if self.journal is not None and self.client is not None and self.uploader is None:
            self.uploader = Uploader(
                Journal(self.journal_path), self.client,
                batch_size=self.config.sync["upload_batch_size"],
                scanned_by=self.config.api["scanned_by"] or None,
                retention_days=self.config.store["sent_retention_days"])

    # -- jobs (agent.runtime.daemonjobs) -------------------------------------------------------

    def schedule(self, resync_now: bool) -> None:
        daemonjobs.schedule(self, resync_now)

    async def _prune_job(self) -> None:
        await daemonjobs.prune_job(self)

    async def _full_job(self) -> None:
        await daemonjobs.full_job(self)

    async def _venue_access_job(self) -> None:
        await venuewiring.venue_access_job(self)

    def _restart_lanes(self) -> None:
        """Every lane stopped (its queued scans decided first, as a reload does) and started
        again on a gate of the stores as they are now; a technician's release stays held,
        an emergency one is applied again as the lane starts."""
        held = {name: [s for s in runner.releases if s != "emergency"]
                for name, runner in self.lanes.items()}
        lanes = tuple(runner.lane for runner in self.lanes.values())
        for runner in self.lanes.values():
            runner.stop()
            runner.gate.close()
        self.lanes = {}
        self.start_lanes(lanes)
        for name, sources in held.items():
            for source in sources:
                self.lanes[name].set_release(source, True)

    # -- the live cache (agent.runtime.cachecare) -------------------------------------------

    def _swap_cache(self, do_swap: Any) -> None:
        """The sync's swap hook: agent.runtime.cachecare.swap_cache."""
        cachecare.swap_cache(self, do_swap)

    def _rebuild_failed_cache(self, error: str | None) -> None:
        cachecare.rebuild_failed_cache(self, error)

    # -- decisions (called from lane threads) --------------------------------------------------

    def _on_decision(self, event: LaneEvent) -> None:
        d = event.result.decision
        if d.detail == "cacheUnavailable":
            runner = self.lanes.get(event.lane)
            cachecare.cache_failed(self, runner.gate.cache_error if runner else None)
        status = d.status if d.record else "ignored"
        self.metrics.observe(event.lane, status, event.latency_s)
        fields = {"lane": event.lane, "code": d.code, "kind": d.kind, "admit": d.admit,
                  "status": d.status, "statusDetail": d.detail, "direction": d.direction,
                  "uuid": event.result.uuid, "latency_ms": round(event.latency_s * 1000, 3),
                  "relay": event.pulsed, "reader": event.scan.reader_id,
                  "at": utc_iso(event.scan.wall)}  # the scan's own time, as journaled/uploaded
        decisions_log.info(
            "lane=%s %s %s code=%s status=%s detail=%s uuid=%s latency_ms=%.2f%s",
            event.lane, "ADMIT" if d.admit else "REFUSE", d.direction, d.code, d.status,
            d.detail or "-", event.result.uuid or "-", event.latency_s * 1000,
            " relay=pulsed" if event.pulsed else "", extra={"fields": fields})
        if self.role is not None and self._loop is not None and event.result.uuid:
            self._loop.call_soon_threadsafe(self.role.wake)
        elif self.uploader is not None and self._loop is not None and event.result.uuid:
            self._loop.call_soon_threadsafe(daemonjobs.maybe_upload_now, self)

    def manual_decided(self, lane: str, result: ScanResult, wall: datetime,
                       latency_s: float) -> None:
        """A manual `gate-agent scan` this daemon decided (control socket, a worker thread):
        shown on its lane (last scan, counts), counted in the metrics and logged in
        gate_agent.decisions exactly like a reader's scan, through the same sink. It pulses
        no relay: a manual scan never opens the gate (the steward lets the person through,
        or `gate-agent release` does), as without a daemon."""
        runner = self.lanes.get(lane)
        if runner is not None:
            runner.note(wall, result.decision)
        d = result.decision
        scan = Scan(d.code, "nfc" if d.kind == "nfc" else "barcode", MANUAL_READER,
                    time.monotonic_ns(), wall, d.code.encode("utf-8", "replace"))
        self._on_decision(LaneEvent(lane, scan, result, latency_s, pulsed=False))

    def _on_alarm(self, lane: str, kind: str, detail: str) -> None:
        """A lane's passage alarm (agent.runtime.passage): counted and logged."""
        self.metrics.alarm(lane, kind)
        log.warning("ALARM lane=%s %s: %s", lane, kind, detail,
                    extra={"fields": {"lane": lane, "alarm": kind, "detail": detail}})

    def _void_claim(self, scan: dict[str, Any]) -> None:
        """A voided admit's venue claim (or shared scan) is released with the venue's void."""
        if self.bus is not None:
            self.bus.void_now(scan, scan.get("why", "not passed: the turnstile did not turn"))

    def lane_event_log(self) -> PassageLog | None:
        """Releases are journaled from input and worker threads: on a connection of their
        own, opened at the first one (none without a journal)."""
        with self._lane_events_lock:
            if self._lane_events is None and self.journal is not None:
                self._lane_events = PassageLog(Journal(self.journal_path))
            return self._lane_events

    def _emergency_changed(self, active: bool) -> None:
        """The fire panel's contact (from its input thread): agent.runtime.release."""
        self.emergency.since = now_iso() if active else None
        self.releases.emergency(active, self.emergency.url)

    def release_lane(self, name: str, hold: bool | None, by: str) -> dict[str, Any]:
        """A technician's release (control socket): agent.runtime.release.ReleaseDesk."""
        return self.releases.manual(name, hold, by)

    def request_upload(self) -> None:
        """Upload soon (a manual scan or a retried quarantine is waiting); thread-safe."""
        if self.uploader is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.jobs.run_now, "upload")

    # -- status (agent.runtime.statusserve) ---------------------------------------------------

    def report(self) -> dict[str, Any]:
        return statusserve.report(self)

    async def serve_status(self) -> None:
        await statusserve.serve_status(self)

    async def watchdog(self) -> None:
        await statusserve.watchdog(self)

    def close_stores(self) -> None:
        """Close every connection, so SQLite folds its WAL files back into the databases."""
        for runner in self.lanes.values():
            runner.gate.close()
        if self.syncer is not None:
            self.syncer.close()
        if self.uploader is not None:
            self.uploader.journal.close()
        for store in (self.status_cache, self.journal):
            if store is not None:
                store.close()
        if self._lane_events is not None:
            self._lane_events.journal.close()

    # -- signals --------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every setting in force everywhere, or the reload refused naming the key
        (agent.runtime.reload), which status shows (`config_not_applied`) until a reload
        succeeds. Changed lanes finish their queued scans and restart; the others keep
        running with the fresh event list and fail_closed (agent.runtime.reloadapply)."""
        self.reload_error = reloadapply.reload(self)

    def use_token(self, token: str) -> None:
        """A new token from `gate-agent login` (over the control socket): used from the next
        request on; a gate that had no token starts its platform link and jobs now."""
        self.pushed_token = token
        if self.client is not None:
            self.client.set_token(token)
        else:
            self.setup_platform(token)
            daemonjobs.add_platform_jobs(self, resync_now=False)
            venuewiring.start_role(self)
        log.info("platform token replaced by `gate-agent login`")

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        split_listen(self.config.status["listen"], self.config.status["token"])  # fail fast
        refuse_root_daemon(self.config.store_dir, self.config.path)
        lock = DaemonLock(self.config.store_dir)
        lock.acquire()  # before any file or device is opened: one daemon per store
        try:
            return await self._run_locked()
        finally:
            lock.release()

    async def _run_locked(self) -> int:
        assert self._loop is not None
        resync = self.open_stores()
        self.setup_platform()
        self.control = ControlServer(socket_path(self.config), DaemonOps(self).handlers(),
                                     self.config.control["group"])
        await self.control.start()
        self.start_venue()
        venuewiring.start_role(self)
        await venuewiring.venue_clock_measured(self)
        self.start_lanes(self._lanes_with_pairings(self.config))
        self.emergency.url = reloadapply.emergency_url(self, self.config)
        self.emergency.start()
        self.schedule(resync)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop_event.set)
        self._loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = asyncio.create_task(self.serve_status(), name="status server")
        while (self.server is None or not self.server.started) and self.status_error is None:
            if server.done():
                server.result()  # raises what is not a bind error
            await asyncio.sleep(0.02)
        watchdog = asyncio.create_task(self.watchdog(), name="watchdog")
        venuewiring.start_heartbeats(self)
        summary = summary_line(self.report())
        self.notifier.ready(summary)
        log.info("gate-agent %s ready: %s", __version__, summary)
        await self.stop_event.wait()
        log.info("stopping")
        self.notifier.stopping()
        await self.control.close()
        self.emergency.stop()
        for runner in self.lanes.values():
            runner.stop()
        if self.bus is not None:
            self.bus.stop()  # after the lanes: their last scans are published first
        self.jobs.shutdown()
        if self._role_task is not None:
            await asyncio.gather(self._role_task, return_exceptions=True)
        elif self.uploader is not None:
            try:
                await asyncio.wait_for(self.uploader.drain(max_rounds=2), timeout=2.0)
            except (TimeoutError, GateAgentError) as exc:
                log.info("final upload skipped (%s); scans stay queued", exc or "timeout")
        if self.server is not None:
            self.server.should_exit = True
        await asyncio.gather(server, return_exceptions=True)
        watchdog.cancel()
        if self._beats is not None:
            self._beats.cancel()
        if self.client is not None:
            await self.client.aclose()
        self.close_stores()
        log.info("stopped")
        return 0


# A lane thread waking from its fsync must take the GIL back from whatever the loop thread is
# doing (parsing a 1000-item sync page, say); CPython hands it over only every switch
# interval, 5 ms by default — a visible step in the decision p99. 0.5 ms bounds that wait.
SWITCH_INTERVAL_S = 0.0005


def run_daemon(config_path: str, log_format: str | None = None,
               log_level: str | None = None) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    config = load_config(config_path)
    config.require_platform()
    setup_logging(log_level or config.log["level"], log_format or config.log["format"])
    return asyncio.run(Daemon(config).run())
