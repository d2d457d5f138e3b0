"""Child process for the leader tests: one device running the real `Election` against the bus.

While `lease.guard()` passes, it does "leader work" every 50 ms: one publish on
`leadwork.<device>` carrying its term and the monotonic time of the guard check (the test
process reads the same CLOCK_MONOTONIC). Prints `LEADING <term>` / `FOLLOWING` on changes.
Usage: leader_child.py SERVER_URL VENUE DEVICE TTL_S
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from nats.js.api import StreamConfig

from agent.venue.election import Election, connect, lease_bucket
from agent.venue.lease import NotLeader
from agent.venue.term import TERM_HEADER


async def main(server: str, venue: str, device: str, ttl_s: float) -> None:
    nc, js = await connect({"servers": [server], "name": device}, 2.0)
    try:
        await js.add_stream(StreamConfig(name="LEADWORK", subjects=["leadwork.>"]))
    except Exception:  # noqa: BLE001 - the other child created it
        pass
    kv = await lease_bucket(js, venue, ttl_s, 1)

    async def changed(leading: bool) -> None:
        print(f"LEADING {election.lease.term}" if leading else "FOLLOWING", flush=True)

    election = Election(kv, device, ttl_s, changed)
    runner = asyncio.create_task(election.run())
    print("READY", flush=True)
    while True:
        try:
            term = election.lease.guard()
        except NotLeader:
            await asyncio.sleep(0.02)
            continue
        body = orjson.dumps({"device": device, "term": term, "checked": time.monotonic()})
        try:
            await js.publish(f"leadwork.{device}", body, headers={TERM_HEADER: str(term)})
        except Exception:  # noqa: BLE001 - the test looks at what was stored
            pass
        await asyncio.sleep(0.05)
    await runner
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
