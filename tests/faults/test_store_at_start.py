"""A store the daemon cannot open at start: venue.db or journal.db not this user's, marked
immutable, on a full disk, or damaged.

Before, venue.db made the daemon exit 1 before any lane opened (under systemd a restart loop: no
/status, no metrics, the gate dark with a reason only in the log), and a journal that could not
be opened was never tried again. Now the daemon stays up and serves /status (fail, naming the
file, why and what to type); every scan is refused — journaled as `storeUnavailable` when only
venue.db is the problem, shown, logged and counted (no journal to record it in) when the journal
is; the relays stay shut except for an emergency release; the file is tried again every
STORE_RETRY_S and the lanes work again by themselves once it opens. Neither file is ever moved
aside or made anew. The daemons here retry every half second, not 5 s
(tests/runtime/daemon/shorter_retries).

Real files (`chattr +i`, a root-owned file beside a daemon running as the service uid, a tiny
tmpfs filled up), the real daemon as a subprocess and a real nats-server for venue.db.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.daemon import Daemon
from agent.runtime.devrun import DaemonProcess
from agent.store.journal import Journal
from agent.store.venue import VenueStore
from agent.venue.node import NodeProcess
from drivers.inputs import send_input
from drivers.sim import send_scan
from tests.conftest import make_site
from tests.faults.test_store_faults_running import chattr, needs_chattr, run_on_a_loop
from tests.hostile.test_storage_faults import _fill_disk, needs_tmpfs, tmpfs  # noqa: F401
from tests.rigs import wait_until
from tests.runtime.daemon.conftest import RETRY_S, Site, wait_synced
from tests.runtime.daemon.conftest import site as daemon_site  # noqa: F401
from tests.runtime.daemon.test_service_user import (
    NEEDS_SERVICE_USER,
    SERVICE_UID,
    Install,
    install,  # noqa: F401 - the fixture
)
from tests.venue.conftest import venue_node  # noqa: F401
from tests.venue.test_daemon_venue import venue_section

C = demo_data.CODES
UNREACHABLE_BUS = 'servers = ["nats://127.0.0.1:9"]'


def _reasons(report: dict[str, Any]) -> dict[str, str]:
    return {r["code"]: r["message"] for r in report["reasons"]}


def _journal_row(store: Path, uuid: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(store / "journal.db")
    try:
        return db.execute("SELECT admit, status_detail, upload_state FROM scans WHERE uuid = ?",
                          (uuid,)).fetchall()
    finally:
        db.close()


def _journal_count(store: Path) -> int:
    db = sqlite3.connect(store / "journal.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM scans").fetchone()[0])
    finally:
        db.close()


def _made(path: Path, store: type[VenueStore] | type[Journal]) -> bytes:
    """`path` made as the daemon makes it, closed (its WAL folded in): its bytes."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    store(path).close()
    return path.read_bytes()


@needs_chattr
@pytest.mark.e2e
def test_venue_db_immutable_at_start_refuses_every_scan_serves_status_and_opens_by_itself(
        daemon_site: Site, venue_node: NodeProcess) -> None:  # noqa: F811
    """The real daemon and nats-server: venue.db marked immutable before the start. The
    daemon comes up (it exited 1 before), /status fails naming the file and the `chattr -i`,
    a scan is refused as storeUnavailable, journaled, with no relay pulse; the fire panel's
    release still holds the relay open. Lifted, the daemon opens it within seconds, the bus
    connects and a valid ticket is admitted — no restart."""
    fire = daemon_site.root / "fire.sock"
    daemon_site.write_config(extra_lanes=venue_section(venue_node.url))
    daemon_site.config.write_text(daemon_site.config.read_text()
                                  + f'\n[device]\nemergency_input = "sim:fire?socket={fire}"\n')
    venue_db = daemon_site.store / "venue.db"
    kept = _made(venue_db, VenueStore)
    chattr("+i", venue_db)
    daemon = daemon_site.daemon(quick_retries=True).start()
    try:
        try:
            daemon.wait_ready()
            report = daemon.status()
            said = _reasons(report)
            assert report["health"] == "fail" and "venue_db_unavailable" in said, said
            assert f"{venue_db} is marked immutable" in said["venue_db_unavailable"]
            assert f"chattr -i -a {venue_db}" in said["venue_db_unavailable"]
            assert "venue_unreachable" not in said  # one reason: there is no bus at all
            assert report["venue"]["open_error"] and not report["venue"]["connected"]
            daemon_site.scanner.write(C["valid"].encode() + b"\r\n")
            (refused,) = daemon.wait_decisions(1)
            assert (refused["admit"], refused["statusDetail"], refused["relay"]) == \
                (False, "storeUnavailable", False)
            assert _journal_row(daemon_site.store, refused["uuid"]) == \
                [(0, "storeUnavailable", "local")]
            assert daemon_site.relay_pulses() == []
            wait_until(fire.exists, 10, "fire input socket")
            send_input(fire, "1")
            wait_until(lambda: daemon.status()["lanes"][0]["relay"]["held"], 10,
                       "the emergency release holding the relay open")
            send_input(fire, "0")
            wait_until(lambda: not daemon.status()["lanes"][0]["relay"]["held"], 10,
                       "the emergency release ended")
            assert daemon.proc is not None and daemon.proc.poll() is None, "it stays up"
            # the venue role works from venue.db: held, not failing a session every second
            assert not [r for r in daemon.records if "venue session ended" in r.get("msg", "")]
        finally:
            chattr("-i", venue_db)
        report = wait_until(lambda: (r := daemon.status())["venue"].get("ready") and r, 30,
                            "venue.db opened again and the bus connected")
        assert "venue_db_unavailable" not in _reasons(report)
        assert report["jobs"]["venue_access"]["runs"] >= 1
        wait_synced(daemon, 30)
        daemon_site.scanner.write(C["valid"].encode() + b"\r\n")
        admitted = daemon.wait_decisions(2)[-1]
        assert (admitted["admit"], admitted["relay"]) == (True, True), admitted
    finally:
        assert daemon.stop() == 0
    assert not [p.name for p in daemon_site.store.iterdir() if "venue.db." in p.name]
    assert kept  # the file the daemon could not open was opened as it was, not made anew


