"""Whether a venue stream exists is judged on JetStream's answer, never on its silence.

After a failed create, `streams._exists` asked stream info and took any error as "missing":
with no quorum (no meta leader to answer) the create was sent again and again for
`CREATE_RETRY_S` (30 s), and all the set-up said was the create's own error. Only JetStream's
"stream not found" (10059) means missing; any other failure of the stream info (a timeout, no
responders, no quorum) is now a set-up failure said as such (VenueStreamUnknown, naming the
stream and both errors): no create is sent again on it, and the caller's set-up step tries
again. A real three-node nats-server cluster, two nodes killed by PID.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from agent.errors import VenueStreamUnknown
from agent.ops.status import evaluate
from agent.venue import streams
from agent.venue.node import NodeProcess
from tests.venue.rig import make_device, wait_until, write_platform_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STREAM = "UNKNOWABLE"


def test_a_stream_info_without_answer_fails_the_set_up_and_sends_no_create_again(
        tmp_path: Path, venue_cluster: list[NodeProcess]) -> None:
    for node in venue_cluster[:2]:
        node.kill()
    survivor = venue_cluster[2]

    async def scenario() -> None:
        nc = await nats.connect(survivor.url)
        try:
            js = nc.jetstream(timeout=2)
            creates: list[str] = []
            add_stream = js.add_stream

            async def counted(config: StreamConfig) -> Any:  # the real create, counted
                creates.append(str(config.name))
                return await add_stream(config)

            js.add_stream = counted  # type: ignore[method-assign]
            said: list[BaseException] = []
            config = StreamConfig(name=STREAM, subjects=["unknowable.>"],
                                  storage=StorageType.FILE, num_replicas=3)
            with pytest.raises(VenueStreamUnknown) as raised:
                await streams.ensure_stream(js, config, [], waiting=said.append)
            text = str(raised.value)
            assert f"cannot tell whether stream {STREAM} exists" in text, text
            assert "its stream info got no answer" in text and "its create failed" in text
            assert creates == [STREAM], creates  # not sent again on a silence
            assert said == []
        finally:
            await nc.close()

    asyncio.run(scenario())

    # a gate's bus session on that cluster: its set-up step says why it cannot go on
    now = datetime.now(UTC).replace(microsecond=0)
    files = write_platform_files(tmp_path / "platform", now, 5)
    device = make_device(tmp_path, "g1", [survivor.url], files, now)
    try:
        started = time.monotonic()
        wait_until(lambda: "cannot tell whether stream" in (device.bus.setup_error or ""), 30,
                   "the set-up's error in status")
        assert time.monotonic() - started < streams.CREATE_RETRY_S
        status = device.bus.get_status()
        assert "(while making sure the stream exists)" in status["setup_error"], status
        assert not device.bus.ready
        _health, reasons = evaluate({"venue": status}, datetime.now(UTC), 3600)
        degraded = next(r.message for r in reasons if r.code == "venue_degraded")
        assert "cannot tell whether stream" in degraded, degraded
    finally:
        for gate in device.gates:
            gate.close()
        device.bus.stop()
