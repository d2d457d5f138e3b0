"""The venue leader's lease on a real nats-server: devices are real processes
(tests/venue/leader_child.py) running the real `Election`; the test kills or pauses them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.venue.election import Election, connect, lease_bucket
from agent.venue.lease import LEASE_KEY, Lease, current_leader
from agent.venue.node import NodeProcess

CHILD = Path(__file__).with_name("leader_child.py")
TTL_S = 2.0

pytestmark = pytest.mark.e2e


class Child:
    def __init__(self, node: NodeProcess, venue: str, device: str):
        self.device = device
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), node.url, venue, device, str(TTL_S)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            os.kill(child.proc.pid, signal.SIGCONT)
        child.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _leader(url: str, venue: str) -> Any:
    nc, js = await connect({"servers": [url]}, 2.0)
    try:
        return await current_leader(await lease_bucket(js, venue, TTL_S, 1))
    finally:
        await nc.close()


async def _work(url: str) -> list[tuple[int, dict[str, Any]]]:
    """Every leader-work message stored so far, with its stream sequence."""
    nc, js = await connect({"servers": [url]}, 2.0)
    try:
        info = await js.stream_info("LEADWORK")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("LEADWORK", seq)
            out.append((seq, orjson.loads(msg.data)))
        return out
    finally:
        await nc.close()


def wait_leader(url: str, venue: str, not_holder: str | None = None,
                timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = run(_leader(url, venue))
        if info is not None and info.term and info.holder != not_holder:
            return info
        time.sleep(0.05)
    raise AssertionError("no leader")


def test_exactly_one_of_two_creates_wins_and_errors_mean_not_granted(shared_venue_node: NodeProcess) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 2.0)
        try:
            kv = await lease_bucket(js, "solo", 30.0, 1)
            a, b = Lease(kv, "a", 30.0), Lease(kv, "b", 30.0)
            won = await asyncio.gather(a.acquire("t"), b.acquire("t"))
            loser = b if won[0] else a
            # the loser cannot renew what it never held; once it has written the key, the
            # winner's renewal is refused and it steps down (tests/venue/test_lease_renewal.py:
            # refusals and renewals nobody answers)
            winner = a if won[0] else b
            await kv.put(LEASE_KEY, loser._value("t"))
            renewed = await winner.renew()
            return won[0] != won[1], loser.valid() or await loser.renew(), \
                renewed or winner.valid()
        finally:
            await nc.close()

    one_winner, loser_valid, stale_kept = run(scenario())
    assert one_winner
    assert not loser_valid
    assert not stale_kept


def test_killed_leader_is_replaced_within_the_lease_ttl(shared_venue_node: NodeProcess,
                                                        children: list[Child]) -> None:
    children.append(Child(shared_venue_node, "killvenue", "gate-a"))
    first = wait_leader(shared_venue_node.url, "killvenue")
    assert first.holder == "gate-a"
    children.append(Child(shared_venue_node, "killvenue", "gate-b"))
    time.sleep(0.5)  # b is running and watching
    killed_at = time.monotonic()
    children[0].proc.send_signal(signal.SIGKILL)
    second = wait_leader(shared_venue_node.url, "killvenue", not_holder="gate-a")
    took = time.monotonic() - killed_at
    assert second.holder == "gate-b"
    assert second.term > first.term  # terms only grow: the fencing token
    # the lease expires TTL after the last renewal; b polls every TTL/10
    assert took < TTL_S * 2 + 1.0, f"takeover took {took:.2f} s (ttl {TTL_S} s)"


def test_leader_paused_past_its_lease_does_not_act_after_resuming(
        shared_venue_node: NodeProcess, children: list[Child]) -> None:
    children.append(Child(shared_venue_node, "pausevenue", "gate-a"))
    first = wait_leader(shared_venue_node.url, "pausevenue")
    children.append(Child(shared_venue_node, "pausevenue", "gate-b"))
    time.sleep(0.5)
    a = children[0]
    os.kill(a.proc.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    second = wait_leader(shared_venue_node.url, "pausevenue", not_holder="gate-a")
    time.sleep(0.5)  # b is working
    resumed_at = time.monotonic()
    os.kill(a.proc.pid, signal.SIGCONT)
    time.sleep(TTL_S * 1.5)  # a had every chance to act
    still = run(_leader(shared_venue_node.url, "pausevenue"))
    assert still is not None and still.holder == "gate-b" and still.term == second.term
    assert second.term > first.term
    msgs = [m for _seq, m in run(_work(shared_venue_node.url))]
    a_msgs = [m for m in msgs if m["device"] == "gate-a"]
    assert a_msgs, "gate-a never worked as leader before the pause"
    # nothing a decided after it was resumed: its guard saw the lease had expired
    late = [m for m in a_msgs if m["checked"] > stopped_at + 0.2]
    assert late == [], f"gate-a acted as leader after resuming: {late[:3]}"
    assert resumed_at - stopped_at > TTL_S
    # and whatever was in flight is of the old term, which readers drop once they saw b's
    assert all(m["term"] == first.term for m in a_msgs)
    assert any(m["device"] == "gate-b" and m["term"] == second.term for m in msgs)


def test_a_venue_without_a_leader_is_counted_on_answers_only(
        shared_venue_node: NodeProcess) -> None:
    """Every gate reads who leads; a venue nobody leads (no candidate up, every candidate held
    out) is timed from the first answer that says so, for status `venue_no_leader`. A bucket
    that does not answer (the link gone) is not "nobody leads"."""
    async def scenario() -> list[Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, 2.0)
        try:
            kv = await lease_bucket(js, "leaderless", 30.0, 1)
            watcher = Election(kv, "gate-w", 30.0, candidate=False)
            seen = [not await watcher.step()]  # it may not lead: never takes the lease
            first = watcher.get_status()
            seen.append((first["leader"], first["candidate"], first["leaderless_s"] >= 0))
            await asyncio.sleep(0.3)
            await watcher.step()
            later = watcher.get_status()  # the same stretch: its start kept
            seen.append((later["leaderless_since"] == first["leaderless_since"],
                         later["leaderless_s"] >= first["leaderless_s"] + 0.2))
            candidate = Election(kv, "gate-c", 30.0)
            seen.append(await candidate.step())
            await watcher.step()
            seen.append((watcher.get_status()["leader"],
                         watcher.get_status()["leaderless_since"]))
            await candidate.lease.release()
            await watcher.step()
            seen.append(watcher.get_status()["leaderless_since"] not in
                        (None, first["leaderless_since"]))
            await nc.close()
            blind = Election(kv, "gate-b", 30.0, candidate=False)
            await blind.step()  # the closed link cannot read the bucket
            seen.append((blind.leader, blind.get_status()["leaderless_since"]))
            return seen
        finally:
            if not nc.is_closed:
                await nc.close()

    seen = run(scenario())
    assert seen == [True, (None, False, True), (True, True), True, ("gate-c", None), True,
                    (None, None)], seen