@NEEDS_SERVICE_USER[0]
@NEEDS_SERVICE_USER[1]
@pytest.mark.parametrize("culprit", ["file", "-wal"])
@pytest.mark.e2e
def test_venue_db_of_roots_at_start_names_owner_and_chown_then_opens(
        install: Install, venue_node: NodeProcess, culprit: str) -> None:  # noqa: F811
    """The daemon as the service uid (systemd's User=) finds venue.db (or its -wal) left
    root's by a technician's `sudo`: it stays up, status names the file, uid 0 and the
    `chown`; once chowned, it opens the file by itself."""
    install.config.write_text(install.config.read_text() + venue_section(venue_node.url))
    venue_db = install.store / "venue.db"
    _made(venue_db, VenueStore)
    target = venue_db if culprit == "file" else Path(f"{venue_db}-wal")
    if culprit == "-wal":
        os.chown(venue_db, SERVICE_UID, SERVICE_UID)
        target.write_bytes(b"")
    os.chown(target, 0, 0)
    target.chmod(0o600)
    daemon: DaemonProcess = install.daemon(quick_retries=True).start()
    try:
        daemon.wait_ready()
        said = _reasons(daemon.status())
        assert "venue_db_unavailable" in said, said
        message = said["venue_db_unavailable"]
        assert str(target) in message and "uid 0" in message and "chown" in message, message
        os.chown(target, SERVICE_UID, SERVICE_UID)
        wait_until(lambda: daemon.status()["venue"].get("ready"), 30,
                   "venue.db opened again and the bus connected")
        assert "venue_db_unavailable" not in _reasons(daemon.status())
    finally:
        assert daemon.stop() == 0


@NEEDS_SERVICE_USER[0]
@NEEDS_SERVICE_USER[1]
@pytest.mark.parametrize("with_venue", [False, True], ids=["alone", "venue"])
@pytest.mark.e2e
def test_journal_of_roots_at_start_refuses_counts_and_records_again_by_itself(
        install: Install, venue_node: NodeProcess, with_venue: bool) -> None:  # noqa: F811
    """The daemon as the service uid finds journal.db left root's (0600) by a technician's
    `sudo`: status names the file, uid 0, the `chown` and that it is tried again; a scan is
    refused (journalUnavailable), shown and counted, with no journal to record it and no relay
    pulse. Chowned, the daemon opens the journal within seconds: the next valid scan is
    admitted, journaled and uploaded — no restart (the journal was never tried again before).
    With [venue], the bus ran without the journal: it is started again with it, the venue
    role (which works from the journal) starts, and the admit's claim is settled in it."""
    sock = install.root / "dev" / "entry.sock"
    install.config.write_text(install.config.read_text().replace(
        "debounce_ms = 0", f'debounce_ms = 0\nreaders = ["sim:entry?socket={sock}"]')
        + (venue_section(venue_node.url) if with_venue else ""))
    journal = install.store / "journal.db"
    _made(journal, Journal)  # as root: root's, 0600
    relays = install.root / "dev" / "relays.jsonl"
    daemon: DaemonProcess = install.daemon(quick_retries=True).start()
    try:
        daemon.wait_ready()
        message = _reasons(daemon.status())["journal_unavailable"]
        assert str(journal) in message and "uid 0" in message and "chown" in message, message
        assert "tried again every few seconds" in message
        assert any(f"tried again every {RETRY_S:g} s" in r.get("msg", "")  # not every 5 s
                   for r in daemon.records), [r.get("msg") for r in daemon.records]
        if not with_venue:  # a venue gate's tickets come from the role, which needs the journal
            wait_synced(daemon, 30)
        send_scan(sock, C["valid"])
        (refused,) = daemon.wait_decisions(1)
        assert (refused["admit"], refused["statusDetail"], refused["relay"]) == \
            (False, "journalUnavailable", False)
        assert not relays.exists() or relays.read_text() == ""
        metrics = daemon.get("/metrics").text
        assert 'gate_decisions_total{lane="entry",status="denied"} 1.0' in metrics
        os.chown(journal, SERVICE_UID, SERVICE_UID)
        wait_until(lambda: "journal_unavailable" not in _reasons(daemon.status()), 30,
                   "the journal opened again")
        assert _journal_count(install.store) == 0  # the refusal had nowhere to go
        wait_synced(daemon, 30)
        if with_venue:
            wait_until(lambda: daemon.status()["venue"].get("ready"), 30, "the bus connected")
        send_scan(sock, C["valid"])
        admitted = daemon.wait_decisions(2)[-1]
        assert (admitted["admit"], admitted["relay"]) == (True, True), admitted
        assert _journal_row(install.store, admitted["uuid"])[0][0] == 1
        if with_venue:  # claimed on the bus, the claim settled in the journal by the bus
            wait_until(lambda: daemon.status()["venue"]["decided_claimed"] == 1, 30,
                       "the admit's claim settled in the journal by the bus")
            assert daemon.status()["venue"]["claims_granted"] == 1
        wait_until(lambda: any(u["uuid"] == admitted["uuid"]
                               for u in install.sandbox.received()["uploads"]),
                   30, "the admit uploaded: the uploader started with the journal")
    finally:
        assert daemon.stop() == 0


