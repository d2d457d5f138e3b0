"""Exactly-once across a crash, and the journal bookkeeping of batch isolation.

The dangerous moment is after the platform has recorded a batch and before the journal marks
it sent: the batch uuid was committed before the send, so the next run resends the very same
request and the platform answers from its idempotency store, recording nothing twice.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

from agent.errors import Validation
from agent.platform.upload import Uploader
from agent.runtime.opening import open_journal
from agent.store.journal import iter_all
from tests.conftest import PROJECT_ROOT
from tests.platform.sync.conftest import backlog, fill_journal, noon


class HoldAfterRecording(list):
    """Stands in for the sandbox's list of request uuids: the first append happens after the
    batch was recorded and before the answer leaves; it signals, then holds the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded = threading.Event()
        self.release = threading.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        if not self.recorded.is_set():
            self.recorded.set()
            self.release.wait(20)


def test_a_process_killed_between_send_and_mark_resends_the_same_batch(site, sandbox):
    journal = open_journal(site.config)
    rows = backlog(40, noon(sandbox))
    fill_journal(journal, rows)
    journal.close()
    hold = HoldAfterRecording()
    sandbox.state.received.request_uuids = hold
    proc = subprocess.Popen([sys.executable, "-m", "agent", "upload", "--config",
                             str(site.config_path)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hold.recorded.wait(30), "the upload never reached the sandbox"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        hold.release.set()
    journal = open_journal(site.config)
    try:
        before = list(iter_all(journal))
        assert {r["upload_state"] for r in before} == {"pending"}  # never marked
        batch = {r["batch_uuid"] for r in before}
        assert batch == {hold[0]}

        async def again():
            async with site.client() as client:
                return await site.uploader(journal, client).drain()

        assert asyncio.run(again()) == 40
        assert journal.counts()["sent"] == 40
    finally:
        journal.close()
    report = sandbox.received()
    assert report["requestUuids"] == [hold[0], hold[0]]  # the same request, twice
    applied = Counter(u["uuid"] for u in report["uploads"] if not u.get("skipped"))
    assert applied == Counter(r.uuid for r in rows)
    # every row the platform received came under the one request uuid, twice at most
    assert {u["requestUuid"] for u in report["uploads"]} == {hold[0]}
    assert Counter(u["uuid"] for u in report["uploads"]) == Counter({r.uuid: 2 for r in rows})


class RefusingClient:
    """A platform that refuses, without naming rows, any batch holding a bad barcode, and
    remembers which rows each request uuid carried."""

    def __init__(self, bad: set[str]):
        self.bad = bad
        self.requests: dict[str, list[str]] = {}
        self.recorded: list[str] = []
        self.calls: list[bool] = []  # refused?

    async def upload_scans(self, request_uuid: str, tickets: list[dict[str, Any]]) -> Any:
        members = [t["uuid"] for t in tickets]
        refused = any(t["barcode"] in self.bad for t in tickets)
        self.calls.append(refused)
        assert self.requests.setdefault(request_uuid, members) == members, \
            "a request uuid was reused for different rows"
        if any(t["barcode"] in self.bad for t in tickets):
            raise Validation("422", errors={"tickets": ["The given data was invalid."]})
        self.recorded.extend(members)
        return {"success": True}


def test_unnamed_422_halves_until_the_bad_rows_are_alone(tmp_path):
    from agent.store.journal import Journal

    journal = Journal(tmp_path / "journal.db")
    rows = backlog(16, noon_like())
    bad_codes = {rows[5].barcode, rows[11].barcode}
    fill_journal(journal, rows)
    client = RefusingClient(bad_codes)
    uploader = Uploader(journal, client, batch_size=16)  # type: ignore[arg-type]
    try:
        assert asyncio.run(uploader.drain()) == 16
        states = {r["uuid"]: r["upload_state"] for r in iter_all(journal)}
    finally:
        journal.close()
    bad_uuids = {rows[5].uuid, rows[11].uuid}
    assert {u for u, s in states.items() if s == "quarantined"} == bad_uuids
    assert Counter(client.recorded) == Counter(r.uuid for r in rows if r.uuid not in bad_uuids)
    assert len(client.requests) <= 1 + 2 * 2 * 4  # halving: O(bad * log n) requests


def test_a_split_spends_at_most_its_budget_per_round_and_finishes_later(tmp_path):
    """Eight bad rows spread over 128 (no row named): isolating them all costs more requests
    than one round may spend; the parts left wait, under their own uuids, for later rounds."""
    from agent.platform.upload import SPLIT_BUDGET
    from agent.store.journal import Journal

    journal = Journal(tmp_path / "journal.db")
    rows = backlog(128, noon_like())
    bad = {rows[i].barcode for i in range(5, 128, 16)}
    fill_journal(journal, rows)
    client = RefusingClient(bad)
    uploader = Uploader(journal, client, batch_size=128)  # type: ignore[arg-type]

    async def rounds():
        spent = []  # per round: requests sent after its first refusal
        while journal.pending_count():
            before = len(client.calls)
            await uploader.upload_round()
            calls = client.calls[before:]
            spent.append(len(calls) - 1 - calls.index(True) if True in calls else 0)
        return spent

    try:
        spent = asyncio.run(rounds())
        quarantined = {r["barcode"] for r in iter_all(journal)
                       if r["upload_state"] == "quarantined"}
    finally:
        journal.close()
    assert max(spent) <= SPLIT_BUDGET and len(spent) > 1
    assert quarantined == bad
    assert Counter(client.recorded) == Counter(r.uuid for r in rows if r.barcode not in bad)


def noon_like():
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, 12, tzinfo=UTC)
