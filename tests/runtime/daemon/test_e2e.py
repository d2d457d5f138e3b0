"""The real daemon end to end: pty scanner -> decision -> journal -> relay -> upload -> status."""

from __future__ import annotations

import re
import signal
import socket
import time

import httpx

from agent import demo_data
from agent.runtime.devrun import DaemonProcess
from drivers.sim import send_scan
from tests.conftest import PROJECT_ROOT
from tests.runtime.daemon.conftest import RETRY_S, Site, wait_synced

C = demo_data.CODES
# Samples only on lanes with passage inputs / after an alarm: tests/runtime/test_passage.py
PASSAGE_ONLY = {"gate_passages_total", "gate_passage_alarms_total", "gate_zone_people",
                "gate_passage_input_connected", "gate_passage_waiting"}


def _uploaded(site: Site) -> list[dict]:
    return site.sandbox.received()["uploads"]


def _wait(predicate, timeout: float = 15.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(step)


def test_scans_decide_pulse_upload_and_report(site: Site) -> None:
    """Scans decided, pulsed, uploaded and reported; the report in one time format and the
    metrics the README lists; then SIGTERM right behind queued scans finishes them and exits
    0 (one daemon run for all three: starting one and its first sync cost ~3 s)."""
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        site.scanner.write(C["valid"].encode() + b"\r\n")
        site.scanner.write(b"\x00" + C["refunded"].encode() + b"\n")
        site.scanner.write(C["unknown"].encode() + b"\r")
        send_scan(site.root / "exit.sock", C["valid"])
        decisions = daemon.wait_decisions(4)
        by_code = {(d["lane"], d["code"]): d for d in decisions}
        assert by_code[("entry", C["valid"])]["status"] == "valid"
        assert by_code[("entry", C["valid"])]["relay"] is True
        assert by_code[("entry", C["refunded"])]["statusDetail"] == "refunded"
        assert by_code[("entry", C["unknown"])]["statusDetail"] == "unknownCode"
        assert by_code[("exit", C["valid"])]["direction"] == "out"
        assert all(d["uuid"] for d in decisions) and all(d["latency_ms"] > 0 for d in decisions)
        # exactly one relay pulse: the admit on the entry lane (the exit lane has no relay)
        assert [p["relay"] for p in site.relay_pulses()] == ["entry"]
        # uploads: every uploadable scan exactly once, with the decision's uuid and direction
        _wait(lambda: len(_uploaded(site)) >= 3)
        uploads = {u["uuid"]: u for u in _uploaded(site)}
        for d in decisions:
            if d["code"] == C["unknown"]:
                assert d["uuid"] not in uploads  # kept local: the platform has no such item
                continue
            assert uploads[d["uuid"]]["scan"] == d["direction"]
        assert uploads[by_code[("entry", C["refunded"])]["uuid"]]["status"] == "failed"
        _wait(lambda: daemon.status()["upload"]["last_success"])
        report = daemon.status()
        lanes = {lane["name"]: lane for lane in report["lanes"]}
        assert lanes["entry"]["readers_connected"] == 1
        assert lanes["entry"]["decisions_total"] == {"valid": 1, "denied": 2}
        assert report["journal"]["pending"] == 0 and report["journal"]["local"] == 1
        assert report["platform"]["last_success"] and report["health"] in ("pass", "warn")
        # no token configured: no request is authenticated, so no code is shown whole
        raw_status = daemon.get("/status").text
        assert lanes["exit"]["last_scan"]["code"] == "…" + C["valid"][-4:]
        assert C["valid"] not in raw_status and C["unknown"] not in raw_status
        metrics = daemon.get("/metrics").text
        assert C["valid"] not in metrics and C["unknown"] not in metrics
        assert 'gate_decisions_total{lane="entry",status="valid"} 1.0' in metrics
        assert 'gate_reader_connected{lane="entry"' in metrics
        assert "gate_decision_latency_seconds_bucket" in metrics
        assert daemon.get("/healthz").status_code == 200
        _one_time_format_and_readme_metrics(report, metrics)
        _sigterm_finishes_queued_scans_and_exits_zero(site, daemon)
    finally:
        assert daemon.stop() == 0
    log_text = "".join(daemon.raw_lines)
    assert site.token not in log_text


def _sigterm_finishes_queued_scans_and_exits_zero(site: Site, daemon: DaemonProcess) -> None:
    before = len(daemon.decisions())
    codes = [C["valid"], C["valid2"], C["floor"], C["vip"], C["refunded"], C["locked"]]
    for code in codes:
        send_scan(site.root / "exit.sock", code)
    daemon.signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - started < 8
    decided = [d["code"] for d in daemon.decisions()[before:]]
    assert sorted(decided) == sorted(codes)
    messages = [r.get("msg", "") for r in daemon.records]
    assert "stopping" in messages and "stopped" in messages


def test_sighup_reloads_lanes_without_dropping_scans(site: Site) -> None:
    floor_lane = f"""
[[lanes]]
name = "floor"
zone_id = {demo_data.FLOOR_ZONE}
direction = "auto"
max_entries = 0
readers = ["sim:floor?socket={site.root / 'floor.sock'}"]
"""
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        site.write_config(out_direction="auto", extra_lanes=floor_lane)
        for _ in range(5):
            site.scanner.write(C["valid2"].encode() + b"\n")
            time.sleep(0.35)  # past the debounce: five real attempts
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda r: "configuration reloaded" in r.get("msg", ""), what="reload")
        # the token file did not change: not reported as "reloaded"
        assert any(r.get("msg") == "platform token unchanged" for r in daemon.records)
        _wait(lambda: len([d for d in daemon.decisions() if d["lane"] == "entry"]) == 5)
        names = {lane["name"]: lane for lane in daemon.status()["lanes"]}
        assert set(names) == {"entry", "exit", "floor"} and names["exit"]["direction"] == "auto"
        send_scan(site.root / "floor.sock", C["floor"])
        floor = daemon.wait_for(lambda r: r.get("lane") == "floor", what="floor decision")
        assert floor["admit"] and floor["direction"] == "in"
        entry = [d for d in daemon.decisions() if d["lane"] == "entry"]
        assert [d["status"] for d in entry] == ["valid"] + ["alreadyIn"] * 4
        # A file that does not load is refused, and status says so (the next start would fail).
        good = site.config.read_text()
        site.config.write_text(good.replace("[status]", "[status]\nno_such_key = 1", 1))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda r: "reload refused" in r.get("msg", ""), what="refusal")
        said = {r["code"]: r["message"] for r in daemon.status()["reasons"]}
        assert "no_such_key" in said.get("config_not_applied", ""), said
        site.config.write_text(good)
        daemon.signal(signal.SIGHUP)
        _wait(lambda: "config_not_applied" not in
              [r["code"] for r in daemon.status()["reasons"]])
    finally:
        assert daemon.stop() == 0


