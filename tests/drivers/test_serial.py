"""Serial barcode scanners: the pure LineDecoder, then the reader over a real pty."""

from __future__ import annotations

import logging

import pytest

from agent.errors import DriverUnavailable
from drivers import open_reader
from drivers.serial_scanner import LineDecoder, SerialReader, serial_hint
from tests.drivers.conftest import PtyDevice, Recorder


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n", b"\n\r"])
def test_every_terminator_ends_a_line_without_empty_codes(terminator: bytes) -> None:
    dec = LineDecoder()
    assert dec.feed(b"ABC" + terminator + b"DEF" + terminator) == ["ABC", "DEF"]


def test_partial_reads_are_buffered_even_across_crlf() -> None:
    dec = LineDecoder()
    assert dec.feed(b"TICK") == []
    assert dec.feed(b"ET-1\r") == ["TICKET-1"]
    assert dec.feed(b"\nTI") == []  # the LF of CRLF must not produce an empty code
    assert dec.feed(b"CKET-2\r\n") == ["TICKET-2"]


def test_noise_bytes_are_stripped() -> None:
    dec = LineDecoder()
    assert dec.feed(b"\x00\xff\x02AB\x00C\x7fD\x03\x1b\r\n") == ["ABCD"]


def test_invalid_utf8_is_replaced_not_dropped_and_never_crashes() -> None:
    """A garbled byte must not silently merge the rest into a different valid-looking code."""
    dec = LineDecoder()
    assert dec.feed(b"AB\xc3CD\n") == ["AB\ufffdCD"]
    assert dec.feed("Ünïcode-é\n".encode()) == ["Ünïcode-é"]


def test_overlong_line_is_discarded_with_a_reason_and_the_next_line_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dec = LineDecoder(max_bytes=16)
    with caplog.at_level(logging.WARNING):
        assert dec.feed(b"X" * 10) == []
        assert dec.feed(b"X" * 10) == []
        assert dec.feed(b"YYY\rOK-1\r") == ["OK-1"]
    assert dec.discarded == 1
    assert "longer than 16 bytes" in caplog.text


def test_raw_bytes_are_kept_for_the_journal() -> None:
    assert LineDecoder().feed_with_raw(b"\x02AB\x03\r\n") == [("AB", b"\x02AB\x03")]


def test_reader_delivers_lines_written_in_pieces(pty_device: PtyDevice) -> None:
    reader = open_reader(f"serial://{pty_device.path}?baud=115200")
    assert isinstance(reader, SerialReader) and reader.baud == 115200
    rec = Recorder()
    reader.start(rec.on_scan, rec.on_state)
    try:
        assert rec.wait(lambda: reader.connected)
        pty_device.write(b"\x00\xffHALF")
        assert not rec.wait(lambda: bool(rec.scans), timeout=0.3)
        pty_device.write(b"-LINE\r\nSECOND\nTHIRD\r")
        assert rec.wait(lambda: len(rec.scans) == 3)
        assert rec.codes() == ["HALF-LINE", "SECOND", "THIRD"]
        assert rec.scans[0].raw == b"\x00\xffHALF-LINE"
    finally:
        reader.stop()


def test_missing_port_is_unavailable_naming_url_and_what_to_check(tmp_path) -> None:
    url = f"serial://{tmp_path}/ttyACM9"
    with pytest.raises(DriverUnavailable) as info:
        open_reader(url).probe()
    assert info.value.url == url
    assert "plugged in" in info.value.hint


def test_hints_name_the_usual_causes() -> None:
    assert "dialout" in serial_hint(PermissionError(13, "Permission denied"))
    assert "ModemManager" in serial_hint(OSError(16, "Device or resource busy"))
