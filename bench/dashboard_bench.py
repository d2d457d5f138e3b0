"""Dashboard benchmark: page weight, time to first render on loopback, heartbeat-to-dashboard
latency. Prints figures; not a test (exit 0 whatever the figures; non-zero only if the bench
itself breaks). Needs Chromium at /usr/bin/chromium (Playwright's executable_path).

    .venv/bin/python bench/dashboard_bench.py --rounds 10

A real venue on loopback: one nats-server, two `gate-agent run` daemons (agent.demo_venue's
gates), and `--extra-gates` more gates whose heartbeats (copies of gate-a's, renamed) are put
on the bus by the bench, so the venue page carries a realistic number of gates.
1. page weight: every byte the browser receives for `/venue` (HTML, CSS, JS, one /api/venue);
2. time to first render: navigation start to the first gate card on screen, in a fresh page
   each round; floor: navigating to `/login` (a tiny static page, no script) the same way;
3. heartbeat to dashboard: an in-process probe gate beats a new version; time until the venue
   page shows it (the page polls once a second; beats at a random phase of the poll), until gate-a's `/api/venue` serves it
   (polled back to back), and, as the floor, until the probe's own bus watcher receives it
   back (KV put + watch delivery on the same server); a fresh beat for each.
Figures go to bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402
import orjson  # noqa: E402
from benchfile import save_results  # noqa: E402

from agent.demo_venue import start_gates  # noqa: E402
from agent.venue.bus import VenueBus  # noqa: E402
from agent.venue.heartbeat import bucket_names  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VENUE = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.5) * 1000, 1), "p99_ms": round(pct(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "n": len(values)}


def wait(check: Any, timeout: float) -> float:
    """Poll `check` every 5 ms; the seconds it took."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("bench: condition not met")
        time.sleep(0.005)
    return time.perf_counter() - start


def add_gates(url: str, template: dict[str, Any], count: int) -> None:
    async def put() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for name in bucket_names(VENUE):
                kv = await js.key_value(name)
                for i in range(count):
                    await kv.put(f"extra-{i:03d}", orjson.dumps({**template, "device": None}))
        finally:
            await nc.close()
    asyncio.run(put())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--extra-gates", type=int, default=20)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "dashboard.json"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="dash-bench-"))
    nodes = start_venue(root / "nats", 1, VENUE)
    url = nodes[0].url
    extra = "heartbeat_s = 0.5\nheartbeat_ttl_s = 30"
    daemons = start_gates(root, {"gate-a": [url], "gate-b": [url]}, VENUE, extra)
    probe: VenueBus | None = None
    try:
        for d in daemons.values():
            d.wait_ready()
        base = daemons["gate-a"].status_url
        wait(lambda: len(httpx.get(base + "/api/venue").json()["gates"]) == 2, 20)
        template = httpx.get(base + "/api/venue").json()["gates"][0]
        add_gates(url, template, args.extra_gates)
        probe_venue = {"name": VENUE, "servers": [url], "device": "probe", "credentials": "",
                       "tls_ca": "", "claim_timeout_ms": 500, "offline_policy": "local",
                       "heartbeat_s": 0.5, "heartbeat_ttl_s": 30.0}
        (root / "probe").mkdir()
        probe = VenueBus(probe_venue, root / "probe", None)
        probe.start()
        wait(lambda: probe is not None and probe.ready, 20)
        probe.beat(orjson.dumps({"health": "pass", "version": "probe", "lanes": []}))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            weight: dict[str, int] = {}
            page = browser.new_page()
            page.on("response", lambda r: weight.__setitem__(
                r.url.replace(base, "") or "/", len(r.body()) if r.ok else 0))
            page.goto(base + "/venue")
            page.wait_for_selector("article.card")
            page.wait_for_timeout(1500)
            page.close()
            first: list[float] = []
            floor: list[float] = []
            for _ in range(args.rounds):
                for target, out, selector in (("/venue", first, "article.card"),
                                              ("/login", floor, "form")):
                    fresh = browser.new_page()
                    start = time.perf_counter()
                    fresh.goto(base + target, wait_until="commit")
                    fresh.wait_for_selector(selector)
                    out.append(time.perf_counter() - start)
                    fresh.close()
            page = browser.new_page()
            page.goto(base + "/venue")
            page.wait_for_selector('article[data-device="probe"]', timeout=15_000)
            to_page, to_api, to_bus = [], [], []
            def beat(tag: str) -> tuple[str, float]:
                marker = f"{tag}-{time.time_ns()}"
                assert probe is not None
                probe.beat(orjson.dumps({"health": "pass", "version": marker, "lanes": []}))
                return marker, time.perf_counter()

            def on_probe_board(marker: str) -> bool:
                assert probe is not None
                return any(r["device"] == "probe" and r.get("version") == marker
                           for r in probe.board.rows())

            for _ in range(args.rounds):
                marker, start = beat("bus")
                to_bus.append(wait(lambda m=marker: on_probe_board(m), 10))
                marker, start = beat("api")
                while marker not in httpx.get(base + "/api/venue").text:
                    time.sleep(0.005)
                to_api.append(time.perf_counter() - start)
                time.sleep(random.uniform(0, 1.0))  # any phase of the page's 1 s poll
                marker, start = beat("page")
                page.wait_for_function(
                    "m => document.querySelector('article[data-device=\"probe\"]')"
                    ".textContent.includes(m)", arg=marker, timeout=10_000)
                to_page.append(time.perf_counter() - start)
                time.sleep(0.2)
            browser.close()
    finally:
        if probe is not None:
            probe.stop()
        for d in daemons.values():
            d.stop()
        for node in nodes:
            node.kill()
    results = {
        "gates_on_page": 3 + args.extra_gates,
        "page_weight_bytes": {"total": sum(weight.values()), **weight},
        "first_render": ms(first), "first_render_floor_login_page": ms(floor),
        "heartbeat_to_page": ms(to_page), "heartbeat_to_api": ms(to_api),
        "heartbeat_to_bus_watcher_floor": ms(to_bus),
        "note": "loopback, shared loaded 2-core machine; page polls /api/venue every 1 s",
    }
    save_results(results, args.output)
    w = results["page_weight_bytes"]
    print(f"page weight, {results['gates_on_page']} gates: {w['total']} bytes "
          + ", ".join(f"{k} {v}" for k, v in w.items() if k != "total"))
    for key in ("first_render", "first_render_floor_login_page", "heartbeat_to_page",
                "heartbeat_to_api", "heartbeat_to_bus_watcher_floor"):
        fig = results[key]
        print(f"{key:<32} p50 {fig['p50_ms']:>7.1f} ms  p99 {fig['p99_ms']:>7.1f} ms "
              f"(n={fig['n']})")
    print(f"figures in {results['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
