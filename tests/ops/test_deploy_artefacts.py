"""deploy/: the Prometheus alert rules pass `promtool check rules` and their unit tests (which
fire "gate down", "gate failing" with its reason codes, "gate warning" per warn reason, "upload
backlog" and the venue's on sample series), and every query of the Grafana
dashboard names metrics the agent's own registry exports (not a hand-kept list)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.ops.metrics import Metrics
from agent.ops.status import REASON_CODES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "gate-agent-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "gate-agent-alerts.test.yml"
GRAFANA = DEPLOY / "grafana" / "gate-agent-venue.json"
PROMETHEUS_OWN = {"up"}  # series Prometheus writes itself for every scrape

promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not installed (Debian: apt-get install prometheus;"
                                     " .ci/run installs it)")


def full_snapshot() -> dict[str, Any]:
    """A status report with every part present, so every metric family has samples."""
    return {
        "health": "warn", "reasons": [{"level": "warn", "code": "upload_backlog", "message": "m"}],
        "lanes": [{"name": "in", "heartbeat_age_s": 0.1, "queue": 0,
                   "decision_errors": {"total": {"before_journal": 0, "after_journal": 1}},
                   "readers": [{"url": "sim:", "connected": True}],
                   "relay": {"url": "sim:relay", "ok": True}, "released_by": [],
                   "passage": {"inputs": {"in": {"connected": True}}, "waiting": 1,
                               "releases_waiting": [], "totals": {"passed": 2},
                               "people": {"default": 2}}}],
        "journal": {"pending": 1, "oldest_pending": "2026-01-01T00:00:00Z"},
        "cache": {"events": [{"id": 1, "items": 3, "last_sync": "2026-01-01T00:00:00Z"}]},
        "platform": {"requests": {"ok": 2, "ratelimited": 1}, "clock_skew_s": 1.5},
        "venue": {"connected": True, "lag": 0, "claims_granted": 1, "conflicts": 0,
                  "clock_offset_s": 0.3,
                  "decided_offline": 0, "gates": {"online": 2, "stale": 0, "offline": 0},
                  "leader": {"this_device_leads": True, "leader_term": 3,
                             "leader_term_epoch": "2026-12-07T02:29:34.257601Z",
                             "budget_in_use_per_min": 12, "budget_per_min": 54,
                             "upload_lag_s": 2.5, "upload_lag": 40, "quarantined": 1}},
    }


def exported_samples() -> set[str]:
    metrics = Metrics(full_snapshot, lambda: datetime.now(UTC))
    metrics.observe("in", "valid", 0.001)
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def test_every_grafana_query_names_exported_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exported = exported_samples()
    assert "gate_decisions_total" in exported and "gate_venue_gates" in exported
    panels = dashboard["panels"]
    assert len(panels) >= 10
    seen: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = re.sub(r'"[^"]*"', "", target["expr"])  # label values are not names
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # nor range durations
            # every selector (`name{...}`) and every gate_* word is a metric name
            metrics = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
            metrics |= set(re.findall(r"\b(gate_\w+)\b", expr))
            assert metrics, f"{panel['title']}: no metric in {target['expr']}"
            unknown = metrics - exported - PROMETHEUS_OWN
            assert not unknown, f"{panel['title']}: not exported by the agent: {unknown}"
            seen |= metrics
    query = dashboard["templating"]["list"][1]["definition"]
    assert re.search(r"label_values\((\w+),", query).group(1) in exported  # type: ignore[union-attr]
    print(f"{len(panels)} panels over {len(seen)} metrics")


def test_every_reason_code_has_a_series() -> None:
    source = (DEPLOY.parent / "agent" / "ops" / "status.py").read_text()
    given = set(re.findall(r'Reason\("(?:warn|fail)", "([a-z_]+)"', source))
    assert len(given) >= 15 and given == set(REASON_CODES)
    text = Metrics(lambda: {"reasons": [{"code": "cache_stale", "level": "fail"}]},
                   lambda: datetime.now(UTC)).render().decode()
    assert 'gate_reason_active{code="cache_stale"} 1.0' in text
    assert 'gate_reason_active{code="no_reader"} 0.0' in text


def test_readme_names_every_exported_metric() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported_samples()}
    missing = sorted(f for f in families if f"`{f}" not in readme
                     and f"`{f}_total" not in readme)
    assert missing == []


def test_alert_rules_name_exported_metrics() -> None:
    exported = exported_samples() | PROMETHEUS_OWN
    exprs = re.findall(r"^\s+expr: (.+)$", RULES.read_text(), re.M)
    assert len(exprs) >= 7
    for expr in exprs:
        names = set(re.findall(r"\b(gate_\w+|up)\b", re.sub(r'"[^"]*"', "", expr)))
        assert names and names <= exported, expr


@promtool
def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 15 rules found" in out.stdout


@promtool
def test_promtool_fires_gate_down_and_upload_backlog() -> None:
    text = RULE_TESTS.read_text()
    for alert in ("GateDown", "UploadBacklog", "LaneStalled", "JournalUnavailable", "GateFailing",
                  "GateWarning", "VenueUploadBacklog", "VenueClockOffset", "VenueNoLeader",
                  "GateDecisionErrors"):
        assert f"alertname: {alert}" in text
    out = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True,
                         text=True, timeout=60, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
