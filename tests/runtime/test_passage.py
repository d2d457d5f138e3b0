"""Issue 17: passage confirmation, indicators, alarms and releases on one real lane.

Real SQLite journal and cache, the real lane thread, the `sim:` drivers for relay, lights,
display and the passage input (real drivers whose effects are recorded; no turnstile here),
and the platform sandbox on a loopback socket for what gets uploaded."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agent import demo_data
from agent.commands.daemon import render
from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.ops.metrics import Metrics
from agent.ops.status import evaluate
from agent.platform.upload import Uploader
from agent.runtime.display_text import display_text
from agent.runtime.gate import Gate
from agent.runtime.indicators import Indicators
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.runtime.opening import open_cache, open_journal
from agent.runtime.passage import PassageWatch, counting_day_start
from agent.sandbox.harness import Sandbox
from agent.store.journal import Journal
from agent.store.passages import PassageLog
from drivers.display import sim_display
from drivers.inputs import sim_input_pulse, sim_input_set
from drivers.sim import sim_relay, sim_reset
from tests.conftest import DemoSite
from tests.platform.conftest import make_client
from tests.rigs import wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES


@pytest.mark.lane(passage_timeout_ms=5000)
def test_admit_and_pass_stands_and_counts_a_person(rig: LaneRig) -> None:
    event = rig.scan(C["valid"])
    uuid = event.result.uuid
    assert event.result.decision.admit and event.pulsed and uuid
    assert rig.passage(uuid) == "waiting"
    assert [p["ms"] for p in sim_relay(f"{rig.name}-green").pulses] == [1500]
    assert sim_relay(f"{rig.name}-red").pulses == []
    assert sim_display(f"{rig.name}-display") == ["Welcome"]  # short, in api.language
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.passage(uuid) == "passed", 10, "passage confirmed")
    assert rig.scan_row(uuid) == (1, "valid", None)
    status = rig.runner.get_status()["passage"]
    assert status["totals"]["passed"] == 1 and sum(status["people"].values()) == 1
    assert rig.alarms == []
    console = Console(record=True, width=200)
    render({"health": "pass", "version": "t", "uptime_s": 1, "reasons": [], "journal": {},
            "lanes": [rig.runner.get_status()], "cache": {}, "platform": {"disabled": "t"}},
           console)
    shown = console.export_text()
    assert "Passages on north-in:" in shown and "passed 1" in shown and "0 waiting" in shown
    assert not rig.scan(C["valid"]).result.decision.admit  # single access: used now


@pytest.mark.lane(passage_timeout_ms=300)
def test_admit_without_passage_is_voided_reusable_and_uploaded_as_failed(
        rig: LaneRig, sandbox: Sandbox) -> None:
    first = rig.scan(C["valid2"])
    assert first.result.decision.admit and first.result.uuid
    voided = first.result.uuid
    wait_until(lambda: rig.passage(voided) == "voided", 10, "admit voided")
    # the journal keeps both facts: the refusal to upload, and the admit as decided
    assert rig.scan_row(voided) == (0, "denied", "notPassed")
    assert rig.db.execute("SELECT admitted_status FROM passages WHERE uuid = ?",
                          (voided,)).fetchone() == ("valid",)
    wait_until(lambda: sim_relay(f"{rig.name}-red").pulses, 5, "not-passed pattern")
    assert [p["ms"] for p in sim_relay(f"{rig.name}-red").pulses] == [800]
    assert sim_display(f"{rig.name}-display")[-1] == "Not passed - scan again"
    again = rig.scan(C["valid2"])  # the ticket can be used again
    assert again.result.decision.admit, again.result.decision
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.passage(again.result.uuid) == "passed", 10, "second passes")

    async def upload() -> int:
        async with make_client(sandbox) as client:
            return await Uploader(open_journal_for(rig), client, batch_size=50).drain()

    assert asyncio.run(upload()) == 2
    rows = {r["uuid"]: r for r in sandbox.received()["uploads"]}
    assert rows[voided]["status"] == "failed" and "notPassed" in rows[voided]["statusDetail"]
    assert rows[again.result.uuid]["status"] == "scanned"
    assert [r["status"] for r in sandbox.received()["uploads"]
            if r["uuid"] == voided] == ["failed"]  # never sent as an entry


def open_journal_for(rig: LaneRig) -> Any:
    return rig.gate.journal


@pytest.mark.lane(passage_timeout_ms=5000)
def test_upload_holds_an_admit_until_its_passage_is_known(rig: LaneRig) -> None:
    """Nothing from the waiting admit on is claimed for upload; once passed, all is."""
    journal = rig.gate.journal
    assert journal is not None
    before = rig.scan("NO-SUCH-TICKET-1")  # refused, uploadable? unknown codes stay local
    admit = rig.scan(C["valid"])
    after = rig.scan(C["refunded"])
    assert rig.passage(admit.result.uuid) == "waiting"
    assert journal.claim_batch(50, "batch-held") == []
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.passage(admit.result.uuid) == "passed", 10, "passed")
    claimed = [r["uuid"] for r in journal.claim_batch(50, "batch-free")]
    assert claimed == [admit.result.uuid, after.result.uuid]
    assert before.result.uuid not in claimed


@pytest.mark.lane(passage_timeout_ms=5000, held_open_ms=300)
def test_passage_without_admit_and_held_open_raise_alarms(rig: LaneRig, site: DemoSite) -> None:
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.alarms, 10, "forced alarm")
    assert rig.alarms == [("north-in", "forced")]
    sim_input_set(f"{rig.name}-pass", True)  # another one forced, and the arm stays open
    wait_until(lambda: len(rig.alarms) == 3, 10, "held-open alarm")
    assert [k for _, k in rig.alarms] == ["forced", "forced", "held_open"]
    lane = rig.runner.get_status()
    _health, reasons = evaluate({"lanes": [lane], "cache": {"events": [{"items": 1}]}},
                                datetime.now(UTC), 1e9)
    assert {"passage_forced", "held_open"} <= {r.code for r in reasons}
    sim_input_set(f"{rig.name}-pass", False)
    wait_until(lambda: not rig.runner.passage.held_open, 5, "held-open cleared")
    metrics = Metrics(lambda: {"lanes": [rig.runner.get_status()]}, lambda: datetime.now(UTC))
    metrics.alarm("north-in", "forced")
    text = metrics.render().decode()
    for line in ('gate_passages_total{lane="north-in",outcome="forced"} 2.0',
                 'gate_passage_alarms_total{kind="forced",lane="north-in"} 1.0',
                 'gate_zone_people{zone=', 'gate_lane_released{lane="north-in"} 0.0',
                 "gate_emergency_release 0.0"):
        assert line in text, line
    kinds = [k for (k,) in rig.db.execute("SELECT kind FROM lane_events ORDER BY seq")]
    assert kinds == ["people_in", "forced", "people_in", "forced", "held_open"]
    assert len(sim_relay(f"{rig.name}-buzz").pulses) == 3  # the alarm pattern, each time
    assert sum(rig.runner.get_status()["passage"]["people"].values()) == 2  # people count


@pytest.mark.lane(passage_timeout_ms=5000)
def test_people_counted_today_survive_a_restart(rig: LaneRig) -> None:
    """Gap 1 of issue 17: the count is summed back from the journal at start, for the
    counting day only (a passage of the day before is in the journal and does not count)."""
    yesterday = counting_day_start(datetime.now().astimezone(), "06:00") - timedelta(minutes=1)
    rig.db.execute("INSERT INTO lane_events (at, lane, kind, detail) VALUES (?, 'north-in',"
                   " 'people_in', 'default')", (utc_iso(yesterday),))
    rig.db.commit()
    uuid = rig.scan(C["valid"]).result.uuid
    sim_input_pulse(f"{rig.name}-pass")
    wait_until(lambda: rig.passage(uuid) == "passed", 10, "passage confirmed")
    sim_input_pulse(f"{rig.name}-pass")  # forced: a person all the same
    wait_until(lambda: rig.alarms, 10, "forced alarm")
    assert rig.runner.get_status()["passage"]["people"] == {"default": 2}
    rig.runner.stop()
    rig.runner = LaneRunner(rig.lane, rig.gate, rig.events.put)  # the fixture stops this one
    rig.runner.start()
    assert rig.runner.get_status()["passage"]["people"] == {"default": 2}
    assert [e["kind"] for e in rig.runner.passage.log.events()] == ["forced"]  # not one a person


def test_people_count_starts_again_when_the_counting_day_does(tmp_path: Path) -> None:
    sim_reset()
    lane = LaneConfig(name="dayroll", gate_id=1, direction="in", passage_in="sim:dayroll-pass",
                      passage_out="sim:dayroll-out", zone_id=7)
    clock = [datetime(2026, 6, 1, 5, 0).astimezone()]  # before 06:00: the day of 31 May

    def watch() -> PassageWatch:
        w = PassageWatch(lane, Journal(tmp_path / "journal.db"), Indicators(lane),
                         lambda *_: None, clock=lambda: clock[0])
        w.start()
        wait_until(lambda: all(i.connected for i in w.inputs.values()), 5, "inputs")
        return w

    first = watch()
    try:
        for name in ("dayroll-pass", "dayroll-pass", "dayroll-out"):
            sim_input_pulse(name)
        wait_until(lambda: first.totals["forced"] == 3, 10, "three passages")
        assert first.get_status()["people"] == {"7": 1}  # two in, one out
        clock[0] = datetime(2026, 6, 1, 6, 0).astimezone()  # 06:00: a new counting day
        status = first.get_status()
        assert status["people"] == {} and status["people_since"] == utc_iso(clock[0])
    finally:
        first.stop()
        first.log.journal.close()
    assert watch_people(watch) == {}  # the day before is not summed back either
    clock[0] = datetime(2026, 6, 1, 5, 59).astimezone()
    assert watch_people(watch) == {"7": 1}  # ... but it is within that day


def test_pruning_drops_only_old_counted_passages(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        log = PassageLog(journal)
        for at, kind in (("2026-01-01T10:00:00.000000Z", "people_in"),
                         ("2026-01-01T10:00:01.000000Z", "forced"),
                         ("2026-01-03T10:00:00.000000Z", "people_out")):
            log.event(at, "a", kind, None, "default")
        assert log.prune_people("2026-01-02T00:00:00.000000Z") == 1
        assert log.people_since("a", "2026-01-01T00:00:00.000000Z") == {"default": -1}
        assert [e["kind"] for e in log.events()] == ["forced"]  # an alarm is kept
    finally:
        journal.close()


def watch_people(make: Any) -> dict[str, int]:
    w = make()
    try:
        return dict(w.get_status()["people"])
    finally:
        w.stop()
        w.log.journal.close()


@pytest.mark.lane(passage_timeout_ms=5000)
def test_a_released_lane_holds_its_relay_and_journals_scans_as_taken(rig: LaneRig) -> None:
    relay = sim_relay(f"{rig.name}-relay")
    rig.runner.set_release("emergency", True)
    assert relay.state is True and rig.runner.relay is not None and rig.runner.relay.held
    event = rig.scan(C["valid"])
    decision = event.result.decision
    assert (decision.admit, decision.detail, event.pulsed) == (False, "releasedGate", False)
    assert rig.scan_row(event.result.uuid) == (0, "denied", "releasedGate")
    assert relay.pulses == [] and relay.state is True  # no pulse could shut it early
    sim_input_pulse(f"{rig.name}-pass")  # people leaving freely: counted, no alarm
    wait_until(lambda: rig.runner.passage.totals["free"] == 1, 10, "free passage")
    assert rig.alarms == []
    rig.runner.set_release("emergency", False)
    assert relay.state is False
    assert rig.scan(C["valid"]).result.decision.admit  # not counted as an admit before


@pytest.mark.lane(passage_timeout_ms=60000)
def test_stopping_the_lane_lets_a_waiting_admit_stand(rig: LaneRig) -> None:
    """A reload or a stop must not leave an admit holding the upload: it stands."""
    admit = rig.scan(C["valid"])
    assert rig.passage(admit.result.uuid) == "waiting"
    rig.runner.stop()
    assert rig.passage(admit.result.uuid) == "interrupted"
    assert rig.scan_row(admit.result.uuid) == (1, "valid", None)


@pytest.mark.lane(passage_timeout_ms=5000)
def test_a_manual_scan_waits_for_no_passage(rig: LaneRig, site: DemoSite) -> None:
    """`gate-agent scan` (or the daemon's scan op) opens no gate: its admit must not hold
    the upload waiting for a passage nobody will make."""
    other = Gate(open_cache(site.config), open_journal(site.config), site.config)
    try:
        result = other.scan(C["valid2"], rig.lane, datetime.now(UTC))
    finally:
        other.close()
    assert result.decision.admit and rig.passage(result.uuid) is None


def test_an_unwatched_passage_input_lets_admits_stand_and_says_so(site: DemoSite) -> None:
    """No one can see the passage (the contact's GPIO chip is missing): voiding would free
    the ticket for a second person, so the admit stands, counted as unconfirmed."""
    sim_reset()
    lane = LaneConfig(name="north-in", gate_id=demo_data.GATE_NORTH, direction="in",
                      debounce_ms=0, relay="sim:unwatched-relay",
                      passage_in="gpio:/dev/gpiochip-missing:3", passage_timeout_ms=200)
    events: queue.Queue[LaneEvent] = queue.Queue()
    gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
    runner = LaneRunner(lane, gate, events.put)
    runner.start()
    try:
        runner.submit(manual_scan(C["valid"], lane.name))
        event = events.get(timeout=10)
        assert event.result.decision.admit
        status = runner.get_status()
        assert status["passage"]["totals"]["unconfirmed"] == 1
        db = sqlite3.connect(site.config.store_dir / "journal.db")
        try:
            assert db.execute("SELECT state, note FROM passages").fetchall() == \
                [("interrupted", "passage input in not watched")]
        finally:
            db.close()
        _health, reasons = evaluate({"lanes": [status], "cache": {"events": [{"items": 1}]},
                                     "emergency": {"url": "sim:fire", "connected": False,
                                                   "active": False, "error": "gone"}},
                                    datetime.now(UTC), 1e9)
        codes = {r.code: r.level for r in reasons}
        assert codes["passage_input"] == "warn" and codes["emergency_input"] == "warn"
        assert "gpiochip-missing" in next(r.message for r in reasons if r.code == "passage_input")
    finally:
        runner.stop()
        gate.close()


def test_display_texts_follow_the_configured_language() -> None:
    assert display_text("nl-BE", "alreadyIn", "x") == "Al binnen"
    assert display_text("de", "notPassed", "x") == "Nicht durchgegangen"
    assert display_text("sv", "valid", "x") == "Welcome"  # no Swedish: English
    assert display_text("nl", "someNewStatus", "The engine's message") == "The engine's message"
