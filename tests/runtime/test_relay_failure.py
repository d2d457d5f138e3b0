"""A lane whose relay is missing or fails must not use up the ticket.

Real lane thread, real SQLite journal and cache, the `sim:` relay driver (a real `Output`;
`sim_unplug` makes it fail to open or switch, `fail_next` makes one pulse fail — no relay
board here) and the platform sandbox on a loopback socket for what gets uploaded. The venue
bus is the one boundary left out: the lane's `void_claim` callback is recorded instead (the
daemon passes `VenueBus.void_now`, tested with real nats-server in tests/venue)."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from agent import demo_data
from agent.config import LaneConfig
from agent.ops.status import evaluate
from agent.platform.upload import Uploader
from agent.runtime.gate import Gate
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.runtime.opening import open_cache, open_journal
from agent.sandbox.harness import Sandbox
from agent.store.passages import PassageLog, now_iso
from drivers.display import sim_display
from drivers.sim import sim_relay, sim_replug, sim_reset, sim_unplug
from tests.conftest import DemoSite
from tests.platform.conftest import make_client
from tests.rigs import wait_until

C = demo_data.CODES


class RelayRig:
    """One entry lane (single access) with a `sim:` relay, red light and display."""

    def __init__(self, site: DemoSite, name: str, unplugged: bool = False, **lane: Any):
        sim_reset()
        self.relay_name = f"{name}-relay"
        if unplugged:
            sim_unplug(self.relay_name)  # the USB board has not enumerated yet
        lane.setdefault("relay", f"sim:{self.relay_name}")
        self.lane = LaneConfig(name="north-in", gate_id=demo_data.GATE_NORTH, direction="in",
                               max_entries=1, debounce_ms=0, light_red=f"sim:{name}-red",
                               display=f"sim:{name}-display", **lane)
        self.events: queue.Queue[LaneEvent] = queue.Queue()
        self.voided_claims: list[dict[str, Any]] = []
        self.gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
        self.runner = LaneRunner(self.lane, self.gate, self.events.put,
                                 void_claim=self.voided_claims.append)
        self.runner.start()
        self.db = sqlite3.connect(site.config.store_dir / "journal.db")
        self.name = name

    def scan(self, code: str) -> LaneEvent:
        self.runner.submit(manual_scan(code, self.lane.name))
        return self.events.get(timeout=10)

    def scan_row(self, uuid: str | None) -> tuple[Any, ...]:
        return self.db.execute("SELECT admit, status, status_detail, message FROM scans"
                               " WHERE uuid = ?", (uuid,)).fetchone()

    def passage_row(self, uuid: str | None) -> tuple[Any, ...] | None:
        return self.db.execute("SELECT state, admitted_status, note FROM passages"
                               " WHERE uuid = ?", (uuid,)).fetchone()

    def reasons(self) -> dict[str, tuple[str, str]]:
        _health, found = evaluate({"lanes": [self.runner.get_status()],
                                   "cache": {"events": [{"items": 1}]}}, datetime.now(UTC), 1e9)
        return {r.code: (r.level, r.message) for r in found}

    def close(self) -> None:
        self.runner.stop()
        self.gate.close()
        self.db.close()


@pytest.fixture
def rig_factory(site: DemoSite) -> Iterator[Any]:
    made: list[RelayRig] = []

    def make(**kwargs: Any) -> RelayRig:
        made.append(RelayRig(site, f"rf{len(made)}", **kwargs))
        return made[-1]

    yield make
    for rig in made:
        rig.close()
    sim_reset()


def assert_voided_refusal(rig: RelayRig, event: LaneEvent) -> str:
    """The admit was journaled, then voided: the lane answered a refusal a steward reads."""
    uuid = event.result.uuid
    decision = event.result.decision
    assert uuid and not event.pulsed
    assert (decision.admit, decision.status, decision.detail) == (False, "denied", "notPassed")
    assert decision.message.startswith("Gate did not open")
    admit, status, detail, message = rig.scan_row(uuid)
    assert (admit, status, detail) == (0, "denied", "notPassed")
    assert message.startswith("Gate did not open")
    state, admitted, note = rig.passage_row(uuid)  # the admit as decided is kept
    assert (state, admitted) == ("voided", "valid") and rig.lane.relay in note
    last = rig.runner.get_status()["last_scan"]
    assert (last["admit"], last["statusDetail"]) == (False, "notPassed")
    assert last["message"].startswith("Gate did not open")
    assert sim_display(f"{rig.name}-display")[-1] == "Gate did not open - staff"
    assert sim_relay(f"{rig.name}-red").pulses, "the refusal pattern was not shown"
    return uuid


def test_relay_missing_at_start_is_opened_at_the_next_admit(rig_factory: Any) -> None:
    rig = rig_factory(unplugged=True)
    assert rig.runner.relay is not None  # kept, to be opened again
    relay = rig.runner.get_status()["relay"]
    assert (relay["url"], relay["ok"], relay["open"]) == (rig.lane.relay, False, False)
    level, message = rig.reasons()["relay_error"]
    assert level == "fail" and "north-in" in message and rig.lane.relay in message
    assert "unplugged" in message and "cable" in message

    refused = rig.scan(C["valid"])  # still missing: the ticket must not be used up
    assert_voided_refusal(rig, refused)
    assert rig.voided_claims and rig.voided_claims[0]["uuid"] == refused.result.uuid
    assert "gate did not open" in rig.voided_claims[0]["why"]

    sim_replug(rig.relay_name)
    admitted = rig.scan(C["valid"])  # same ticket, relay back: admitted and pulsed
    assert admitted.result.decision.admit and admitted.pulsed
    assert len(sim_relay(rig.relay_name).pulses) == 1
    relay = rig.runner.get_status()["relay"]
    assert (relay["ok"], relay["last_error"]) == (True, "")
    assert rig.runner.relay_error is None and "relay_error" not in rig.reasons()
    assert not rig.scan(C["valid"]).result.decision.admit  # single access: used now


def test_failed_pulse_voids_the_admit_and_uploads_it_as_failed(
        rig_factory: Any, sandbox: Sandbox) -> None:
    rig = rig_factory()
    assert rig.runner.get_status()["relay"]["ok"] is True and "relay_error" not in rig.reasons()
    sim_relay(rig.relay_name).fail_next = 1  # the board refuses one pulse
    voided = assert_voided_refusal(rig, rig.scan(C["valid2"]))
    assert rig.runner.get_status()["relay"]["ok"] is False
    assert rig.reasons()["relay_error"][0] == "fail"
    assert rig.runner.relay_error and "simulated relay failure" in rig.runner.relay_error

    again = rig.scan(C["valid2"])  # the ticket is usable again, and the relay works
    assert again.result.decision.admit and again.pulsed
    assert rig.runner.relay_error is None  # a good pulse clears the lane's warning
    assert rig.runner.relay is not None and rig.runner.relay.last_error == ""
    assert "relay_error" not in rig.reasons()

    async def upload() -> int:
        async with make_client(sandbox) as client:
            return await Uploader(rig.gate.journal, client, batch_size=50).drain()

    assert asyncio.run(upload()) == 2
    sent = [r for r in sandbox.received()["uploads"] if r["uuid"] in (voided, again.result.uuid)]
    by_uuid = {r["uuid"]: r for r in sent}
    assert len(sent) == 2  # each once: the voided admit never went as an entry
    assert by_uuid[voided]["status"] == "failed"
    assert by_uuid[voided]["statusDetail"].startswith("denied/notPassed: Gate did not open")
    assert by_uuid[again.result.uuid]["status"] == "scanned"


def test_a_waiting_passage_of_a_failed_pulse_is_voided_not_left_waiting(
        rig_factory: Any) -> None:
    """On a lane with a passage input the admit's wait (which holds the upload) is settled
    at once as voided, not left for the passage timeout to guess at."""
    rig = rig_factory(passage_in=f"sim:{'rfp'}-pass", passage_timeout_ms=60_000)
    wait_until(lambda: rig.runner.passage.inputs["in"].connected, 5, "passage input")
    sim_relay(rig.relay_name).fail_next = 1
    voided = assert_voided_refusal(rig, rig.scan(C["valid"]))
    assert rig.runner.get_status()["passage"]["waiting"] == 0
    assert rig.passage_row(voided)[0] == "voided"
    assert rig.scan(C["valid"]).result.decision.admit


def test_a_lane_without_a_relay_still_admits(rig_factory: Any) -> None:
    """A lane that only records: nothing to open, nothing voided, no relay reason."""
    rig = rig_factory(relay=None)
    event = rig.scan(C["valid"])
    assert event.result.decision.admit and not event.pulsed
    assert rig.scan_row(event.result.uuid)[:2] == (1, "valid")
    assert rig.passage_row(event.result.uuid) is None
    assert rig.runner.get_status()["relay"] is None and "relay_error" not in rig.reasons()


def test_status_fails_for_a_configured_relay_that_does_not_work() -> None:
    def reasons(lane: dict[str, Any]) -> dict[str, tuple[str, str]]:
        snap = {"lanes": [{"name": "north", **lane}], "cache": {"events": [{"items": 1}]}}
        return {r.code: (r.level, r.message) for r in evaluate(snap, datetime.now(UTC), 1e9)[1]}

    ok = {"url": "sim:a", "open": True, "ok": True, "last_error": ""}
    assert "relay_error" not in reasons({"relay": ok, "relay_out": None})
    assert "relay_error" not in reasons({"relay": None})  # no relay configured
    broken = {"url": "gpio:gpiochip0:17", "open": False, "ok": False, "last_error": "gone"}
    for lane in ({"relay": broken}, {"relay": ok, "relay_out": broken}):
        level, message = reasons(lane)["relay_error"]
        assert level == "fail" and "north" in message and "gpio:gpiochip0:17" in message
        assert "gone" in message


def test_an_admit_the_upload_took_already_is_not_voided(rig_factory: Any) -> None:
    """Never both: an admit claimed for upload (it may be on its way as an entry) is not
    rewritten to a refusal; it stands, and `void_unopened` says so (None)."""
    rig = rig_factory()
    result = rig.scan(C["valid"]).result
    uuid = result.uuid
    journal = rig.gate.journal
    assert [r["uuid"] for r in journal.claim_batch(10, "b1")] == [uuid]
    assert PassageLog(journal).void_unopened(uuid, result.seq, now_iso(), "relay failed") is None
    assert rig.scan_row(uuid)[:2] == (1, "valid") and rig.passage_row(uuid) is None


def test_a_relay_with_no_driver_voids_every_admit_and_fails_status(rig_factory: Any) -> None:
    """No driver can be made for the URL (a backend's package missing, an unknown scheme):
    nothing to open again, so each admit is voided and status names the cause."""
    rig = rig_factory(relay="nosuch:relay")
    assert rig.runner.relay is None
    assert_voided_refusal(rig, rig.scan(C["valid"]))
    assert_voided_refusal(rig, rig.scan(C["valid"]))  # still usable: nothing used it up
    level, message = rig.reasons()["relay_error"]
    assert level == "fail" and "nosuch:relay" in message and "unknown output scheme" in message
