"""An asyncio event loop whose clock is simulated: sleeping advances time instantly.

The selector never blocks: when the loop would wait `timeout` seconds for the next timer, the
virtual clock jumps by `timeout` instead. Code under test that uses `loop.time()` and
`asyncio.sleep` (e.g. the governor's LoopClock) then runs hours of schedule in milliseconds,
deterministically. A loop with nothing scheduled and nothing ready is a deadlock and raises.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Selector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and self.loop is not None and timeout != 0:
            if timeout is None:
                raise RuntimeError("simulated loop deadlocked: nothing scheduled, nothing ready")
            # Jump exactly to the next timer (adding `timeout` would drift by rounding).
            scheduled = self.loop._scheduled  # noqa: SLF001 - the loop's own timer heap
            target = scheduled[0].when() if scheduled else self.loop.virtual_now + timeout
            self.loop.virtual_now = max(self.loop.virtual_now, target)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        self.virtual_now = 0.0
        selector.loop = self

    def time(self) -> float:
        return self.virtual_now


def run_simulated(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion in simulated time."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
