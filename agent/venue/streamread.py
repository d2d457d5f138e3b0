"""Reading a JetStream stream from a sequence on, a batch at a time (an ephemeral pull consumer).

The venue catalog's follower (agent.venue.catalog) read its stream through an ordered push
consumer until session 18. The server pushes such a consumer the whole stream as fast as the
link allows, and nats-py queues whatever its callback has not taken yet: its flow-control reply
waits for the callback, which in practice did not hold the server back (a gate joining a venue
of 47,500 items had 46,000 messages, 23 MB of payload, queued in nats-py while it applied them;
~4 KB of memory an item in all). Past the subscription's pending limit (256 MB, reached near 1M
items) nats-py drops messages with only an error callback, after its ordered-consumer
bookkeeping counted them as delivered: lost with no gap for anything to notice.

A pull consumer sends nothing it was not asked for: the reader asks for the next batch only
once `deliver` has taken the last one (the follower's bounded queue makes `deliver` wait while
it applies), so what a gate holds does not grow with the venue. The consumer acknowledges
nothing (`AckPolicy.NONE`, as the ordered consumer), is deleted by the server once unused for
`INACTIVE_S`, and is made again from the next sequence whenever reading fails or it is gone
(a node restarted, a cluster leader moved): every message is delivered once, in order, or the
reader keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agent.platform.workers import cancel_until_done

log = logging.getLogger("gate_agent.venue.streamread")

BATCH = 1000  # messages asked for at once
FETCH_WAIT_S = 1.0  # a fetch waits this long for a first message
IDLE_CHECK_S = 10.0  # after this long without a message, the consumer is looked up (gone?)
RETRY_S = 1.0  # after a failed read, the consumer is made again this much later
INACTIVE_S = 30.0  # the server deletes the consumer after this long unused (a reader gone)


class StreamReader:
    """Delivers the messages of `stream` matching `subject` from `start_seq` on, in order, to
    `deliver` (awaited: the next batch is asked for only after it returned), until
    `unsubscribe()`."""

    def __init__(self, js: Any, stream: str, subject: str, start_seq: int,
                 deliver: Callable[[Any], Awaitable[None]]):
        self.js = js
        self.stream = stream
        self.subject = subject
        self.next_seq = start_seq
        self.deliver = deliver
        self.reopened = 0  # consumers made again after a failed read
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"read stream {stream}")

    async def unsubscribe(self) -> None:
        """Stop reading, cancelling the reader again until it ends (`cancel_until_done`:
        a swallowed cancellation left it waiting on `deliver` for good, a follower's queue
        full and nobody reading it)."""
        self._stopping = True
        await cancel_until_done(self._task)
        if not self._task.cancelled() and self._task.exception() is not None:
            log.warning("stream %s: reader ended with %r", self.stream, self._task.exception())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                psub = await self.js.pull_subscribe(
                    self.subject, durable=None, stream=self.stream,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                          opt_start_seq=self.next_seq,
                                          ack_policy=AckPolicy.NONE,
                                          inactive_threshold=INACTIVE_S))
            except Exception as exc:  # noqa: BLE001 - the bus: try again
                log.warning("stream %s: no reader from %d (%s: %s); trying again", self.stream,
                            self.next_seq, type(exc).__name__, exc)
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await self._read(psub)
            except Exception as exc:  # noqa: BLE001 - the bus: read on from the next sequence
                self.reopened += 1
                log.warning("stream %s: reading stopped before %d (%s: %s); reading on from "
                            "there", self.stream, self.next_seq, type(exc).__name__, exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def _read(self, psub: Any) -> None:
        idle_since = time.monotonic()
        while not self._stopping:
            try:
                msgs = await psub.fetch(BATCH, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                if time.monotonic() - idle_since >= IDLE_CHECK_S:
                    await psub.consumer_info()  # raises when the consumer is gone
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                if self._stopping:
                    return
                seq = msg.metadata.sequence.stream
                if seq < self.next_seq:  # already delivered (a consumer made again)
                    continue
                await self.deliver(msg)
                self.next_seq = seq + 1
