"""Upload once, in process: gates hand scans to a real nats-server, a leader's
`VenueUploader` sends them to the sandbox; a leader that crashes after the platform applied a
batch but before it could record that is replaced by one that resends the *same* request
(uuid and rows), so every scan is applied exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ApiError
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor, Priority
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.journal import Journal
from agent.venue import quarantine, uplink
from agent.venue.budget import LeaderFence, budget_bucket, leader_governor
from agent.venue.election import connect, lease_bucket
from agent.venue.lease import Lease, NotLeader
from agent.venue.node import NodeProcess
from tests.conftest import run_cli
from tests.platform.sync.conftest import backlog, fill_journal, pending_row

pytestmark = pytest.mark.e2e


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(tickets=1000, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


def client(sb: Sandbox) -> PlatformClient:
    return PlatformClient(sb.url, sb.token, sb.company_id, "en", 10.0, Governor(1000),
                          max_retries=0)


async def drain(up: uplink.VenueUploader, timeout_s: float = 30.0) -> None:
    """Upload rounds until the bus holds nothing for the platform and nothing is stored."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await up.lag() or up.undone) and asyncio.get_running_loop().time() < deadline:
        await up.upload_round()


def journal_with(path: Path, rows: list[Any]) -> Journal:
    journal = Journal(path)
    fill_journal(journal, rows)
    return journal


