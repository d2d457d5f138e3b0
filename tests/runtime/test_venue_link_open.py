"""A lane's venue link when venue.db cannot be opened at that moment: the lane fails closed,
the daemon goes on, and the lane gets its link back by itself.

`Daemon._gate()` builds each lane's `VenueLink`, which opens a read connection of its own to
venue.db. It is called as the lanes open (start, and the lanes' restart once a store opens
again), by a reload for the lanes it starts, and by control operations (a technician's
`gate-agent scan`). While another process holds venue.db with `PRAGMA locking_mode=EXCLUSIVE`
(a `sqlite3` shell), that open waits SQLite's 5 s busy timeout and fails. Before, the error
escaped each caller: the daemon exited at start (under systemd, a restart loop), and the
technician's scan was answered with an error and journaled nowhere. Now:
- as the lanes open, the gate runs as with a venue.db that cannot be opened at start: every
  lane refuses every scan (denied/storeUnavailable, journaled), status fails with
  `venue_db_unavailable` naming the file and `fuser -v` to find who holds it, and the
  `venue_access` job tries it again every `store_retry_s`; once it opens the lanes start anew,
  linked, and admit;
- a reload that starts a lane is refused before any lane stops (agent.runtime.reloadapply), so
  the running lanes keep their links; status says why (`config_not_applied`);
- a control operation decides on a gate that is shut: the scan is refused and journaled.

The real daemon runs in-process (its own loop, control socket, status, jobs) with a real
nats-server; a real second process holds the lock on the real venue.db; the technician's scan
is the real `gate-agent scan` command talking to the daemon over its control socket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.daemon import Daemon
from agent.store.journal import Journal
from agent.venue.bus import VenueBus
from agent.venue.node import NodeProcess
from drivers import Scan
from tests.conftest import DemoSite, make_site, run_cli
from tests.venue.conftest import venue_node  # noqa: F401 - fixture
from tests.venue.test_venue_db_held import HOLD_EXCLUSIVE

# another process holds a store file here on purpose: each try waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

C = demo_data.CODES
RETRY_S = 0.3  # the daemon's venue_access retry here (STORE_RETRY_S, 5 s by default)


class Holder:
    """A second process holding venue.db with `PRAGMA locking_mode=EXCLUSIVE` (a `sqlite3`
    shell left open), until `release()`."""

    def __init__(self, path: Path):
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def take(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(self.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()  # the holder ends: the lock goes with its connection
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def venue_site(tmp_path: Path, venue_node: NodeProcess) -> DemoSite:  # noqa: F811
    return make_site(tmp_path, datetime.now(UTC).replace(microsecond=0), f"""
[status]
listen = "127.0.0.1:0"

[venue]
name = "hall"
servers = ["{venue_node.url}"]
device = "g1"
claim_timeout_ms = 500
""")


@pytest.fixture
def holder(venue_site: DemoSite) -> Iterator[Holder]:
    h = Holder(venue_site.config.store_dir / "venue.db")
    yield h
    h.release()


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`check()` once it is truthy (polled on the daemon's loop, which keeps running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def running(d: Daemon, body: Callable[[], Awaitable[None]]) -> None:
    """The daemon's `run()` on this loop while `body` works with it; then a clean stop."""
    task = asyncio.create_task(d.run())
    try:
        await until(lambda: task.done() or (d.server is not None and d.server.started
                                            and d.lanes), 60, "the daemon ready")
        if task.done():
            task.result()  # what ended it
        await body()
    finally:
        d.stop_event.set()
        assert await asyncio.wait_for(task, 60) == 0


def reasons(d: Daemon) -> dict[str, str]:
    return {r["code"]: r["message"] for r in d.report()["reasons"]}


def journaled(site: DemoSite) -> list[dict[str, Any]]:
    journal = Journal(site.config.store_dir / "journal.db")
    try:
        return journal.after(0, 1000)
    finally:
        journal.close()


def technician_scan(site: DemoSite, code: str) -> dict[str, Any]:
    """`gate-agent scan CODE --json`, answered by the running daemon (control socket)."""
    done = run_cli("scan", code, "--lane", "north-in", "--json", "--config",
                   str(site.config_path))
    assert done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout.splitlines()[0]))


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`path` marked immutable (`chattr +i`) meanwhile: no process may open it to write."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def scan_on(d: Daemon, lane: str, code: str) -> None:
    """A reader's scan on `lane` (what a reader thread hands its lane)."""
    d.lanes[lane].submit(Scan(code, "barcode", "test", time.monotonic_ns(),
                              datetime.now(UTC), code.encode()))


async def row_of(site: DemoSite, code: str, count: int = 1) -> dict[str, Any]:
    """The `count`th journal row of `code`, once journaled."""
    rows = await until(lambda: [r for r in journaled(site) if r["code"] == code][count - 1:],
                       30, f"scan {count} of {code} journaled")
    return rows[0]


