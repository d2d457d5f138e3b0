"""The lean path of a claim: one HPUB written on the bus's loop, the ack read where it arrives.

Why not `js.publish()` from the lane thread through `run_coroutine_threadsafe`: each claim then
costs a Task, the client's request inbox and future, `asyncio.wait_for`'s timer, the ack decoded
into a `PubAck`, and a chain back to a concurrent Future, several turns of the bus loop in
Python while the lane waits (docs/venue.md, figures). Here:
- the lane thread builds the HPUB itself (subject, reply subject, headers, body) and hands the
  loop one plain callback (`loop.call_soon_threadsafe`) that writes it on the bus's existing
  connection, after whatever the client has queued;
- replies come to one wildcard subscription, `<inbox>.*`, made once per connection; the client
  delivers them straight into `_Replies.put_nowait` (in the client's reader, no subscription
  task), which reads the seq or the error code, stores the answer and releases the lock the
  lane waits on, and nothing else;
- the lane waits on that lock at most the time it was given (claim_timeout_ms); a reply after
  that finds no waiter and is dropped.
The answers are exactly those of `js.publish`: an ack is granted at its seq (a duplicate ack,
the same uuid stored earlier, is this scan's own claim), error 10071 (wrong last sequence) is a
conflict with the seq the server names, anything else or nothing is unavailable.

This writes on the client's transport and appends to its outgoing buffer, so it depends on
nats-py 2.x internals (`_transport`, `_pending`, `_flush_queue`); `tests/venue/test_claim_channel.py`
runs it against a real nats-server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError
from nats.protocol.command import hpub_cmd

WRONG_LAST_SEQUENCE = 10071
# what `send` and `open` use of the client beyond its public API
_CLIENT_INTERNALS = ("_transport", "_pending", "_pending_data_size", "_flush_queue")
log = logging.getLogger("gate_agent.venue")
_LAST_NUMBER = re.compile(r"(\d+)\s*$")


@dataclass(frozen=True)
class ClaimAnswer:
    """What the bus said to one claim: granted at `seq`, conflict (the subject's last seq is
    `seq`), or no answer in time (`error` says why)."""

    outcome: str  # granted | conflict | unavailable
    seq: int = 0
    error: str = ""
    # unavailable, and the bus said the claim was not stored (no stream answered: its leader
    # or its interest not yet known on this node; or the stream refused it): the same claim
    # may be sent again within the claim's time (the same Nats-Msg-Id makes that safe)
    retry: bool = False
    # unavailable before anything left this gate (no connection, the session not set up): the
    # bus was never asked, so this says nothing of whether it answers (`claims_not_sent`, not
    # `claims_timed_out` and not the run of claims timing out in a row)
    sent: bool = True


def answer_from_reply(data: bytes, status: str | None = None) -> ClaimAnswer:
    """A JetStream publish's reply as a claim's answer (what `js.publish` would return or
    raise, without building a PubAck). `status`: the reply's `Status` header, if any (503 = no
    stream listens on the subject)."""
    if status == "503":
        return ClaimAnswer("unavailable", error="no stream answered (no responders)",
                           retry=True)
    try:
        reply = json.loads(data)
    except ValueError:
        return ClaimAnswer("unavailable", error=f"unreadable publish ack {data[:80]!r}")
    if not isinstance(reply, dict):
        return ClaimAnswer("unavailable", error=f"unreadable publish ack {data[:80]!r}")
    error = reply.get("error")
    if isinstance(error, dict):
        description = str(error.get("description") or "")
        if error.get("err_code") == WRONG_LAST_SEQUENCE:
            match = _LAST_NUMBER.search(description)
            return ClaimAnswer("conflict", seq=int(match.group(1)) if match else 0)
        return ClaimAnswer("unavailable", error=description or f"publish refused: {error}",
                           retry=True)
    seq = reply.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0 or not reply.get("stream"):
        return ClaimAnswer("unavailable", error=f"unreadable publish ack {data[:80]!r}")
    return ClaimAnswer("granted", seq=seq)


def answer_via_js_publish(js: Any, loop: asyncio.AbstractEventLoop, subject: str, body: bytes,
                          headers: dict[str, str], timeout_s: float) -> ClaimAnswer:
    """The path this module replaced (kept for A/B: `VenueBus.lean_claims = False`):
    `js.publish()` on the bus loop through `run_coroutine_threadsafe`, from a lane thread."""
    return start_via_js_publish(js, loop, subject, body, headers, timeout_s).wait(timeout_s)


def start_via_js_publish(js: Any, loop: asyncio.AbstractEventLoop, subject: str, body: bytes,
                         headers: dict[str, str], timeout_s: float) -> PendingAnswer:
    """`answer_via_js_publish` sent, its answer waited for later (`PendingAnswer.wait`)."""
    return _PublishFuture(asyncio.run_coroutine_threadsafe(
        js.publish(subject, body, headers=headers, timeout=timeout_s), loop))


class PendingAnswer:
    """A claim on its way to the bus: the lane sends it, commits its journal row meanwhile,
    and then waits for the answer (agent.venue.claims, "in flight")."""

    def wait(self, timeout_s: float) -> ClaimAnswer:
        raise NotImplementedError


class Answered(PendingAnswer):
    """An answer known at once (not connected, the loop gone)."""

    def __init__(self, answer: ClaimAnswer):
        self.answer = answer

    def wait(self, timeout_s: float) -> ClaimAnswer:
        return self.answer


class _PublishFuture(PendingAnswer):
    def __init__(self, future: Any):
        self.future = future

    def wait(self, timeout_s: float) -> ClaimAnswer:
        try:
            ack = self.future.result(max(0.0, timeout_s) + 0.05)
        except (FutureTimeout, TimeoutError) as exc:
            self.future.cancel()
            return ClaimAnswer("unavailable", error=f"no answer in {timeout_s * 1000:.0f} ms"
                               f"{': ' + str(exc) if str(exc) else ''}")
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                match = _LAST_NUMBER.search(exc.description or "")
                return ClaimAnswer("conflict", seq=int(match.group(1)) if match else 0)
            return ClaimAnswer("unavailable", error=f"{exc.description or exc}", retry=True)
        except NoStreamResponseError:
            return ClaimAnswer("unavailable", error="no stream answered (no responders)",
                               retry=True)
        except Exception as exc:  # noqa: BLE001 - any other failure: not granted
            return ClaimAnswer("unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        # a duplicate ack (the same uuid stored earlier) is this very scan's claim: granted
        return ClaimAnswer("granted", seq=ack.seq)


class _Waiter(PendingAnswer):
    """One claim in flight: the lock its lane blocks on, released with the answer set."""

    __slots__ = ("answer", "done", "channel", "token")

    def __init__(self, channel: ClaimChannel, token: str) -> None:
        self.answer: ClaimAnswer | None = None
        self.done = threading.Lock()
        self.done.acquire()
        self.channel, self.token = channel, token

    def wait(self, timeout_s: float) -> ClaimAnswer:
        """The answer, waited for at most `timeout_s`; a reply after that finds no waiter."""
        if not self.done.acquire(timeout=max(0.0, timeout_s)):
            if self.channel._waiting.pop(self.token, None) is not None:
                return ClaimAnswer("unavailable", error=f"no answer in {timeout_s * 1000:.0f} ms")
            self.done.acquire()  # the reply is being answered this very instant
        assert self.answer is not None
        return self.answer


class _Replies(asyncio.Queue[Msg]):
    """The reply subscription's queue: the client puts each reply here from its reader; it is
    answered on the spot instead of waking a subscription task."""

    def __init__(self, channel: ClaimChannel) -> None:
        super().__init__()
        self.channel = channel

    def put_nowait(self, item: Msg) -> None:
        self.channel.on_reply(item)


class ClaimChannel:
    """Claims of every lane of this gate over the bus's connection (see the module docstring).
    `open()` runs on the bus loop once per connection; `request()` in lane threads."""

    def __init__(self) -> None:
        self.usable = True  # False: this client lacks the internals (see `open`)
        self._nc: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}

    async def open(self, nc: Any) -> None:
        """Subscribe to this connection's reply subjects (bus loop). A client without the
        internals this relies on (another nats-py than the pinned 2.16) leaves the channel
        unusable: the bus then claims through `js.publish` (`usable`), never half-working."""
        prefix = nc.new_inbox() + "."
        sub = await nc.subscribe(prefix + "*", pending_msgs_limit=0, pending_bytes_limit=0)
        if not (all(hasattr(nc, name) for name in _CLIENT_INTERNALS)
                and isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue)):
            await sub.unsubscribe()
            self.usable = False
            log.warning("nats-py %s lacks the internals of the lean claim path: claims go "
                        "through js.publish", getattr(nats, "__version__", "?"))
            return
        sub._pending_queue = _Replies(self)  # answered in the reader (see _Replies)
        self._prefix, self._nc = prefix, nc
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        """The connection is going: claims in flight will get no answer, so their lanes are
        told so now rather than at their timeout (bus loop)."""
        self._nc = None
        for token in list(self._waiting):
            self.answer(token, ClaimAnswer("unavailable", error="connection closed"))

    def request(self, subject: str, body: bytes, headers: dict[str, str],
                timeout_s: float) -> ClaimAnswer:
        """Publish `body` on `subject` with `headers` and wait for the stream's answer at most
        `timeout_s` (lane threads)."""
        return self.start(subject, body, headers).wait(timeout_s)

    def start(self, subject: str, body: bytes, headers: dict[str, str]) -> PendingAnswer:
        """Publish `body` on `subject` with `headers`; the answer is waited for with the
        result's `wait(timeout_s)` (lane threads). Subjects and header values are this gate's
        own (config checks venue and device names; uuids, sequences): nothing here escapes
        them."""
        loop, nc = self._loop, self._nc
        if nc is None or loop is None or loop.is_closed():
            return Answered(ClaimAnswer("unavailable", error="not connected", sent=False))
        token = str(next(self._tokens))
        head = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        command = hpub_cmd(subject, self._prefix + token, head.encode(), body)
        waiter = _Waiter(self, token)
        self._waiting[token] = waiter
        try:
            loop.call_soon_threadsafe(self.send, nc, command, token)
        except RuntimeError:  # the loop closed meanwhile
            self._waiting.pop(token, None)
            return Answered(ClaimAnswer("unavailable", error="not connected", sent=False))
        return waiter

    def send(self, nc: Any, command: bytes, token: str) -> None:
        """Write one claim on the connection, after anything the client has queued (bus loop)."""
        if nc is not self._nc or not nc.is_connected:
            self.answer(token, ClaimAnswer("unavailable", error="not connected", sent=False))
            return
        try:
            if nc._pending_data_size == 0:
                nc._transport.write(command)
            else:  # keep the order: behind the client's queued commands, flushed by its flusher
                nc._pending.append(command)
                nc._pending_data_size += len(command)
                if nc._flush_queue is not None and nc._flush_queue.empty():
                    nc._flush_queue.put_nowait(asyncio.get_running_loop().create_future())
        except Exception as exc:  # noqa: BLE001 - a dead transport: not granted
            self.answer(token, ClaimAnswer("unavailable", error=f"{type(exc).__name__}: {exc}"))

    def on_reply(self, msg: Msg) -> None:
        """A reply on `<inbox>.<token>` (bus loop, in the client's reader)."""
        token = msg.subject[len(self._prefix):]
        if token in self._waiting:
            try:
                status = msg.headers.get("Status") if msg.headers else None
                answer = answer_from_reply(msg.data, status)
            except Exception as exc:  # noqa: BLE001 - never into the client's reader
                answer = ClaimAnswer("unavailable", error=f"unreadable publish ack: {exc}"[:300])
            self.answer(token, answer)

    def answer(self, token: str, answer: ClaimAnswer) -> None:
        waiter = self._waiting.pop(token, None)
        if waiter is not None:  # else: the lane gave up already, or a second reply
            waiter.answer = answer
            waiter.done.release()
