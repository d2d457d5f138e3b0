"""The web dashboard's data and assets: the venue page (`/venue`) and this gate's page (`/`).

Served by the status server (agent.ops.server) under the same auth rules as `/status`. The
pages are static files shipped in the package (agent/ops/dashboard/: no CDN, no build step,
no internet needed); they poll `/api/venue` and `/status` every couple of seconds.

`venue_view()` gathers what the venue page shows: every gate's latest heartbeat as this gate's
bus sees it (online / stale / offline, worst first), venue totals, alarms, and occupancy per
zone against the zone's capacity from the ticket cache, derived from every gate's scans applied
to this gate's venue.db.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any

from agent.store.cache import TicketCache
from agent.venue.bus import VenueBus
from agent.venue.heartbeat import STATES

ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = {"/": "gate.html", "/venue": "venue.html"}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of agent/ops/dashboard/ by name, with its content type (read once)."""
    folder = resources.files("agent.ops").joinpath("dashboard")
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in ASSET_TYPES:
            assets[entry.name] = (entry.read_bytes(), ASSET_TYPES[suffix])
    return assets


def zone_index(cache: TicketCache | None) -> dict[tuple[int, int | None], dict[str, Any]]:
    """(event, zone) -> name and capacity; (event, None) is the event's default Entry zone."""
    index: dict[tuple[int, int | None], dict[str, Any]] = {}
    if cache is None:
        return index
    for event in cache.events():
        for zone in cache.zones(event.id):
            info = {"name": zone.name, "capacity": zone.capacity}
            index[(event.id, zone.id)] = info
            if zone.is_default_entry:
                index[(event.id, None)] = info
    return index


def occupancy(rows: list[dict[str, Any]], cache: TicketCache | None) -> list[dict[str, Any]]:
    zones = zone_index(cache)
    out = []
    for row in rows:
        key = (row["event_id"], None if row["zone_is_default"] else row["zone_id"])
        zone = zones.get(key) or zones.get((row["event_id"], row["zone_id"])) or {}
        capacity = zone.get("capacity")
        out.append({**row, "name": zone.get("name") or f"zone {row['zone_id']}",
                    "capacity": capacity,
                    "ratio": round(row["inside"] / capacity, 3) if capacity else None})
    return out


def alarms(gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What needs a person: gates offline or stale, then every gate's fail and warn reasons
    (a gate stopped cleanly is not an alarm)."""
    found = []
    for gate in gates:
        device = gate.get("device")
        if gate.get("state") in ("offline", "stale"):
            found.append({"level": "fail" if gate["state"] == "offline" else "warn",
                          "device": device, "code": f"gate_{gate['state']}",
                          "message": f"no heartbeat for {gate.get('age_s', 0):.0f} s"})
            continue
        if gate.get("state") == "stopped":
            continue
        for reason in gate.get("reasons") or []:
            found.append({**reason, "device": device})
    return sorted(found, key=lambda a: (a.get("level") != "fail", str(a.get("device"))))


def totals(gates: list[dict[str, Any]]) -> dict[str, Any]:
    """Venue-wide figures: decisions from every gate known (an offline gate's last count
    stays in), rates, queues and the leader only from gates that are not offline."""
    states = dict.fromkeys(STATES, 0)
    per_min: dict[str, float] = {}
    decisions: dict[str, int] = {}
    conflicts = offline_decisions = pending = 0
    for gate in gates:
        states[gate.get("state", "offline")] = states.get(gate.get("state", "offline"), 0) + 1
        for status, n in (gate.get("decisions") or {}).items():
            decisions[status] = decisions.get(status, 0) + n
        if gate.get("state") in ("offline", "stopped"):
            continue
        for status, rate in (gate.get("per_min") or {}).items():
            per_min[status] = round(per_min.get(status, 0) + rate, 1)
        bus = gate.get("bus") or {}
        conflicts = max(conflicts, bus.get("conflicts") or 0)  # each gate sees every conflict
        offline_decisions += bus.get("decided_offline") or 0
        pending += (gate.get("queue") or {}).get("pending") or 0
    leader = next((g for g in gates if g.get("leader") and g.get("state") in ("online", "stale")),
                  None)
    return {"gates": states, "per_min": per_min, "decisions": decisions,
            "conflicts": conflicts, "decided_offline": offline_decisions, "pending": pending,
            "leader": leader.get("leader") if leader else None,
            "budget": leader.get("budget") if leader else None,
            "upload_lag_s": leader.get("upload_lag_s") if leader else None}


def venue_view(bus: VenueBus | None, cache: TicketCache | None, now: datetime) -> dict[str, Any]:
    """The venue page's data (`GET /api/venue`)."""
    if bus is None:
        return {"venue": None, "device": None, "generated_at": now.isoformat(), "gates": [],
                "occupancy": [], "alarms": [], "totals": totals([])}
    gates = bus.board.rows()
    return {"venue": bus.name, "device": bus.device, "connected": bus.connected,
            # the link up is not the session set up (claims go out only then): both, and
            # while it is not, the set-up step and its error (agent.venue.bus)
            "ready": bus.ready, "session_step": bus.session_step,
            "setup_error": bus.setup_error,
            "heartbeat_s": bus.venue["heartbeat_s"], "ttl_s": bus.venue["heartbeat_ttl_s"],
            "generated_at": now.isoformat(), "gates": gates, "totals": totals(gates),
            "alarms": alarms(gates), "occupancy": occupancy(bus.occupancy(), cache)}
