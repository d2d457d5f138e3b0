"""A full resync swapped into a running daemon (issue 18): the rebuilt cache's integrity check
runs before the lanes are stopped, never while a lane's lock is held; a damaged rebuild is
never swapped in."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.errors import CacheCorrupt
from agent.runtime.daemon import Daemon
from agent.runtime.lane import LaneRunner
from agent.store import cache as cache_module
from tests.platform.sync.conftest import Site, cached_ids, noon
from tests.platform.sync.test_sync_passes import first_fill


def _daemon_with_lanes(site: Site) -> Daemon:
    daemon = Daemon(site.config)
    daemon.open_stores()
    for lane in site.config.lanes:  # real gates and locks; no readers or relays needed here
        daemon.lanes[lane.name] = LaneRunner(lane, daemon._gate(), lambda event: None)
    return daemon


def test_the_integrity_check_runs_outside_every_lane_lock(site: Site, sandbox: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = _daemon_with_lanes(site)
    checks: list[tuple[str, bool]] = []
    real = cache_module.integrity_ok

    def spy(db: Any) -> str | None:
        path = db.conn.execute("PRAGMA database_list").fetchone()[2]
        checks.append((Path(path).name, any(r.lock.locked() for r in daemon.lanes.values())))
        return real(db)

    async def go() -> int:
        async with site.client() as client:
            await first_fill(site, client)
            sandbox.change_item("SF0000001", "refunded")
            monkeypatch.setattr(cache_module, "integrity_ok", spy)
            syncer = site.syncer(client, swap_hook=daemon._swap_cache)
            try:
                return await syncer.full_resync()
            finally:
                syncer.close()

    try:
        assert asyncio.run(go()) == 1140
        assert ("cache.db.new", False) in checks  # the rebuilt file was checked ...
        assert not [c for c in checks if c[1]]  # ... and nothing was checked under a lock
        lane = site.config.lanes[0]
        runner = daemon.lanes[lane.name]
        assert runner.gate.check("SF0000001", lane, noon(sandbox)).detail == "refunded"
    finally:
        daemon.close_stores()


def test_a_damaged_rebuild_is_never_swapped_in(site: Site, sandbox: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = _daemon_with_lanes(site)
    swaps: list[bool] = []

    async def go() -> None:
        async with site.client() as client:
            await first_fill(site, client)
            monkeypatch.setattr(cache_module, "integrity_ok", lambda db: "page 7: btree bad")
            syncer = site.syncer(client, swap_hook=lambda do_swap: swaps.append(True))
            try:
                with pytest.raises(CacheCorrupt, match="btree bad"):
                    await syncer.full_resync()
            finally:
                syncer.close()

    try:
        asyncio.run(go())
    finally:
        daemon.close_stores()
    assert swaps == []
    assert not site.cache_path.with_name("cache.db.new").exists()
    assert len(cached_ids(site.cache_path)) == 1140  # the live cache, untouched
