"""The step-down's decisions (agent.venue.stepdown) from a leader's link status and a member's
probe, on controlled clocks, with the reach records in a real nats-server's lease bucket; and
reach records that cannot be read are never a successor.
The behaviour on a real bus with real gates: tests/venue/test_leader_stepdown.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from agent.platform.client import LinkStatus
from agent.venue import reach
from agent.venue.election import connect, lease_bucket
from agent.venue.node import NodeProcess
from agent.venue.stepdown import HOLD_FACTOR, StepDown

VENUE = {"name": "hall", "leader_stepdown_after_s": 120.0, "platform_probe_s": 30.0}
API = {"base_url": "https://api.example.com/v1", "ca_file": "", "timeout_s": 10}


class Clocks:
    def __init__(self) -> None:
        self.mono, self.wall = 1000.0, 1_800_000_000.0

    def pass_(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def leader(link: LinkStatus, clocks: Clocks, venue: str = "hall") -> StepDown:
    sd = StepDown("g1", {**VENUE, "name": venue}, API, 10.0, lambda: link,
                  clock=lambda: clocks.mono, wall=lambda: clocks.wall)
    sd.set_leading(True)
    return sd


async def _bucket(node: NodeProcess, venue: str) -> tuple[Any, Any, Any]:
    """(connection, JetStream, lease bucket) on a real nats-server: the reach records."""
    nc, js = await connect({"servers": [node.url]}, 5.0)
    return nc, js, await lease_bucket(js, venue, 10.0, 1)


def reachable(device: str) -> reach.Reach:
    return reach.Reach(device, True, "probe", 1.0, None, False)


def test_a_leader_failing_on_its_link_steps_down_only_with_a_successor(
        shared_venue_node: NodeProcess) -> None:
    clocks, link = Clocks(), LinkStatus()
    sd = leader(link, clocks, "hall-only-with")
    link.last_success = clocks.wall - 500  # before this term: the silence counts from its start
    link.last_error, link.last_error_at, link.last_error_kind = \
        "GET /zones/all: network failure", clocks.wall + 5, "transport"

    async def scenario() -> None:
        nc, js, kv = await _bucket(shared_venue_node, "hall-only-with")
        try:
            await reach.put(kv, reachable("g2"))
            clocks.pass_(119)
            await sd.tick(js, kv)
            assert await sd.release_why() is None  # not yet the step-down time
            clocks.pass_(2)
            await sd.tick(js, kv)  # it wants a successor now: looks, finds g2
            assert sd.successor == "g2"
            why = await sd.release_why()
            assert why is not None and "121 s" in why and "network failure" in why
            assert "g2" in why
            await reach.remove(kv, "g2")
            # nobody else reaches the platform: nothing to gain
            assert await sd.release_why() is None and sd.successor is None
        finally:
            await nc.close()

    asyncio.run(scenario())
    assert sd.record().reachable is False and sd.record().source == "requests"


def test_a_successor_that_lost_the_platform_since_the_last_look_is_not_named(
        shared_venue_node: NodeProcess) -> None:
    """The look for a successor is up to min(TTL, probe interval) old when the leader steps
    down: the gate it found is read again just before, and one that since lost the platform
    (or stepped down itself) is not handed a lease it cannot use; a fresh look names one
    that can, or the leader keeps the lease."""
    clocks, link = Clocks(), LinkStatus()
    sd = leader(link, clocks, "hall-stale-look")
    link.last_error, link.last_error_at, link.last_error_kind = \
        "GET /zones/all: network failure", clocks.wall, "transport"

    async def scenario() -> tuple[str | None, str | None, str | None]:
        nc, js, kv = await _bucket(shared_venue_node, "hall-stale-look")
        try:
            await reach.put(kv, reachable("g2"))
            clocks.pass_(130)
            await sd.tick(js, kv)
            assert sd.successor == "g2"
            # within the look's interval: g2's probe fails now, g3 (new) reaches the platform
            await reach.put(kv, reach.Reach("g2", False, "probe", 0.5, "refused", False))
            await reach.put(kv, reachable("g3"))
            clocks.pass_(1)
            await sd.tick(js, kv)  # too soon for another look: its successor stays g2
            assert sd.successor == "g2"
            moved_to = await sd.release_why()
            # g3 steps down itself (held); nobody else reaches the platform
            await reach.put(kv, reach.Reach("g3", True, "requests", 0.5, None, True))
            clocks.pass_(1)
            await sd.tick(js, kv)
            kept = await sd.release_why()
            return moved_to, kept, sd.successor
        finally:
            await nc.close()

    moved_to, kept, successor = asyncio.run(scenario())
    assert moved_to is not None and "g3 reaches the platform" in moved_to, moved_to
    assert kept is None and successor is None


def test_what_moving_cannot_fix_does_not_move_the_lease(shared_venue_node: NodeProcess) -> None:
    clocks, link = Clocks(), LinkStatus()
    sd = leader(link, clocks, "hall-cannot-fix")

    async def scenario() -> None:
        nc, js, kv = await _bucket(shared_venue_node, "hall-cannot-fix")
        try:
            await reach.put(kv, reachable("g2"))
            await sd.tick(js, kv)
            sd.successor = "g2"
            for kind in ("ratelimited", "servererror", "validation", "badresponse"):
                link.last_error, link.last_error_at, link.last_error_kind = \
                    "x", clocks.wall, kind
                clocks.pass_(500)
                assert await sd.release_why() is None, kind
            for kind in ("unauthenticated", "forbidden"):  # the token: another's may work
                link.last_error_kind = kind
                assert await sd.release_why() is not None, kind
            link.last_success = link.last_error_at + 1  # answered since: the link works
            assert await sd.release_why() is None
        finally:
            await nc.close()

    asyncio.run(scenario())
    assert sd.record().reachable is True


def test_after_a_step_down_it_stays_out_and_a_blind_member_defers() -> None:
    clocks, link = Clocks(), LinkStatus()
    sd = leader(link, clocks)
    link.last_error, link.last_error_at, link.last_error_kind = "401", clocks.wall, "unauthenticated"
    sd.successor = "g2"
    sd.stepped_down("no successful platform request")
    sd.set_leading(False)
    assert sd.last_step is not None and sd.last_step["successor"] == "g2"
    assert sd.probe_ok() is False  # its requests' verdict, until its own probe
    assert not sd.may_acquire() and sd.record().held
    assert sd.get_status()["held_until"] is not None
    # held: its own probe reaches the platform now, but g2 can work too: it stays out
    clocks.pass_(30)
    sd.probed = (clocks.mono, None)
    assert not sd.may_acquire()
    sd.successor = None  # not looked up since the step-down: not known to be alone
    assert not sd.may_acquire()
    sd._looked_at = clocks.mono  # looked: no other live gate can (g2 died)
    assert sd.may_acquire()  # rather than leave the venue without a leader that could work
    clocks.pass_(2 * 10 + 1)  # that look is old now (the bus away since?): not known
    sd.probed = (clocks.mono, None)
    assert not sd.may_acquire()
    sd._looked_at = clocks.mono
    sd.probed = (clocks.mono, "refused")
    assert not sd.may_acquire()
    clocks.pass_(HOLD_FACTOR * 120 + 1)
    assert not sd.record().held and sd.get_status()["held_until"] is None
    sd.probed = (clocks.mono, "api.example.com:443: ConnectionRefusedError")
    sd.successor = "g2"
    assert not sd.may_acquire()  # blind while another gate can work: leave it the lease
    sd.successor = None
    assert sd.may_acquire()  # every gate blind: election as without the step-down
    sd.probed = (clocks.mono, None)
    sd.successor = "g2"
    assert sd.may_acquire()
    clocks.pass_(3 * 30 + 1)  # a probe this old says nothing (its task is stuck)
    assert sd.probe_ok() is None and sd.record().reachable is None


def test_unreadable_records_are_never_a_successor() -> None:
    good = reach.Reach("g2", True, "probe", 3.0, None, False)
    assert reach.decode(good.encode()) == good and good.successor
    assert not reach.Reach("g2", True, "probe", 3.0, None, True).successor  # held down
    assert not reach.Reach("g2", None, "probe", None, None, False).successor  # unknown
    body = orjson.loads(good.encode())
    for bad in (b"", b"[]", b"{", orjson.dumps({**body, "reachable": "yes"}),
                orjson.dumps({**body, "reachable": 1}), orjson.dumps({**body, "held": 0}),
                orjson.dumps({k: v for k, v in body.items() if k != "held"})):
        assert reach.decode(bad) is None, bad
