"""A stand-in for `gpiod.request_lines` (there is no gpio-sim kernel module on these machines).

It records what the driver asked libgpiod for — the line settings and every value set — so the
tests check the driver at the exact boundary where real hardware would start.
"""

from __future__ import annotations

from typing import Any

from gpiod.line import Direction, Value


class FakeLineRequest:
    def __init__(self, path: str, config: dict[Any, Any], consumer: str | None) -> None:
        self.path = path
        self.consumer = consumer
        ((offset, settings),) = config.items()
        assert settings.direction in (Direction.OUTPUT, Direction.INPUT)
        self.offset = offset
        self.settings = settings
        self.values: list[Value] = [settings.output_value]
        self.released = False
        self.fail_on_active = False
        self.level = Value.INACTIVE  # what an input line reads (set by the test)
        self.fail_reads = False

    def get_value(self, line: int) -> Value:
        assert not self.released, "get_value after release"
        assert line == self.offset and self.settings.direction == Direction.INPUT
        if self.fail_reads:
            raise OSError(19, "No such device")
        return self.level

    def set_value(self, line: int, value: Value) -> None:
        assert not self.released, "set_value after release"
        assert self.settings.direction == Direction.OUTPUT, "relay line must be an output"
        assert line == self.offset
        if self.fail_on_active and value == Value.ACTIVE:
            raise OSError(5, "Input/output error")
        self.values.append(value)

    def release(self) -> None:
        self.released = True

    @property
    def active(self) -> bool:
        return self.values[-1] == Value.ACTIVE


class FakeGpiod:
    """Install with `monkeypatch.setattr(gpiod, "request_lines", fake.request_lines)`."""

    def __init__(self, chips: tuple[str, ...] = ("/dev/gpiochip0",)) -> None:
        self.chips = chips
        self.requests: list[FakeLineRequest] = []

    def request_lines(self, path: str, config: dict[Any, Any], consumer: str | None = None,
                      **_: Any) -> FakeLineRequest:
        if path not in self.chips:
            raise FileNotFoundError(2, "No such file or directory")
        req = FakeLineRequest(path, config, consumer)
        self.requests.append(req)
        return req

    @property
    def last(self) -> FakeLineRequest:
        return self.requests[-1]
