"""A stand-in for `gpiod.request_lines` (there is no gpio-sim kernel module on these machines).

It records what the driver asked libgpiod for — the line settings and every value set — so the
tests check the driver at the exact boundary where real hardware would start. An input line
requested with edge detection queues an edge event on each change of `level` (or both edges of
`pulse()`, which a poll never sees), read through `wait_edge_events` / `read_edge_events` as
libgpiod 2.x does; `FakeGpiod(edges=False)` is a chip that refuses edge detection (EINVAL),
like an I2C expander without an interrupt line. It is a FAKE: no kernel, no interrupts.
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import gpiod
from gpiod.line import Direction, Edge, Value


@dataclass
class FakeEdgeEvent:
    event_type: gpiod.EdgeEvent.Type
    line_offset: int
    timestamp_ns: int


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
        self._level = Value.INACTIVE  # what an input line reads (set by the test)
        self.fail_reads = False
        self.value_reads = 0  # get_value calls: a poller makes hundreds a second
        self._edges: list[FakeEdgeEvent] = []
        self._edge_ready = threading.Condition()

    @property
    def edge_detection(self) -> bool:
        return self.settings.edge_detection != Edge.NONE

    @property
    def level(self) -> Value:
        return self._level

    @level.setter
    def level(self, value: Value) -> None:
        if value != self._level and self.edge_detection:
            kind = (gpiod.EdgeEvent.Type.RISING_EDGE if value == Value.ACTIVE
                    else gpiod.EdgeEvent.Type.FALLING_EDGE)
            with self._edge_ready:
                self._edges.append(FakeEdgeEvent(kind, self.offset, time.monotonic_ns()))
                self._edge_ready.notify_all()
        self._level = value

    def pulse(self) -> None:
        """Active and inactive again at once: only edge events can see it."""
        self.level = Value.ACTIVE
        self.level = Value.INACTIVE

    def get_value(self, line: int) -> Value:
        assert not self.released, "get_value after release"
        assert line == self.offset and self.settings.direction == Direction.INPUT
        if self.fail_reads:
            raise OSError(19, "No such device")
        self.value_reads += 1
        return self._level

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        assert not self.released, "wait_edge_events after release"
        assert self.edge_detection, "edge events on a line requested without edge detection"
        if self.fail_reads:
            raise OSError(19, "No such device")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        with self._edge_ready:
            return self._edge_ready.wait_for(lambda: bool(self._edges), seconds)

    def read_edge_events(self, max_events: int | None = None) -> list[FakeEdgeEvent]:
        with self._edge_ready:
            count = len(self._edges) if max_events is None else max_events
            events, self._edges = self._edges[:count], self._edges[count:]
        return events

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

    def __init__(self, chips: tuple[str, ...] = ("/dev/gpiochip0",), edges: bool = True) -> None:
        self.chips = chips
        self.edges = edges  # False: the chip refuses edge detection
        self.requests: list[FakeLineRequest] = []
        self.levels: dict[int, Value] = {}  # what an input line reads when requested

    def request_lines(self, path: str, config: dict[Any, Any], consumer: str | None = None,
                      **_: Any) -> FakeLineRequest:
        if path not in self.chips:
            raise FileNotFoundError(2, "No such file or directory")
        if not self.edges and any(s.edge_detection != Edge.NONE for s in config.values()):
            raise OSError(errno.EINVAL, "Invalid argument")
        req = FakeLineRequest(path, config, consumer)
        req._level = self.levels.get(req.offset, Value.INACTIVE)
        self.requests.append(req)
        return req

    @property
    def last(self) -> FakeLineRequest:
        return self.requests[-1]
