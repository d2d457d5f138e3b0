"""The on-call audit (session 11): each unhealthy state the operator must see is in `/status`
with its reason, in `/metrics` with the labels that say where, and the Grafana dashboard and
the alert rules only group and label by what the metrics carry (a legend `{{lane}}` over a
metric without `lane` shows an empty name; a `by (zone)` over one without it, one line).

Real lane thread, SQLite journal and cache, `sim:` relay and passage input (tests/runtime
lanerig); the metrics from the agent's own registry."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from agent import demo_data
from agent.commands.daemon import render as render_status
from agent.core.codes import utc_iso
from agent.ops.heartbeat import RateWindow, compact
from agent.ops.metrics import Metrics
from agent.ops.status import evaluate
from agent.runtime.release import _let_one_through
from drivers.sim import sim_relay, sim_replug, sim_unplug
from tests.conftest import DemoSite
from tests.ops.test_deploy_artefacts import GRAFANA, RULES, full_snapshot
from tests.rigs import wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES
PROMETHEUS_LABELS = {"instance", "job"}  # every scraped series has them
PROMQL_WORDS = {"by", "on", "and", "or", "unless", "sum", "max", "min", "rate", "delta", "abs",
                "histogram_quantile", "without", "ignoring", "le"}


def render(snap: dict[str, Any]) -> str:
    return Metrics(lambda: snap, lambda: datetime.now(UTC)).render().decode()


def reasons(snap: dict[str, Any]) -> set[str]:
    return {r.code for r in evaluate(snap, datetime.now(UTC), 1e9)[1]}


def exported_labels() -> dict[str, set[str]]:
    """Metric name (as queried: counters with `_total`) -> the label names its samples carry."""
    metrics = Metrics(full_snapshot, lambda: datetime.now(UTC))
    metrics.observe("in", "valid", 0.001)
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def grouped_by(expr: str) -> list[set[str]]:
    return [{x.strip() for x in group.split(",")}
            for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)]


def test_grafana_legends_and_groupings_use_labels_the_metrics_carry() -> None:
    carried = exported_labels()
    checked = 0
    for panel in json.loads(GRAFANA.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\b(gate_\w+|up)\b", re.sub(r'"[^"]*"', "", expr)))
            have = set().union(*(carried.get(n, set()) for n in names)) | PROMETHEUS_LABELS
            if "histogram_quantile" in expr:
                have.add("le")
            for group in grouped_by(expr):
                assert group <= have, f"{panel['title']}: groups by {group - have} in {expr}"
            kept = set().union(*grouped_by(expr)) if re.search(r"\b(sum|max|min)\b", expr) \
                else have
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat") or ""))
            assert legend <= kept, f"{panel['title']}: legend {legend - kept} not in {expr}"
            checked += 1
    assert checked >= 30


def test_the_reasons_table_shows_only_the_reasons_in_force_now() -> None:
    """A table over a range query lists every series that had a sample in the dashboard's time
    range: "Health reasons in force" showed reasons that had ended hours ago."""
    tables = [p for p in json.loads(GRAFANA.read_text())["panels"] if p["type"] == "table"]
    assert any(p["title"] == "Health reasons in force" for p in tables)
    for panel in tables:
        for target in panel["targets"]:
            assert target.get("instant") is True and target.get("range") is not True, \
                panel["title"]
            assert target.get("format") == "table", panel["title"]


def test_alert_rules_label_and_group_by_what_the_metrics_carry() -> None:
    carried = exported_labels()
    text = RULES.read_text()
    rules = re.split(r"\n\s+- alert: ", text)[1:]
    assert len(rules) >= 13
    for rule in rules:
        name = rule.split("\n", 1)[0]
        expr = re.search(r"^\s+expr: (.+)$", rule, re.M).group(1)  # type: ignore[union-attr]
        metrics = set(re.findall(r"\b(gate_\w+|up)\b", re.sub(r'"[^"]*"', "", expr)))
        have = set().union(*(carried.get(n, set()) for n in metrics)) | PROMETHEUS_LABELS
        for group in grouped_by(expr):
            assert group <= have, f"{name}: groups by {group - have}"
        kept = set().union(*grouped_by(expr)) if re.search(r"\b(sum|max|min)\s*by", expr) \
            else have
        kept.add("severity")
        used = set(re.findall(r"\$labels\.(\w+)", rule))
        assert used <= kept, f"{name}: annotations use {used - kept}, not carried by {expr}"
        for matcher in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr):
            assert matcher in have, f"{name}: matches on {matcher}, not a label of {metrics}"


def test_a_release_waiting_for_its_person_shows_until_its_wait_ends(site: DemoSite) -> None:
    """`gate-agent release LANE` (one pulse) nobody walks through: the release shows in the
    lane's status and metrics while it waits, and not after its passage_timeout_ms."""
    rig = LaneRig(site, "audit-release", passage_timeout_ms=1500)
    try:
        _let_one_through(rig.runner, "tech-2")
        passage = rig.runner.get_status()["passage"]
        (waiting,) = passage["releases_waiting"]
        assert (waiting["by"], waiting["directions"], passage["waiting"]) == \
            ("tech-2", ["in"], 0)
        text = render({"lanes": [rig.runner.get_status()]})
        assert 'gate_passage_waiting{kind="release",lane="north-in"} 1.0' in text
        assert 'gate_passage_waiting{kind="admit",lane="north-in"} 0.0' in text
        wait_until(lambda: rig.runner.get_status()["passage"]["releases_waiting"] == [], 10,
                   "the release's wait ended")
        assert 'gate_passage_waiting{kind="release",lane="north-in"} 0.0' in \
            render({"lanes": [rig.runner.get_status()]})
        assert rig.runner.passage.totals["free"] == 0 and rig.alarms == []
    finally:
        rig.close()


