"""`gate-agent scan CODE` beside a running daemon: the daemon decides it, and it is seen where
a reader's scan is seen — a gate_agent.decisions line, a gate_decisions_total sample, the lane's
last scan and totals in status — and, as without a daemon, no relay pulse (a manual scan does
not open the gate)."""

from __future__ import annotations

import json

from agent import demo_data
from tests.conftest import run_cli
from tests.runtime.daemon.conftest import Site, wait_synced

C = demo_data.CODES


def test_a_manual_scan_is_logged_counted_and_shown_on_its_lane(site: Site) -> None:
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        wait_synced(daemon)
        out = run_cli("scan", "--config", str(site.config), "--lane", "entry", "--json", "-",
                      stdin=f"{C['valid']}\n{C['refunded']}\n")
        answers = [json.loads(line) for line in out.stdout.splitlines()]
        assert [a["status"] for a in answers] == ["valid", "denied"], out.stderr
        decisions = daemon.wait_decisions(2)
        by_code = {d["code"]: d for d in decisions}
        assert by_code[C["valid"]]["uuid"] == answers[0]["uuid"]
        assert by_code[C["valid"]]["lane"] == "entry" and by_code[C["valid"]]["admit"] is True
        assert by_code[C["valid"]]["reader"] == "manual"
        assert by_code[C["valid"]]["relay"] is False
        assert by_code[C["refunded"]]["statusDetail"] == "refunded"
        metrics = daemon.get("/metrics").text
        assert 'gate_decisions_total{lane="entry",status="valid"} 1.0' in metrics
        assert 'gate_decisions_total{lane="entry",status="denied"} 1.0' in metrics
        entry = {lane["name"]: lane for lane in daemon.status()["lanes"]}["entry"]
        assert entry["decisions_total"] == {"valid": 1, "denied": 1}
        assert entry["decisions_5min"] == {"valid": 1, "denied": 1}
        assert entry["last_scan"]["status"] == "denied"
        assert entry["last_scan"]["code"] == "…" + C["refunded"][-4:]  # masked, as a reader's
        assert site.relay_pulses() == []  # the admit opened nothing
    finally:
        assert daemon.stop() == 0
