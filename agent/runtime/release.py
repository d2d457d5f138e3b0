"""Releases: every lane held open while the fire panel says so, or one lane by a technician.

A released lane's relays are held on (drivers.base.Output.hold) for free egress, and switched
on again every HOLD_REAPPLY_S while the release lasts (agent.runtime.lanehold: a board that reset
powers up off); a relay whose hold is not applied makes status `fail` (`release_not_held`). Scans keep
being read, decided and journaled — as taken during the release (`denied/releasedGate`, so
they are uploaded as `failed` and never count as entries: anyone could walk through) — and
passages count people without raising alarms. The emergency input is a device-level contact
(`[device] emergency_input`); while it is active status says `fail` (`emergency_release`).
When it clears, the relays drop and normal service resumes by itself.

A technician's release (`gate-agent release LANE`) goes through the daemon's control socket
and is journaled in `lane_events` with who asked (their name, or the peer's uid).

If the emergency input itself cannot be read, nothing is released (a flapping cable must not
open every gate): status warns that the fire panel is not being watched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.config import LaneConfig, output_for
from agent.errors import ConfigError, DriverError, JournalUnavailable
from agent.runtime.gate import Gate, ScanResult, _journal_row
from agent.store.journal import new_scan_uuid
from agent.store.passages import PassageLog, now_iso
from drivers.registry import open_input

if TYPE_CHECKING:
    from agent.runtime.lane import LaneRunner

log = logging.getLogger("gate_agent.release")

RELEASED_DETAIL = "releasedGate"
RELEASED_MESSAGE = "Gate released: scan recorded, not counted as an entry"


def record_during_release(gate: Gate, code: str, lane: LaneConfig, now: datetime,
                          kind: str | None, mono_ms: int | None = None) -> ScanResult:
    """Journal a scan read while the lane is released: as taken, never as an admit. The
    lane's debounce applies as usual (a code held under the reader is one row)."""
    decision = gate._decide(code, lane, now, None, kind, mono_ms)
    if not decision.record:
        return ScanResult(decision, None)
    taken = replace(decision, admit=False, status="denied", detail=RELEASED_DETAIL,
                    message=RELEASED_MESSAGE)
    if gate.journal is None:
        return ScanResult(taken, None)
    row = _journal_row(new_scan_uuid(), taken, lane, now)
    try:
        gate.journal.record(row)
    except JournalUnavailable as exc:
        log.error("lane %s: scan during release not journaled: %s", lane.name, exc)
        return ScanResult(taken, None)
    return ScanResult(taken, row.uuid)


class EmergencyInput:
    """Watches `[device] emergency_input` and calls `changed(active)` on each change."""

    def __init__(self, url: str, changed: Callable[[bool], None]):
        self.url = url
        self.changed = changed
        self.active = False
        self.since: str | None = None
        self.error: str | None = None
        self.input: Any = None

    def start(self) -> None:
        if not self.url:
            return
        try:
            self.input = open_input(self.url)
        except DriverError as exc:
            self.error = str(exc)
            log.error("emergency input %s unavailable: %s", self.url, exc)
            return
        self.input.start(self._on_change)

    def _on_change(self, _url: str, active: bool, _ns: int) -> None:
        # the lanes first, then `active`: status that says the release is on (or off) has
        # every lane held open (or shut) already; the other way round it showed
        # `emergency_release` with lanes not yet released (seen in a suite run)
        try:
            self.changed(active)
        finally:
            self.active = active

    def stop(self) -> None:
        if self.input is not None:
            self.input.stop()

    def get_status(self) -> dict[str, Any] | None:
        if not self.url:
            return None
        watched = self.input.get_status() if self.input is not None else None
        connected = bool(watched and watched["connected"])
        return {"url": self.url, "active": self.active, "since": self.since,
                "connected": connected,
                "error": self.error or (watched or {}).get("last_error") or None}


class ReleaseDesk:
    """Applies releases to the running lanes and journals each with who asked."""

    def __init__(self, lanes: Callable[[], dict[str, LaneRunner]],
                 events: Callable[[], PassageLog | None]):
        self.lanes = lanes
        self.events = events

    def emergency(self, active: bool, url: str) -> None:
        for runner in list(self.lanes().values()):
            runner.set_release("emergency", active)
        if active:
            log.error("EMERGENCY RELEASE: every lane held open (input %s)", url)
        else:
            log.warning("emergency release cleared: normal service restored")
        self._journal(None, "emergency_on" if active else "emergency_off", "emergency input",
                      url)

    def manual(self, name: str, hold: bool | None, by: str) -> dict[str, Any]:
        """hold True/False holds or ends (any technician may end a manual hold); None lets
        one person through: one relay pulse, no decision."""
        runner = self.lanes().get(name)
        if runner is None:
            raise ConfigError(f"no running lane named {name!r} (lanes: "
                              f"{', '.join(self.lanes()) or 'none'})", key="lanes")
        if hold is None:
            _let_one_through(runner, by)
            kind = "manual_pulse"
        elif hold:
            runner.set_release(f"manual:{by}", True)
            kind = "manual_hold"
        else:
            for source in [s for s in runner.releases if s.startswith("manual:")]:
                runner.set_release(source, False)
            kind = "manual_end"
        log.warning("lane %s: %s by %s", name, kind, by)
        self._journal(name, kind, by, None)
        return {"lane": name, "action": kind, "by": by, "released_by": sorted(runner.releases)}

    def _journal(self, lane: str | None, kind: str, by: str | None, detail: str | None) -> None:
        events = self.events()
        if events is None:
            return
        try:
            events.event(now_iso(), lane, kind, by, detail)
        except JournalUnavailable as exc:
            log.error("lane event %s not journaled: %s", kind, exc)


def _let_one_through(runner: LaneRunner, by: str) -> None:
    """One relay pulse, and the passage it lets through expected (agent.runtime.passage
    `expect_release`), under the lane's `opening()` like an admit's wait: the person walking
    through is counted `free`, never a `forced` alarm and never an admit's passage."""
    lane = runner.lane
    output = runner.relay or runner.relay_out
    if output is None:
        raise ConfigError(f"lane {lane.name} has no relay to release", key="lanes.relay")
    url = lane.relay if output is runner.relay else lane.relay_out
    directions = tuple(d for d in ("in", "out") if output_for(lane, d) == url) or ("in",)
    with runner.passage.opening():
        opened_ns = time.monotonic_ns()
        output.pulse(lane.relay_pulse_ms)
        if not runner.passage.expect_release(directions, by, opened_ns) \
                and runner.passage.configured:
            log.info("lane %s: release by %s: no passage input watches %s, the passage is "
                     "not counted", lane.name, by, "/".join(directions))
