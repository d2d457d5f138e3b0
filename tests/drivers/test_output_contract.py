"""The Output contract, run against every relay driver that can run here.

Rigs: `sim:` (in-process record), `serialrelay:` over a pty (the bytes the board would get are
read back on the master side and decoded), `gpio:` with a fake at the `gpiod.request_lines`
boundary (no gpio-sim here). What the daemon relies on: the relay is OFF at open, after close
and after any error; `pulse` returns at once and the relay goes off by itself after `ms`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gpiod
import pytest

from agent.errors import DriverError
from drivers import open_output
from drivers.base import Output
from drivers.relay import lcus_command
from drivers.sim import sim_relay
from tests.drivers.conftest import PtyDevice, wait_until
from tests.drivers.fake_gpiod import FakeGpiod


@dataclass
class OutputRig:
    url: str
    states: Callable[[], list[bool]]  # every on/off command the device got, in order

    def observed(self) -> list[bool]:
        """The device's state changes (a repeated "off" is still just "off")."""
        out: list[bool] = []
        for state in self.states():
            if not out or out[-1] != state:
                out.append(state)
        return out


def _decode_lcus(data: bytes, channel: int) -> list[bool]:
    assert len(data) % 4 == 0, f"partial command in {data.hex()}"
    states = []
    for i in range(0, len(data), 4):
        cmd = data[i : i + 4]
        state = bool(cmd[2])
        assert cmd == lcus_command(channel, state), f"bad command {cmd.hex()}"
        states.append(state)
    return states


def _sim_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutputRig]:
    yield OutputRig("sim:gate", lambda: [on for _, on in sim_relay("gate").history])


def _serialrelay_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutputRig]:
    dev = PtyDevice(tmp_path)
    seen: list[bool] = []

    def observed() -> list[bool]:
        seen.extend(_decode_lcus(dev.read_available(0.05), 2))
        return list(seen)

    yield OutputRig(f"serialrelay://{dev.path}?channel=2", observed)
    dev.unplug()


def _gpio_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutputRig]:
    fake = FakeGpiod()
    monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)

    def observed() -> list[bool]:
        return [v == gpiod.line.Value.ACTIVE for r in fake.requests for v in r.values]

    yield OutputRig("gpio:/dev/gpiochip0:17", observed)


RIGS = {"sim": _sim_rig, "serialrelay-pty": _serialrelay_rig, "gpio-fake": _gpio_rig}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[OutputRig]:
    yield from RIGS[request.param](tmp_path, monkeypatch)


@pytest.fixture
def output(rig: OutputRig) -> Iterator[Output]:
    out = open_output(rig.url)
    yield out
    out.close()


def test_off_at_open(rig: OutputRig, output: Output) -> None:
    assert rig.observed() == [False]
    assert output.get_status()["on"] is False and output.get_status()["open"] is True


def test_pulse_returns_at_once_and_ends_by_itself(rig: OutputRig, output: Output) -> None:
    started = time.monotonic()
    output.pulse(200)
    assert time.monotonic() - started < 0.1, "pulse blocked the caller"
    assert rig.observed() == [False, True]
    assert wait_until(lambda: rig.observed() == [False, True, False], timeout=2)
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0, f"relay stayed on {elapsed:.3f}s for a 200 ms pulse"
    assert output.get_status()["pulses"] == 1


def test_close_turns_relay_off_and_cancels_pulse(rig: OutputRig, output: Output) -> None:
    output.pulse(10_000)
    output.close()
    assert rig.observed() == [False, True, False]
    time.sleep(0.05)
    output.close()  # idempotent
    assert rig.observed() == [False, True, False]
    assert output.get_status()["open"] is False


def test_relay_off_after_error(rig: OutputRig, output: Output) -> None:
    """A failure right after switching on (the write 'succeeded' but the call failed) must
    still leave the relay off, and be visible in the status."""
    real_set = output._set

    def set_then_fail(on: bool) -> None:
        real_set(on)
        if on:
            raise OSError(5, "boom")

    output._set = set_then_fail  # type: ignore[method-assign]
    with pytest.raises(DriverError, match="boom"):
        output.pulse(10_000)
    assert rig.observed() == [False, True, False]
    assert "boom" in output.get_status()["last_error"]
    assert output.get_status()["on"] is False


def test_next_pulse_after_error_reopens(rig: OutputRig, output: Output) -> None:
    """After an error the device is closed; the next pulse reopens it (a replugged board works)."""
    real_set = output._set
    calls = {"n": 0}

    def fail_once(on: bool) -> None:
        calls["n"] += 1
        if on and calls["n"] == 1:
            raise OSError(5, "gone")
        real_set(on)

    output._set = fail_once  # type: ignore[method-assign]
    with pytest.raises(DriverError):
        output.pulse(50)
    output.pulse(50)
    assert wait_until(lambda: rig.observed()[-2:] == [True, False], timeout=2)
    assert output.get_status()["pulses"] == 1


def test_a_new_pulse_restarts_the_timer(rig: OutputRig, output: Output) -> None:
    """Two admits in quick succession: the first pulse's timer must not cut the second short."""
    output.pulse(100)
    time.sleep(0.05)
    output.pulse(300)
    time.sleep(0.15)  # past the end of the first pulse
    assert rig.observed() == [False, True], "first pulse's timer switched the relay off"
    assert wait_until(lambda: rig.observed() == [False, True, False], timeout=2)
