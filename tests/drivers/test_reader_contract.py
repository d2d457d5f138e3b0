"""The Reader contract, run against every reader that can run on a machine without hardware.

Each rig is a real driver on a real transport: `sim:` (in-process channel), `serial:` over a
pty reached by a symlinked path, and `nfc:` over nfcpy's UDP driver with a simulated Type 2
tag. The daemon relies on exactly these properties: idempotent start/stop, connected state
reported through `on_state`, each presented code delivered exactly once, and (where the rig
can unplug) automatic recovery after the device vanishes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest

from agent.core.codes import utc_iso
from drivers import open_reader
from drivers.base import Reader
from drivers.nfc_sim import Type2TagSimulator
from drivers.sim import sim_inject, sim_replug, sim_unplug
from tests.drivers.conftest import PtyDevice, Recorder

FAST = {"backoff_initial": 0.05, "backoff_max": 0.2}


@dataclass
class ReaderRig:
    url: str
    code: str  # what the device is made to produce
    expected: tuple[str, str]  # (Scan.code, Scan.kind) the daemon must get
    present: Callable[[], None]
    remove: Callable[[], None]
    unplug: Callable[[], None] | None = None
    replug: Callable[[], None] | None = None
    hold_s: float = 0.3  # how long a held code must stay one scan


def _sim_rig(tmp_path: Path) -> Iterator[ReaderRig]:
    yield ReaderRig(
        url="sim:contract", code="TICKET-0001", expected=("TICKET-0001", "barcode"),
        present=lambda: sim_inject("contract", "TICKET-0001"), remove=lambda: None,
        unplug=lambda: sim_unplug("contract"), replug=lambda: sim_replug("contract"),
    )


def _serial_rig(tmp_path: Path) -> Iterator[ReaderRig]:
    dev = PtyDevice(tmp_path)
    yield ReaderRig(
        url=f"serial://{dev.path}?baud=9600", code="TICKET-0002",
        expected=("TICKET-0002", "barcode"),
        present=lambda: dev.write(b"TICKET-0002\r\n"), remove=lambda: None,
        unplug=dev.unplug, replug=dev.replug,
    )
    dev.unplug()


def _nfc_rig(tmp_path: Path) -> Iterator[ReaderRig]:
    tag = Type2TagSimulator(bytes.fromhex("05A1B2C3D4E5F6"))

    def present() -> None:
        tag.present = True

    def remove() -> None:
        tag.present = False

    yield ReaderRig(
        url=tag.url, code="05A1B2C3D4E5F6", expected=("0x05A1B2C3D4E5F6", "nfc"),
        present=present, remove=remove, hold_s=1.0,
    )
    tag.close()


RIGS = {"sim": _sim_rig, "serial-pty": _serial_rig, "nfc-udp": _nfc_rig}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReaderRig]:
    yield from RIGS[request.param](tmp_path)


@pytest.fixture
def started(rig: ReaderRig) -> Iterator[tuple[Reader, Recorder]]:
    reader = open_reader(rig.url, **FAST)
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    assert rec.wait(lambda: True in rec.connected_events()), "reader never reported connected"
    yield reader, rec
    reader.stop()


def _reader_threads(url: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"reader {url}"]


def test_start_and_stop_are_idempotent(rig: ReaderRig) -> None:
    """The daemon may call start/stop more than once (reload, shutdown paths): no second thread."""
    reader = open_reader(rig.url, **FAST)
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    reader.start(rec.on_scan, rec.on_state)
    assert len(_reader_threads(rig.url)) == 1
    assert rec.wait(lambda: reader.connected)
    reader.stop()
    reader.stop()
    assert _reader_threads(rig.url) == []
    assert not reader.connected
    assert rec.connected_events() == [True, False]


def test_connected_state_is_reported(rig: ReaderRig, started: tuple[Reader, Recorder]) -> None:
    reader, rec = started
    assert reader.connected
    assert rec.states[0][:2] == (rig.url, True)
    status = reader.get_status()
    assert status["url"] == rig.url and status["connected"] is True
    assert {"kind", "last_error", "last_scan_at", "reconnects"} <= set(status)


def test_one_presentation_is_one_scan(rig: ReaderRig, started: tuple[Reader, Recorder]) -> None:
    """A code is delivered once, cleaned, stamped with both clocks; a held tag does not repeat."""
    reader, rec = started
    before = time.monotonic_ns()
    rig.present()
    assert rec.wait(lambda: len(rec.scans) >= 1), "no scan delivered"
    time.sleep(rig.hold_s)  # an NFC tag stays on the reader meanwhile
    rig.remove()
    assert len(rec.scans) == 1
    scan = rec.scans[0]
    assert (scan.code, scan.kind) == rig.expected
    assert scan.reader_id == rig.url
    assert before <= scan.mono_ns <= time.monotonic_ns()
    assert scan.wall.tzinfo is UTC
    assert scan.raw
    assert reader.get_status()["last_scan_at"] == utc_iso(scan.wall)  # one time format


@pytest.mark.parametrize("name", ["sim", "serial-pty"])
def test_survives_device_vanishing(name: str, tmp_path: Path) -> None:
    """Unplug -> disconnected reported, thread keeps retrying; replug -> connected, scans resume."""
    gen = RIGS[name](tmp_path)
    rig = next(gen)
    assert rig.unplug and rig.replug
    reader = open_reader(rig.url, **FAST)
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    try:
        assert rec.wait(lambda: reader.connected)
        rig.unplug()
        assert rec.wait(lambda: rec.connected_events() == [True, False]), rec.states
        assert not reader.connected
        assert reader.get_status()["last_error"]
        # Other devices come and go meanwhile (the kernel hands the freed pts number to the
        # next pty opened): a reader retrying its path must not find a stranger's device.
        strangers = [os.openpty() for _ in range(3)]
        try:
            time.sleep(0.3)  # several backoff rounds while the device is away
        finally:
            for fds in strangers:
                for fd in fds:
                    os.close(fd)
        assert rec.connected_events() == [True, False], "flapped while unplugged"
        rig.replug()
        assert rec.wait(lambda: rec.connected_events() == [True, False, True]), rec.states
        assert reader.get_status()["reconnects"] == 1
        rig.present()
        assert rec.wait(lambda: len(rec.scans) == 1)
        assert rec.scans[0].code == rig.expected[0]
    finally:
        reader.stop()
        next(gen, None)
