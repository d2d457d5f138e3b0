"""One lane at run time: its readers feed a queue, one thread decides, journals, pulses the relay.

Each lane has its own worker thread and its own `Gate` (own SQLite connections), so nothing a
lane does — an fsync, a slow relay, a dead reader — can delay another lane, and nothing on the
asyncio loop (sync, upload, the status server) sits on the scan -> relay path. The order on that
path is fixed: decide, commit the journal row (fsync), then pulse the relay; a scan that could
not be journaled is refused (fail closed) and never opens the gate. An admit whose gate did not
open (its relay missing or the pulse failed) does not stand: it is voided (the ticket can be
used again) and shown as a refusal — `_unopened`, off the path of a scan that pulsed. A
scan whose decision ends in an exception anywhere on this path is still refused, recorded,
shown and counted (`_failed`, agent.runtime.decisionnet). A released lane's relays are held
open beside all this, by agent.runtime.lanehold.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent.config import LaneConfig, output_for, passage_input_for
from agent.core.codes import utc_iso
from agent.core.decide import Decision
from agent.errors import DriverError, JournalUnavailable
from agent.runtime import relaywatch
from agent.runtime.clock import GateClock
from agent.runtime.decisionnet import (
    GATE_ERROR,
    DecisionErrors,
    Progress,
    error_text,
    gate_error_refusal,
    unopened_admit,
)
from agent.runtime.gate import Gate, ScanResult
from agent.runtime.indicators import Indicators
from agent.runtime.lanehold import ReleaseHold
from agent.runtime.passage import OnAlarm, PassageWatch, VoidClaim
from agent.runtime.relaywatch import RelayWatch
from agent.runtime.release import record_during_release
from agent.store.journal import Journal
from agent.store.passages import GATE_NOT_OPENED_MESSAGE, NOT_PASSED, PassageLog, now_iso
from drivers import Output, Reader, Scan, open_output, open_reader

log = logging.getLogger(__name__)

RECENT_WINDOW_S = 300.0
GATE_NOT_OPENED = "gateNotOpened"  # display key (agent.runtime.display_text)


@dataclass(frozen=True)
class LaneEvent:
    """What a lane reports after each decision (to logs, metrics and status)."""

    lane: str
    scan: Scan
    result: ScanResult
    latency_s: float
    pulsed: bool


Sink = Callable[[LaneEvent], None]


def _bus_wake(gate: Gate) -> Callable[[], None] | None:
    """Wake the venue bus of `gate` (whichever bus its link holds then), None without one."""
    venue = gate.venue
    return None if venue is None else lambda: venue.bus.wake()


class LaneRunner:
    """Readers, relay, queue and worker thread of one lane."""

    def __init__(self, lane: LaneConfig, gate: Gate, sink: Sink,
                 on_alarm: OnAlarm | None = None, void_claim: VoidClaim | None = None,
                 clock: GateClock | None = None):
        self.lane = lane
        self.clock = clock or GateClock()  # the time decisions use (agent.runtime.clock)
        self.gate = gate
        self.sink = sink
        self.void_claim = void_claim
        self.indicators = Indicators(lane, gate.config.api["language"])
        self._stopped = threading.Event()  # set when the lane stops (the hold, the probe)
        self.hold = ReleaseHold(self, self._stopped)  # agent.runtime.lanehold
        # Who holds this lane open (agent.runtime.release): "emergency", "manual:<who>". The
        # hold's own set, read here by the scan path as a plain attribute.
        self.releases = self.hold.releases
        self.hold_errors = self.hold.errors  # relay url -> why the release's hold is off
        watch_journal = (Journal(gate.journal.path)  # its own connection, only when needed
                         if gate.journal is not None and (lane.passage_in or lane.passage_out)
                         else None)
        self.passage = PassageWatch(lane, watch_journal, self.indicators,
                                    on_alarm or (lambda *_: None), void_claim,
                                    released=lambda: bool(self.releases),
                                    day_starts=gate.config.device.get("people_day_starts",
                                                                      "06:00"),
                                    exit_stands=_bus_wake(gate))
        self.queue: queue.Queue[Scan | None] = queue.Queue()
        self.lock = threading.Lock()  # held while deciding; taken to swap the cache file
        self.readers: list[Reader] = []
        self.reader_errors: dict[str, str] = {}
        self.relay: Output | None = None  # the entry release
        self.relay_out: Output | None = None  # the exit release
        self.relay_error: str | None = None  # the lane's last relay failure; a good pulse clears it
        # relays that failed: opened again while down, their return logged once
        self.relay_watch = RelayWatch(lane.name, self._outputs, lambda: bool(self.releases))
        self._relay_probe: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        self.started = time.time()
        self.last_scan: dict[str, Any] | None = None
        self.totals: dict[str, int] = {}
        self._recent: deque[tuple[float, str]] = deque()
        # decisions that ended in an exception (agent.runtime.decisionnet): status, metrics
        self.decision_errors = DecisionErrors(lane.name)
        self._figures_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the relay (off), start the readers and the worker. Missing devices are
        reported in status and retried by the drivers; they never stop the lane."""
        if self.lane.relay:
            self.relay = self._open_output(self.lane.relay)
        if self.lane.relay_out:
            self.relay_out = self._open_output(self.lane.relay_out)
        for url in self.lane.readers:
            try:
                reader = open_reader(url)
            except DriverError as exc:
                self.reader_errors[url] = str(exc)
                log.error("lane %s: reader %s unavailable: %s", self.lane.name, url, exc)
                continue
            self.readers.append(reader)
        self.indicators.open()
        if self.relay is not None or self.relay_out is not None:
            self._relay_probe = threading.Thread(
                target=self.relay_watch.run, args=(self._stopped, self.relays_back),
                name=f"relay probe {self.lane.name}", daemon=True)
            self._relay_probe.start()
        self.passage.start()
        self.gate.confirms_passage = self.passage.configured
        self._thread = threading.Thread(target=self._work, name=f"lane {self.lane.name}",
                                        daemon=True)
        self._thread.start()
        for reader in self.readers:
            reader.start(self.submit, self._on_state)

    def _open_output(self, url: str) -> Output | None:
        """The relay at `url`, kept even when it cannot be opened now (a USB board that
        enumerates late): `Output.pulse` opens it again at the next admit, and its status
        says not ok meanwhile. None only when no driver can be made for the URL."""
        try:
            output = open_output(url, connect=False)
        except DriverError as exc:
            self.relay_error = str(exc)
            log.error("lane %s: relay %s unusable: %s", self.lane.name, url, exc)
            return None
        try:
            output.open()
        except DriverError as exc:
            self.relay_error = str(exc)
            self.relay_watch.note(url, output)
            log.error("lane %s: relay %s unavailable (tried again at the next admit and "
                      "every %.0f s): %s", self.lane.name, url, relaywatch.RELAY_PROBE_S, exc)
        return output

    def _outputs(self) -> list[tuple[str, Output]]:
        """The lane's relays that have a driver, by URL (the relay watch's view)."""
        return [(url, output) for url, output in ((self.lane.relay, self.relay),
                                                  (self.lane.relay_out, self.relay_out))
                if url and output is not None]

    def relays_back(self) -> None:
        """A relay works again (relaywatch): the lane's error goes once none is down."""
        if not self.relay_watch.down and self.relay_error is not None:
            self.relay_error = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, finish every scan already queued, switch the relay off."""
        for reader in self.readers:
            reader.stop(timeout=min(timeout, 2.0))
        self._stopping = True
        self.queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.hold.close(timeout)  # no hold applied again once the relays are closed
        if self._relay_probe is not None:  # no probe opens a relay once they are closed
            self._relay_probe.join(timeout)
        self.passage.stop()
        for output in (self.relay, self.relay_out):
            if output is not None:
                output.close()
        self.indicators.close()
        if self.passage.log is not None:
            self.passage.log.journal.close()

    def set_release(self, source: str, on: bool) -> None:
        """`source` releases the lane (`on`) or ends its release (agent.runtime.lanehold)."""
        self.hold.set(source, on)

    # -- the hot path -----------------------------------------------------------------------

    def submit(self, scan: Scan) -> None:
        """Called from reader threads (or a manual scan): queue the scan for the worker."""
        self.queue.put(scan)

    def _work(self) -> None:
        while True:
            try:
                scan = self.queue.get(timeout=1.0)
            except queue.Empty:
                self.heartbeat = time.monotonic()
                continue
            self.heartbeat = time.monotonic()
            if scan is None:
                if self._stopping and self.queue.empty():
                    return
                continue
            progress = Progress(time.perf_counter(), scan)
            try:
                self._decide(scan, progress)
            except Exception as exc:  # noqa: BLE001 - refused, recorded, shown, counted
                self._failed(progress, exc)
            else:
                self.decision_errors.decided()

    def _decide(self, scan: Scan, progress: Progress) -> None:
        if self.clock.corrected:  # the wall clock is known wrong: the scan on the platform's time
            scan = progress.scan = replace(scan, wall=self.clock.at(scan.wall, scan.mono_ns))
        with self.lock:
            released = progress.released = bool(self.releases)
            if released:  # free egress: journaled as taken, never as an admit
                result = record_during_release(self.gate, scan.code, self.lane, scan.wall,
                                               scan.kind, scan.mono_ns // 1_000_000)
            else:
                progress.asked_gate = True  # Gate.committed is this scan's from here on
                result = self.gate.scan(scan.code, self.lane, scan.wall, kind=scan.kind,
                                        mono_ms=scan.mono_ns // 1_000_000)
        progress.result = result
        decision = result.decision
        opened_ns = time.monotonic_ns()  # a passage edge before this is not this person's
        pulsed = unopened = False
        # the release of this direction (agent.config.output_for): never the entry relay for
        # an exit unless the lane declares it direction-neutral
        url = output_for(self.lane, decision.direction)
        opens = bool(decision.record and url and not released)
        waits = bool(decision.admit and result.uuid and self.gate.confirms_passage
                     and passage_input_for(self.lane, decision.direction))
        # the wait is registered before anything else runs (lights, display: a slow one must
        # not let the person's passage edge be judged first, as `forced`, and the admit voided)
        with self.passage.opening():
            if opens:
                pulsed = progress.pulsed = self._pulse(decision)
            if waits and (pulsed or not opens):
                assert result.uuid is not None
                self.passage.admitted(result.uuid, decision.direction, opened_ns)
        if opens and decision.admit and not pulsed:
            assert url is not None
            decision, unopened = self._unopened(result, url), True
            result = progress.result = ScanResult(decision, result.uuid, result.seq)
        if decision.record:
            progress.shown = True
            self.indicators.show(None if released else "admit" if decision.admit else "refuse",
                                 GATE_NOT_OPENED if unopened else _display_key(decision),
                                 decision.message)
        latency = time.perf_counter() - progress.started
        progress.noted = True
        self.note(scan.wall, decision)
        progress.sunk = True
        self.sink(LaneEvent(self.lane.name, scan, result, latency, pulsed))

    def _failed(self, progress: Progress, exc: Exception) -> None:
        """The safety net (agent.runtime.decisionnet): a scan whose decision raised is refused
        and recorded — journaled as denied/gateError when nothing was written for it yet, its
        row kept as it is when one was — shown, counted and logged; the lane goes on."""
        scan = progress.scan
        try:
            text = error_text(exc, scan.code)
            result = progress.result
            if result is None and progress.asked_gate:
                result = self.gate.committed  # the gate raised after committing its row
            if result is None:
                refusal = gate_error_refusal(scan.code, scan.kind, self.lane, text)
                with self.lock:
                    result = self.gate.record_error(refusal, self.lane, scan.wall)
                self.decision_errors.failed("before_journal", exc, text, refusal.code,
                                            result.uuid)
                shown = refusal
            else:
                decision = result.decision
                self.decision_errors.failed("after_journal", exc, text, decision.code,
                                            result.uuid)
                unopened = decision.admit and not progress.pulsed and not progress.released \
                    and bool(output_for(self.lane, decision.direction))
                shown = unopened_admit(decision, result.uuid, text) if unopened else decision
        except Exception:  # noqa: BLE001 - the net's own failure must not stop the lane
            log.exception("lane %s: a scan from %s failed (%s) and could not be recorded",
                          self.lane.name, scan.reader_id, exc)
            return
        # the steps _decide did not reach (one that raised is not tried again)
        if shown.record and not progress.shown:
            self._safely(shown.code, self.indicators.show,
                         None if progress.released else "admit" if shown.admit else "refuse",
                         _display_key(shown), shown.message)
        if not progress.noted:
            self._safely(shown.code, self.note, scan.wall, shown)
        if not progress.sunk:
            self._safely(shown.code, self.sink, LaneEvent(
                self.lane.name, scan, ScanResult(shown, result.uuid, result.seq),
                time.perf_counter() - progress.started, progress.pulsed))

    def _safely(self, code: str, step: Callable[..., None], *args: Any) -> None:
        """One of the net's steps: its failure is logged, the next step still runs."""
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - see above
            log.exception("lane %s: the failed scan of %s not fully reported", self.lane.name,
                          code)

    def _pulse(self, decision: Decision) -> bool:
        """The release of the decision's direction: pulsed for an admit (True when it was),
        told the decision where it shows one. A failure is the lane's `relay_error`."""
        url = output_for(self.lane, decision.direction)
        output = self.relay_out if url == self.lane.relay_out else self.relay
        if output is None:  # no driver for the URL (start said why)
            return False
        pulsed = False
        was = output.last_error
        try:
            if decision.admit:
                output.pulse(self.lane.relay_pulse_ms)
                pulsed = True
                if was or self.relay_error is not None:  # it works again (said once)
                    self.relay_watch.note(url or "", output, was)
                    self.relays_back()
            output.feedback(decision.admit)
        except DriverError as exc:
            self.relay_error = str(exc)
            self.relay_watch.note(url or "", output)
            log.error("lane %s: relay failed: %s", self.lane.name, exc)
        return pulsed

    def _unopened(self, result: ScanResult, url: str) -> Decision:
        """An admit whose gate did not open must not use up the ticket (the patron would be
        refused `alreadyIn` at the next try): void its journaled row the way a passage that
        never came is voided (agent.store.passages: `denied/notPassed`, uploaded `failed`,
        the venue claim released) and answer a refusal the steward can read."""
        why = f"gate did not open: relay {url} failed ({self.relay_error or 'no driver'})"
        voided = None
        if result.uuid is not None and result.seq is not None and self.gate.journal is not None:
            try:
                voided = PassageLog(self.gate.journal).void_unopened(
                    result.uuid, result.seq, now_iso(), why)
            except JournalUnavailable as exc:
                log.error("lane %s: admit %s not voided: %s", self.lane.name, result.uuid, exc)
        if voided is not None:
            log.warning("lane %s: admit %s voided, %s (ticket usable again)", self.lane.name,
                        result.uuid, why)
            if self.void_claim is not None and voided.get("item_id") is not None:
                self.void_claim({**voided, "why": why})
            message = GATE_NOT_OPENED_MESSAGE
        else:  # not journaled, or the upload took it already: it stands, a steward decides
            log.error("lane %s: %s; admit %s stands (a steward must let the patron through)",
                      self.lane.name, why, result.uuid)
            message = "Gate did not open: the relay failed; a steward must let you through"
        return replace(result.decision, admit=False, status="denied", detail=NOT_PASSED,
                       message=message)

    def note(self, wall: datetime, decision: Decision) -> None:
        """The lane's figures in status (last scan, 5-minute and total counts) for one
        decision: a reader's, or a manual `gate-agent scan` the daemon decided for this lane
        (from another thread, hence the lock)."""
        status = decision.status if decision.record else "ignored"
        with self._figures_lock:
            now = time.monotonic()
            self.totals[status] = self.totals.get(status, 0) + 1
            self._recent.append((now, status))
            while self._recent and now - self._recent[0][0] > RECENT_WINDOW_S:
                self._recent.popleft()
            self.last_scan = {"at": utc_iso(wall), "code": decision.code,
                              "status": decision.status, "statusDetail": decision.detail,
                              "admit": decision.admit, "direction": decision.direction,
                              "message": decision.message}

    def _on_state(self, url: str, connected: bool, reason: str) -> None:
        log.log(logging.INFO if connected else logging.WARNING,
                "lane %s: reader %s %s%s", self.lane.name, url,
                "connected" if connected else "disconnected", f" ({reason})" if reason else "")

    # -- status -------------------------------------------------------------------------------

    def get_status(self) -> dict[str, Any]:
        now = time.monotonic()
        recent: dict[str, int] = {}
        with self._figures_lock:
            seen, totals, last_scan = list(self._recent), dict(self.totals), self.last_scan
        for at, status in seen:
            if now - at <= RECENT_WINDOW_S:
                recent[status] = recent.get(status, 0) + 1
        readers = [r.get_status() for r in self.readers]
        readers += [{"url": url, "connected": False, "last_error": err}
                    for url, err in self.reader_errors.items()]
        relay = self._output_status(self.relay, self.lane.relay)
        relay_out = self._output_status(self.relay_out, self.lane.relay_out)
        return {
            "name": self.lane.name, "direction": self.lane.direction,
            "zone_id": self.lane.zone_id, "gate_id": self.lane.gate_id,
            "readers": readers, "relay": relay, "relay_out": relay_out,
            "readers_connected": sum(1 for r in self.readers if r.connected),
            "last_scan": last_scan, "decisions_5min": recent,
            "decisions_total": totals, "queue": self.queue.qsize(),
            "heartbeat_age_s": round(now - self.heartbeat, 2),
            "journal_error": self.gate.journal_error, "unrecorded_scans": self.gate.unrecorded,
            "decision_errors": self.decision_errors.get_status(),
            "cache_error": self.gate.cache_error,
            "passage": self.passage.get_status(), "indicators": self.indicators.get_status(),
            "released_by": sorted(self.releases), "hold_errors": dict(self.hold_errors),
        }

    def _output_status(self, output: Output | None, url: str | None) -> dict[str, Any] | None:
        """A configured release's status (None: none configured); `ok` False while it cannot
        open the gate — agent.ops.status makes that a `fail`."""
        if not url:
            return None
        if output is None:
            return {"url": url, "open": False, "ok": False,
                    "last_error": self.relay_error or "no driver for this URL"}
        return output.get_status()


def _display_key(decision: Decision) -> str:
    """Which short text the display shows (agent.runtime.display_text)."""
    if decision.admit:
        return "exit" if decision.direction == "out" else "valid"
    return decision.detail if decision.detail in ("releasedGate", "notPassed", GATE_ERROR) \
        else decision.status


def manual_scan(code: str, lane: str, kind: str = "barcode") -> Scan:
    """A Scan for a code typed or injected without a reader (kept in the same path)."""
    return Scan(code=code, kind=kind, reader_id=f"manual:{lane}",  # type: ignore[arg-type]
                mono_ns=time.monotonic_ns(), wall=datetime.now(UTC), raw=code.encode())
