"""Two gate devices of one company (own stores and configs, half the rate budget each): what
one admits, the other learns from its next delta sync — the platform is the only link."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from agent.runtime.opening import open_journal, opened_gate
from agent.sandbox.harness import start_sandbox
from tests.platform.sync.conftest import EVENT, make_site, noon
from tests.platform.sync.test_sync_passes import first_fill


def test_an_admit_at_one_gate_is_known_at_the_other_after_its_delta(tmp_path):
    with start_sandbox(tickets=1200, async_delay_s=0.02, rpm=60) as sb:
        a = make_site(tmp_path / "a", sb, name="gate-a", budget_share=0.5)
        b = make_site(tmp_path / "b", sb, name="gate-b", budget_share=0.5)
        t0 = noon(sb)
        code = "SF0000000"  # a VIP ticket: may enter zone 5002 (in&out, 10:00-23:00 UTC)

        async def scan_and_upload(direction: str, lane: str, at) -> str:
            with opened_gate(a.config) as gate:
                result = gate.scan(code, a.config.lane(lane), at, direction)
            journal = open_journal(a.config)
            try:
                async with a.client() as client:
                    await a.uploader(journal, client).drain()
                assert journal.counts()["pending"] == 0
            finally:
                journal.close()
            return result.decision.status

        async def b_delta() -> None:
            async with b.client() as client:
                syncer = b.syncer(client)
                try:
                    await syncer.sync_tickets(EVENT)
                finally:
                    syncer.close()

        def b_check(lane: str, direction: str, at) -> tuple[bool, str]:
            with opened_gate(b.config) as gate:
                d = gate.check(code, b.config.lane(lane), at, direction)
            return d.admit, d.status

        async def go():
            for s in (a, b):
                async with s.client() as client:
                    await first_fill(s, client)
            steps = {}
            steps["a_in"] = await scan_and_upload("in", "main", t0)
            steps["b_before_delta"] = b_check("main", "in", t0 + timedelta(minutes=1))
            await b_delta()
            steps["b_after_delta"] = b_check("main", "in", t0 + timedelta(minutes=1))
            steps["a_vip_in"] = await scan_and_upload("in", "vip", t0 + timedelta(minutes=2))
            await b_delta()
            steps["b_vip_while_inside"] = b_check("vip", "in", t0 + timedelta(minutes=3))
            steps["a_vip_out"] = await scan_and_upload("out", "vip", t0 + timedelta(minutes=4))
            await b_delta()
            steps["b_vip_after_exit"] = b_check("vip", "in", t0 + timedelta(minutes=5))
            return steps

        steps = asyncio.run(go())
        report = sb.received()
    assert steps == {
        "a_in": "valid",
        "b_before_delta": (True, "valid"),  # B cannot know yet: offline model
        "b_after_delta": (False, "alreadyIn"),
        "a_vip_in": "valid",
        "b_vip_while_inside": (False, "alreadyIn"),
        "a_vip_out": "valid",
        "b_vip_after_exit": (True, "valid"),
    }
    assert report["rateLimited"] == 0
