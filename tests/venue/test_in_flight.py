"""A claim in flight: the admit is committed as 'claiming' while the bus answers, then settled.

Real gates and SQLite files on a real nats-server. "The bus does not answer" is a real server
stopped with SIGSTOP: the gate's connection stays up (nothing tells the client), the claim
waits in the server's socket and is stored when the server runs again, exactly as a stalled
or overloaded node behaves."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.core.codes import utc_iso
from agent.store.journal import VOIDED_CLAIM, Journal, JournalRow
from agent.venue import bus as bus_module
from agent.venue.claims import Claim
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until

CODE = demo_data.bulk_barcode(3)


def scan(device: VenueDevice, code: str = CODE, debounce: bool = True) -> tuple[bool, str, float]:
    """A read as a lane makes it (with its monotonic time: the lane's debounce is armed), or,
    `debounce` off, as a technician's `gate-agent scan` (never a repeated read)."""
    gate = device.gate()
    started = time.perf_counter()
    result = gate.scan(code, gate.config.lane("north-in"), datetime.now(UTC),
                       mono_ms=int(time.monotonic() * 1000) if debounce else None)
    return result.decision.admit, result.decision.status, time.perf_counter() - started


def rows_of(device: VenueDevice, code: str = CODE) -> list[dict[str, Any]]:
    return [r for r in device.journal_rows() if r["code"] == code]


def knows(device: VenueDevice, uuid: str) -> bool:
    store = device.venue_store()
    try:
        return store.conn.execute("SELECT 1 FROM venue_scans WHERE uuid = ?",
                                  (uuid,)).fetchone() is not None
    finally:
        store.close()


def landings(device: VenueDevice) -> list[list[dict[str, Any]]]:
    """Wrap the device's `land` (waiting for the answer): each call records the claim's rows
    as another connection reads them at that instant."""
    link = device.gate().venue
    assert link is not None
    real = link.land
    seen: list[list[dict[str, Any]]] = []

    def land(claim: Claim) -> Claim:
        seen.append([r for r in device.journal_rows() if r["uuid"] == claim.uuid])
        return real(claim)

    link.land = land  # type: ignore[method-assign]
    return seen


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` in state T (stopped), as /proc shows it."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            return False
    return bool(states) and all(state in ("T", "t") for state in states)


@contextmanager
def stalled(node: NodeProcess) -> Iterator[None]:
    """The node stopped (SIGSTOP) until the block ends: the test goes on only once every
    thread of it is seen stopped (a thread that was running is stopped a moment later)."""
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _all_threads_stopped(node.proc.pid), 5, "the node stopped")
        yield
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)


def test_the_admit_is_committed_while_its_claim_is_on_the_way(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        seen = landings(a)
        admit, status, _ = scan(a)
        assert admit, status
        # when the lane began waiting for the answer, the admit was durable, as 'claiming'
        ((before,),) = seen
        assert (before["venue"], before["admit"]) == ("claiming", 1)
        # granted: the bus thread marks it claimed, off the lane's hot path
        wait_until(lambda: rows_of(a)[0]["venue"] == "claimed", 5, "the row settled")
        (row,) = rows_of(a)
        assert (row["uuid"], row["venue"], row["admit"], row["upload_state"]) == \
            (before["uuid"], "claimed", 1, "pending")
        wait_until(lambda: knows(b, row["uuid"]), 5, "b applies the claim")
        assert scan(b)[1] == "alreadyIn"
        assert a.bus.counters["claims_granted"] == 1


def test_a_conflict_in_flight_voids_the_row_and_decides_again(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        # b's consumer stalls, so b decides from a venue.db that lacks a's admit
        release = threading.Event()
        real_apply = b.bus._apply

        def stalled_apply(*args: Any) -> None:
            release.wait(10)
            real_apply(*args)

        b.bus._apply = stalled_apply  # type: ignore[method-assign]
        seen = landings(b)
        assert scan(a)[0]
        link = b.gate().venue
        assert link is not None
        real_land = link.land

        def land_then_catch_up(claim: Claim) -> Claim:
            landed = real_land(claim)
            release.set()  # the conflict is known: the consumer may catch up now
            return landed

        link.land = land_then_catch_up  # type: ignore[method-assign]
        admit, status, _ = scan(b)
        # decided again: alreadyIn (not duplicateRead: the redo is the same read, not a second)
        assert not admit and status == "alreadyIn"
        assert seen and seen[0][0]["venue"] == "claiming"  # it had gone in flight
        voided, refused = rows_of(b)
        assert (voided["admit"], voided["venue"], voided["upload_state"],
                voided["status_detail"]) == (0, "void", "local", VOIDED_CLAIM)
        assert "conflicted" in voided["reason"]
        assert (refused["admit"], refused["status"]) == (0, "alreadyIn")
        assert b.bus.counters["claims_conflicted"] >= 1
        # the void row is never published: a's admit is the ticket's only scan on the bus
        b.bus.wake()
        time.sleep(0.5)
        assert not knows(a, voided["uuid"])


def test_no_answer_in_flight_policy_local_keeps_the_admit_offline(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5, timeout_ms=200) as (a, b):
        seen = landings(a)
        with stalled(venue_node):
            assert a.bus.connected  # nothing tells the client the server stalled
            admit, _, took = scan(a)
            assert admit and took < 0.2 + 0.3
            assert seen and seen[0][0]["venue"] == "claiming"
            (row,) = rows_of(a)
            assert (row["venue"], row["admit"], row["upload_state"]) == ("offline", 1, "pending")
            assert a.bus.counters["claims_timed_out"] == 1
        # the server runs again: the claim it held is stored, the offline row published too
        # (the same uuid: one scan on the bus), and every gate knows the admit
        wait_until(lambda: knows(b, row["uuid"]), 10, "b learns the admit")
        assert scan(b)[1] == "alreadyIn"
        store = b.venue_store()
        try:
            assert store.conn.execute("SELECT COUNT(*) FROM venue_scans WHERE uuid = ?",
                                      (row["uuid"],)).fetchone() == (1,)
        finally:
            store.close()


def test_no_answer_in_flight_policy_refuse_voids_the_admit_and_refuses(
        tmp_path: Path, venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "SWEEP_AFTER_S", 1.0)
    with venue_devices(tmp_path, [venue_node.url], 2, 5, policy="refuse",
                       timeout_ms=200) as (a, b):
        seen = landings(a)
        with stalled(venue_node):
            admit, status, _ = scan(a)
        assert not admit and status == "denied"
        assert seen and seen[0][0]["venue"] == "claiming"
        voided, refused = rows_of(a)
        assert (voided["admit"], voided["venue"], voided["upload_state"]) == (0, "void", "local")
        assert (refused["admit"], refused["venue"], refused["upload_state"]) == \
            (0, "offline", "pending")
        # the stalled server stored the claim when it ran again: nobody passed on it, so the
        # sweep voids it and the ticket is usable again at every gate
        wait_until(lambda: a.bus.counters["voids"] == 1, 15, "a voids the stored claim")
        # polled without the debounce: a read refused before the void reached b would make
        # every read after it, 10 ms apart, a repeated read of the same code (duplicateRead)
        wait_until(lambda: scan(b, debounce=False)[0], 10, "b may admit the ticket")


def test_a_commit_that_took_the_whole_timeout_still_waits_for_the_answer(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """A loaded device: the admit's commit took longer than claim_timeout_ms while the node was
    slow too. The claim must still get a moment to be answered (claims.MIN_ANSWER_WAIT_S), not
    be decided by the offline policy after waiting 0 ms: with `local` every gate of a race
    would admit. Here the node runs again just after the deadline; the claim is granted."""
    with venue_devices(tmp_path, [venue_node.url], 2, 5, timeout_ms=200) as (a, b):
        link = a.gate().venue
        assert link is not None
        real_land = link.land
        assert venue_node.proc is not None
        pid = venue_node.proc.pid

        def late_land(claim: Claim) -> Claim:
            time.sleep(max(0.0, claim.deadline - time.monotonic()) + 0.02)  # the slow commit
            os.kill(pid, signal.SIGCONT)  # the node answers again, just too late for the timeout
            return real_land(claim)

        link.land = late_land  # type: ignore[method-assign]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: _all_threads_stopped(pid), 5, "the node stopped")
            admit, status, _ = scan(a)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert admit, status
        assert a.bus.counters["claims_granted"] == 1 and a.bus.counters["claims_timed_out"] == 0
        wait_until(lambda: rows_of(a)[0]["venue"] == "claimed", 5, "the row settled")
        wait_until(lambda: knows(b, rows_of(a)[0]["uuid"]), 5, "b applies the claim")
        assert scan(b)[1] == "alreadyIn"


def test_the_publisher_waits_for_a_row_in_flight(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:
            now = utc_iso(datetime.now(UTC))  # after the bus started: not a leftover
            first = JournalRow(
                uuid="in-flight-1", code=CODE, kind="barcode", barcode=CODE, nfc_id=None,
                item_id=100_003, event_id=demo_data.EVENT_ID, zone_id=None,
                zone_is_default=True, gate_id=None, lane="north-in", direction="in",
                admit=True, status="valid", status_detail=None, message="", scanned_on=now,
                venue="claiming", max_entries=1, tracks_exits=True)
            later = JournalRow(**{**{f: getattr(first, f) for f in first.__slots__},
                                  "uuid": "after-it", "admit": False,
                                  "status": "alreadyIn", "venue": None})
            journal.record(first)
            journal.record(later)
            a.bus.wake()
            time.sleep(0.5)
            assert not knows(b, "after-it") and not knows(b, "in-flight-1")
            assert journal.settle_claim("in-flight-1", "offline")
            a.bus.wake()
            wait_until(lambda: knows(b, "after-it") and knows(b, "in-flight-1"), 5,
                       "both published once settled")
        finally:
            journal.close()


def test_a_granted_row_is_settled_when_the_bus_stops(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """A command that scans and exits at once (`gate-agent scan` in venue mode) leaves no
    row 'claiming': the bus settles what was granted before it stops."""
    with venue_devices(tmp_path, [venue_node.url], 1, 5) as (a,):
        assert scan(a)[0]
        a.bus.stop()
        assert [r["venue"] for r in rows_of(a)] == ["claimed"]


def test_a_row_the_lane_could_not_settle_is_settled_by_the_bus(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The lane's own write of the answer fails (injected once: a journal write error at
    that very instant): the admit stands as decided and the bus thread retries the mark; the
    sweep never judges a row of the running process (it would void an admit that opened)."""
    from agent.errors import JournalUnavailable

    with venue_devices(tmp_path, [venue_node.url], 1, 5, timeout_ms=200) as (a,):
        journal = a.gate().journal
        assert journal is not None
        real = journal.settle_claims
        failures: list[list[tuple[str, str]]] = []

        def settle_once_failing(answered: list[tuple[str, str]]) -> int:
            if not failures:
                failures.append(answered)
                raise JournalUnavailable("injected: disk I/O error")
            return real(answered)

        journal.settle_claims = settle_once_failing  # type: ignore[method-assign]
        with stalled(venue_node):
            admit, _, _ = scan(a)
            assert admit and failures  # policy local: the admit stands
            a.bus.wake()  # (its next round may have come already)
            wait_until(lambda: rows_of(a)[0]["venue"] == "offline", 5, "the bus settles it")
        (row,) = rows_of(a)
        assert (row["admit"], row["upload_state"]) == (1, "pending")


def _stream(url: str, stream: str, create: bool) -> None:
    """Delete the venue's stream, or create it again as the bus makes it."""
    import asyncio

    import nats
    from nats.js.api import StorageType, StreamConfig

    from agent.venue.bus import DUPLICATE_WINDOW_S
    from agent.venue.messages import stream_subjects

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            if create:
                await js.add_stream(StreamConfig(
                    name=stream, subjects=[stream_subjects("hall")], storage=StorageType.FILE,
                    num_replicas=1, duplicate_window=DUPLICATE_WINDOW_S))
            else:
                await js.delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(run())


def _session_started(device: VenueDevice) -> None:
    """The bus session has subscribed and read the stream's state (`connected` comes before
    that): a stream deleted earlier fails the session's start, which closes the connection,
    and a claim pending then is cut off ("connection closed", decided by policy)."""
    wait_until(lambda: device.bus._caught_up, 10, f"{device.name}'s bus session started")


def test_a_claim_not_stored_is_sent_again_while_its_time_lasts(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """No stream answers (its leader, or its interest on this node, not there yet: seen in CI
    right after a venue's start, when it made an offline admit in 3 ms): the claim is sent
    again within claim_timeout_ms instead of deciding offline at once."""
    with venue_devices(tmp_path, [venue_node.url], 1, 5, timeout_ms=1500) as (a,):
        _session_started(a)
        _stream(venue_node.url, a.bus.stream, create=False)
        # the stream comes back while the gate is claiming
        timer = threading.Timer(0.15, _stream, args=(venue_node.url, a.bus.stream, True))
        timer.start()
        try:
            admit, status, took = scan(a)
        finally:
            timer.join(10)
        assert admit, status
        rows = rows_of(a)
        # the attempt in flight met no stream: voided; the claim sent again was granted
        assert [(r["venue"], r["admit"]) for r in rows][0] == ("void", 0)
        assert "not stored" in rows[0]["reason"]
        wait_until(lambda: rows_of(a)[-1]["venue"] == "claimed", 5, "the grant settled")
        assert a.bus.counters["claims_granted"] == 1 and a.bus.counters["claims_timed_out"] == 0
        assert 0.1 < took < 1.5


def test_a_claim_never_stored_is_decided_by_policy_within_its_time(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 1, 5, timeout_ms=300) as (a,):
        _session_started(a)
        _stream(venue_node.url, a.bus.stream, create=False)
        admit, _, took = scan(a)
        assert admit and took < 0.3 + 0.3  # policy local, after retrying for its time
        assert rows_of(a)[-1]["venue"] == "offline"
        assert a.bus.counters["claims_timed_out"] == 1
