"""A leader's lease renewal on a real nats-server: a refusal drops the grant at once; a
renewal nobody answers (the node stopped with SIGSTOP) holds it, not extended, until its
local `valid_until` (agent.venue.lease); the late answer of a renewal that landed anyway is
recognised as this grant's own, so the venue keeps its leader and its term."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import orjson
import pytest

from agent.venue.election import Election, connect, lease_bucket
from agent.venue.lease import LEASE_KEY, SAFE_FRACTION, Lease
from agent.venue.node import NodeProcess

pytestmark = pytest.mark.e2e

TTL_S = 30.0
REQUEST_S = 1.0  # the JetStream request timeout of these connections


class Clock:
    """The lease's monotonic clock, moved on by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusals_drop_the_grant_and_its_own_landed_write_does_not(
        shared_venue_node: NodeProcess) -> None:
    async def scenario() -> list[Any]:
        nc, js = await connect({"servers": [shared_venue_node.url]}, REQUEST_S)
        try:
            kv = await lease_bucket(js, "renewals", TTL_S, 1)
            lease = Lease(kv, "gate-a", TTL_S)
            seen: list[Any] = [await lease.acquire("t")]
            term = lease.term
            # an earlier renewal landed, its answer lost: the key holds this grant's value
            # at a revision the lease has not seen
            landed = await kv.update(LEASE_KEY, lease._value(lease.since), last=lease.revision)
            seen.append((await lease.renew(), lease.valid(), lease.term == term,
                         lease.revision > landed))
            # someone else wrote the key: refused, the grant dropped at once
            await kv.put(LEASE_KEY, orjson.dumps({"holder": "gate-b", "term": 99,
                                                  "epoch": lease.epoch, "since": "t"}))
            seen.append((await lease.renew(), lease.valid(), lease.term))
            assert lease.last_error is not None
            seen.append(lease.last_error.startswith("renewal refused"))
            return seen
        finally:
            await nc.close()

    assert asyncio.run(scenario()) == [True, (True, True, True, True), (False, False, 0), True]


def test_a_renewal_nobody_answers_holds_the_lease_until_it_runs_out(
        venue_node: NodeProcess) -> None:
    assert venue_node.proc is not None
    pid = venue_node.proc.pid
    clock = Clock()

    async def scenario() -> list[Any]:
        nc, js = await connect({"servers": [venue_node.url]}, REQUEST_S)
        try:
            kv = await lease_bucket(js, "hiccup", TTL_S, 1)
            changes: list[bool] = []

            async def changed(leading: bool) -> None:
                changes.append(leading)

            election = Election(kv, "gate-a", TTL_S, changed)
            election.lease.clock = clock
            seen: list[Any] = [await election.step()]
            lease = election.lease
            term, until = lease.term, lease.valid_until
            os.kill(pid, signal.SIGSTOP)
            try:
                clock.now += 5.0
                # not answered: still leading on the same term, the grant not extended
                seen.append((await election.step(), lease.valid(), lease.term == term,
                             lease.valid_until == until))
                assert lease.last_error is not None
                seen.append("not answered" in lease.last_error)
            finally:
                os.kill(pid, signal.SIGCONT)
            # the node answers again; the renewal sent while it was stopped landed late:
            # recognised as this grant's own, the next renewal extends the same term
            clock.now += 1.0
            seen.append((await lease.renew(), lease.term == term, lease.valid_until > until))
            until = lease.valid_until
            os.kill(pid, signal.SIGSTOP)
            try:
                clock.now = until + 0.1  # local time past the grant: no answer can keep it
                seen.append((await election.step(), lease.valid(), lease.term))
            finally:
                os.kill(pid, signal.SIGCONT)
            seen.append(changes)
            return seen
        finally:
            await nc.close()

    seen = asyncio.run(scenario())
    assert seen == [True, (True, True, True, True), True, (True, True, True),
                    (False, False, 0), [True, False]], seen
    assert TTL_S * SAFE_FRACTION > 6.0  # the steps above stay inside one grant