def test_broken_reader_makes_healthz_fail_with_reason(site: Site) -> None:
    site.write_config(entry_reader=f"serial://{site.root / 'no-such-tty'}")
    site.config.write_text(site.config.read_text().replace(
        f'readers = ["sim:exit?socket={site.root / "exit.sock"}"]', "readers = []"))
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        response = daemon.get("/healthz")
        assert response.status_code == 503
        codes = [r["code"] for r in response.json()["reasons"]]
        assert "no_reader" in codes and "reader_disconnected" in codes
    finally:
        assert daemon.stop() == 0


def test_status_off_loopback_needs_a_token(site: Site) -> None:
    site.write_config(listen="0.0.0.0:0")
    refused = site.daemon().start()
    assert refused.proc is not None and refused.proc.wait(timeout=20) == 2
    refused.stop()
    assert any("status.token" in line and "requires a token" in line
               for line in refused.raw_lines)
    site.write_config(listen="0.0.0.0:0", status_token="s3cret-status")
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        port = daemon.status_url.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/status", timeout=5).status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer nope"},
                         timeout=5).status_code == 401
        ok = httpx.get(url + "/status", headers={"Authorization": "Bearer s3cret-status"},
                       timeout=5)
        assert ok.status_code == 200 and "s3cret-status" not in ok.text
        assert site.token not in ok.text
        # the dashboard: the same rule, a browser signs in once at /login (issue 16)
        assert httpx.get(url + "/venue", timeout=5).status_code == 303
        assert httpx.get(url + "/api/venue", timeout=5).status_code == 401
        with httpx.Client(base_url=url, timeout=5) as browser:
            signed = browser.post("/login", data={"token": "s3cret-status", "next": "/"})
            assert signed.status_code == 303 and "s3cret-status" not in str(signed.headers)
            page = browser.get("/")
            assert page.status_code == 200 and "/assets/gate.js" in page.text
            assert browser.get("/api/venue").json()["venue"] is None  # no [venue] here
    finally:
        daemon.stop()


