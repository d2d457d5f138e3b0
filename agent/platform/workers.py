"""SQLite work off the event loop that finishes even when its caller is cancelled.

`asyncio.to_thread` returns at once when the awaiting task is cancelled (Ctrl-C during `gate-agent
sync`, SIGTERM during a daemon's job), but the worker thread goes on writing. The cancelled
coroutine then runs its cleanup — which closes that very SQLite connection — while the thread
is still inside it: a use-after-free in the sqlite3 module, seen as exit 139 (a segmentation
fault) about once in twenty interrupts. `in_thread` waits for the worker to finish (a page write
takes milliseconds) before the cancellation goes on, so cleanup never races the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(func: Callable[..., T], /, *args: Any) -> T:
    """`await asyncio.to_thread(func, *args)`, but a cancellation waits for the thread."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                continue  # cancelled again: still wait, the thread holds the connection
            except Exception:  # noqa: BLE001 - its result no longer matters
                break
        raise


async def cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it ended, cancelling it again meanwhile: on Python 3.11 an
    `asyncio.wait_for` inside it (nats-py's fetch, say) can swallow a cancellation that comes
    just as what it waited for arrives, and the task then goes on to its next wait as if
    nothing had been asked (a CI run hung on one). Its outcome is left to the caller."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
