"""The dashboard's pure parts and its HTTP rules, without a bus: the heartbeat body (no code, no
token), last-minute counts, gate states ranked worst first, venue totals and alarms, occupancy
from real venue.db rows against zone capacities from a real ticket cache, and the status
server's pages under the same auth rules as /status (login cookie = HMAC, never the token)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from agent import demo_data
from agent.ops.dashboard import alarms, occupancy, totals
from agent.ops.heartbeat import REACH_FIELDS, RateWindow, compact, reach_text
from agent.ops.server import COOKIE, build_app, session_value
from agent.platform.provision import import_file
from agent.store.cache import TicketCache
from agent.store.venue import Applied, BusScan, VenueStore
from agent.venue.heartbeat import GateBoard

CODE = "NU-VALID-0001"
TOKEN = "s3cret-status-token"
NOW = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)


def report(**extra: Any) -> dict[str, Any]:
    return {
        "version": "9.9", "health": "warn", "reasons": [
            {"level": "warn", "code": "upload_backlog", "message": "3 scan(s) not uploaded"}],
        "lanes": [{"name": "in", "direction": "in", "zone_id": None, "queue": 0,
                   "readers": [{"url": "serial:///dev/ttyACM0", "connected": True,
                                "last_error": None}],
                   "relay": {"url": "sim:in", "last_error": "stuck"},
                   "last_scan": {"at": "2026-06-01T17:59:00Z", "code": CODE, "status": "valid"},
                   "decisions_total": {"valid": 3, "alreadyIn": 1}, "heartbeat_age_s": 0.2}],
        "journal": {"pending": 3, "quarantined": 0, "oldest_pending": "2026-06-01T17:50:00.000Z"},
        "cache": {"events": [{"id": 7, "name": "Fest", "items": 10,
                              "last_sync": "2026-06-01T17:58:00.000Z"}]},
        "venue": {"connected": True, "lag": 0, "conflicts": 1, "decided_offline": 2},
        "platform": {"clock_skew_s": 1.5, "base_url": "https://api", "token": TOKEN},
        **extra,
    }


def test_heartbeat_is_compact_and_carries_no_code_or_token() -> None:
    body = compact(report(), NOW, RateWindow())
    text = orjson.dumps(body).decode()
    assert CODE not in text and TOKEN not in text
    lane = body["lanes"][0]
    assert lane["last_scan_at"] == "2026-06-01T17:59:00Z" and lane["last_status"] == "valid"
    assert lane["relay"] == {"url": "sim:in", "ok": False}
    assert lane["readers"] == [{"url": "serial:///dev/ttyACM0", "connected": True}]
    assert body["decisions"] == {"valid": 3, "alreadyIn": 1}
    assert body["queue"] == {"pending": 3, "quarantined": 0, "oldest_pending_age_s": 600.0}
    assert body["cache_age_s"] == 120.0 and body["bus"]["conflicts"] == 1
    assert body["health"] == "warn" and body["version"] == "9.9"
    assert "leader" not in body  # the next round's fields only when the report has them
    led = compact(report(leader={"device": "g2"}, upload_lag_s=4.0), NOW, RateWindow())
    assert led["leader"] == {"device": "g2"} and led["upload_lag_s"] == 4.0
    in_venue = report()
    in_venue["venue"]["leader"] = "g3"
    assert compact(in_venue, NOW, RateWindow())["leader"] == "g3"
    # the daemon's report: the venue role's status (agent.venue.leader.VenueRole.get_status)
    role = report()
    role["venue"]["leader"] = {
        "device": "g1", "leader": "g2", "leader_since": "2026-06-01T17:00:00Z",
        "leader_term": 4, "this_device_leads": False, "budget_in_use_per_min": 9,
        "budget_per_min": 54, "upload_lag": 12, "upload_lag_s": 3.5,
        "leader_pass_at": {"7": "2026-06-01T17:59:00.000Z", "8": "2026-06-01T17:55:00.000Z"}}
    beat = compact(role, NOW, RateWindow())
    assert {k: beat[k] for k in ("leader", "leader_since", "leader_term", "budget",
                                 "upload_lag_s", "upload_lag", "sync_age_s")} == {
        "leader": "g2", "leader_since": "2026-06-01T17:00:00Z", "leader_term": 4,
        "budget": {"used": 9, "per_minute": 54}, "upload_lag_s": 3.5, "upload_lag": 12,
        "sync_age_s": 300.0}
    assert "platform_reachable" not in beat  # a gate that may not lead does not check
    assert reach_text(beat) == "-"
    # a gate that may lead: its probe (a member) or its own requests (the leader)
    role["venue"]["leader"].update({"platform_reachable": False, "platform_checked_by": "probe",
                                    "platform_checked_age_s": 12.4,
                                    "platform_error": "api:443: ConnectionRefusedError"})
    beat = compact(role, NOW, RateWindow())
    assert {k: beat[k] for k in REACH_FIELDS} == {
        "platform_reachable": False, "platform_checked_by": "probe",
        "platform_checked_age_s": 12.4}
    assert "platform_error" not in beat  # the reason says it on the gate itself
    assert reach_text(beat) == "NOT reachable (probe 12 s ago)"
    assert reach_text({**beat, "platform_reachable": True, "platform_checked_by": "requests"}) \
        == "reachable (requests 12 s ago)"
    assert reach_text({**beat, "platform_reachable": None, "platform_checked_age_s": None}) \
        == "unknown"


def test_last_minute_counts_never_extrapolate() -> None:
    rates = RateWindow(window_s=60)
    assert rates.per_minute({"valid": 5}, 0.0) == {}
    assert rates.per_minute({"valid": 6}, 2.0) == {"valid": 1}  # one scan so far, not 30/min
    for t in range(4, 70, 2):
        rates.per_minute({"valid": 6 + t // 2, "alreadyIn": 1}, float(t))
    # 30 admits in the last 60 s; the one refusal came before the minute began: not listed
    assert rates.per_minute({"valid": 41, "alreadyIn": 1}, 70.0) == {"valid": 30}


def test_gates_rank_worst_first_and_expire_to_offline() -> None:
    now = [1000.0]
    board = GateBoard(interval_s=1.0, ttl_s=10.0, clock=lambda: now[0])
    for device, health, stamped in (("a-pass", "pass", 999.5), ("b-fail", "fail", 999.5),
                                    ("c-warn", "warn", 999.5), ("d-late", "pass", 996.0),
                                    ("e-dead", "pass", 999.0)):
        board.seen(device, {"health": health}, stamped, live=True)
    board.gone("e-dead")
    rows = board.rows()
    assert [(r["device"], r["state"]) for r in rows] == [
        ("e-dead", "offline"), ("d-late", "stale"), ("b-fail", "online"),
        ("c-warn", "online"), ("a-pass", "online")]
    assert board.counts() == {"online": 3, "stale": 1, "offline": 1, "stopped": 0}
    board.seen("e-dead", {"health": "pass"}, 999.9, live=False)  # the roster: still offline
    assert rows[0]["device"] == "e-dead" and board.rows()[0]["state"] == "offline"
    board.seen("a-pass", {"health": "pass", "stopped": True}, 999.8, live=False)
    board.gone("a-pass")  # a clean stop: roster says stopped, live key deleted
    assert board.rows()[-1]["device"] == "a-pass" and board.rows()[-1]["state"] == "stopped"
    board.forget("e-dead")
    assert "e-dead" not in {r["device"] for r in board.rows()}
    now[0] = 1007.0  # no expiry marker came (a server before 2.11): past the TTL is offline
    assert {r["device"]: r["state"] for r in board.rows()}["d-late"] == "offline"
    # this clock runs 15 s ahead of the bus server's: measured on live deliveries, taken out
    ahead = GateBoard(interval_s=1.0, ttl_s=10.0, clock=lambda: 1015.0)
    ahead.seen("g", {"health": "pass"}, 999.8, live=True)
    assert ahead.rows()[0]["state"] == "offline"  # uncalibrated: looks 15 s old
    for delay in (15.3, 15.02, 15.6):
        ahead.calibrate(delay)
    assert ahead.rows()[0]["state"] == "online" and ahead.rows()[0]["age_s"] == 0.2


def test_a_live_key_missing_without_a_delete_is_judged_by_age() -> None:
    """The live bucket is in memory: NATS restarts it empty when a restarted node leads it
    (seen in the demo after a node's restart). A gate whose key it lost, with a beat younger
    than the TTL, is not offline; one whose key was deleted (a delete or an expiry marker) is."""
    now = [1000.0]
    board = GateBoard(interval_s=1.0, ttl_s=10.0, clock=lambda: now[0])
    board.seen("lost", {"health": "pass"}, 999.0, live=False)  # roster only: key not in live
    board.seen("deleted", {"health": "pass"}, 999.0, live=True)
    board.gone("deleted")
    board.seen("deleted", {"health": "pass"}, 999.0, live=False)
    board.seen("stopped", {"health": "pass", "stopped": True}, 999.0, live=False)
    states = {r["device"]: r["state"] for r in board.rows()}
    assert states == {"lost": "online", "deleted": "offline", "stopped": "stopped"}
    now[0] = 1004.0
    assert {r["device"]: r["state"] for r in board.rows()}["lost"] == "stale"
    now[0] = 1010.5  # past the TTL: offline, whatever the live bucket holds
    assert {r["device"]: r["state"] for r in board.rows()}["lost"] == "offline"
    board.seen("deleted", {"health": "pass"}, 1010.4, live=True)  # beating again
    assert {r["device"]: r["state"] for r in board.rows()}["deleted"] == "online"
    board.clear_live()  # a new watch: its replay says again what was deleted
    board.seen("deleted", {"health": "pass"}, 1010.4, live=False)
    assert {r["device"]: r["state"] for r in board.rows()}["deleted"] == "online"


def test_totals_and_alarms() -> None:
    gates = [
        {"device": "g0", "state": "stopped", "reasons": [{"level": "fail", "code": "x"}],
         "decisions": {"valid": 2}},
        {"device": "g1", "state": "offline", "age_s": 12, "decisions": {"valid": 4},
         "per_min": {"valid": 2}, "bus": {"conflicts": 1}, "leader": {"device": "g1"}},
        {"device": "g2", "state": "online", "health": "warn", "decisions": {"valid": 1},
         "per_min": {"valid": 1}, "queue": {"pending": 5},
         "bus": {"conflicts": 1, "decided_offline": 3},
         "reasons": [{"level": "warn", "code": "upload_backlog", "message": "m"}]},
    ]
    t = totals(gates)
    assert t["gates"] == {"online": 1, "stale": 0, "offline": 1, "stopped": 1}
    assert t["decisions"] == {"valid": 7} and t["per_min"] == {"valid": 1}
    assert t["conflicts"] == 1 and t["decided_offline"] == 3 and t["pending"] == 5
    assert t["leader"] is None  # only an offline gate claimed to lead: "no leader"
    found = alarms(gates)
    assert [(a["device"], a["code"], a["level"]) for a in found] == [
        ("g1", "gate_offline", "fail"), ("g2", "upload_backlog", "warn")]


def scan(seq: int, uuid: str, item: int, zone: int | None, direction: str,
         default: bool = False) -> Applied:
    return Applied(seq, f"venue.v.t.{demo_data.EVENT_ID}.{item}", scan=BusScan(
        uuid=uuid, device="g1", lane="l", event_id=demo_data.EVENT_ID, item_id=item,
        zone_id=zone, zone_is_default=default, direction=direction, admit=True,
        status="valid", scanned_on=f"2026-06-01T18:00:{seq:02d}Z"))


def test_occupancy_against_capacity(tmp_path: Path) -> None:
    floor = demo_data.FLOOR_ZONE
    store = VenueStore(tmp_path / "venue.db")
    store.apply("S", [scan(1, "u1", 1, floor, "in"), scan(2, "u2", 2, floor, "in"),
                      scan(3, "u3", 1, floor, "out"), scan(4, "u4", 3, floor, "in"),
                      scan(5, "u5", 4, demo_data.ENTRY_ZONE, "in", default=True),
                      Applied(6, "venue.v.t.x", void_uuid="u4")], "now")
    cache = TicketCache(tmp_path / "cache.db")
    for path in demo_data.write_demo_files(tmp_path / "p", NOW - timedelta(hours=1)):
        import_file(cache, path, NOW, demo_data.EVENT_ID)
    try:
        rows = {r["name"]: r for r in occupancy(store.occupancy(), cache)}
    finally:
        store.close()
        cache.close()
    assert rows["Main floor"]["inside"] == 1 and rows["Main floor"]["admitted"] == 2
    assert rows["Main floor"]["capacity"] == 500 and rows["Main floor"]["ratio"] == 0.002
    assert rows["Entry"]["inside"] == 1 and rows["Entry"]["capacity"] is None


def get(path: str, token: str = TOKEN, method: str = "GET",
        cookies: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    venue = {"venue": "hall", "gates": [{"device": "g1", "state": "online"}]}
    app = build_app(lambda: report(), lambda: b"gate_health 1.0\n", token, lambda: venue)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1", cookies=cookies) as client:
            return await client.request(method, path, **kw)
    return asyncio.run(call())


def test_heartbeat_ttl_must_outlast_two_heartbeats(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(f'[store]\ndir = "{tmp_path}"\n[venue]\nname = "v"\n'
                    'servers = ["nats://127.0.0.1:4222"]\nheartbeat_s = 3\nheartbeat_ttl_s = 5\n')
    try:
        load_config(path)
    except ConfigError as exc:
        assert "venue.heartbeat_ttl_s: must be at least twice venue.heartbeat_s" in str(exc)
    else:
        raise AssertionError("a TTL shorter than two heartbeats was accepted")


def test_pages_follow_the_status_auth_rules() -> None:
    for path in ("/", "/venue"):
        page = get(path)
        assert page.status_code == 303 and page.headers["location"] == f"/login?next={path}"
    assert get("/api/venue").status_code == 401
    assert get("/assets/venue.js").status_code == 401
    assert get("/login?next=/venue").status_code == 200
    wrong = get("/login", method="POST", content="token=nope&next=/venue",
                headers={"content-type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401 and COOKIE not in wrong.headers.get("set-cookie", "")
    good = get("/login", method="POST", content=f"token={TOKEN}&next=/venue",
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert good.status_code == 303 and good.headers["location"] == "/venue"
    cookie = good.headers["set-cookie"]
    assert TOKEN not in cookie and "httponly" in cookie.lower() and "samesite=strict" in \
        cookie.lower()
    session = {COOKIE: session_value(TOKEN)}
    assert get("/venue", cookies=session).text.startswith("<!doctype html>")
    assert get("/api/venue", cookies=session).json()["venue"] == "hall"
    assert get("/status", cookies=session).json()["lanes"][0]["last_scan"]["code"] == CODE
    assert get("/api/venue", cookies={COOKIE: session_value("other")}).status_code == 401
    assert get("/api/venue", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    away = get("/login", method="POST", content=f"token={TOKEN}&next=https://evil.example/",
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert away.headers["location"] == "/"  # no open redirect


def test_pages_open_on_loopback_without_a_token() -> None:
    page = get("/", token="")
    assert page.status_code == 200 and "/assets/gate.js" in page.text
    assert get("/assets/dashboard.css", token="").headers["content-type"].startswith("text/css")
    assert get("/assets/nope.js", token="").status_code == 404
    assert get("/assets/..%2Fserver.py", token="").status_code == 404
    status = get("/status", token="").json()
    assert status["lanes"][0]["last_scan"]["code"] != CODE  # masked, as before