@needs_tmpfs
def test_venue_db_on_a_full_disk_at_start_says_so_and_the_lanes_refuse_until_there_is_room(
        tmpfs: Path) -> None:  # noqa: F811
    """venue.db cannot be made on a full disk: said with the `df`, never as damage; the lanes
    refuse (storeUnavailable) and once there is room the bus starts and the lanes restart on
    gates without the refusal. The journal was opened before the disk filled up."""
    site = make_site(tmpfs, datetime.now(UTC).replace(microsecond=0),
                     f"\n[venue]\nname = \"hall\"\n{UNREACHABLE_BUS}\n")
    lane = site.config.lane("north-in")

    async def go(daemon: Daemon) -> None:
        daemon._loop = asyncio.get_running_loop()
        daemon.open_stores()
        filler = _fill_disk(tmpfs)
        daemon.start_venue()
        assert daemon.bus is None
        assert "has no room left" in (daemon.venue_error or "")
        said = _reasons(daemon.report())
        assert f"df -h {site.config.store_dir}" in said["venue_db_unavailable"], said
        daemon.start_lanes(site.config.lanes)
        gate = daemon.lanes["north-in"].gate
        assert gate.check(C["valid"], lane, site.now).detail == "storeUnavailable"
        await daemon._venue_access_job()
        assert daemon.bus is None and daemon.lanes["north-in"].gate is gate  # still full
        filler.unlink()
        await daemon._venue_access_job()
        assert daemon.bus is not None and daemon.venue_error is None
        fresh = daemon.lanes["north-in"].gate
        assert fresh is not gate and fresh.shut is None and fresh.venue is not None
        assert "venue_db_unavailable" not in _reasons(daemon.report())

    # an unreachable bus measures no clock: the lanes open after 0.1 s, not 5 s
    run_on_a_loop(Daemon(site.config, venue_clock_wait_s=0.1), go)


def test_a_damaged_venue_db_at_start_is_kept_as_it_is_and_every_scan_refused(
        tmp_path: Path) -> None:
    """A venue.db that is not a SQLite file: before, the daemon exited 1 (safe, but dark).
    Now it starts, says why, refuses every scan with the refusal journaled — and the file is
    left exactly as it was (deleting it is the technician's call: docs/venue.md)."""
    now = datetime.now(UTC).replace(microsecond=0)
    site = make_site(tmp_path, now, f"\n[venue]\nname = \"hall\"\n{UNREACHABLE_BUS}\n")
    venue_db = site.config.store_dir / "venue.db"
    damaged = b"not a database, whatever it was" * 100
    venue_db.write_bytes(damaged)
    daemon = Daemon(site.config)
    try:
        daemon.open_stores()
        daemon.start_venue()
        assert daemon.bus is None and "cannot be opened" in (daemon.venue_error or "")
        daemon.start_lanes(site.config.lanes)
        result = daemon.lanes["north-in"].gate.scan(C["valid"], site.config.lane("north-in"),
                                                    now)
        assert (result.decision.admit, result.decision.detail) == (False, "storeUnavailable")
        assert result.uuid and _journal_row(site.config.store_dir, result.uuid) == \
            [(0, "storeUnavailable", "local")]
        report = daemon.report()
        assert report["health"] == "fail" and "venue_db_unavailable" in _reasons(report)
    finally:
        for r in daemon.lanes.values():
            r.stop()
        daemon.close_stores()
    assert venue_db.read_bytes() == damaged
    assert sorted(p.name for p in site.config.store_dir.iterdir()
                  if p.name.startswith("venue.db")) == ["venue.db"]
