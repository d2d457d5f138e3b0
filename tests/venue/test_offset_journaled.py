"""The clock offset an offline scan is published with is the one its gate had when it decided
the scan (journal migration 0008), and a scan decided before any measurement says so and is
placed on the safe side.

Real gates (real `Gate`, real SQLite files) on a real one-node nats-server; gate b's clock is
3 minutes fast (`skews_s`, as in tests/venue/test_scan_order.py). b is cut off, lets the
ticket in and out, a admits it afterwards; the pass-back at a must be refused however b's
scans reach the stream."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.codes import parse_utc_iso
from agent.venue.bus import VenueBus
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_scan_order import SKEW_S, WALK_S, floor_inside, scan

pytestmark = pytest.mark.e2e


class Cable:
    """A TCP link between a gate and the bus server on loopback that can be pulled and put
    back (same port): the gate's client sees its connection drop and reconnects by itself,
    as with a real cable, with nothing of its process stopped (a stopped bus deletes its
    heartbeat key, and that delivery measures its clock)."""

    def __init__(self, target: str):
        host, port = target.removeprefix("nats://").rsplit(":", 1)
        self.target = (host, int(port))
        self.port = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.plug()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def plug(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        with self._lock:
            self._socks.append(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pull(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            with self._lock:
                self._socks += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _offline_in_and_out(b: VenueDevice, cable: Cable | None = None) -> datetime:
    """b, cut off, lets the ticket in and out; returns the real time it did."""
    if cable is None:
        b.bus.stop()
    else:
        cable.pull()
        wait_until(lambda: not b.bus.connected, 10, "b cut off")
    at = datetime.now(UTC)
    assert scan(b, "floor-in")[0] and scan(b, "floor-out")[0]
    assert [r["venue"] for r in b.journal_rows()] == ["offline", "offline"]
    time.sleep(WALK_S)
    return at


def _restart(b: VenueDevice, skew_s: float, servers: list[str] | None = None) -> None:
    """b's daemon starts again with its clock `skew_s` ahead (a new process: nothing of the
    last one's memory) and is not measured by a heartbeat (the rig runs no daemon; a server
    that sends its time measures it as it connects: agent.venue.clockprobe)."""
    b.bus.stop()
    old = b.bus
    venue = {**old.venue, "servers": servers or old.venue["servers"]}
    b.bus = VenueBus(venue, old.store_path.parent, old.journal_path, None,
                     wall=lambda: time.time() + skew_s)
    b.bus.start()
    for gate in b.gates:
        assert gate.venue is not None
        gate.venue.bus = b.bus


def _b_times(a: VenueDevice) -> dict[str, str | None]:
    """b's scans as a placed them: direction -> bus time."""
    store = a.venue_store()
    try:
        return dict(store.conn.execute(
            "SELECT direction, bus_time FROM venue_scans WHERE device = 'g2'").fetchall())
    finally:
        store.close()


def _pass_back_refused(a: VenueDevice, b: VenueDevice) -> None:
    wait_until(lambda: a.bus.applied_seq >= 3, 10, "b's offline scans on the stream")
    assert scan(a, "floor-in") == (False, "alreadyIn")
    assert floor_inside(a) == 1


def test_a_restart_with_the_clock_stepped_publishes_the_offset_the_scan_was_decided_under(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """b's clock is stepped right (NTP at boot) while it is down, and it publishes before its
    first heartbeat. Taken at publish time there was no offset: b's scans were placed by the
    clock they were stamped with (3 min fast, bounded by when they were stored), after a's
    entry; the ticket read as outside at a, and the pass-back was admitted."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[0.0, SKEW_S]) as (a, b):
        for device in (a, b):
            device.calibrate()
        at = _offline_in_and_out(b)
        offsets = [r["clock_offset_s"] for r in b.journal_rows()]
        assert all(o is not None and abs(o - SKEW_S) < 1.0 for o in offsets), offsets
        assert scan(a, "floor-in")[0]  # a knows nothing of b's scans: outside, admitted
        _restart(b, 0.0)
        _pass_back_refused(a, b)
        placed = _b_times(a)
        assert placed["out"] is not None, placed
        out = parse_utc_iso(placed["out"])
        assert abs(out - at) < timedelta(seconds=2), (placed, at)  # where it happened


def test_a_scan_decided_before_any_measurement_goes_out_as_such_and_on_the_safe_side(
        tmp_path: Path, venue_node: NodeProcess, no_server_time: None) -> None:
    """b never measured its clock before it was cut off (and restarts before publishing, so
    no later measurement is its scans' either). Its scans go out saying so (`null`), not as
    an offset of 0: taken by b's clock, its exit was placed after a's entry (the ticket read
    as outside, the pass-back admitted); now the exit is undated and the entry at the time
    it was stored, and a reads the ticket as inside."""
    cable = Cable(venue_node.url)
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[0.0, SKEW_S],
                       servers_of=[[venue_node.url], [cable.url]]) as (a, b):
        assert not b.bus.board.calibrated
        _offline_in_and_out(b, cable)
        assert [r["clock_offset_s"] for r in b.journal_rows()] == [None, None]
        assert scan(a, "floor-in")[0]
        _restart(b, SKEW_S, [venue_node.url])
        _pass_back_refused(a, b)
        placed = _b_times(a)
        assert placed["out"] is None and placed["in"] is not None, placed


def test_a_measurement_made_later_by_the_same_process_is_the_scans_offset(
        tmp_path: Path, venue_node: NodeProcess, no_server_time: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b decides unmeasured (its server sent no time as it connected, and no heartbeat came),
    then its link comes back in the same process, clock unchanged: b measures its clock as
    the link comes back (agent.venue.clockprobe, no heartbeat needed), and the publisher,
    which held those scans meanwhile (`unmeasured_hold_s`), sends them with that offset, so
    they keep their real place. (Held until the first heartbeat of a long interval when the
    server sends no time: tests/venue/test_unmeasured_offset.py.) a is measured the same way
    (its own cable pulled and put back): a bus stopped or started would put heartbeat keys,
    whose deliveries measure every gate."""
    cables = [Cable(venue_node.url), Cable(venue_node.url)]
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[0.0, SKEW_S],
                       servers_of=[[cable.url] for cable in cables]) as (a, b):
        assert not a.bus.board.calibrated and not b.bus.board.calibrated
        at = _offline_in_and_out(b, cables[1])
        assert [r["clock_offset_s"] for r in b.journal_rows()] == [None, None]
        assert scan(a, "floor-in")[0]
        monkeypatch.undo()  # the server's answers carry its time from now on
        cables[0].pull()
        wait_until(lambda: not a.bus.connected, 10, "a cut off")
        cables[0].plug()
        wait_until(lambda: a.bus.board.calibrated, 10, "a measured as its link came back")
        cables[1].plug()
        wait_until(lambda: b.bus.board.calibrated, 10, "b measured as its link came back")
        _pass_back_refused(a, b)
        placed = _b_times(a)
        assert placed["out"] is not None, placed
        assert abs(parse_utc_iso(placed["out"]) - at) < timedelta(seconds=2), (placed, at)
