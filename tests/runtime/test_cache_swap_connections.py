"""A rebuilt cache renamed over cache.db while a control command (`gate-agent scan`, `check`,
`import`, `pair-tag` through the daemon) has its own connection to it open.

The lanes' and status's connections are closed and reopened by the swap itself
(agent.runtime.cachecare.swap_cache). A command's own one was left open across it: it kept
reading the replaced file (its -wal/-shm unlinked under it), and what it wrote went into that
file and was lost. Now the swap waits for such connections to close (`SwapHold`), on real
files, a real sandbox over loopback and the daemon's own wiring (`setup_platform`)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import controlops
from agent.runtime.controlops import DaemonOps
from agent.runtime.daemon import Daemon
from agent.runtime.lane import LaneRunner
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store.cache import TicketCache
from tests.platform.sync.conftest import EVENT, Site, cached_ids, make_site, noon


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    with start_sandbox(tickets=1200, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


@pytest.fixture
def site(tmp_path: Path, platform: Sandbox) -> Site:
    return make_site(tmp_path / "gate-a", platform, rpm=1000)


def _daemon(site: Site, platform: Sandbox) -> Daemon:
    """Stores, lanes (real gates and locks; no readers) and the platform link as `run` wires
    them: the syncer's swap goes through the daemon's hook and guard."""
    daemon = Daemon(site.config)
    daemon.open_stores()
    for lane in site.config.lanes:
        daemon.lanes[lane.name] = LaneRunner(lane, daemon._gate(), lambda event: None)
    daemon.setup_platform(platform.token)
    return daemon


async def _closed(daemon: Daemon) -> None:
    assert daemon.client is not None
    await daemon.client.aclose()


async def _filled(daemon: Daemon) -> None:
    assert daemon.syncer is not None
    await daemon.syncer.refresh_events()
    await daemon.syncer.sync_tickets(EVENT)


async def _at_the_swap(task: asyncio.Task[Any], daemon: Daemon) -> None:
    """Until the resync is done, or waits to swap (it reports `swapping`, then swaps without
    an await unless something holds it back)."""
    assert daemon.syncer is not None
    while not task.done() and daemon.syncer.progress.phase != "swapping":
        await asyncio.sleep(0.01)


IMPORTED = json.dumps({"content": [{"id": 990001, "const": {"barcode": "IMPORTED1"},
                                      "variable": {"status": "sold"}}]})
COMMANDS = {  # each control command that opens cache.db itself, as its CLI sends it
    "scan": {"lane": "main", "codes": ["SF0000001"]},
    "check": {"lane": "main", "code": "SF0000001"},
    "import_": {"files": [{"name": "tickets.json", "text": IMPORTED}], "event": EVENT},
    "pair_tag_ticket": {"barcode": "SF0000002", "event": EVENT},
    "pair_tag": {"barcode": "SF0000002", "tag": "04A1B2C3D4E5F6", "event": EVENT},
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_s_connection_is_never_open_across_the_swap(
        command: str, site: Site, platform: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command opens its connection, then a full resync reaches its swap: the command
    works on the file that is cache.db while it works (the swap waits for it to close), and
    the lanes then read the rebuilt file."""
    daemon = _daemon(site, platform)
    ops = DaemonOps(daemon)
    opened, go = threading.Event(), threading.Event()
    files: dict[str, int] = {}

    def paused(opener: Callable[..., TicketCache]) -> Callable[..., TicketCache]:
        def open_then_pause(*args: Any, **kw: Any) -> TicketCache:
            cache = opener(*args, **kw)
            if not opened.is_set():  # the command's own (the swap's reopens pass through)
                files["opened"] = os.stat(site.cache_path).st_ino
                opened.set()
                assert go.wait(60)
                files["working"] = os.stat(site.cache_path).st_ino
            return cache
        return open_then_pause

    async def run() -> Any:
        assert daemon.syncer is not None
        await _filled(daemon)
        platform.change_item("SF0000001", "refunded")
        monkeypatch.setattr(daemon, "_open_cache", paused(daemon._open_cache))
        monkeypatch.setattr(controlops, "TicketCache", paused(TicketCache))
        work = asyncio.create_task(getattr(ops, command)(COMMANDS[command]))
        await asyncio.to_thread(opened.wait, 60)
        resync = asyncio.create_task(daemon.syncer.full_resync())
        await _at_the_swap(resync, daemon)
        go.set()
        answer = await work
        assert await resync == 1140
        await _closed(daemon)
        return answer

    try:
        answer = asyncio.run(run())
        assert files["working"] == files["opened"]  # cache.db not replaced under it
        if command == "scan":
            assert answer[0]["admit"] is True  # decided on the cache live then
        lane = site.config.lanes[0]
        assert daemon.lanes[lane.name].gate.check("SF0000001", lane, noon(platform)).detail \
            == "refunded"  # and the lanes read the rebuilt file once it was swapped in
        assert not site.cache_path.with_name("cache.db.new").exists()
    finally:
        daemon.close_stores()


def test_a_swap_cancelled_while_it_waits_leaves_no_rebuild_behind(
        site: Site, platform: Sandbox) -> None:
    daemon = _daemon(site, platform)

    async def run() -> None:
        assert daemon.syncer is not None
        await _filled(daemon)
        async with daemon.cache_swaps.using():  # a command's connection stays open
            resync = asyncio.create_task(daemon.syncer.full_resync())
            await _at_the_swap(resync, daemon)
            assert not resync.done()  # held back by the open connection
            resync.cancel()
            with pytest.raises(asyncio.CancelledError):
                await resync
        async with daemon.cache_swaps.using():  # the hold is free again
            pass
        await _closed(daemon)

    try:
        asyncio.run(run())
        assert not site.cache_path.with_name("cache.db.new").exists()
        assert len(cached_ids(site.cache_path)) == 1140  # the live cache, untouched
        lane = site.config.lanes[0]
        assert daemon.lanes[lane.name].gate.check("SF0000002", lane, noon(platform)).admit
    finally:
        daemon.close_stores()
