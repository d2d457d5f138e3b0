"""A venue stream's set-up while JetStream cannot decide anything (no quorum, an election).

`streams.ensure_stream` takes any stream info answer as "the stream exists", a replica's too
while the stream has no leader (it does hold the stream), and then fits the stream's settings
to the config. Against a leaderless stream the update got no answer (a timeout), which was put
in `settings_drift` as "the server refused the change: nats: timeout ... the stream is used as
it is — run `nats stream edit`": false, and never tried again until the next session set-up,
however soon the quorum came back. Now nothing is decided on it: the set-up step is tried
again until the stream has a leader, then the setting is changed. And a stream that does not
exist yet (a new venue) while there is no meta leader: its create was retried for
CREATE_RETRY_S (30 s) saying nothing of why; now each failed try is in `setup_error`. And the
session's watch of a stream (agent.venue.stream_identity) reads the same replica's answer: what
a node left holds is no stream made again (moved here from tests/venue/test_quorum_lost.py to
share this scenario's cluster).

A real three-node nats-server cluster, nodes killed by PID and started again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from agent.errors import VenueNoStreamLeader, VenueStreamLost
from agent.venue import messages, stream_identity, streams
from agent.venue.node import NodeProcess
from tests.venue.rig import make_device, wait_until, write_platform_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STREAM = "S"
WANTS = [streams.Want("num_replicas", 3, streams.REPLICAS_KEY),
         streams.Want("duplicate_window", 600.0)]


def _config(window_s: float) -> StreamConfig:
    return StreamConfig(name=STREAM, subjects=["s.>"], storage=StorageType.FILE,
                        num_replicas=3, duplicate_window=window_s)


async def _until(what: str, attempt: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await attempt()
        except Exception as exc:  # noqa: BLE001 - not yet (no leader)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}") from exc
            await asyncio.sleep(0.5)


def _restart(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_healthy()


def test_a_stream_without_a_leader_is_neither_refused_nor_made_again(
        venue_cluster: list[NodeProcess], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One leaderless stream, two readers of the replica's answer (one cluster for both: its
    start and the wait for the answer are most of the time). The set-up: a setting is not
    taken as refused by it, and is changed once the quorum is back. The session's watch: the
    gate applied, from the leader, messages the node left had not applied yet when the leader
    was lost (here: 5 beyond what it holds); that replica's answer must not end the session as
    "made again" nor pass a set-up's identity check; the leader's own answer still does end
    it."""
    caplog.set_level(logging.WARNING, "gate_agent.venue.streams")
    monkeypatch.setattr(stream_identity, "CHECK_EVERY_S", 0.0)

    async def scenario() -> None:
        nc = await nats.connect([n.url for n in venue_cluster])
        js = nc.jetstream(timeout=2)

        async def made() -> None:  # by an earlier version of the config (another window)
            await js.add_stream(_config(300.0))
            for _ in range(3):
                await js.publish("s.a", b"x")
        await _until("the stream made", made)
        info = await stream_identity.leader_answer(js, STREAM)
        last = info.state.last_seq
        watch = stream_identity.StreamWatch(STREAM, stream_identity.created_of(info))
        with pytest.raises(VenueStreamLost):  # the leader says less than applied: acted on
            await watch.check(js, last + 5)
        await nc.close()
        for node in venue_cluster[:2]:
            node.kill()
        nc = await nats.connect(venue_cluster[2].url, max_reconnect_attempts=-1)
        js = nc.jetstream(timeout=2)

        async def leaderless() -> Any:  # the node left answers once it sees no leader
            info = await js.stream_info(STREAM)
            assert stream_identity.leaderless(info)
            return info
        info = await _until("the replica's own answer", leaderless)
        assert info.state.last_seq == last
        await watch.check(js, last + 5)  # a replica's word: nothing decided on it
        await watch.check(js, last + 5)
        with pytest.raises(VenueNoStreamLeader):  # a set-up's identity check waits for one
            await stream_identity.leader_answer(js, STREAM)
        drift: dict[str, str] = {}
        for _ in range(2):  # a set-up step's tries: nothing decided on any of them
            with pytest.raises((VenueNoStreamLeader, TimeoutError)):
                await streams.ensure_stream(js, _config(600.0), WANTS, drift)
        assert drift == {}
        assert "refused" not in caplog.text
        await nc.close()

        _restart(venue_cluster[:2])
        nc = await nats.connect([n.url for n in venue_cluster])
        js = nc.jetstream(timeout=2)
        await _until("the set-up with the quorum back",
                     lambda: streams.ensure_stream(js, _config(600.0), WANTS, drift))
        assert drift == {}
        assert (await js.stream_info(STREAM)).config.duplicate_window == pytest.approx(600)
        assert "duplicate_window changed from 300s to 600s" in caplog.text
        await nc.close()

    asyncio.run(scenario())


def test_a_new_venues_set_up_without_quorum_says_why_before_the_create_gives_up(
        tmp_path: Path, venue_cluster: list[NodeProcess]) -> None:
    """No meta leader: the stream's create is not answered. Within a few seconds (not after
    CREATE_RETRY_S) status has the error, and once the quorum is back the session sets up."""
    for node in venue_cluster[:2]:
        node.kill()
    now = datetime.now(UTC).replace(microsecond=0)
    files = write_platform_files(tmp_path / "platform", now, 5)
    device = make_device(tmp_path, "g1", [n.url for n in venue_cluster], files, now)
    try:
        started = time.monotonic()
        wait_until(lambda: device.bus.connected and device.bus.setup_error is not None, 20,
                   "the set-up's error in status")
        waited = time.monotonic() - started
        status = device.bus.get_status()
        assert waited < streams.CREATE_RETRY_S, (waited, status)
        assert status["session_step"] == "making sure the stream exists", status
        assert "making sure the stream exists" in status["setup_error"], status
        assert not device.bus.ready
        _restart(venue_cluster[:2])
        wait_until(lambda: device.bus.ready, 90, "the session set up by itself")
        status = device.bus.get_status()
        assert status["setup_error"] is None and status["settings_drift"] == [], status
        assert messages.stream_name("hall") == device.bus.stream
    finally:
        for gate in device.gates:
            gate.close()
        device.bus.stop()


def test_only_an_answer_that_says_no_is_a_refusal() -> None:
    """The errors as nats-py raises them from the server's answers seen above (a cluster
    without a meta leader answers a create 503/10008; an update to a leaderless stream
    times out) and from a one-node server asked 3 replicas (10074) or 10058."""
    def api(code: int, err_code: int) -> BaseException:
        try:
            APIError.from_error({"code": code, "err_code": err_code, "description": "x"})
        except APIError as exc:
            return exc
        raise AssertionError("from_error raises")
    assert not streams.refused(api(503, 10008))
    assert not streams.refused(api(500, 10009))
    assert not streams.refused(NatsTimeoutError())
    assert not streams.refused(NoRespondersError())
    assert streams.refused(api(500, 10074))
    assert streams.refused(api(400, 10058))
    assert streams.refused(api(400, 10052))
