"""This gate's heartbeat: a compact summary of its status report for the venue bus.

The report (`Daemon.report()`) is the one source, so the heartbeat can never disagree with
`/status` and `/metrics`. What the heartbeat holds is what a supervisor needs at a glance of
the whole venue (health and reasons, lanes with reader and relay state, last scan time,
decisions per minute by status, queue and oldest pending, cache age, bus state, version) and
nothing that must stay on the gate: no scanned code (codes are bearer credentials), no token,
no reader error text beyond the status reason.

Whether this gate can reach the platform (agent.venue.stepdown: a member's connection test,
the leader's own requests): `platform_reachable` (true/false, null when not known yet),
`platform_checked_by` ("probe" or "requests") and `platform_checked_age_s`; absent on a gate
that may not lead (`venue.leader = false`). `reach_text` says it in words for the tables.

The leader's `platform_minus_bus_s`: the platform's time minus the bus server's, from its last
reading of the platform's Date (at most READING_FRESH_S old), for the members' clocks
(agent.runtime.clock.leader_reading).

Fields of the elected leader (issue 15): the daemon's report holds the venue role's status
at `venue.leader` (agent.venue.leader.VenueRole.get_status(): `leader` is the holder's name,
`budget_in_use_per_min`, `upload_lag_s`, `leader_pass_at`, ...); `leader_fields` maps it to
the heartbeat's `leader`, `leader_since`, `leader_term`, `budget` ({"used", "per_minute"}),
`upload_lag_s`, `upload_lag` and `sync_age_s` (the oldest of the leader's last published
passes), which the dashboard shows. A report that has those names already (at its top level
or in `venue`) passes them through.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson

from agent.ops.status import _age, oldest_pending_age, relay_ok

VERSION = 1
RATE_WINDOW_S = 60.0
MAX_REASONS = 6
READING_FRESH_S = 300.0  # the leader's platform reading the members may still go by
LEADER_FIELDS = ("leader", "leader_since", "leader_term", "budget", "upload_lag_s",
                 "upload_lag", "sync_age_s")
REACH_FIELDS = ("platform_reachable", "platform_checked_by", "platform_checked_age_s")


class RateWindow:
    """Decisions in the last minute by status, from the lanes' running totals sampled over
    time: the difference from the newest sample at least a minute old (or the oldest one, in
    a gate's first minute: then it is the count so far, never an extrapolation)."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def per_minute(self, totals: dict[str, int], now: float) -> dict[str, int]:
        self._samples.append((now, dict(totals)))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        before = self._samples[0][1]
        counts = {s: n - before.get(s, 0) for s, n in totals.items()}
        return {s: n for s, n in counts.items() if n > 0}


def _lane(lane: dict[str, Any]) -> dict[str, Any]:
    relay = lane.get("relay") or {}
    last = lane.get("last_scan") or {}
    return {
        "name": lane.get("name"), "direction": lane.get("direction"),
        "zone_id": lane.get("zone_id"),
        "readers": [{"url": r.get("url"), "connected": bool(r.get("connected"))}
                    for r in lane.get("readers") or []],
        "relay": None if not lane.get("relay") else
        {"url": relay.get("url"), "ok": relay_ok(relay)},
        "last_scan_at": last.get("at"), "last_status": last.get("status"),
        "queue": lane.get("queue", 0), "heartbeat_age_s": lane.get("heartbeat_age_s"),
    }


def compact(report: dict[str, Any], now: datetime, rates: RateWindow) -> dict[str, Any]:
    """The heartbeat body from a status report (pure but for the rate window's memory)."""
    lanes = report.get("lanes") or []
    totals: dict[str, int] = {}
    for lane in lanes:
        for status, n in (lane.get("decisions_total") or {}).items():
            totals[status] = totals.get(status, 0) + int(n)
    journal = report.get("journal") or {}
    events = (report.get("cache") or {}).get("events") or []
    cache = [{"id": e.get("id"), "name": e.get("name"), "items": e.get("items") or 0,
              "age_s": _rounded(_age(e.get("last_sync"), now))} for e in events]
    ages = [e["age_s"] for e in cache if e["age_s"] is not None]
    venue = report.get("venue") or {}
    platform = report.get("platform") or {}
    body: dict[str, Any] = {
        "v": VERSION, "version": report.get("version"), "sent_at": now.isoformat(),
        "health": report.get("health"),
        "reasons": [{"level": r.get("level"), "code": r.get("code"), "message": r.get("message")}
                    for r in (report.get("reasons") or [])[:MAX_REASONS]],
        "lanes": [_lane(lane) for lane in lanes],
        "decisions": totals, "per_min": rates.per_minute(totals, time.monotonic()),
        "queue": {"pending": journal.get("pending", 0),
                  "quarantined": journal.get("quarantined", 0),
                  "oldest_pending_age_s": _rounded(oldest_pending_age(report, now))},
        "cache": cache, "cache_age_s": max(ages) if ages else None,
        # `connected` is the link; `ready` the session set up on it (claims go out), else
        # the set-up step it is at and why it fails (the venue page tells the two apart)
        "bus": {k: venue.get(k) for k in ("connected", "ready", "session_step", "setup_error",
                                          "lag", "conflicts", "decided_offline",
                                          "claims_granted", "claims_conflicted",
                                          "claims_timed_out", "claims_not_sent")},
        # a reading this gate no longer makes (a venue gate that stopped leading) is not told
        # to the others as its skew now (agent.venue.leader `platform_status`)
        "clock_skew_s": None if platform.get("not_measured_since")
        else platform.get("clock_skew_s"),
    }
    body.update(leader_fields(report, now))
    role = venue.get("leader")
    skew = platform_minus_bus(report, now)
    if skew is not None:
        body["platform_minus_bus_s"] = skew
    if isinstance(role, dict) and "platform_checked_by" in role:  # a gate that may lead
        body.update({key: role.get(key) for key in REACH_FIELDS})
    return body


def platform_minus_bus(report: dict[str, Any], now: datetime) -> float | None:
    """The leader's: the platform's time minus the bus server's, seconds (its last reading of
    the platform's Date within READING_FRESH_S, plus its clock's offset from the bus server),
    so the members, which send the platform nothing, can check their clocks against the
    platform's (agent.runtime.clock.leader_reading). None on any other gate."""
    venue = report.get("venue") or {}
    role = venue.get("leader")
    clock = report.get("clock") or {}
    bus_offset, offset = venue.get("clock_offset_s"), clock.get("offset_s")
    age = _age(clock.get("last_reading"), now)
    if not (isinstance(role, dict) and role.get("this_device_leads")) or bus_offset is None \
            or offset is None or age is None or age > READING_FRESH_S:
        return None
    return round(float(offset) + float(bus_offset), 1)


def reach_text(gate: dict[str, Any]) -> str:
    """A heartbeat's platform reachability in words (`gate-agent venue status`)."""
    if "platform_checked_by" not in gate:
        return "-"  # may not lead: it does not check
    reachable = gate.get("platform_reachable")
    said = "unknown" if reachable is None else "reachable" if reachable else "NOT reachable"
    age = gate.get("platform_checked_age_s")
    how = "requests" if gate.get("platform_checked_by") == "requests" else "probe"
    return said + (f" ({how} {age:.0f} s ago)" if isinstance(age, (int, float)) else "")


def bus_text(bus: dict[str, Any]) -> str:
    """A heartbeat's bus state in words (`gate-agent venue status`; the venue page's busText
    says the same): the link up is not the session set up on it (`ready`: claims go out). A
    heartbeat of an older version has no `ready`: judged by its link."""
    if not bus.get("connected"):
        return "not connected"
    if bus.get("ready") is False:
        return (f"link up, session NOT READY "
                f"({bus.get('setup_error') or bus.get('session_step') or 'setting up'})")
    return "connected"


def leader_fields(report: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The leader's figures for the heartbeat (see the module docstring); None left out."""
    venue = report.get("venue") or {}
    role = venue.get("leader")
    if isinstance(role, dict) and "budget_in_use_per_min" in role:  # VenueRole.get_status()
        passes = [_age(at, now) for at in (role.get("leader_pass_at") or {}).values()]
        ages = [a for a in passes if a is not None]
        used = role.get("budget_in_use_per_min")
        found = {
            "leader": role.get("leader"), "leader_since": role.get("leader_since"),
            "leader_term": role.get("leader_term"),
            "budget": None if used is None else {"used": used,
                                                 "per_minute": role.get("budget_per_min")},
            "upload_lag_s": role.get("upload_lag_s"), "upload_lag": role.get("upload_lag"),
            "sync_age_s": _rounded(max(ages)) if ages else None,
        }
    else:
        found = {key: report.get(key, venue.get(key)) for key in LEADER_FIELDS}
    return {k: v for k, v in found.items() if v is not None}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class BeatSink(Protocol):
    def beat(self, body: bytes) -> None: ...


async def publish_heartbeats(report: Callable[[], dict[str, Any]], sink: BeatSink,
                             interval_s: float, now: Callable[[], datetime],
                             stop: asyncio.Event) -> None:
    """The daemon's heartbeat task: a beat every `interval_s` until `stop`."""
    rates = RateWindow()
    while not stop.is_set():
        # the beat says how often this gate beats: a reader judges it `stale` by that, not by
        # the reader's own `venue.heartbeat_s` (agent.venue.heartbeat `gate_state`)
        body = {**compact(report(), now(), rates), "interval_s": interval_s}
        sink.beat(orjson.dumps(body, default=str))
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