def test_damaged_cache_starts_degraded_and_rebuilds(site: Site) -> None:
    daemon = site.daemon().start()
    daemon.wait_ready()
    wait_synced(daemon)
    send_scan(site.root / "exit.sock", C["valid"])
    daemon.wait_decisions(1)
    assert daemon.stop() == 0
    assert not (site.store / "cache.db-wal").exists()  # a clean stop folds the WAL back
    (site.store / "cache.db").write_bytes(b"garbage" * 1000)
    journal_before = (site.store / "journal.db").read_bytes()
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        first = daemon.status()
        assert any(p.name.startswith("cache.db.corrupt-") for p in site.store.iterdir())
        _wait(lambda: not daemon.status()["cache"]["degraded"])
        report = wait_synced(daemon)
        assert report["journal"]["sent"] + report["journal"]["pending"] == 1
        assert "cache_rebuilding" in [r["code"] for r in first["reasons"]] or \
            not first["cache"]["degraded"]
    finally:
        assert daemon.stop() == 0
    assert journal_before  # the journal file was never replaced



def test_a_damaged_cache_whose_rebuild_fails_is_rebuilt_once_the_platform_answers(
        site: Site) -> None:
    """Started with a damaged cache while the platform fails: the gate has no tickets, so its
    rebuild is tried again (`sync.full_resync_retry_s`), not the next night."""
    site.store.mkdir(mode=0o700)  # a store whose cache.db is garbage (no run before needed)
    (site.store / "cache.db").write_bytes(b"garbage" * 1000)
    site.sandbox.set_faults(error_rate=1.0)  # every platform request: 500
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        _wait(lambda: (daemon.status()["jobs"].get("initial_resync") or {}).get("failures", 0)
              >= 2, timeout=30)
        failing = daemon.status()
        assert any(p.name.startswith("cache.db.corrupt-") for p in site.store.iterdir())
        assert failing["cache"]["degraded"]
        rebuilding = [r for r in failing["reasons"] if r["code"] == "cache_rebuilding"]
        assert rebuilding and "the last try failed" in rebuilding[0]["message"], rebuilding
        site.sandbox.clear_faults()
        _wait(lambda: not daemon.status()["cache"]["degraded"], timeout=30)
        report = wait_synced(daemon)
        assert report["jobs"]["initial_resync"]["last_error"] is None
        send_scan(site.root / "exit.sock", C["valid"])
        daemon.wait_decisions(1)
    finally:
        assert daemon.stop() == 0



def test_a_taken_status_port_leaves_the_gate_deciding_and_is_tried_again(site: Site) -> None:
    """Another process holds status.listen's port: the gate must not go down with it (it
    restarted every 2 s under systemd, lanes and all); the endpoint comes up once it is free."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    site.write_config(listen=f"127.0.0.1:{port}")
    daemon = site.daemon(quick_retries=True).start()  # the port tried every 0.5 s, not 5 s
    try:
        daemon.wait_for(lambda r: r.get("msg", "").startswith("gate-agent ")
                        and " ready: " in r.get("msg", ""), 20, "ready message")
        said = [r["msg"] for r in daemon.records if "cannot listen" in r.get("msg", "")]
        assert said and f"127.0.0.1:{port}" in said[0], said
        assert f"tries again every {RETRY_S:g} s" in said[0], said  # the test's retry, not 5 s
        assert not (site.store / "status.addr").exists()
        send_scan(site.root / "exit.sock", C["valid"])
        daemon.wait_decisions(1)  # the gate decides meanwhile
        holder.close()
        _wait(lambda: (site.store / "status.addr").exists(), timeout=30)
        report = daemon.status()
        assert report["status_error"] is None
        assert "status_unavailable" not in [r["code"] for r in report["reasons"]]
    finally:
        holder.close()
        assert daemon.stop() == 0


def _leaves(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


def _one_time_format_and_readme_metrics(report: dict, metrics: str) -> None:
    """/status uses one time format (ISO 8601 UTC, `Z`; no epoch numbers) and /metrics
    exposes every metric the README lists (but the venue's and the passage inputs')."""
    epochs = [(p, v) for p, v in _leaves(report)
              if isinstance(v, int | float) and not isinstance(v, bool) and v > 1e9]
    assert not epochs, epochs
    stamps = [(p, v) for p, v in _leaves(report)
              if isinstance(v, str) and re.match(r"\d{4}-\d\d-\d\dT\d\d:", v)]
    assert len(stamps) >= 5 and all(v.endswith("Z") for _, v in stamps), stamps
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("- `GET /metrics`", 1)[1].split("- `GET /healthz`", 1)[0]
    names = {n for n in re.findall(r"`(gate_[a-z_]+)", section)
             if not n.startswith("gate_venue_")  # exported only with [venue]: tests/venue
             and n not in PASSAGE_ONLY}
    exposed = set(re.findall(r"^(gate_[a-z_]+?)(?:_bucket|_count|_sum|_created)?[{ ]", metrics,
                             re.MULTILINE))
    assert len(names) >= 10 and names <= exposed, names - exposed