def test_a_relay_that_cannot_open_says_so_in_status_and_metrics_and_clears(
        site: DemoSite) -> None:
    rig = LaneRig(site, "audit-relay", passage_timeout_ms=60000)
    relay = 'gate_relay_ok{lane="north-in",relay="sim:audit-relay-relay"}'
    try:
        snap = {"lanes": [rig.runner.get_status()], "cache": {"events": [{"items": 1}]}}
        assert f"{relay} 1.0" in render(snap) and "relay_error" not in reasons(snap)
        sim_unplug("audit-relay-relay")
        assert not rig.scan(C["valid"]).pulsed
        snap = {"lanes": [rig.runner.get_status()], "cache": {"events": [{"items": 1}]}}
        assert "relay_error" in reasons(snap)
        assert f"{relay} 0.0" in render(snap)
        # `gate-agent status`: a relay not open is an error even without error text
        lane = rig.runner.get_status()
        lane["relay"] = {**lane["relay"], "ok": False, "last_error": ""}
        report = {"health": "fail", "version": "x", "uptime_s": 1.0, "reasons": [],
                  "lanes": [lane], "journal": {}, "cache": {}, "platform": {}}
        console = Console(width=200, record=True)
        render_status(report, console)
        assert re.search(r"north-in\s*│\s*\S+\s*│\s*error\s*│", console.export_text())
        sim_replug("audit-relay-relay")
        assert rig.scan(C["valid"]).pulsed  # tried again at the next admit, and works
        assert sim_relay("audit-relay-relay").pulses
        snap = {"lanes": [rig.runner.get_status()], "cache": {"events": [{"items": 1}]}}
        assert "relay_error" not in reasons(snap) and f"{relay} 1.0" in render(snap)
    finally:
        rig.close()


def test_a_passage_input_not_watched_is_a_reason_and_a_zero() -> None:
    """One input lost (reconnecting), the other never opened: both say 0, with the reason."""
    snap = {"cache": {"events": [{"items": 1}]}, "lanes": [{
        "name": "south", "passage": {
            "inputs": {"in": {"connected": False, "last_error": "gone"}},
            "input_errors": {"out": "no such device"}, "waiting": 0, "releases_waiting": []}}]}
    text = render(snap)
    assert 'gate_passage_input_connected{direction="in",lane="south"} 0.0' in text
    assert 'gate_passage_input_connected{direction="out",lane="south"} 0.0' in text
    assert "passage_input" in reasons(snap)
    snap["lanes"][0]["passage"] = {"inputs": {"in": {"connected": True}}, "waiting": 0}
    assert 'gate_passage_input_connected{direction="in",lane="south"} 1.0' in render(snap)
    assert "passage_input" not in reasons(snap)


def test_the_venue_clock_offset_is_exported_once_measured() -> None:
    venue: dict[str, Any] = {"connected": True, "clock_offset_s": None,
                             "clock_unmeasured_since": "2026-12-07T07:00:00.000000Z"}
    snap = {"cache": {"events": [{"items": 1}]}, "venue": venue}
    assert "gate_venue_clock_offset_seconds" not in render(snap)  # unknown, never 0
    assert "venue_clock_unmeasured" in reasons(snap)
    venue.update(clock_offset_s=-7.0, clock_unmeasured_since=None)
    assert "gate_venue_clock_offset_seconds -7.0" in render(snap)
    assert "clock_skew" in reasons(snap)


def test_scan_ages_are_measured_on_the_clock_that_stamped_them() -> None:
    """A corrected clock (the platform's time 8 h behind this one): the oldest pending scan,
    stamped on the platform's time 10 s ago, is 10 s old in status, metrics and heartbeat."""
    wall = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    stamped = utc_iso(wall - timedelta(hours=8, seconds=10))
    snap: dict[str, Any] = {
        "cache": {"events": [{"items": 1}]},
        "journal": {"pending": 1, "oldest_pending": stamped},
        "clock": {"corrected": True, "offset_s": -8 * 3600.0}}
    codes = {r.code for r in evaluate(snap, wall, 1e9)[1]}
    assert "upload_backlog" not in codes and "clock_corrected" in codes
    text = Metrics(lambda: snap, lambda: wall).render().decode()
    assert "gate_oldest_pending_age_seconds 10.0" in text
    assert compact(snap, wall, RateWindow())["queue"]["oldest_pending_age_s"] == 10.0
    snap["clock"] = {"corrected": False, "offset_s": -8 * 3600.0}  # ended: the wall clock
    snap["journal"]["oldest_pending"] = utc_iso(wall - timedelta(minutes=11))
    assert "upload_backlog" in {r.code for r in evaluate(snap, wall, 1e9)[1]}
    # the offset measured again a few ms shorter since the scan was stamped: never a negative
    # age (the metric read -0.012 in a suite run)
    snap["clock"] = {"corrected": True, "offset_s": -8 * 3600.0}
    snap["journal"]["oldest_pending"] = utc_iso(wall - timedelta(hours=8) +
                                                timedelta(milliseconds=12))
    assert "gate_oldest_pending_age_seconds 0.0" in \
        Metrics(lambda: snap, lambda: wall).render().decode()
    assert compact(snap, wall, RateWindow())["queue"]["oldest_pending_age_s"] == 0.0
