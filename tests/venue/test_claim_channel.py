"""The lean claim path (agent.venue.claim_channel) on a real nats-server: each answer the stream
can give — granted, conflict with the server's seq, a duplicate ack, another API error, no
responders, no answer in time — read exactly as `js.publish` (the path it replaced, still behind
`VenueBus.lean_claims = False`) reads it: both paths run every case. Also: the consumer's
hold-back released by a settled claim, claims in flight when the connection closes, and claims
over TLS (a node with a CA made by openssl, as tests/hostile does)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from agent.store.venue import BusScan
from agent.venue import bus as bus_module
from agent.venue import messages
from agent.venue.bus import VenueBus
from agent.venue.claim_channel import (
    ClaimAnswer,
    ClaimChannel,
    answer_from_reply,
    answer_via_js_publish,
)
from agent.venue.node import NodeProcess, NodeSpec, free_ports, render_config, server_binary
from tests.hostile.test_security import _make_ca, _make_server_cert, needs_openssl
from tests.venue.rig import wait_until

pytestmark = pytest.mark.e2e

NAME = "chan"
ITEMS = itertools.count(1)


@pytest.fixture(scope="module")
def bus(shared_venue_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[VenueBus]:
    venue = {"name": NAME, "servers": [shared_venue_node.url], "device": "c1", "credentials": "",
             "tls_ca": "", "claim_timeout_ms": 500, "offline_policy": "local",
             "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    bus = VenueBus(venue, tmp_path_factory.mktemp("chan"), None)
    bus.start()
    try:
        wait_until(lambda: bus.ready, 20, "bus connected")
        yield bus
    finally:
        bus.stop()


@pytest.fixture(params=["lean", "js.publish"])
def path(request: pytest.FixtureRequest, bus: VenueBus) -> Iterator[str]:
    bus.lean_claims = request.param == "lean"
    yield request.param
    bus.lean_claims = True


def scan_body(uuid: str, item_id: int) -> bytes:
    return messages.encode_scan(BusScan(
        uuid=uuid, device="other", lane="x", event_id=1, item_id=item_id, zone_id=None,
        zone_is_default=True, direction="in", admit=False, status="denied",
        scanned_on="2026-01-01T00:00:00.000Z"))


def claim(bus: VenueBus, subject: str, uuid: str, expected: int,
          timeout_s: float = 2.0) -> ClaimAnswer:
    return bus.publish_claim(subject, scan_body(uuid, 1), uuid, expected, timeout_s)


def request(bus: VenueBus, subject: str, headers: dict[str, str], timeout_s: float) -> ClaimAnswer:
    """A raw request through the path under test (headers of the test's choosing)."""
    if bus.lean_claims:
        return bus._claims.request(subject, b"{}", headers, timeout_s)
    assert bus._loop is not None
    return answer_via_js_publish(bus._js, bus._loop, subject, b"{}", headers, timeout_s)


def ticket() -> str:
    return messages.ticket_subject(NAME, 1, next(ITEMS), "c1")


def test_granted_then_conflict_names_the_servers_seq(bus: VenueBus, path: str) -> None:
    subject = ticket()
    first = claim(bus, subject, f"{path}-a", 0)
    assert first.outcome == "granted" and first.seq > 0
    second = claim(bus, subject, f"{path}-b", 0)
    assert second == ClaimAnswer("conflict", seq=first.seq)
    third = claim(bus, subject, f"{path}-c", first.seq)
    assert third.outcome == "granted" and third.seq > first.seq


def test_a_duplicate_ack_is_the_same_claim_granted(bus: VenueBus, path: str) -> None:
    subject = ticket()
    first = claim(bus, subject, f"{path}-dup", 0)
    assert first.outcome == "granted"
    # the same uuid again, expecting what is now the subject's last: stored once, acked as a
    # duplicate of it (expecting 0 again is a conflict: the server checks the sequence first)
    again = claim(bus, subject, f"{path}-dup", first.seq)
    assert again == ClaimAnswer("granted", seq=first.seq)
    assert claim(bus, subject, f"{path}-dup", 0) == ClaimAnswer("conflict", seq=first.seq)


def test_another_api_error_is_unavailable_with_its_description(bus: VenueBus, path: str) -> None:
    answer = request(bus, ticket(), {"Nats-Msg-Id": f"{path}-err",
                                     "Nats-Expected-Stream": "NOT_THIS_ONE"}, 2.0)
    assert answer.outcome == "unavailable" and "stream" in answer.error.lower()
    assert answer.retry  # refused, so not stored: both paths say it may be sent again


def test_no_stream_on_the_subject_is_unavailable(bus: VenueBus, path: str) -> None:
    answer = request(bus, "nobody.listens.here", {"Nats-Msg-Id": f"{path}-nr"}, 2.0)
    assert answer.outcome == "unavailable" and answer.retry


def test_no_answer_in_time_is_unavailable_and_a_late_reply_is_dropped(
        bus: VenueBus, path: str, shared_venue_node: NodeProcess) -> None:
    """A responder that answers after the claim's time: the lane has given up by then."""
    got = threading.Event()
    stop = threading.Event()

    async def slow_responder() -> None:
        nc = await nats.connect(shared_venue_node.url)

        async def late(msg: Any) -> None:
            await asyncio.sleep(1.0)  # far past the claim's 0.1 s, even on a stalled machine
            await msg.respond(b'{"stream": "X", "seq": 7}')
            got.set()
        await nc.subscribe(f"quiet.{path}", cb=late)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await nc.close()

    ready = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(slow_responder(),))
    thread.start()
    try:
        assert ready.wait(10)
        t0 = time.monotonic()
        answer = request(bus, f"quiet.{path}", {"Nats-Msg-Id": f"{path}-slow"}, 0.1)
        took = time.monotonic() - t0
        assert answer.outcome == "unavailable" and "no answer in 100 ms" in answer.error, answer
        assert not answer.retry  # it may be stored: never sent again as if it were not
        assert 0.09 <= took < 5.0
        assert got.wait(10)
        time.sleep(0.1)  # the late reply reached the bus, found no waiter, and changed nothing
        assert bus._claims._waiting == {}
        # the channel still works after it
        assert claim(bus, ticket(), f"{path}-after", 0).outcome == "granted"
    finally:
        stop.set()
        thread.join(10)