def test_new_leader_resends_a_stored_batch_under_its_uuid_and_acks_without_resending(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    venue = "resend"
    rows = backlog(120, datetime.now(UTC).replace(microsecond=0))
    journals = [journal_with(tmp_path / f"j{i}.db", rows[i * 60:(i + 1) * 60]) for i in (0, 1)]

    async def scenario() -> dict[str, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            for i, journal in enumerate(journals):
                assert await uplink.hand_over(js, venue, f"gate{i}", journal, 7) == 60
                assert journal.pending_count() == 0  # the bus has them now
            kv = await lease_bucket(js, venue, 2.0, 1)
            old = Lease(kv, "old", 2.0)
            assert await old.acquire("t")
            async with client(sandbox) as c:
                first = uplink.VenueUploader(js, venue, c, old, max_batch=50, ack_wait_s=1.0)
                await first.start()
                # the platform applies the batch, the answer is lost: the old leader dies
                # before it can mark it done or ack a message
                sandbox.set_faults(lost_after_commit_rate=1.0)
                with pytest.raises(ApiError):
                    await first.upload_round()
                sandbox.clear_faults()
                stored = list(first.undone)
            await old.release()
            new = Lease(kv, "new", 2.0)
            assert await new.acquire("t")
            async with client(sandbox) as c:
                second = uplink.VenueUploader(js, venue, c, new, max_batch=50, ack_wait_s=1.0)
                await second.start()  # resends the stored batch first
                await drain(second)
                return {"stored": stored, "counters": second.counters,
                        "lag": await second.lag(), "members": dict(second.members)}
        finally:
            await nc.close()

    out = asyncio.run(scenario())
    for journal in journals:
        journal.close()
    received = sandbox.received()
    applied = Counter(u["uuid"] for u in received["uploads"] if "skipped" not in u)
    assert set(applied) == {r.uuid for r in rows} and max(applied.values()) == 1
    skipped = Counter(u.get("skipped") for u in received["uploads"] if "skipped" in u)
    assert skipped == {"replayed request": 50}  # the one resent batch, recorded nowhere
    assert out["stored"][0] in received["requestUuids"]
    assert received["requestUuids"].count(out["stored"][0]) == 2  # same uuid, twice
    assert out["counters"]["batches_resent"] == 1
    assert out["counters"]["redelivered_acked"] == 50
    assert out["lag"] == 0


def test_a_leader_whose_lease_was_taken_sends_nothing(shared_venue_node: NodeProcess,
                                                      sandbox: Sandbox) -> None:
    """The fence before each request asks the bus: a leader whose lease another device holds
    (a partition healed, a pause shorter than our local margin) is refused there."""

    async def scenario() -> tuple[int, int]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            kv = await lease_bucket(js, "fence", 30.0, 1)
            lease = Lease(kv, "old", 30.0)
            assert await lease.acquire("t")
            fence = LeaderFence(await budget_bucket(js, "fence", 1), lease)
            async with client(sandbox) as c:
                c.before_send = fence.check
                await c.activated_events()  # allowed: the lease is ours
                await kv.purge("leader")  # ...until another device takes it
                other = Lease(kv, "other", 30.0)
                assert await other.acquire("t")
                before = sum(sandbox.received()["perEndpoint"].values())
                with pytest.raises(NotLeader):
                    await c.activated_events()
                after = sum(sandbox.received()["perEndpoint"].values())
            governor = Governor(60)
            return after - before, await LeaderFence(fence.kv, other).seed(governor)
        finally:
            await nc.close()

    sent_after_loss, seeded = asyncio.run(scenario())
    assert sent_after_loss == 0
    assert seeded == 1  # the new leader counts the old one's request against its budget


def test_a_new_leader_counts_the_old_leaders_requests_so_failover_never_meets_429(
        shared_venue_node: NodeProcess) -> None:
    """The company allows 20 requests/min, 6 kept for the pairing station: the leader owns
    14. The old leader spends them all and dies; the new leader must wait for the window
    instead of sending (without the request log, it would send 14 more: 28 > 20)."""
    api = {"requests_per_minute": 20, "upload_reserve": 0}

    async def scenario(sb: Sandbox) -> tuple[int, int, bool]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            kv = await lease_bucket(js, "budget", 2.0, 1)
            budget_kv = await budget_bucket(js, "budget", 1)
            old = Lease(kv, "old", 2.0)
            assert await old.acquire("t")
            governor = leader_governor(api, reserve=6)
            assert governor.budget.share == 14
            async with PlatformClient(sb.url, sb.token, sb.company_id, "en", 10.0, governor,
                                      max_retries=0) as c:
                c.before_send = LeaderFence(budget_kv, old).check
                for _ in range(14):
                    await c.activated_events()
            await old.release()
            new = Lease(kv, "new", 2.0)
            assert await new.acquire("t")
            fresh = leader_governor(api, reserve=6)
            seeded = await LeaderFence(budget_kv, new).seed(fresh)
            try:
                await asyncio.wait_for(fresh.acquire(Priority.UPLOAD), 1.0)
                sent_at_once = True
            except TimeoutError:
                sent_at_once = False
            return seeded, fresh.budget.remaining(fresh.clock.now()), sent_at_once
        finally:
            await nc.close()

    with start_sandbox(tickets=100, rpm=20) as sb:
        seeded, remaining, sent_at_once = asyncio.run(scenario(sb))
        assert sb.received()["rateLimited"] == 0
    assert seeded == 14
    assert remaining == 0
    assert not sent_at_once


def test_a_refused_row_is_quarantined_and_the_rest_of_the_venue_batch_delivered(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """A 422 naming two unknown barcodes: those rows go to the venue's quarantine (listed
    by `gate-agent venue quarantine`, requeued by its `--requeue`), every other scan is
    delivered exactly once. A 500 before it neither splits the batch nor changes its uuid."""
    venue = "poison"
    now = datetime.now(UTC).replace(microsecond=0)
    rows = backlog(40, now)
    poison = [pending_row(f"NOPE{i}", now) for i in range(2)]
    journal = journal_with(tmp_path / "j.db", rows[:10] + [poison[0]] + rows[10:] + [poison[1]])

    async def lead(holder: str, first: bool) -> dict[str, Any]:
        """Upload until the bus is drained; the first leader meets a 500 before the 422."""
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            if first:
                assert await uplink.hand_over(js, venue, "gate0", journal, 7) == 42
            lease = Lease(await lease_bucket(js, venue, 30.0, 1), holder, 30.0)
            assert await lease.acquire("t")
            out: dict[str, Any] = {}
            async with client(sandbox) as c:
                up = uplink.VenueUploader(js, venue, c, lease, max_batch=50, ack_wait_s=5.0)
                await up.start()
                if first:
                    sandbox.set_faults(error_rate=1.0)
                    with pytest.raises(ApiError):
                        await up.upload_round()
                    sandbox.clear_faults()
                    [(key, pending)] = up.undone.items()
                    assert list(pending) == [key] and len(pending[key]) == 42  # same uuid
                    assert up.counters["batches_split"] == 0
                    out["key"] = key
                await drain(up)
                out.update(counters=dict(up.counters), lag=await up.lag(),
                           status=up.status.as_dict())
            await lease.release()
            return out
        finally:
            await nc.close()

    def cli(*extra: str) -> dict[str, Any]:
        done = run_cli("venue", "quarantine", "--json", *extra, "--config", str(config))
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    config = tmp_path / "c.toml"
    config.write_text(f'[store]\ndir = "{tmp_path / "store"}"\n[venue]\nname = "{venue}"\n'
                      f'servers = ["{shared_venue_node.url}"]\ndevice = "cli"\n')
    assert cli() == {"venue": venue, "quarantined": [], "requeued": 0}  # no bucket yet
    out = asyncio.run(lead("first", True))
    journal.close()
    received = sandbox.received()
    applied = Counter(u["uuid"] for u in received["uploads"] if "skipped" not in u)
    assert set(applied) == {r.uuid for r in rows} and max(applied.values()) == 1
    assert out["lag"] == 0
    assert out["counters"]["rows_quarantined"] == 2 and out["counters"]["batches_split"] == 1
    assert out["status"]["quarantined_total"] == 2
    refused = [u for u in received["uploads"] if u.get("skipped") == "refused 422"]
    assert {u["requestUuid"] for u in refused} == {out["key"]}  # the uuid the 500 kept
    listed = cli()["quarantined"]
    assert {e["row"]["uuid"] for e in listed} == {p.uuid for p in poison}
    assert all("barcode" in e["reason"] for e in listed)
    # retryable: requeued rows go out again (and are refused again here: still unknown)
    assert cli("--requeue")["requeued"] == 2
    again = asyncio.run(lead("second", False))
    assert again["lag"] == 0 and again["counters"]["rows_quarantined"] == 2
    assert {e["row"]["uuid"] for e in cli()["quarantined"]} == {p.uuid for p in poison}
    refused_twice = Counter(u["uuid"] for u in sandbox.received()["uploads"]
                            if u.get("skipped") == "refused 422")
    assert all(refused_twice[p.uuid] == 2 for p in poison)


def test_unconfirmed_answers_keep_the_uuid_then_quarantine_and_only_success_delivers(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """`success: false` delivers nothing: the same request uuid is tried again (the test
    skips the back-off), after `max_tries` the rows are quarantined, never counted as sent;
    requeued once the platform accepts again, each is applied exactly once."""
    venue = "unconfirmed"
    rows = backlog(5, datetime.now(UTC).replace(microsecond=0))
    journal = journal_with(tmp_path / "j.db", rows)

    async def scenario() -> dict[str, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            assert await uplink.hand_over(js, venue, "gate0", journal, 7) == 5
            lease = Lease(await lease_bucket(js, venue, 30.0, 1), "leader", 30.0)
            assert await lease.acquire("t")
            async with client(sandbox) as c:
                up = uplink.VenueUploader(js, venue, c, lease, max_batch=50, ack_wait_s=5.0,
                                          max_tries=2)
                await up.start()
                sandbox.set_faults(upload_answer="success_false")
                with pytest.raises(ApiError):
                    await up.upload_round()
                assert up.status.sent_total == 0 and up.undone  # kept, not delivered
                up.held.clear()  # skip the back-off
                await up.upload_round()
                held = await quarantine.listing(up.quarantine)
                out = {"held": held, "lag": await up.lag(), "undone": dict(up.undone),
                       "sent": up.status.sent_total}
                sandbox.clear_faults()
                assert await quarantine.requeue(js, up.quarantine, venue) == 5
                await drain(up)
                out["lag_after"], out["sent_after"] = await up.lag(), up.status.sent_total
                return out
        finally:
            await nc.close()

    out = asyncio.run(scenario())
    journal.close()
    assert out["sent"] == 0 and out["lag"] == 0 and out["undone"] == {}
    assert {e["row"]["uuid"] for e in out["held"]} == {r.uuid for r in rows}
    assert all("2 unconfirmed answers" in e["reason"] for e in out["held"])
    received = sandbox.received()["uploads"]
    unconfirmed = [u for u in received if u.get("skipped") == "answered success_false"]
    assert len(unconfirmed) == 10 and len({u["requestUuid"] for u in unconfirmed}) == 1
    applied = Counter(u["uuid"] for u in received if "skipped" not in u)
    assert set(applied) == {r.uuid for r in rows} and max(applied.values()) == 1
    assert out["sent_after"] == 5 and out["lag_after"] == 0


def test_a_new_leader_sends_the_parts_of_a_refused_batch_under_their_stored_uuids(
        shared_venue_node: NodeProcess, sandbox: Sandbox, tmp_path: Path) -> None:
    """The old leader met a 422, quarantined the named row and stored the rest under a new
    request uuid, then died before sending it (no split budget left). The new leader sends
    exactly that part under exactly that uuid; nothing is applied twice, nothing lost."""
    venue = "splitover"
    now = datetime.now(UTC).replace(microsecond=0)
    rows = backlog(20, now)
    poison = pending_row("NOPE-X", now)
    journal = journal_with(tmp_path / "j.db", rows[:5] + [poison] + rows[5:])

    async def scenario() -> dict[str, Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            assert await uplink.hand_over(js, venue, "gate0", journal, 7) == 21
            kv = await lease_bucket(js, venue, 30.0, 1)
            old = Lease(kv, "old", 30.0)
            assert await old.acquire("t")
            async with client(sandbox) as c:
                first = uplink.VenueUploader(js, venue, c, old, max_batch=50, ack_wait_s=1.0,
                                             split_budget=0)
                await first.start()
                assert await first.upload_round() == 0  # refused, split, nothing sent
                [(key, pending)] = first.undone.items()
                [(part, part_rows)] = pending.items()
                assert part != key and len(part_rows) == 20
            await old.release()  # the old leader is gone
            new = Lease(kv, "new", 30.0)
            assert await new.acquire("t")
            async with client(sandbox) as c:
                second = uplink.VenueUploader(js, venue, c, new, max_batch=50, ack_wait_s=1.0)
                await second.start()  # sends the stored part first
                await drain(second)
                return {"key": key, "part": part, "lag": await second.lag(),
                        "counters": dict(second.counters),
                        "held": await quarantine.listing(second.quarantine)}
        finally:
            await nc.close()

    out = asyncio.run(scenario())
    journal.close()
    received = sandbox.received()
    applied = Counter(u["uuid"] for u in received["uploads"] if "skipped" not in u)
    assert set(applied) == {r.uuid for r in rows} and max(applied.values()) == 1
    assert received["requestUuids"] == [out["part"]]  # the stored uuid, once
    refused = {u["requestUuid"] for u in received["uploads"] if u.get("skipped") == "refused 422"}
    assert refused == {out["key"]}
    assert [e["row"]["uuid"] for e in out["held"]] == [poison.uuid]
    assert out["counters"]["batches_resent"] == 1 and out["lag"] == 0


def test_a_spurious_no_keys_is_not_believed_and_a_bus_error_is_not_none() -> None:
    """nats-py's `keys()` can say "no keys" for a bucket that has some (its watcher's race at
    setup, seen in CI); listings ask again before believing it (agent.venue.kvkeys), for the
    quarantine and for a new leader's stored batches alike. The race itself cannot be
    provoked on demand against a real server, so this bucket stands in for nats-py's."""
    from nats.js.errors import NoKeysError

    from agent.venue.kvkeys import live_keys

    class Entry:
        def __init__(self, value: bytes):
            self.value = value

    class RacyBucket:
        def __init__(self, spurious: int, error: Exception | None = None):
            self.spurious, self.error = spurious, error

        async def keys(self) -> list[str]:
            if self.error is not None:
                raise self.error
            if self.spurious:
                self.spurious -= 1
                raise NoKeysError
            return ["u1"]

        async def get(self, key: str) -> Entry:
            return Entry(json.dumps({"row": {"uuid": key}, "reason": "r", "at": "t",
                                     "batch": "b"}).encode())

    assert [e["row"]["uuid"] for e in asyncio.run(quarantine.listing(RacyBucket(2)))] == ["u1"]
    assert asyncio.run(quarantine.listing(RacyBucket(3))) == []  # three times: none, really
    assert asyncio.run(live_keys(RacyBucket(2))) == ["u1"]
    with pytest.raises(TimeoutError):  # the bus's error, not an empty bucket
        asyncio.run(quarantine.count(RacyBucket(0, TimeoutError())))


def test_a_gate_hands_over_no_admit_still_waiting_for_its_passage_or_its_claim(
        shared_venue_node: NodeProcess, tmp_path: Path) -> None:
    """What a member gate hands to the venue's uploader obeys the same holds as its own
    uploader: an admit waiting for its passage (and everything after it, in order) and an
    admit whose venue claim is still in flight stay on the gate until settled."""
    from dataclasses import replace

    from agent.store.passages import PassageLog, await_passage

    venue = "holds"
    now = datetime.now(UTC).replace(microsecond=0)
    rows = backlog(5, now)
    rows[1] = replace(rows[1], venue="claiming")
    journal = journal_with(tmp_path / "j.db", rows[:3])
    with journal.scan_transaction():
        seq = journal.insert(rows[3])
        await_passage(journal, rows[3].uuid, seq, "main", "in", None, "valid", None,
                      rows[3].scanned_on)
    journal.record(rows[4])

    async def hand() -> int:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            return await uplink.hand_over(js, venue, "gate0", journal, 7)
        finally:
            await nc.close()

    try:
        assert asyncio.run(hand()) == 2  # rows 0 and 2
        assert {r["uuid"] for r in journal.pending(10)} == {r.uuid for r in rows[1:2] + rows[3:]}
        assert journal.settle_claim(rows[1].uuid, "claimed")
        assert asyncio.run(hand()) == 1  # its answer came: row 1 goes; 3 still waits
        assert PassageLog(journal).passed(rows[3].uuid, rows[3].scanned_on)
        assert asyncio.run(hand()) == 2  # the person passed: rows 3 and 4
        assert journal.pending(10) == []
    finally:
        journal.close()


def test_the_upload_backlogs_wait_is_measured_on_the_bus_servers_clock(
        shared_venue_node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest undelivered scan's wait (`upload_lag_s`, the VenueUploadBacklog alert) is the
    server's time now minus the time it stored the message: a leader whose own clock is 8 h
    ahead (no real-time clock) showed a scan seconds old as 8 h behind."""
    venue = "lagclock"
    rows = backlog(3, datetime.now(UTC).replace(microsecond=0))
    journal = journal_with(tmp_path / "j.db", rows)

    async def scenario() -> tuple[int, float]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 5.0)
        try:
            await uplink.ensure_upload_stream(js, venue, 1)
            assert await uplink.hand_over(js, venue, "gate1", journal, 7) == 3
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() + 8 * 3600)  # the leader's clock
            try:
                return await uplink.backlog(js, venue)
            finally:
                monkeypatch.setattr(time, "time", real)
        finally:
            await nc.close()

    try:
        messages, waited = asyncio.run(scenario())
    finally:
        journal.close()
    assert messages == 3
    assert 0.0 <= waited < 60.0, waited  # seconds on the server's clock, not 8 h
