"""The lane rig of the passage tests (tests/runtime/test_passage.py, test_turnstile_signals.py):
one lane with every signal wired to `sim:` drivers named after the test, on the real lane
thread, SQLite journal and cache. The `rig` fixture (tests/runtime/conftest.py) builds one
from the test's `lane(...)` marker."""

from __future__ import annotations

import queue
import sqlite3
from typing import Any

from agent import demo_data
from agent.config import LaneConfig
from agent.runtime.gate import Gate
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.runtime.opening import open_cache, open_journal
from drivers.sim import sim_reset
from tests.conftest import DemoSite
from tests.rigs import wait_until


class LaneRig:
    """One lane with every signal wired to `sim:` drivers named after the test."""

    def __init__(self, site: DemoSite, name: str, **lane: Any):
        sim_reset()
        self.name = name
        settings: dict[str, Any] = {
            "direction": "in", "max_entries": 1, "passage_in": f"sim:{name}-pass",
            "relay": f"sim:{name}-relay", **lane}
        self.lane = LaneConfig(
            name="north-in", gate_id=demo_data.GATE_NORTH, debounce_ms=0,
            light_green=f"sim:{name}-green", light_red=f"sim:{name}-red",
            buzzer=f"sim:{name}-buzz", display=f"sim:{name}-display", **settings)
        self.events: queue.Queue[LaneEvent] = queue.Queue()
        self.alarms: list[tuple[str, str]] = []
        self.voided_claims: list[dict[str, Any]] = []  # what the venue would be told
        self.gate = Gate(open_cache(site.config), open_journal(site.config), site.config)
        self.runner = LaneRunner(self.lane, self.gate, self.events.put,
                                 lambda lane, kind, _detail: self.alarms.append((lane, kind)),
                                 void_claim=self.voided_claims.append)
        self.runner.start()
        self.db = sqlite3.connect(site.config.store_dir / "journal.db")
        wait_until(lambda: self.runner.passage.inputs["in"].connected, 5, "passage input")

    def scan(self, code: str) -> LaneEvent:
        self.runner.submit(manual_scan(code, self.lane.name))
        return self.events.get(timeout=10)

    def passage(self, uuid: str) -> str | None:
        row = self.db.execute("SELECT state FROM passages WHERE uuid = ?", (uuid,)).fetchone()
        return row[0] if row else None

    def scan_row(self, uuid: str) -> tuple[Any, ...]:
        return self.db.execute("SELECT admit, status, status_detail FROM scans WHERE uuid = ?",
                               (uuid,)).fetchone()

    def close(self) -> None:
        self.runner.stop()
        self.gate.close()
        self.db.close()
