"""Every scan's decision is recorded, whatever fails (agent.runtime.decisionnet).

Real lane thread, real SQLite journal and cache, `sim:` relay, lights and display (no relay
board here), the real status evaluation and metrics. A bug cannot be produced for real, so
each test injects the exception at ONE internal boundary of the scan's path — a Gate method
or a lane step replaced (monkeypatch) by one that raises, named in each test — and everything
around it is the product's own; the last also makes the journal itself fail, for real
(`chattr +i` on its WAL)."""

from __future__ import annotations

import logging
import queue
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.config import LaneConfig
from agent.errors import register_secret
from agent.ops.logs import RedactFilter
from agent.ops.metrics import Metrics
from agent.ops.redact import masked_report
from agent.ops.status import evaluate
from agent.runtime.gate import Gate
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.runtime.opening import open_cache, open_journal
from drivers.display import sim_display
from drivers.sim import sim_relay, sim_reset
from tests.conftest import DemoSite
from tests.faults.test_store_faults_running import chattr, needs_chattr

C = demo_data.CODES
TOKEN = "nu-net-test-token-5f2c9e"  # an API token an exception's text might carry
GATE_ERROR_TEXT = "Gate error - see staff"


class NetRig:
    """One single-access entry lane: `sim:` relay, green and red lights, display."""

    def __init__(self, site: DemoSite, name: str):
        sim_reset()
        self.name = name
        self.lane = LaneConfig(name="north-in", gate_id=demo_data.GATE_NORTH, direction="in",
                               max_entries=1, debounce_ms=0, relay=f"sim:{name}-relay",
                               light_green=f"sim:{name}-green", light_red=f"sim:{name}-red",
                               display=f"sim:{name}-display")
        self.events: queue.Queue[LaneEvent] = queue.Queue()
        self.journal_path = site.config.store_dir / "journal.db"
        self.gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
        self.runner = LaneRunner(self.lane, self.gate, self.events.put)
        self.runner.start()
        self.db = sqlite3.connect(self.journal_path)

    def scan(self, code: str) -> LaneEvent:
        self.runner.submit(manual_scan(code, self.lane.name))
        return self.events.get(timeout=10)

    def rows(self, code: str) -> list[tuple[Any, ...]]:
        return self.db.execute(
            "SELECT uuid, admit, status, status_detail, message, upload_state, reason"
            " FROM scans WHERE code = ? ORDER BY seq", (code,)).fetchall()

    def reasons(self) -> dict[str, tuple[str, str]]:
        _health, found = evaluate({"lanes": [self.runner.get_status()],
                                   "cache": {"events": [{"items": 1}]}}, datetime.now(UTC), 1e9)
        return {r.code: (r.level, r.message) for r in found}

    def metrics(self) -> str:
        snap = {"lanes": [self.runner.get_status()]}
        return Metrics(lambda: snap, lambda: datetime.now(UTC)).render().decode()

    def relay_pulses(self) -> int:
        return len(sim_relay(f"{self.name}-relay").pulses)

    def red_pulses(self) -> int:
        return len(sim_relay(f"{self.name}-red").pulses)

    def display(self) -> str:
        return sim_display(f"{self.name}-display")[-1]

    def close(self) -> None:
        self.runner.stop()
        self.gate.close()
        self.db.close()


@pytest.fixture
def net(site: DemoSite) -> Iterator[NetRig]:
    rig = NetRig(site, "dnet")
    yield rig
    rig.close()
    sim_reset()


