"""NFC reader end to end over nfcpy's UDP driver with a simulated Type 2 tag (drivers/nfc_sim.py).

Real nfcpy code runs on both sides of the socket: polling, anticollision over two cascade
levels, Type 2 activation, presence checks and NDEF reads. Only the radio is simulated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import ndef
import pytest

from agent.errors import DriverUnavailable
from drivers import open_reader
from drivers.nfc import NfcReader
from drivers.nfc_sim import Type2TagSimulator
from tests.drivers.conftest import Recorder, wait_until

UID = bytes.fromhex("05a1b2c3d4e5f6")


@pytest.fixture
def tag() -> Iterator[Type2TagSimulator]:
    message = b"".join(ndef.message_encoder([ndef.TextRecord("TICKET-7788")]))
    sim = Type2TagSimulator(UID, message)
    yield sim
    sim.close()


def _run(url: str) -> tuple[NfcReader, Recorder]:
    reader = open_reader(url, backoff_initial=0.05, backoff_max=0.2)
    assert isinstance(reader, NfcReader)
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    assert rec.wait(lambda: reader.connected)
    return reader, rec


def test_two_presentations_are_two_scans_a_held_tag_is_one(tag: Type2TagSimulator) -> None:
    reader, rec = _run(tag.url)
    try:
        tag.present = True
        assert rec.wait(lambda: len(rec.scans) == 1)
        time.sleep(0.8)  # still on the reader: nfcpy keeps presence-checking it
        assert len(rec.scans) == 1
        tag.present = False
        time.sleep(0.5)  # presence check notices the removal
        tag.present = True
        assert rec.wait(lambda: len(rec.scans) == 2, timeout=5)
        tag.present = False
        assert rec.codes() == ["0x05A1B2C3D4E5F6"] * 2
        assert rec.scans[0].raw == UID
        assert [s.kind for s in rec.scans] == ["nfc", "nfc"]
    finally:
        reader.stop()


def test_ndef_text_record_becomes_a_barcode(tag: Type2TagSimulator) -> None:
    reader, rec = _run(tag.url + "&ndef=1")
    try:
        tag.present = True
        assert rec.wait(lambda: len(rec.scans) == 1)
        tag.present = False
        scan = rec.scans[0]
        assert (scan.code, scan.kind, scan.raw) == ("TICKET-7788", "barcode", b"TICKET-7788")
    finally:
        reader.stop()


def test_ndef_mode_falls_back_to_uid_on_a_blank_tag() -> None:
    sim = Type2TagSimulator(UID)  # formatted, empty NDEF message
    reader, rec = _run(sim.url + "&ndef=1")
    try:
        sim.present = True
        assert rec.wait(lambda: len(rec.scans) == 1)
        sim.present = False
        assert (rec.scans[0].code, rec.scans[0].kind) == ("0x05A1B2C3D4E5F6", "nfc")
    finally:
        reader.stop()
        sim.close()


def test_stop_while_a_tag_is_held_is_prompt(tag: Type2TagSimulator) -> None:
    reader, rec = _run(tag.url)
    tag.present = True
    assert rec.wait(lambda: len(rec.scans) == 1)
    started = time.monotonic()
    reader.stop()
    assert time.monotonic() - started < 1.0
    assert not reader.connected


def test_bad_targets_option_is_rejected() -> None:
    with pytest.raises(DriverUnavailable, match="unknown targets"):
        open_reader("nfc:udp:127.0.0.1:9?targets=106Z")


def test_missing_usb_reader_is_unavailable_with_a_hint() -> None:
    """No USB NFC reader on this machine: probing must say so, not hang or raise ImportError."""
    reader = open_reader("nfc:usb:072f:2200")
    with pytest.raises(DriverUnavailable) as info:
        reader.probe()
    assert info.value.url == "nfc:usb:072f:2200"
    assert "devices list" in str(info.value) or "libusb" in str(info.value)


def test_connect_returning_false_is_device_lost_and_recovers(
    tag: Type2TagSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nfcpy's connect() returns False after an IOError (an ACR122U falling off the bus): the
    reader must report it, reopen the device and go on reading."""
    import nfc

    real_connect = nfc.ContactlessFrontend.connect
    calls = {"n": 0}

    def connect_fails_once(self, **options):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            return False
        return real_connect(self, **options)

    monkeypatch.setattr(nfc.ContactlessFrontend, "connect", connect_fails_once)
    reader, rec = _run(tag.url)
    try:
        assert rec.wait(lambda: rec.connected_events() == [True, False, True])
        assert "device lost" in rec.states[1][2]
        assert reader.get_status()["reconnects"] == 1
        tag.present = True
        assert rec.wait(lambda: len(rec.scans) == 1)
        tag.present = False
    finally:
        reader.stop()


def test_present_now_answers_the_waiting_poll_and_uids_can_change() -> None:
    """What bench/hw_bench.py relies on: a tap is seen at once (not at nfcpy's next 1 s poll),
    `polls` shows the reader polling again after a removal, and each new UID is a new scan."""
    sim = Type2TagSimulator(UID)
    reader, rec = _run(sim.url)
    try:
        for n, uid in enumerate((UID, bytes.fromhex("04112233445566")), start=1):
            assert wait_until(lambda: (sim.waiting_poll_age() or 9) < 0.5, timeout=3)
            sim.set_uid(uid)
            started = time.monotonic()
            assert sim.present_now()
            assert rec.wait(lambda n=n: len(rec.scans) == n, timeout=2)
            assert time.monotonic() - started < 0.5  # a missed poll would cost up to 1 s
            polls = sim.polls
            sim.present = False
            assert wait_until(lambda polls=polls: sim.polls > polls, timeout=3)
        assert rec.codes() == ["0x05A1B2C3D4E5F6", "0x04112233445566"]
    finally:
        reader.stop()
        sim.close()
