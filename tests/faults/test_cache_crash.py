"""Cache crash consistency: a full resync killed half-way never leaves a half cache in use.

A full resync builds `cache.db.new` beside the live `cache.db` and swaps it in with one rename.
Here it is killed (SIGKILL) twice mid-build — once in a bare `Syncer.full_resync` process (what
`gate-agent sync --full` runs), once inside the daemon during its start-up resync — with a slow
platform and thousands of tickets, so the kill lands among the pages. Every start must discard
the unfinished file, decide from a consistent cache (every item count seen in /status is the old
count or the complete new one, never in between), and finish the rebuild.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import load_config
from agent.platform.provision import import_file
from agent.runtime.opening import opened_gate
from tests.conftest import FIGURES, PROJECT_ROOT
from tests.faults.conftest import FaultSite, cache_items, feed, status_or_none
from tests.rigs import wait_until

EXTRA = 8000
RESYNC_CHILD = textwrap.dedent("""
    import asyncio, sys
    from agent.platform.client import PlatformClient
    from agent.config import load_config
    from agent.platform.governor import Governor
    from agent.platform.sync import Syncer
    from agent.platform.token import load_token

    async def main():
        cfg = load_config(sys.argv[1])
        client = PlatformClient.from_config(cfg.api, load_token(cfg.api),
                                            Governor.from_config(cfg.api))
        async with client:
            await Syncer(cfg, client, cfg.store_dir / "cache.db").full_resync()

    asyncio.run(main())
""")


def _items(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM items WHERE event_id = ?",
                                (demo_data.EVENT_ID,)).fetchone()[0])
    finally:
        conn.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_full_resync_leaves_old_or_new_cache_never_half(site_factory,
                                                               tmp_path: Path) -> None:
    site: FaultSite = site_factory(extra_tickets=EXTRA, rpm=6000, window_s=60,
                                   async_delay_s=0.3)
    started = time.monotonic()
    # the old cache: the demo event provisioned from files, as a technician would
    config = load_config(site.config)
    with opened_gate(config) as gate:
        for path in demo_data.write_demo_files(tmp_path / "platform", datetime.now(UTC)):
            import_file(gate.cache, path, datetime.now(UTC))
    live, new = site.store / "cache.db", site.store / "cache.db.new"
    old = _items(live)
    site.sandbox.set_faults(latency_s=0.15)

    # 1. `sync --full` killed mid-build: the live cache is untouched
    child = subprocess.Popen([sys.executable, "-c", RESYNC_CHILD, str(site.config)],
                             cwd=PROJECT_ROOT)
    try:
        pages = lambda: site.sandbox.state.received.per_endpoint[  # noqa: E731
            "GET /entry/tickets"]
        wait_until(lambda: new.exists() and pages() >= 3, 30, "the rebuild to be under way")
    finally:
        child.kill()
        child.wait()
    assert new.exists() and _items(live) == old

    # 2. the daemon starts on the old cache, rebuilds, and is killed mid-rebuild
    seen: set[int] = set()
    run = site.daemon()
    run.wait_ready()
    run.wait_for(lambda r: "discarded an unfinished cache rebuild" in r.get("msg", ""),
                 what="the discard")
    feed(site.scanners["entry"], [demo_data.CODES["valid"]])
    first = run.wait_for(lambda r: r.get("code") == demo_data.CODES["valid"], what="decision")
    assert first["status"] == "valid"  # decided from the old cache while rebuilding

    def rebuilding() -> bool:
        report = status_or_none(run)
        if report is None:
            return False
        count = cache_items(report)
        if count is not None:
            seen.add(count)
        sync = report.get("sync") or {}
        return sync.get("phase") == "full" and (sync.get("pages") or 0) >= 2
    wait_until(rebuilding, 30, "the daemon's rebuild to be half-way", step=0.02)
    run.kill()
    assert new.exists() and _items(live) == old

    # 3. the next start discards the half file again and finishes the rebuild
    run = site.daemon()
    run.wait_ready()
    run.wait_for(lambda r: "discarded an unfinished cache rebuild" in r.get("msg", ""),
                 what="the discard")

    def rebuilt() -> bool:
        report = status_or_none(run)
        if report is None:
            return False
        count = cache_items(report)
        if count is not None:
            seen.add(count)
        return not report["cache"]["degraded"] and count is not None and count > old
    wait_until(rebuilt, 60, "the rebuild to finish", step=0.02)
    full = _items(live)
    assert full >= EXTRA and seen <= {old, full}, (old, full, seen)
    assert not new.exists()
    feed(site.scanners["entry"], [demo_data.bulk_barcode(1), demo_data.CODES["valid"]])
    bulk = run.wait_for(lambda r: r.get("code") == demo_data.bulk_barcode(1), what="decision")
    again = run.wait_for(lambda r: r.get("code") == demo_data.CODES["valid"] and
                         r.get("status") != "valid", what="the repeat")
    assert bulk["status"] == "valid" and again["status"] == "alreadyIn"
    assert run.stop() == 0
    FIGURES["cache_crash"] = {"old_items": old, "new_items": full,
                              "counts_seen_in_status": sorted(seen), "kills": 2,
                              "seconds": round(time.monotonic() - started, 1)}
    print("cache crash figures:", FIGURES["cache_crash"])