def test_venue_db_held_as_the_lanes_open_shuts_them_and_they_open_linked_by_themselves(
        venue_site: DemoSite, holder: Holder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start: the bus is made (venue.db opened, read and closed), then another process takes
    the file before the bus and the lanes open their connections (the one moment it can: once
    one connection of the gate is open, SQLite lets the others open and read)."""
    start = VenueBus.start
    taken: list[bool] = []

    def held_then_started(bus: VenueBus) -> None:  # the moment between bus and lanes
        if not taken:
            taken.append(True)
            holder.take()
        start(bus)

    monkeypatch.setattr(VenueBus, "start", held_then_started)
    d = Daemon(venue_site.config, store_retry_s=RETRY_S, venue_clock_wait_s=1.0)
    venue_db = str(venue_site.config.store_dir / "venue.db")

    async def body() -> None:
        # fail closed: no lane admits without its link; status fails naming file and holder
        for name, runner in d.lanes.items():
            assert runner.gate.venue is None, name
            assert runner.gate.shut is not None and venue_db in runner.gate.shut, name
        said = reasons(d)
        assert d.report()["health"] == "fail"
        assert venue_db in said["venue_db_unavailable"], said
        assert f"another process holds it: `fuser -v {venue_db}`" in \
            said["venue_db_unavailable"], said
        scan_on(d, "north-in", C["valid"])
        refused = await row_of(venue_site, C["valid"])  # a refusal is always recorded
        assert (refused["admit"], refused["status_detail"]) == (0, "storeUnavailable")
        manual = await asyncio.to_thread(technician_scan, venue_site, C["valid2"])
        assert (manual["admit"], manual["statusDetail"]) == (False, "storeUnavailable")
        assert (await row_of(venue_site, C["valid2"]))["uuid"] == manual["uuid"]
        # not a crash, not a loop: tried again on its job, each try off the daemon's loop (it
        # waits out SQLite's busy timeout, 1.5 s here): the loop serves meanwhile
        await until(lambda: d.jobs.health["venue_access"].running, 30, "a try under way")
        ticks = 0
        while d.jobs.health["venue_access"].running:
            ticks += 1
            await asyncio.sleep(0.01)
        assert ticks > 10, ticks
        assert d.lanes["north-in"].gate.venue is None
        await asyncio.to_thread(holder.release)
        await until(lambda: all(r.gate.venue is not None for r in d.lanes.values()), 30,
                    "every lane linked again by itself")
        assert "venue_db_unavailable" not in reasons(d)
        await until(lambda: d.bus is not None and d.bus.ready, 30, "the bus on the stream")
        scan_on(d, "north-in", C["valid"])
        admitted = await row_of(venue_site, C["valid"], 2)
        assert admitted["admit"] == 1, admitted
        # through its link: the claim goes in flight while the admit commits, so its grant
        # may be counted a moment after the row is there (failed under load when read at once)
        bus = d.bus
        assert bus is not None
        await until(lambda: bus.counters["claims_granted"] == 1, 10, "the claim granted")

    asyncio.run(running(d, body))


def test_reload_while_venue_db_cannot_be_opened_is_refused_and_running_lanes_keep_links(
        venue_site: DemoSite) -> None:
    """A reload that starts a lane while venue.db cannot be opened (marked immutable here: a
    file root cannot write either; held EXCLUSIVE by another process cannot do it while the
    gate's connections are open)."""
    d = Daemon(venue_site.config, store_retry_s=RETRY_S, venue_clock_wait_s=5.0)
    venue_db = venue_site.config.store_dir / "venue.db"
    text = venue_site.config_path.read_text()

    async def body() -> None:
        await until(lambda: d.bus is not None and d.bus.ready, 30, "the bus on the stream")
        runners = dict(d.lanes)
        assert all(r.gate.venue is not None for r in runners.values())
        venue_site.config_path.write_text(text.replace('name = "floor"\n',
                                                       'name = "floor"\ngrace_minutes = 5\n'))
        with immutable(venue_db):
            d.reload()  # what SIGHUP calls, on the daemon's loop
            assert d.reload_error is not None and str(venue_db) in d.reload_error
            assert "marked immutable" in d.reload_error, d.reload_error
            assert d.lanes == runners  # not one lane stopped
            assert all(r.gate.venue is not None and r.gate.shut is None
                       for r in d.lanes.values())
            assert d.lanes["floor"].lane.grace_minutes == 0  # nothing of the reload applied
            assert str(venue_db) in reasons(d)["config_not_applied"]
            assert d.bus is not None and d.venue_error is None  # the bus left running
        d.reload()  # sent again once the file can be opened: applied, the new lane linked
        assert d.reload_error is None
        assert d.lanes["floor"].lane.grace_minutes == 5
        assert d.lanes["floor"].gate.venue is not None and d.lanes["floor"].gate.shut is None
        scan_on(d, "north-in", C["valid"])
        assert (await row_of(venue_site, C["valid"]))["admit"] == 1

    asyncio.run(running(d, body))


def test_technicians_scan_while_venue_db_cannot_be_opened_is_refused_and_journaled(
        venue_site: DemoSite) -> None:
    d = Daemon(venue_site.config, store_retry_s=RETRY_S, venue_clock_wait_s=5.0)
    venue_db = venue_site.config.store_dir / "venue.db"

    async def body() -> None:
        await until(lambda: d.bus is not None and d.bus.ready, 30, "the bus on the stream")
        with immutable(venue_db):
            answer = await asyncio.to_thread(technician_scan, venue_site, C["valid"])
            assert (answer["admit"], answer["statusDetail"]) == (False, "storeUnavailable")
            row = await row_of(venue_site, C["valid"])  # a refusal is always recorded
            assert (row["uuid"], row["admit"], row["status_detail"]) == \
                (answer["uuid"], 0, "storeUnavailable")
            assert d.lanes["north-in"].gate.venue is not None  # the running lanes untouched
            assert d.bus is not None and d.venue_error is None
        again = await asyncio.to_thread(technician_scan, venue_site, C["valid"])
        assert again["admit"], again  # its next gate is linked

    asyncio.run(running(d, body))