def raises(message: str) -> Any:
    def injected(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(message)
    return injected


def test_an_error_before_any_row_is_journaled_as_gate_error_shown_counted_and_the_lane_goes_on(
        net: NetRig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Injected at `Gate.facts` (the ticket lookup, inside the journal's transaction)."""
    register_secret(TOKEN)
    assert "decision_failing" not in net.reasons()
    caplog.set_level(logging.ERROR, logger="agent.runtime.lane")
    caplog.handler.addFilter(RedactFilter())  # what the daemon's root handler has (agent.ops.logs)

    def lookup_bug(code: str, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"lookup bug near {TOKEN} for {code}")

    monkeypatch.setattr(net.gate, "facts", lookup_bug)

    event = net.scan(C["valid"])
    decision = event.result.decision
    assert (decision.admit, decision.status, decision.detail) == (False, "denied", "gateError")
    assert not event.pulsed and net.relay_pulses() == 0  # fail closed
    # journaled on its own: one row, the error named in it, kept locally, no token
    [(uuid, admit, status, detail, message, state, reason)] = net.rows(C["valid"])
    assert uuid == event.result.uuid
    assert (admit, status, detail, state) == (0, "denied", "gateError", "local")
    said_error = "RuntimeError: lookup bug near *** for …0001"  # the code masked, as in status
    assert said_error in message and TOKEN not in message
    assert reason == "the decision failed on an error: the code was not decided"
    # shown as a refusal on the lane
    assert net.display() == GATE_ERROR_TEXT and net.red_pulses() == 1
    assert not sim_relay(f"{net.name}-green").pulses
    # counted: lane status, status reason (fail while failing), metric
    status = net.runner.get_status()
    assert (status["last_scan"]["admit"], status["last_scan"]["statusDetail"]) == \
        (False, "gateError")
    errors = status["decision_errors"]
    assert errors["failing_since"] and errors["total"] == {"before_journal": 1,
                                                           "after_journal": 0}
    assert errors["last"]["error"] == said_error
    level, said = net.reasons()["decision_failing"]
    assert level == "fail" and "lane north-in" in said and errors["failing_since"] in said
    assert said_error in said and "gateError" in said
    served = masked_report({"lanes": [status], "reasons": [said]})  # what /status serves
    assert TOKEN not in repr(served) and C["valid"] not in repr(served)
    assert 'gate_decision_errors_total{lane="north-in",stage="before_journal"} 1.0' \
        in net.metrics()

    again = net.scan(C["valid2"])  # the same error (same place): logged without traceback
    assert again.result.decision.detail == "gateError" and again.result.uuid
    assert len(net.rows(C["valid2"])) == 1
    logged = [r for r in caplog.records if "decision failed for scan" in r.getMessage()]
    assert ["Traceback (most recent call last)" in (r.exc_text or "") for r in logged] == \
        [True, False]
    assert "RuntimeError: lookup bug near *** for NU-VALID-0001" in logged[0].exc_text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text  # the traceback too

    monkeypatch.undo()  # the bug gone: the next scan is decided as usual
    admitted = net.scan(C["valid"])
    assert admitted.result.decision.admit and admitted.pulsed and net.relay_pulses() == 1
    assert [r[1:3] for r in net.rows(C["valid"])] == [(0, "denied"), (1, "valid")]
    errors = net.runner.get_status()["decision_errors"]
    assert errors["failing_since"] is None and errors["last_5min"] == 2
    assert net.reasons()["decision_failing"][0] == "warn"  # recent, no longer failing


def test_an_error_after_the_admit_was_committed_keeps_its_row_and_opens_nothing(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at the lane's `_pulse` (after the journal commit, before the relay): the
    admit's row is kept as it is — no second row, not rewritten, not voided (the relay may
    have fired inside a pulse that raised) — and the lane shows a refusal a steward reads."""
    monkeypatch.setattr(net.runner, "_pulse", raises("relay step bug"))
    event = net.scan(C["valid"])
    decision = event.result.decision
    assert (decision.admit, decision.detail) == (False, "gateError")
    assert "a steward must let you through" in decision.message
    assert not event.pulsed and net.relay_pulses() == 0
    [(uuid, admit, status, *_rest)] = net.rows(C["valid"])
    assert (uuid, admit, status) == (event.result.uuid, 1, "valid")
    assert net.display() == GATE_ERROR_TEXT and net.red_pulses() == 1
    errors = net.runner.get_status()["decision_errors"]
    assert errors["total"] == {"before_journal": 0, "after_journal": 1}
    assert errors["last"]["uuid"] == uuid and errors["last"]["error"] == \
        "RuntimeError: relay step bug"
    assert net.reasons()["decision_failing"][0] == "fail"
    assert 'gate_decision_errors_total{lane="north-in",stage="after_journal"} 1.0' \
        in net.metrics()

    monkeypatch.undo()
    assert net.scan(C["valid"]).result.decision.status == "alreadyIn"  # the admit stood
    assert net.scan(C["valid2"]).pulsed  # and the lane works
    assert len(net.rows(C["valid"])) == 2
    assert "decision_failing" in net.reasons() and \
        net.runner.get_status()["decision_errors"]["failing_since"] is None


def test_an_error_inside_the_gate_after_its_commit_keeps_the_committed_row(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected around `Gate._journaled`: the real one commits the row, then an exception is
    raised inside `Gate.scan` (as the venue's settling of a claim can after the commit): the
    net finds the committed row (`Gate.committed`) and journals no second one."""
    journaled = net.gate._journaled

    def commits_then_raises(*args: Any, **kwargs: Any) -> Any:
        journaled(*args, **kwargs)
        raise RuntimeError("bug after the commit")

    monkeypatch.setattr(net.gate, "_journaled", commits_then_raises)
    event = net.scan(C["valid"])
    [(uuid, admit, status, *_rest)] = net.rows(C["valid"])
    assert (uuid, admit, status) == (event.result.uuid, 1, "valid")
    assert (event.result.decision.admit, event.result.decision.detail) == (False, "gateError")
    assert not event.pulsed and net.display() == GATE_ERROR_TEXT
    assert net.runner.get_status()["decision_errors"]["total"]["after_journal"] == 1
    monkeypatch.undo()
    assert net.scan(C["valid2"]).result.decision.admit


def test_an_error_after_the_gate_opened_leaves_the_admit_and_still_reports_it(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at the lane's indicators (`Indicators.show`, after the relay pulse): the
    person went through; the admit stands, nothing else is shown, and the decision still
    reaches the lane's figures and the sink (metrics, decision log)."""
    monkeypatch.setattr(net.runner.indicators, "show", raises("display bug"))
    event = net.scan(C["valid"])  # from the net's sink: the steps after the failed one ran
    assert event.result.decision.admit and event.pulsed and net.relay_pulses() == 1
    [(uuid, admit, *_rest)] = net.rows(C["valid"])
    assert (uuid, admit) == (event.result.uuid, 1)
    status = net.runner.get_status()
    assert status["last_scan"]["admit"] is True and status["decisions_total"] == {"valid": 1}
    assert status["decision_errors"]["total"]["after_journal"] == 1
    monkeypatch.undo()
    assert net.scan(C["valid2"]).result.decision.admit


@needs_chattr
def test_a_journal_that_fails_too_falls_back_to_unrecorded(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at `Gate.facts` while the journal's WAL is immutable for real: the refusal
    cannot be journaled either, so it is counted and reported as unrecorded — still refused,
    shown and counted as a failed decision."""
    assert net.scan(C["valid2"]).result.decision.admit  # the WAL exists, rows go in it
    wal = Path(f"{net.journal_path}-wal")
    monkeypatch.setattr(net.gate, "facts", raises("lookup bug"))
    chattr("+i", wal)
    try:
        event = net.scan(C["valid"])
    finally:
        chattr("-i", wal)
    decision = event.result.decision
    assert (decision.admit, decision.detail, event.result.uuid) == (False, "gateError", None)
    assert net.rows(C["valid"]) == [] and net.relay_pulses() == 1  # valid2's only
    assert net.display() == GATE_ERROR_TEXT
    status = net.runner.get_status()
    assert status["unrecorded_scans"] == 1 and status["journal_error"]
    assert status["decision_errors"]["total"]["before_journal"] == 1
    reasons = net.reasons()
    assert reasons["journal_unavailable"][0] == "fail" and reasons["decision_failing"][0] == "fail"

    monkeypatch.undo()
    assert net.scan(C["valid"]).result.decision.admit  # journal and decisions back
    assert net.runner.get_status()["journal_error"] is None


def test_an_error_while_the_lane_is_released_is_journaled_and_the_hold_untouched(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at `Gate._decide` (which `record_during_release` calls): the scan is journaled
    as denied/gateError like any other, its text shown; the lights are the release's, and
    the relay stays held open (free egress is the release's, never the net's to end)."""
    net.runner.set_release("emergency", True)
    monkeypatch.setattr(net.gate, "_decide", raises("release path bug"))
    event = net.scan(C["valid"])
    [(uuid, admit, status, detail, *_rest)] = net.rows(C["valid"])
    assert (uuid, admit, status, detail) == (event.result.uuid, 0, "denied", "gateError")
    assert net.display() == GATE_ERROR_TEXT and net.red_pulses() == 0
    relay = net.runner.get_status()["relay"]
    assert relay["held"] and relay["on"]  # still held open
    assert net.runner.get_status()["decision_errors"]["total"]["before_journal"] == 1
    monkeypatch.undo()
    assert net.scan(C["valid2"]).result.decision.detail == "releasedGate"
    net.runner.set_release("emergency", False)


class _BrokenClock:
    """A clock whose reading raises (`GateClock.corrected`, read before the gate is asked)."""

    @property
    def corrected(self) -> bool:
        raise RuntimeError("clock bug")


def test_an_error_before_the_gate_is_asked_is_never_taken_for_the_last_scans_row(
        net: NetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at the lane's clock (`LaneRunner.clock`, read before `Gate.scan`): the gate's
    row of the scan before (`Gate.committed`) is not this scan's; this one is journaled."""
    first = net.scan(C["valid"])
    assert first.result.decision.admit and net.gate.committed is not None
    monkeypatch.setattr(net.runner, "clock", _BrokenClock())
    event = net.scan(C["valid2"])
    [(uuid, admit, status, detail, *_rest)] = net.rows(C["valid2"])
    assert (uuid, admit, detail) == (event.result.uuid, 0, "gateError")
    assert [r[:2] for r in net.rows(C["valid"])] == [(first.result.uuid, 1)]
    assert net.runner.get_status()["decision_errors"]["total"]["before_journal"] == 1
