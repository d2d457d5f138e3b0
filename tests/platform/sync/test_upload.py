"""Uploads against the sandbox: row fields, batch economy, faults and exactly-once, auth pause,
422 isolation and quarantine retry."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from agent.errors import ApiError, RateLimited, Unauthenticated
from agent.runtime.opening import open_journal
from agent.sandbox.harness import start_sandbox
from agent.store.journal import iter_all
from tests.conftest import run_cli
from tests.platform.sync.conftest import (
    EVENT,
    backlog,
    fill_journal,
    make_site,
    noon,
    pending_row,
    uploaded_uuids,
)
from tests.platform.sync.test_sync_passes import first_fill
from tests.rigs import audit_uploads


def test_uploaded_rows_carry_the_documented_fields(site, sandbox):
    now = noon(sandbox)
    main, vip = site.config.lane("main"), site.config.lane("vip")

    async def fill():
        async with site.client() as client:
            await first_fill(site, client)

    asyncio.run(fill())
    gate = site.gate()
    try:
        scans = [gate.scan("SF0000000", main, now),
                 gate.scan("SF0000013", main, now + timedelta(seconds=1)),
                 gate.scan("SF0000004", vip, now + timedelta(seconds=2)),
                 gate.scan("SF0000004", vip, now + timedelta(seconds=3)),
                 gate.scan("0x04A10000000B", main, now + timedelta(seconds=4)),
                 gate.scan("NOT-A-TICKET", main, now + timedelta(seconds=5))]
        long_refusal = pending_row("SF0000006", now + timedelta(seconds=6), admit=False,
                                   message="x" * 400, detail="outsideOfValidityPeriod")
        fill_journal(gate.journal, [long_refusal])
    finally:
        gate.close()
    assert [s.decision.status for s in scans] == [
        "valid", "denied", "valid", "valid", "valid", "denied"]

    async def send():
        journal = open_journal(site.config)
        async with site.client() as client:
            try:
                return await site.uploader(journal, client).drain(), list(iter_all(journal))
            finally:
                journal.close()

    settled, rows = asyncio.run(send())
    assert settled == 6  # the unknown code stays local: no platform item to name
    report = sandbox.received()
    by_uuid = {u["uuid"]: u for u in report["uploads"]}
    journal_by_uuid = {r["uuid"]: r for r in rows}
    assert set(by_uuid) == {r["uuid"] for r in rows if r["upload_state"] == "sent"}
    assert report["requestUuids"] == [rows[0]["batch_uuid"]]  # fixed before the send
    at = [(now + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(7)]
    expect = [
        ("SF0000000", None, "in", "scanned", None, at[0]),
        ("SF0000013", None, "in", "failed", "denied/refunded: Ticket was refunded", at[1]),
        ("SF0000004", 5002, "in", "scanned", None, at[2]),
        ("SF0000004", 5002, "out", "scanned", None, at[3]),
        ("SF0000011", None, "in", "scanned", None, at[4]),
    ]
    sent = [by_uuid[s.uuid] for s in scans[:5]]
    assert [(u["barcode"], u["zoneId"], u["scan"], u["status"], u["statusDetail"],
             u["scannedOn"]) for u in sent] == expect
    assert all(u["eventId"] == EVENT and u["admittedThroughGateId"] == 1 and
               u["scannedBy"] == 7 for u in sent)
    long_row = by_uuid[long_refusal.uuid]
    assert long_row["status"] == "failed" and long_row["scannedOn"] == at[6]
    assert len(long_row["statusDetail"]) == 255
    assert long_row["statusDetail"].startswith("denied/outsideOfValidityPeriod: xxx")
    local = [r for r in journal_by_uuid.values() if r["upload_state"] == "local"]
    assert [r["code"] for r in local] == ["NOT-A-TICKET"]


def test_ten_thousand_scans_drain_in_twenty_requests(tmp_path):
    with start_sandbox(tickets=10_000, rpm=60) as sb:
        site = make_site(tmp_path / "g", sb, rpm=60)
        journal = open_journal(site.config)
        rows = backlog(10_000, noon(sb))
        fill_journal(journal, rows)

        async def go():
            async with site.client() as client:
                return await site.uploader(journal, client).drain()

        try:
            assert asyncio.run(go()) == 10_000
            assert journal.counts()["pending"] == 0
        finally:
            journal.close()
        report = sb.received()
    assert report["perEndpoint"]["POST /entry/tickets"] == 20
    assert report["rateLimited"] == 0
    assert Counter(u["uuid"] for u in report["uploads"]) == Counter(r.uuid for r in rows)


async def drain_until_empty(uploader, rounds: int = 400) -> list[str]:
    """What the upload job does on its schedule: drain, and on failure try again later."""
    errors = []
    for _ in range(rounds):
        try:
            await uploader.drain()
        except ApiError as exc:
            errors.append(type(exc).__name__)
            continue
        if uploader.journal.counts()["pending"] == 0:
            return errors
    raise AssertionError(f"outbox never emptied: {Counter(errors)}")


def test_fault_storms_deliver_every_scan_exactly_once(tmp_path):
    """5xx, dropped connections and latency, then a 429 storm, over many (short) rate
    windows: afterwards the platform holds each journaled scan exactly once."""
    with start_sandbox(tickets=3000, rpm=30, window_s=1.0) as sb:
        site = make_site(tmp_path / "g", sb, rpm=30)
        journal = open_journal(site.config)
        rows = backlog(2000, noon(sb))
        fill_journal(journal, rows)
        sb.set_faults(error_rate=0.2, reset_rate=0.15, latency_s=0.005,
                      lost_after_commit_rate=0.15, error_after_commit_rate=0.1)

        async def go():
            async with site.client() as client:
                uploader = site.uploader(journal, client, batch_size=50)
                faults = await drain_until_empty(uploader)
                return faults, uploader

        try:
            faults, uploader = asyncio.run(go())
            sb.clear_faults()
            more = backlog(2100, noon(sb))[2000:]
            fill_journal(journal, more)
            sb.set_faults(storm=True)

            async def storm():
                async with site.client() as client:
                    up = site.uploader(journal, client, batch_size=50)
                    with pytest.raises(RateLimited):
                        await up.drain()
                    sb.set_faults(storm=False)
                    await up.drain()  # the governor waits out the announced window first
                    return up

            asyncio.run(storm())
            counts = journal.counts()
        finally:
            journal.close()
        report = sb.received()
    assert set(faults) <= {"ServerError", "Transport", "BadResponse"} and faults
    assert counts["pending"] == 0 and counts["sent"] == 2100
    audit = audit_uploads(report["uploads"])  # every row received, duplicates included
    assert audit["applied"] == {r.uuid: 1 for r in rows + more}
    assert audit["duplicates"] == 0 and not audit["resent"]  # never under a new uuid
    assert audit["replays"] > 0  # answers lost after commit were retried with their uuid


def test_the_governor_keeps_a_busy_drain_free_of_429s(tmp_path):
    with start_sandbox(tickets=3000, rpm=20, window_s=1.0) as sb:
        site = make_site(tmp_path / "g", sb, rpm=20)
        journal = open_journal(site.config)
        rows = backlog(1500, noon(sb))
        fill_journal(journal, rows)
        sb.set_faults(error_rate=0.2, reset_rate=0.1)

        async def go():
            async with site.client() as client:
                return await drain_until_empty(site.uploader(journal, client, batch_size=25))

        try:
            asyncio.run(go())
        finally:
            journal.close()
        report = sb.received()
    assert report["rateLimited"] == 0
    assert report["perEndpoint"]["POST /entry/tickets"] >= 60  # several windows' worth
    got = Counter(u["uuid"] for u in report["uploads"] if "skipped" not in u)
    assert set(got) == {r.uuid for r in rows} and max(got.values()) == 1


def test_a_revoked_token_pauses_uploads_and_a_new_one_resumes_them(site, sandbox):
    journal = open_journal(site.config)
    rows = backlog(30, noon(sandbox))
    fill_journal(journal, rows)
    sandbox.revoke_token(sandbox.token)

    async def go():
        async with site.client() as client:
            uploader = site.uploader(journal, client, batch_size=20)
            with pytest.raises(Unauthenticated):
                await uploader.drain()
            paused = uploader.get_status()
            batch = {r["batch_uuid"] for r in journal.pending(100)}
            fresh = sandbox.add_token()
            async with site.client(token=fresh) as again:
                uploader.client = again
                await uploader.drain()
            return paused, batch, uploader.get_status()

    try:
        paused, batch, after = asyncio.run(go())
    finally:
        journal.close()
    assert paused["state"] == "auth_failed" and paused["pending"] == 30 and paused["sent"] == 0
    assert "401" in paused["last_error"]
    assert after["state"] == "ok" and after["sent"] == 30 and after["pending"] == 0
    request_uuids = sandbox.received()["requestUuids"]
    assert request_uuids[0] in batch  # the paused batch went out with its own uuid
    assert Counter(uploaded_uuids(sandbox)) == Counter(r.uuid for r in rows)


def test_422_quarantines_only_the_unknown_row_and_queue_retry_puts_it_back(site, sandbox):
    journal = open_journal(site.config)
    start = noon(sandbox)
    rows = [pending_row(f"SF{i:07d}", start + timedelta(seconds=i)) for i in range(4)]
    bad = pending_row("GONE-0042", start + timedelta(seconds=2))
    rows.insert(2, bad)
    fill_journal(journal, rows)

    async def go():
        async with site.client() as client:
            uploader = site.uploader(journal, client)
            return await uploader.drain(), uploader.get_status()

    try:
        settled, status = asyncio.run(go())
        quarantined = journal.rows(("quarantined",))
    finally:
        journal.close()
    assert settled == 5 and status["sent_total"] == 4 and status["quarantined_total"] == 1
    assert [r["uuid"] for r in quarantined] == [bad.uuid]
    assert "The selected barcode is invalid." in quarantined[0]["reason"]
    assert Counter(uploaded_uuids(sandbox)) == Counter(r.uuid for r in rows if r is not bad)
    assert sandbox.received()["perEndpoint"]["POST /entry/tickets"] == 2
    shown = run_cli("queue", "--json", "--config", str(site.config_path))
    assert '"quarantined": 1' in shown.stdout
    retried = run_cli("queue", "retry", "--config", str(site.config_path))
    assert retried.returncode == 0 and "1 quarantined scan(s) put back" in retried.stdout
    journal = open_journal(site.config)
    try:
        assert [r["uuid"] for r in journal.pending(10)] == [bad.uuid]
    finally:
        journal.close()


def test_a_round_never_chases_new_scans_with_tiny_requests(tmp_path):
    """The scheduled job's round on a busy gate: 1,210 scans waiting (two full batches and a
    partial one), and a new scan arriving after every request. The round sends what was
    pending at its start in 3 requests (the last topped up with two newcomers) and leaves the
    last newcomer for the next round, instead of one request per newcomer."""
    with start_sandbox(tickets=2_000, rpm=1000) as sb:
        site = make_site(tmp_path / "g", sb, rpm=1000)
        journal = open_journal(site.config)
        rows = backlog(1_300, noon(sb))
        fill_journal(journal, rows[:1_210])
        late = iter(rows[1_210:])

        async def go():
            async with site.client() as client:
                uploader = site.uploader(journal, client, batch_size=500)
                real = uploader.upload_once

                async def busy_gate_upload_once():
                    settled = await real()
                    fill_journal(journal, [next(late)])  # a scan arrives meanwhile
                    return settled

                uploader.upload_once = busy_gate_upload_once  # type: ignore[method-assign]
                return await uploader.upload_round()

        try:
            assert asyncio.run(go()) == 1_212
            assert journal.counts()["pending"] == 1
        finally:
            journal.close()
        assert sb.received()["perEndpoint"]["POST /entry/tickets"] == 3
