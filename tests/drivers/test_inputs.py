"""Contact inputs (issue 17): sim, GPIO (through the FAKE of fake_gpiod.py: no gpio-sim here),
serial modem lines (pyserial's `loop://`, whose RTS drives CTS; a pty has no modem lines),
and the text display over a real pty."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import gpiod
import pytest
from gpiod.line import Direction, Edge, Value

from agent.errors import DriverUnavailable
from drivers.display import sim_display
from drivers.inputs import ModemLineInput, send_input, sim_input_pulse, sim_input_set
from drivers.registry import open_display, open_input
from tests.drivers.fake_gpiod import FakeGpiod
from tests.rigs import PtyDevice, wait_until


def changes(url: str) -> tuple[object, queue.Queue[bool]]:
    seen: queue.Queue[bool] = queue.Queue()
    watched = open_input(url)
    watched.start(lambda _u, active, _ns: seen.put(active))
    return watched, seen


def fake_gpio_input(monkeypatch: pytest.MonkeyPatch, fake: FakeGpiod,
                    url: str) -> tuple[Any, queue.Queue[bool]]:
    """`url` watched through the FAKE libgpiod, once its line is requested."""
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
    watched, seen = changes(url)
    wait_until(lambda: watched.connected, 5, "line requested")  # type: ignore[attr-defined]
    return watched, seen


def test_sim_input_reports_each_edge_of_a_short_pulse() -> None:
    watched, seen = changes("sim:t-edges")
    try:
        wait_until(lambda: watched.connected, 5, "sim input open")
        sim_input_pulse("t-edges")
        assert [seen.get(timeout=5), seen.get(timeout=5)] == [True, False]
        sim_input_set("t-edges", True)
        assert seen.get(timeout=5) is True and watched.active
    finally:
        watched.stop()


def test_sim_input_over_a_socket_from_another_process(tmp_path: Path) -> None:
    sock = tmp_path / "in.sock"
    watched, seen = changes(f"sim:t-sock?socket={sock}")
    try:
        wait_until(sock.exists, 5, "socket bound")
        send_input(sock, "pulse")
        assert [seen.get(timeout=5), seen.get(timeout=5)] == [True, False]
    finally:
        watched.stop()
    assert not sock.exists()


def test_gpio_input_reads_the_line_as_an_input(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpiod()
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)
    watched, seen = changes("gpio:/dev/gpiochip0:22?active_low=1")
    try:
        wait_until(lambda: fake.requests, 5, "line requested")
        request = fake.last
        assert request.settings.direction == Direction.INPUT
        assert request.settings.active_low is True and request.offset == 22
        request.level = Value.ACTIVE
        assert seen.get(timeout=5) is True
        request.level = Value.INACTIVE
        assert seen.get(timeout=5) is False
        request.fail_reads = True  # the chip went away: reported, then reopened
        wait_until(lambda: "No such device" in watched.last_error, 5, "error reported")
        wait_until(lambda: len(fake.requests) >= 2 and watched.connected, 5, "reopened")
    finally:
        watched.stop()
    assert all(r.released for r in fake.requests)


def test_gpio_input_waits_for_edge_events_and_sees_a_pulse_no_poll_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Gap 3 of issue 17 (against the FAKE libgpiod): edge detection requested, the thread
    asleep in wait_edge_events, both edges of an instant pulse reported, no polling."""
    fake = FakeGpiod()
    watched, seen = fake_gpio_input(monkeypatch, fake, "gpio:/dev/gpiochip0:23")
    try:
        request = fake.last
        assert request.settings.edge_detection == Edge.BOTH
        assert watched.get_status()["mode"] == "edges"
        request.pulse()  # active and inactive within microseconds
        assert [seen.get(timeout=5), seen.get(timeout=5)] == [True, False]
        reads = request.value_reads
        threading.Event().wait(0.3)  # a 5 ms poller would read the line ~60 times here
        assert request.value_reads == reads == 1  # only the level at open
    finally:
        watched.stop()
    assert all(r.released for r in fake.requests)


@pytest.mark.parametrize(("url", "chip_edges"), [("gpio:/dev/gpiochip0:24", False),
                                                 ("gpio:/dev/gpiochip0:24?edges=0", True)])
def test_gpio_input_polls_when_edges_are_refused_or_turned_off(
        monkeypatch: pytest.MonkeyPatch, url: str, chip_edges: bool) -> None:
    fake = FakeGpiod(edges=chip_edges)  # False: the chip answers EINVAL to edge detection
    watched, seen = fake_gpio_input(monkeypatch, fake, url)
    try:
        assert [r.settings.edge_detection for r in fake.requests] == [Edge.NONE]
        assert watched.get_status()["mode"] == "poll"
        fake.last.level = Value.ACTIVE
        assert seen.get(timeout=5) is True
        wait_until(lambda: fake.last.value_reads > 5, 5, "polled")
    finally:
        watched.stop()


def test_gpio_input_on_a_missing_chip_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpiod, "request_lines", FakeGpiod().request_lines)
    with pytest.raises(DriverUnavailable, match="no GPIO chip /dev/gpiochip9"):
        open_input("gpio:/dev/gpiochip9:1").probe()


def test_modem_line_input_follows_cts() -> None:
    """`loop://` wires RTS to CTS inside pyserial: the driver's own port raises its RTS."""
    watched = ModemLineInput("serial:loop://?line=cts")
    seen: queue.Queue[bool] = queue.Queue()
    watched.start(lambda _u, active, _ns: seen.put(active))
    try:
        wait_until(lambda: watched.port is not None, 5, "port open")
        port = watched.port
        port.rts = False
        wait_until(lambda: not watched.active, 5, "cts inactive")
        while not seen.empty():
            seen.get_nowait()
        port.rts = True
        assert seen.get(timeout=5) is True
        port.rts = False
        assert seen.get(timeout=5) is False
    finally:
        watched.stop()


def test_modem_line_input_on_a_pty_says_it_has_no_modem_lines(tmp_path: Path) -> None:
    pty = PtyDevice(tmp_path)
    try:
        with pytest.raises(DriverUnavailable) as err:
            open_input(f"serial://{pty.path}?line=dsr").probe()
        assert "dsr" in str(err.value) and "pty has no modem lines" in str(err.value)
        with pytest.raises(DriverUnavailable, match="line='rts' is not a modem status line"):
            open_input(f"serial://{pty.path}?line=rts")
    finally:
        pty.unplug()


def test_wait_pulse_needs_active_then_inactive() -> None:
    watched = open_input("sim:t-wait")

    def press() -> None:
        wait_until(lambda: watched.connected, 5, "open")
        sim_input_pulse("t-wait")

    threading.Thread(target=press, daemon=True).start()
    assert watched.wait_pulse(5.0) is True
    assert open_input("sim:t-none").wait_pulse(0.3) is False


def test_serial_line_display_over_a_pty(tmp_path: Path) -> None:
    pty = PtyDevice(tmp_path)
    display = open_display(f"serial://{pty.path}?width=12&clear=0C")
    try:
        display.show("Welcome Ada Lovelace\nrow 2")
        assert pty.read_available(2.0) == b"\x0cWelcome Ada \r\n"
    finally:
        display.close()
        pty.unplug()
    sim = open_display("sim:t-display")
    sim.show("Please see staff")
    assert sim_display("t-display") == ["Please see staff"]
