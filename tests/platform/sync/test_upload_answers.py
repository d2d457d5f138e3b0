"""What counts as a delivery: only an answer that says success. Unconfirmed answers, request-wide
failures, answers lost after the platform applied the batch, and two uploaders on one journal
— against the sandbox over loopback, counting every row the platform received."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from agent.errors import NotDelivered, NotFound, ServerError, StoreError, Transport
from agent.ops.status import evaluate
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.runtime.opening import open_journal
from agent.sandbox.harness import start_sandbox
from agent.store.journal import iter_all
from tests.conftest import PROJECT_ROOT, run_cli
from tests.platform.sync.conftest import backlog, fill_journal, make_site, noon
from tests.procs import communicate_while, dir_state
from tests.rigs import audit_uploads

STALL_S = 120  # this long with the journal unchanged (no batch claimed or sent): a hang


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _states(journal) -> dict[str, tuple[str, str | None]]:
    return {r["uuid"]: (r["upload_state"], r["batch_uuid"]) for r in iter_all(journal)}


def test_success_false_keeps_the_batch_pending_with_its_uuid_then_quarantines_it(site, sandbox):
    journal = open_journal(site.config)
    rows = backlog(12, noon(sandbox))
    fill_journal(journal, rows)
    sandbox.set_faults(upload_answer="success_false")
    clock = ManualClock()

    async def go():
        async with site.client() as client:
            uploader = site.uploader(journal, client, batch_size=20)
            uploader.max_tries, uploader.clock = 3, clock
            seen = []
            for _ in range(2):
                with pytest.raises(NotDelivered, match="success: false"):
                    await uploader.upload_once()
                seen.append(_states(journal))
                assert await uploader.upload_once() == 0  # backing off: nothing sent
                clock.t += 400
            return seen, await uploader.upload_once(), uploader.get_status()

    try:
        seen, settled, status = asyncio.run(go())
        quarantined = journal.rows(("quarantined",))
    finally:
        journal.close()
    for states in seen:  # still pending, all under the one request uuid
        assert {s for s, _ in states.values()} == {"pending"}
        assert len({b for _, b in states.values()}) == 1
    assert seen[0] == seen[1]
    assert settled == 12 and status["quarantined_total"] == 12 and status["sent"] == 0
    assert all("after 3 tries" in r["reason"] and "success: false" in r["reason"]
               for r in quarantined)
    requests = sandbox.received()["requestUuids"]
    assert len(requests) == 3 and len(set(requests)) == 1
    shown = json.loads(run_cli("queue", "--json", "--config", str(site.config_path)).stdout)
    assert shown["counts"]["quarantined"] == 12 and shown["counts"]["sent"] == 0
    _, reasons = evaluate({"journal": shown["counts"]}, datetime.now(UTC), 3600)
    assert "quarantined_scans" in {r.code for r in reasons}


def test_a_202_to_a_synchronous_upload_is_not_a_delivery(site, sandbox):
    journal = open_journal(site.config)
    rows = backlog(5, noon(sandbox))
    fill_journal(journal, rows)
    sandbox.set_faults(upload_answer="accepted_202")

    async def go():
        async with site.client() as client:
            uploader = site.uploader(journal, client)
            with pytest.raises(NotDelivered, match="202"):
                await uploader.upload_once()
            held = _states(journal)
            sandbox.clear_faults()
            uploader._held.clear()  # the back-off is not what this test is about
            return held, await uploader.drain()

    try:
        held, sent = asyncio.run(go())
        assert journal.counts()["sent"] == 5
    finally:
        journal.close()
    assert {s for s, _ in held.values()} == {"pending"} and sent == 5
    audit = audit_uploads(sandbox.received()["uploads"])
    assert audit["applied"] == {r.uuid: 1 for r in rows} and not audit["resent"]
    assert len(set(sandbox.received()["requestUuids"])) == 1


def test_a_misrouting_404_costs_one_request_and_splits_nothing(site, sandbox):
    """A proxy (or a wrong api.base_url) answering 404 says nothing about the rows."""
    journal = open_journal(site.config)
    fill_journal(journal, backlog(64, noon(sandbox)))

    async def go():
        wrong = PlatformClient(sandbox.url + "/misrouted", sandbox.token, sandbox.company_id,
                               "en", 10, Governor(1000), max_retries=0)
        async with wrong as client:
            uploader = site.uploader(journal, client, batch_size=64)
            with pytest.raises(NotFound):
                await uploader.upload_round()
            return uploader.get_status()

    try:
        status = asyncio.run(go())
        states = _states(journal)
    finally:
        journal.close()
    assert sandbox.received()["perEndpoint"]["POST /misrouted/entry/tickets"] == 1
    assert status["quarantined"] == 0 and status["requests"] == 1
    assert {s for s, _ in states.values()} == {"pending"}
    assert len({b for _, b in states.values()}) == 1


@pytest.mark.parametrize("fault,error", [("lost_after_commit_rate", Transport),
                                         ("error_after_commit_rate", ServerError)])
def test_an_answer_lost_after_commit_is_retried_with_the_same_uuid_and_rows(site, sandbox,
                                                                            fault, error):
    journal = open_journal(site.config)
    rows = backlog(30, noon(sandbox))
    fill_journal(journal, rows)
    sandbox.set_faults(**{fault: 1.0})

    async def go():
        async with site.client() as client:
            uploader = site.uploader(journal, client, batch_size=30)
            with pytest.raises(error):
                await uploader.upload_once()
            applied = sandbox.received()["uploads"]  # the platform did take the batch
            sandbox.clear_faults()
            return applied, await uploader.drain()

    try:
        applied, sent = asyncio.run(go())
        assert journal.counts()["sent"] == 30
    finally:
        journal.close()
    assert sent == 30 and [u["uuid"] for u in applied] == [r.uuid for r in rows]
    report = sandbox.received()
    first, again = report["uploads"][:30], report["uploads"][30:]
    assert [u["uuid"] for u in again] == [u["uuid"] for u in first]  # the same rows ...
    assert len(report["requestUuids"]) == 2 and len(set(report["requestUuids"])) == 1  # uuid
    assert {u.get("skipped") for u in again} == {"replayed request"}
    audit = audit_uploads(report["uploads"])
    assert audit["applied"] == {r.uuid: 1 for r in rows}
    assert audit["duplicates"] == 0 and not audit["resent"] and audit["replays"] == 30


def test_two_uploader_processes_never_send_rows_under_two_uuids(tmp_path):
    """The daemon's uploader and a technician's `gate-agent upload --drain` on one journal:
    two real processes drain 60 batches at once through a slow platform."""
    with start_sandbox(tickets=3000, rpm=5000, async_delay_s=0.01) as sb:
        site = make_site(tmp_path / "g", sb, rpm=5000,
                         extra="[sync]\nupload_batch_size = 20\n")
        journal = open_journal(site.config)
        rows = backlog(1200, noon(sb))
        fill_journal(journal, rows)
        journal.close()
        sb.set_faults(latency_s=0.01)
        procs = [subprocess.Popen([sys.executable, "-m", "agent", "upload", "--drain",
                                   "--config", str(site.config_path)], cwd=PROJECT_ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for proc in procs:  # as long as they take, while the journal keeps changing
            _, err = communicate_while(proc, lambda: dir_state(site.config.store_dir),
                                       stall_s=STALL_S, what="an upload --drain process")
            assert proc.returncode == 0, err
        report = sb.received()
    journal = open_journal(site.config)
    try:
        assert journal.counts()["sent"] == 1200
    finally:
        journal.close()
    audit = audit_uploads(report["uploads"])
    assert audit["applied"] == {r.uuid: 1 for r in rows}
    assert not audit["resent"] and audit["duplicates"] == 0


class Lockstep:
    """A journal (its own connection) whose outbox reads and claims wait for the other
    uploader's at a barrier: both uploaders look at the outbox at the same instant, the race
    two processes meet now and then, made certain."""

    SYNCED = {"pending", "batch", "assign_batch", "claim_batch"}

    def __init__(self, journal, barrier):
        self._journal, self._barrier = journal, barrier

    def __getattr__(self, name):
        real = getattr(self._journal, name)
        if name not in self.SYNCED:
            return real

        def synced(*args, **kwargs):
            try:
                self._barrier.wait(timeout=2)
            except threading.BrokenBarrierError:
                pass  # one side has finished: go on alone
            return real(*args, **kwargs)
        return synced


def test_two_connections_claiming_at_the_same_instant_share_one_uuid(site, sandbox):
    setup = open_journal(site.config)
    rows = backlog(100, noon(sandbox))
    fill_journal(setup, rows)
    setup.close()
    barrier = threading.Barrier(2)
    journals = [open_journal(site.config) for _ in range(2)]

    async def one(journal):
        async with site.client() as client:
            uploader = site.uploader(Lockstep(journal, barrier), client, batch_size=25)
            await uploader.drain()
            return uploader.status.sent_total

    async def both():
        return await asyncio.gather(*(one(j) for j in journals))

    try:
        counted = asyncio.run(both())
        assert journals[0].counts()["sent"] == 100
        # Both sent every batch; each row is counted by the one uploader that marked it.
        assert sum(counted) == 100, counted
    finally:
        for journal in journals:
            journal.close()
    audit = audit_uploads(sandbox.received()["uploads"])
    assert audit["applied"] == {r.uuid: 1 for r in rows}
    assert not audit["resent"] and audit["duplicates"] == 0


class Unmarking:
    """A journal whose `mark_sent` takes nothing (a broken journal, the fault under test)."""

    def __init__(self, journal):
        self._journal = journal

    def __getattr__(self, name):
        return getattr(self._journal, name)

    def mark_sent(self, uuids, sent_at):
        return 0


def test_a_delivered_batch_left_pending_stops_the_drain_instead_of_resending_it(site, sandbox):
    journal = open_journal(site.config)
    fill_journal(journal, backlog(30, noon(sandbox)))

    async def drain():
        async with site.client() as client:
            uploader = site.uploader(Unmarking(journal), client, batch_size=25)
            with pytest.raises(StoreError, match="still holds 25 of them as pending") as caught:
                await asyncio.wait_for(uploader.drain(), timeout=60)
            return uploader, caught.value

    try:
        uploader, error = asyncio.run(drain())
        assert journal.counts()["pending"] == 30
    finally:
        journal.close()
    assert uploader.status.last_error == str(error) and uploader.status.sent_total == 0
    assert len(sandbox.received()["requestUuids"]) == 1  # one request, not a loop of them
