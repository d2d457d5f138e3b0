"""Shared Reader behaviour, checked with a scripted backend where timing must be controlled
(backoff) and with the sim driver elsewhere."""

from __future__ import annotations

import threading
import time

import pytest

from drivers import open_reader
from drivers.base import Chunk, Reader, make_scan
from drivers.sim import sim_inject
from tests.drivers.conftest import Recorder


class FlakyReader(Reader):
    """Fails to open `failures` times, then serves one session that dies after one chunk."""

    def __init__(self, failures: int, **options: float) -> None:
        super().__init__("flaky:test", **options)
        self.failures = failures
        self.opens: list[float] = []
        self.served = threading.Event()

    def _open(self) -> None:
        self.opens.append(time.monotonic())
        if len(self.opens) <= self.failures:
            raise OSError(2, "No such file or directory")

    def _read(self, timeout: float) -> list[Chunk]:
        if self.served.is_set():
            time.sleep(timeout)
            return []
        self.served.set()
        return [Chunk("CODE", "barcode", b"CODE")]


def test_backoff_grows_exponentially_and_is_bounded() -> None:
    reader = FlakyReader(failures=6, backoff_initial=0.02, backoff_max=0.08)
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    try:
        assert rec.wait(lambda: len(rec.scans) == 1, timeout=3)
    finally:
        reader.stop()
    gaps = [b - a for a, b in zip(reader.opens, reader.opens[1:], strict=False)][:6]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08
    assert all(g < 0.08 + 0.05 for g in gaps), gaps  # never beyond the cap (plus scheduling)
    assert "No such file" in reader.get_status()["last_error"]
    # absent at start is reported once (the daemon shows why), then connected, then stopped
    assert rec.connected_events() == [False, True, False]


def test_invalid_backoff_is_rejected() -> None:
    with pytest.raises(ValueError):
        FlakyReader(0, backoff_initial=1.0, backoff_max=0.5)


def test_a_failing_callback_does_not_kill_the_reader(caplog: pytest.LogCaptureFixture) -> None:
    reader = open_reader("sim:cb")
    got: list[str] = []

    def on_scan(scan):  # type: ignore[no-untyped-def]
        got.append(scan.code)
        if len(got) == 1:
            raise RuntimeError("daemon bug")

    reader.start(on_scan)
    try:
        assert Recorder().wait(lambda: reader.connected)
        sim_inject("cb", "ONE")
        sim_inject("cb", "TWO")
        assert Recorder().wait(lambda: len(got) == 2)
    finally:
        reader.stop()
    assert got == ["ONE", "TWO"]
    assert "daemon bug" in caplog.text


def test_blank_reads_are_not_scans() -> None:
    reader = open_reader("sim:blank")
    rec = Recorder()
    reader.start(rec.on_scan)
    try:
        assert rec.wait(lambda: reader.connected)
        sim_inject("blank", " \t ")
        sim_inject("blank", "REAL")
        assert rec.wait(lambda: len(rec.scans) == 1)
    finally:
        reader.stop()
    assert rec.codes() == ["REAL"]


def test_read_one_returns_a_scan_or_none() -> None:
    reader = open_reader("sim:one")
    timer = threading.Timer(0.2, lambda: sim_inject("one", "0x04a2:2b"))
    timer.start()
    scan = reader.read_one(timeout=3)
    assert scan is not None and (scan.code, scan.kind) == ("0x04A22B", "nfc")
    assert open_reader("sim:one").read_one(timeout=0.1) is None


def test_make_scan_normalises_nfc_ids_and_rejects_non_hex() -> None:
    assert make_scan("r", Chunk("04:a2:2b:1c", "nfc", b"")).code == "0x04A22B1C"  # type: ignore[union-attr]
    assert make_scan("r", Chunk("zz", "nfc", b"")) is None