def test_reply_parsing_refuses_what_it_cannot_read() -> None:
    assert answer_from_reply(b'{"stream":"S","seq":12}') == ClaimAnswer("granted", seq=12)
    assert answer_from_reply(b'{"stream":"S","seq":12,"duplicate":true}') == \
        ClaimAnswer("granted", seq=12)
    conflict = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 9"}}'
    assert answer_from_reply(conflict) == ClaimAnswer("conflict", seq=9)
    other = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    # refused by the stream: not stored, so the same claim may be sent again
    assert answer_from_reply(other) == ClaimAnswer("unavailable",
                                                   error="maximum messages exceeded", retry=True)
    for junk in (b"", b"not json", b"[]", b'{"stream":"S"}', b'{"stream":"S","seq":true}',
                 b'{"seq":3}', b'{"stream":"S","seq":"3"}', b'{"stream":"S","seq":0}'):
        answer = answer_from_reply(junk)
        assert answer.outcome == "unavailable" and not answer.retry, junk  # stored? unknown
    assert answer_from_reply(b"", "503") == ClaimAnswer(
        "unavailable", error="no stream answered (no responders)", retry=True)


def test_not_connected_is_unavailable_at_once(tmp_path: Path) -> None:
    venue = {"name": NAME, "servers": ["nats://127.0.0.1:1"], "device": "c9", "credentials": "",
             "tls_ca": "", "claim_timeout_ms": 500, "offline_policy": "local",
             "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    bus = VenueBus(venue, tmp_path, None)
    answer = bus._claims.request(ticket(), b"{}", {"Nats-Msg-Id": "x"}, 5.0)
    assert answer == ClaimAnswer("unavailable", error="not connected", sent=False)


def test_a_bus_never_reached_stops_without_waiting_out_its_join(tmp_path: Path) -> None:
    """nats-py retries a first connect to an unreachable bus for ever; stop() must still end
    the bus thread (a gate whose bus is down stops at once, not after the join timeout)."""
    venue = {"name": NAME, "servers": ["nats://127.0.0.1:1"], "device": "c8", "credentials": "",
             "tls_ca": "", "claim_timeout_ms": 500, "offline_policy": "local",
             "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    bus = VenueBus(venue, tmp_path, None)
    bus.start()
    time.sleep(0.5)  # connecting (and failing, and retrying)
    assert not bus.connected
    bus.stop(timeout=2.5)
    assert bus._thread is not None and not bus._thread.is_alive()


def other_gates_scan(bus: VenueBus, uuid: str) -> int:
    """A scan of another gate reaches the stream (not a claim of this bus): its seq."""
    answer = bus._claims.request(ticket(), scan_body(uuid, 1), {"Nats-Msg-Id": uuid}, 2.0)
    assert answer.outcome == "granted"
    return answer.seq


def no_earlier_hold(bus: VenueBus) -> None:
    """Earlier tests' claims (never settled here) held messages back with a timer of their
    own (at most 0.3 s in this module): wait until those have fired, so the next hold starts
    afresh."""
    wait_until(lambda: not bus._held, 10, "no hold")
    time.sleep(0.4)
    bus._claiming, bus._hold_until = 0, 0.0


def test_a_settled_claim_releases_what_the_consumer_held_back(
        bus: VenueBus, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a lane is between claim and commit the consumer holds deliveries back; the
    claim's settling releases them at once (the hold's own timer is made far longer here)."""
    no_earlier_hold(bus)
    monkeypatch.setattr(bus_module, "HOLD_WHILE_CLAIMING_S", 60.0)
    bus._begin_claim()
    seq = other_gates_scan(bus, "held-1")
    wait_until(lambda: bus._held, 10, "the delivery held back")
    time.sleep(0.2)
    assert bus.applied_seq < seq  # not applied meanwhile
    bus.claim_settled()
    assert bus.wait_applied(seq, 10.0)


def test_a_hold_nobody_settles_ends_by_its_timer(
        bus: VenueBus, monkeypatch: pytest.MonkeyPatch) -> None:
    no_earlier_hold(bus)
    monkeypatch.setattr(bus_module, "HOLD_WHILE_CLAIMING_S", 0.3)
    bus._begin_claim()
    seq = other_gates_scan(bus, "held-2")
    assert bus.wait_applied(seq, 10.0)
    bus.claim_settled()


def test_claims_in_flight_are_told_at_once_when_the_connection_closes(
        shared_venue_node: NodeProcess) -> None:
    """A channel on a connection of its own; a claim nobody answers is in flight when the
    connection goes: its lane hears so at once, not at its (long) timeout."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    channel = ClaimChannel()

    async def connect() -> Any:
        nc = await nats.connect(shared_venue_node.url)
        await nc.subscribe("mute.x")  # receives claims, never answers
        await channel.open(nc)
        return nc

    nc = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
    try:
        answers: list[ClaimAnswer] = []
        lane = threading.Thread(target=lambda: answers.append(
            channel.request("mute.x", b"{}", {"Nats-Msg-Id": "m"}, 30.0)))
        t0 = time.monotonic()
        lane.start()
        wait_until(lambda: channel._waiting, 10, "claim in flight")
        loop.call_soon_threadsafe(channel.close)
        lane.join(10)
        assert answers == [ClaimAnswer("unavailable", error="connection closed")]
        assert time.monotonic() - t0 < 10
        assert channel.request("mute.x", b"{}", {}, 1.0) == \
            ClaimAnswer("unavailable", error="not connected", sent=False)
    finally:
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@needs_openssl
def test_claims_over_tls(tmp_path: Path) -> None:
    """The lean path writes on the client's transport: over TLS too (a node with its own CA)."""
    _make_ca(tmp_path, "ca")
    _make_server_cert(tmp_path, "ca", "server", "IP:127.0.0.1")
    client, monitor = free_ports(2)
    spec = NodeSpec(name="tls-1", host="127.0.0.1", client_port=client, monitor_port=monitor,
                    store_dir=str(tmp_path / "js"))
    conf = tmp_path / "tls.conf"
    conf.write_text(render_config(spec) + f'tls {{\n  cert_file: "{tmp_path / "server.pem"}"\n'
                    f'  key_file: "{tmp_path / "server.key"}"\n}}\n', encoding="utf-8")
    node = NodeProcess(spec, tmp_path)
    with open(tmp_path / "tls.log", "ab") as log:
        node.proc = subprocess.Popen([server_binary(), "-c", str(conf)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    try:
        node.wait_healthy()
        venue = {"name": "tlsv", "servers": [f"tls://127.0.0.1:{client}"], "device": "t1",
                 "credentials": "", "tls_ca": str(tmp_path / "ca.pem"),
                 "claim_timeout_ms": 2000, "offline_policy": "local", "heartbeat_s": 5.0,
                 "heartbeat_ttl_s": 30.0}
        bus = VenueBus(venue, tmp_path / "store", None)
        bus.start()
        try:
            wait_until(lambda: bus.ready, 20, "bus connected over TLS")
            assert bus.lean_claims
            subject = messages.ticket_subject("tlsv", 1, 1, "t1")
            first = claim(bus, subject, "tls-a", 0)
            assert first.outcome == "granted"
            assert claim(bus, subject, "tls-b", 0) == ClaimAnswer("conflict", seq=first.seq)
        finally:
            bus.stop()
    finally:
        node.kill()


def test_claims_after_the_node_restarts(tmp_path: Path, venue_node: NodeProcess) -> None:
    """The client reconnects on the same connection object: the reply subscription is renewed
    with it, and claims are answered again (not left to time out)."""
    venue = {"name": "again", "servers": [venue_node.url], "device": "r1", "credentials": "",
             "tls_ca": "", "claim_timeout_ms": 2000, "offline_policy": "local",
             "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    bus = VenueBus(venue, tmp_path / "store", None)
    bus.start()
    try:
        wait_until(lambda: bus.ready, 20, "bus connected")
        first = claim(bus, messages.ticket_subject("again", 1, 1, "r1"), "r-a", 0)
        assert first.outcome == "granted"
        nc = bus._nc
        venue_node.kill()
        wait_until(lambda: not bus.connected, 10, "bus sees the node gone")
        assert claim(bus, messages.ticket_subject("again", 1, 2, "r1"), "r-b", 0).outcome \
            == "unavailable"
        venue_node.start()
        wait_until(lambda: bus.ready, 20, "bus reconnected")
        assert bus._nc is nc  # the same connection, reconnected (not a new session)
        again = claim(bus, messages.ticket_subject("again", 1, 1, "r1"), "r-c", first.seq)
        assert again.outcome == "granted" and again.seq > first.seq
    finally:
        bus.stop()


def test_a_client_without_the_internals_claims_through_js_publish(
        tmp_path: Path, shared_venue_node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another nats-py than the pinned one (an internal the lean path writes to is missing):
    the channel is left unusable at connect and claims still get their real answers."""
    from agent.venue import claim_channel

    monkeypatch.setattr(claim_channel, "_CLIENT_INTERNALS",
                        (*claim_channel._CLIENT_INTERNALS, "_not_in_this_client"))
    venue = {"name": NAME, "servers": [shared_venue_node.url], "device": "c2", "credentials": "",
             "tls_ca": "", "claim_timeout_ms": 500, "offline_policy": "local",
             "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    other = VenueBus(venue, tmp_path, None)
    other.start()
    try:
        wait_until(lambda: other.ready, 20, "bus connected")
        assert other.lean_claims and not other._claims.usable
        subject = ticket()
        first = claim(other, subject, "old-client-a", 0)
        assert first.outcome == "granted"
        assert claim(other, subject, "old-client-b", 0) == ClaimAnswer("conflict", seq=first.seq)
    finally:
        other.stop()
