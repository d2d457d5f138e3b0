"""A lane's own NATS connection for its claims: the request/reply runs in the lane's thread.

Why: a claim made through the bus's loop (agent.venue.bus) hops lane thread -> bus loop thread
-> lane thread, and that loop is also busy delivering the stream to the consumer (the claim's
own message arrives there as the ack does). Measured on loopback (bench/venue_bench.py) that
hop and the contention cost more than the publish itself. A `ClaimChannel` is one more client
connection whose private event loop runs only while its owner needs it:
- the lane's thread runs the loop for the duration of its claim (`publish`): no thread hop;
- between claims the `ChannelKeeper` thread runs each idle loop for a few milliseconds about
  once a second, so the client answers the server's PINGs, sends its own and reconnects.
One lock per channel says who runs its loop. A claim never waits for it: when the keeper holds
it, when the channel is not (yet) connected, or when the caller's thread already runs a loop,
`publish` returns None and the claim goes through the bus's own connection as before. Either
way it is the same publish (same subject, `Nats-Msg-Id`, expected last subject sequence), so
the server's answer, and every guarantee built on it, is the same.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import nats
import nats.js.errors

log = logging.getLogger("gate_agent.venue")

WRONG_LAST_SEQUENCE = 10071
KEEP_EVERY_S = 1.0  # how often an idle channel's loop is run (server pings come every 2 min)
PUMP_S = 0.002  # how long it runs then: enough to read a PING and write the PONG
RECONNECT_PUMP_S = 0.05  # longer while the client is reconnecting (claims use the bus then)
CONNECT_WITHIN_S = 1.5  # a first connect the keeper waits for (retried a second later)
CLOSE_WITHIN_S = 3.0  # how long closing waits for a claim or the keeper to let go


@dataclass(frozen=True)
class ClaimAnswer:
    """What the bus said to one claim: granted at `seq`, conflict (the subject's last seq is
    `seq`), or no answer in time (`error` says why)."""

    outcome: str  # granted | conflict | unavailable
    seq: int = 0
    error: str = ""


def claim_headers(scan_uuid: str, expected_seq: int) -> dict[str, str]:
    return {"Nats-Msg-Id": scan_uuid, "Nats-Expected-Last-Subject-Sequence": str(expected_seq)}


def answer_from_error(exc: BaseException, timeout_s: float) -> ClaimAnswer:
    """The one mapping of a failed claim publish to an answer (both connections use it)."""
    if isinstance(exc, nats.js.errors.APIError):
        if exc.err_code == WRONG_LAST_SEQUENCE:
            match = re.search(r"(\d+)\s*$", exc.description or "")
            return ClaimAnswer("conflict", seq=int(match.group(1)) if match else 0)
        return ClaimAnswer("unavailable", error=f"{exc.description or exc}")
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return ClaimAnswer("unavailable", error=f"no answer in {timeout_s * 1000:.0f} ms"
                           f"{': ' + str(exc) if str(exc) else ''}")
    return ClaimAnswer("unavailable", error=f"{type(exc).__name__}: {exc}"[:300])


class ClaimChannel:
    """One lane's connection (see the module docstring). Not shared between lanes."""

    def __init__(self, options: dict[str, Any] | None):
        """`options`: nats.connect() keywords; None: a channel that never connects (claims
        always go through the bus)."""
        self.options = options
        self.lock = threading.Lock()  # held by whoever runs the loop: the lane or the keeper
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self.used = 0  # claims answered over this connection (the rest went through the bus)
        self._nc: Any = None
        self._js: Any = None
        self._kept_at = 0.0

    @property
    def ready(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def publish(self, subject: str, body: bytes, scan_uuid: str, expected_seq: int,
                timeout_s: float) -> ClaimAnswer | None:
        """The claim over this connection, in the caller's thread; None: use the bus."""
        if not self.ready or _loop_running_here() or not self.lock.acquire(blocking=False):
            return None
        try:
            if self.closed or not self.ready:
                return None
            try:
                ack = self.loop.run_until_complete(self._js.publish(
                    subject, body, headers=claim_headers(scan_uuid, expected_seq),
                    timeout=timeout_s))
            except Exception as exc:  # noqa: BLE001 - every failure maps to "not granted"
                return answer_from_error(exc, timeout_s)
            self.used += 1
            return ClaimAnswer("granted", seq=ack.seq)
        finally:
            self.lock.release()

    def keep(self, now: float) -> None:
        """Called by the keeper: connect, or run the idle loop briefly (never waits for it)."""
        if now - self._kept_at < KEEP_EVERY_S or not self.lock.acquire(blocking=False):
            return
        try:
            self._kept_at = now
            if self.closed or self.options is None:
                return
            if self._nc is None:
                self._connect()
            else:
                pump = PUMP_S if self._nc.is_connected else RECONNECT_PUMP_S
                self.loop.run_until_complete(asyncio.sleep(pump))
        finally:
            self.lock.release()

    def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.debug("venue claim channel: %s", exc)

        assert self.options is not None
        try:
            # bounded: with unlimited reconnects the client retries a first connect forever
            self._nc = self.loop.run_until_complete(asyncio.wait_for(nats.connect(
                **self.options, connect_timeout=1, reconnect_time_wait=0.25,
                max_reconnect_attempts=-1, allow_reconnect=True, error_cb=on_error),
                CONNECT_WITHIN_S))
        except Exception as exc:  # noqa: BLE001 - the bus connection serves meanwhile
            log.debug("venue claim channel not connected (%s); claims use the bus", exc)
            return
        self._js = self._nc.jetstream()

    def close(self) -> None:
        """From any thread; waits (a bounded time) for a claim or the keeper to let go."""
        if not self.lock.acquire(timeout=CLOSE_WITHIN_S):
            self.closed = True  # whoever holds it sees this and lets the loop be
            log.warning("venue claim channel busy at close; left to the process exit")
            return
        try:
            if self.closed:
                return
            self.closed = True
            if _loop_running_here():  # e.g. the daemon's loop thread: close from another
                worker = threading.Thread(target=self._close_loop, name="venue channel close",
                                          daemon=True)
                worker.start()
                worker.join(CLOSE_WITHIN_S)
            else:
                self._close_loop()
        finally:
            self.lock.release()

    def _close_loop(self) -> None:
        loop = self.loop
        try:
            if self._nc is not None:
                loop.run_until_complete(asyncio.wait_for(self._nc.close(), 1.0))
        except Exception:  # noqa: BLE001 - closing a dead link
            pass
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:  # bounded: never let a client task that ignores cancelling hang us
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            loop.close()
            self._nc = self._js = None


class ChannelKeeper:
    """One thread that keeps every idle channel of this gate alive (see the module docstring)."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self._channels: list[ClaimChannel] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> ClaimChannel:
        channel = ClaimChannel(self.options)
        with self._guard:
            self._channels.append(channel)
        return channel

    def release(self, channel: ClaimChannel) -> None:
        with self._guard:
            if channel in self._channels:
                self._channels.remove(channel)
        channel.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keeping, name="venue channels", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._guard:
            channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()

    def _keeping(self) -> None:
        while not self._stop.is_set():
            with self._guard:
                channels = list(self._channels)
            for channel in channels:
                if self._stop.is_set():
                    return
                try:
                    channel.keep(time.monotonic())
                except Exception as exc:  # noqa: BLE001 - never let one channel stop the rest
                    log.warning("venue claim channel: %s", exc)
            self._stop.wait(0.1)


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
