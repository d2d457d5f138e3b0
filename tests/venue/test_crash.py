"""`kill -9` of a gate between its claim on the bus and its journal commit: the claim must not
stand. The ticket is usable again once the gate restarts, and nothing of the attempt is in the
journal (so nothing is ever uploaded as an entry). Real child process, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent import demo_data
from agent.venue.node import NodeProcess
from tests.conftest import PROJECT_ROOT
from tests.venue.rig import venue_devices, wait_until

CODE = demo_data.bulk_barcode(2)


def test_kill_between_claim_and_commit_voids_the_claim_on_restart(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        a.bus.stop()  # device a runs as a child process now
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.venue.crash_child", str(a.config_path), CODE],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline() if child.stdout else ""
            assert line.startswith("CLAIMED"), line
            claim_uuid = line.split()[1]
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(10)
            if child.stdout:
                child.stdout.close()
        lane = b.gate().config.lane("north-in")
        # while the crashed gate is down its claim stands: the ticket is refused (fail closed)
        wait_until(lambda: b.bus.applied_seq >= 1, 5, "b sees the claim")
        assert b.gate().scan(CODE, lane, datetime.now(UTC)).decision.status == "alreadyIn"
        assert not [r for r in a.journal_rows() if r["uuid"] == claim_uuid]
        a.restart_bus()  # the crashed gate comes back: its sweep voids the orphan claim
        wait_until(lambda: a.bus.counters["voids"] == 1, 10, "a voids its claim")
        wait_until(lambda: b.venue_store().conn.execute(
            "SELECT voided FROM venue_scans WHERE uuid = ?", (claim_uuid,)).fetchone() == (1,),
            10, "b applies the void")
        result = b.gate().scan(CODE, lane, datetime.now(UTC))
        assert result.decision.admit  # usable again
        # the crashed attempt left nothing in a's journal: nothing to upload as an entry
        assert not [r for r in a.journal_rows() if r["uuid"] == claim_uuid]
        assert [r["code"] for r in a.journal_rows()] == []
