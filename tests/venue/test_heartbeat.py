"""Heartbeats on a real nats-server: a gate's beat reaches the others, a clean stop shows
stopped at once (not offline: no alarm), a beat nobody renews expires with the bucket's TTL (the server's delete marker
reaches the watchers), and `gate-agent venue status` lists every gate worst first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from agent.venue.bus import VenueBus
from agent.venue.heartbeat import bucket_names
from agent.venue.node import NodeProcess, start_venue
from tests.conftest import run_cli
from tests.venue.rig import wait_until

pytestmark = pytest.mark.e2e

TTL_S = 2.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    nodes = start_venue(tmp_path_factory.mktemp("nats"), 1)
    try:
        yield nodes[0]
    finally:
        nodes[0].kill()


def venue(url: str, device: str, name: str = "hb", ttl_s: float = TTL_S) -> dict[str, Any]:
    return {"name": name, "servers": [url], "device": device, "credentials": "", "tls_ca": "",
            "claim_timeout_ms": 500, "offline_policy": "local", "heartbeat_s": 0.5,
            "heartbeat_ttl_s": ttl_s}


def state_of(bus: VenueBus, device: str) -> str | None:
    return next((r["state"] for r in bus.board.rows() if r["device"] == device), None)


def put_once(url: str, device: str, body: dict[str, Any]) -> None:
    """A gate that beats once and dies (no clean stop, no delete)."""
    async def put() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for name in bucket_names("hb"):
                kv = await js.key_value(name)
                await kv.put(device, orjson.dumps(body))
        finally:
            await nc.close()
    asyncio.run(put())


@contextmanager
def watcher_and_gate(url: str, root: Path, name: str = "hb",
                     ttl_s: float = TTL_S) -> Iterator[tuple[VenueBus, VenueBus]]:
    """Two devices of venue `name`: w1 watches, g1 has beaten once and is seen online."""
    watcher = VenueBus(venue(url, "w1", name, ttl_s), root / "w1", None)
    gate = VenueBus(venue(url, "g1", name, ttl_s), root / "g1", None)
    watcher.start()
    gate.start()
    try:
        wait_until(lambda: watcher.ready and gate.ready, 20, "both on the bus")
        gate.beat(orjson.dumps({"health": "pass", "version": "t", "lanes": []}))
        wait_until(lambda: state_of(watcher, "g1") == "online", 5, "g1 online at w1")
        yield watcher, gate
    finally:
        gate.stop()
        watcher.stop()


@pytest.mark.slow
def test_beats_reach_other_gates_and_expire(node: NodeProcess, tmp_path: Path) -> None:
    with watcher_and_gate(node.url, tmp_path) as (watcher, gate):
        put_once(node.url, "dead", {"health": "fail", "version": "t"})
        wait_until(lambda: state_of(watcher, "dead") == "online", 5, "dead's one beat seen")
        # no renewal: the TTL removes it and the server's marker tells the watcher
        wait_until(lambda: state_of(watcher, "dead") == "offline", TTL_S + 6, "dead offline")
        assert watcher.board.rows()[0]["device"] == "dead"  # worst first
        gate.stop()  # cleanly: stopped, not offline (not an alarm)
        wait_until(lambda: state_of(watcher, "g1") == "stopped", TTL_S + 6, "g1 stopped")

        config = tmp_path / "c.toml"
        config.write_text(f'[store]\ndir = "{tmp_path / "w1"}"\n[venue]\nname = "hb"\n'
                          f'servers = ["{node.url}"]\ndevice = "cli"\n')
        out = run_cli("venue", "status", "--json", "--config", str(config))
        assert out.returncode == 0, out.stderr
        listed = json.loads(out.stdout)["gates"]
        assert {g["device"]: g["state"] for g in listed} == {"dead": "offline", "g1": "stopped"}
        watcher.beat(orjson.dumps({"health": "warn", "version": "t", "lanes": []}))
        wait_until(lambda: state_of(watcher, "w1") == "online", 5, "w1 online")
        table = run_cli("venue", "status", "--config", str(config))
        assert table.returncode == 0, table.stderr
        cells = [line.split("│")[1].strip() for line in table.stdout.splitlines()
                 if line.count("│") > 2]
        order = [c for c in cells if c in ("dead", "g1", "w1")]
        assert order == ["dead", "w1", "g1"]  # offline, online, stopped


def test_a_clean_stop_shows_offline_before_the_ttl(node: NodeProcess, tmp_path: Path) -> None:
    """A venue with a long TTL: only the stopping gate's delete can end its live key in time."""
    with watcher_and_gate(node.url, tmp_path, "calm", 60.0) as (watcher, gate):
        gate.stop()
        wait_until(lambda: state_of(watcher, "g1") == "stopped", 10, "g1 stopped")


def test_status_cli_judges_a_key_the_live_bucket_lost_by_its_age(node: NodeProcess,
                                                                  tmp_path: Path) -> None:
    """A running gate whose live key is missing (the in-memory live bucket restarted empty
    under a new leader, as in the demo after a node's restart) but whose roster beat is fresh
    shows online, not offline; a deleted key still shows at once."""
    with watcher_and_gate(node.url, tmp_path, "lost", 60.0) as (_watcher, gate):
        async def roster_only() -> None:
            nc = await nats.connect(node.url)
            try:
                kv = await nc.jetstream().key_value(bucket_names("lost")[1])
                await kv.put("fresh", orjson.dumps({"health": "pass", "version": "t"}))
                await (await nc.jetstream().key_value(bucket_names("lost")[0])).delete("g1")
            finally:
                await nc.close()
        asyncio.run(roster_only())
        config = tmp_path / "c.toml"
        config.write_text(f'[store]\ndir = "{tmp_path / "w1"}"\n[venue]\nname = "lost"\n'
                          f'servers = ["{node.url}"]\ndevice = "cli"\n'
                          'heartbeat_ttl_s = 60.0\n')
        out = run_cli("venue", "status", "--json", "--config", str(config))
        assert out.returncode == 0, out.stderr
        listed = {g["device"]: g["state"] for g in json.loads(out.stdout)["gates"]}
        assert listed["fresh"] == "online"
        assert listed["g1"] == "offline"  # its live key deleted, no stop in the roster


def test_status_cli_says_when_the_bus_is_away(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\ndir = "{tmp_path}"\n[venue]\nname = "hb"\n'
                      'servers = ["nats://127.0.0.1:9"]\n')
    out = run_cli("venue", "status", "--timeout", "1", "--config", str(config))
    assert out.returncode == 1 and "venue bus not reachable (nats://127.0.0.1:9)" in out.stderr


def test_an_early_end_of_a_buckets_values_is_not_believed() -> None:
    """nats-py's watcher can say "no more values" before the values already on their way
    arrive (its race at setup, seen in CI: `venue status` listed no gate beside two): a bucket
    read empty is read again before it is believed (three times, as agent.venue.kvkeys). The
    race cannot be provoked on demand against a real server, so these buckets stand in."""
    from datetime import UTC, datetime

    from agent.venue.heartbeat import read_board

    class Entry:
        def __init__(self, key: str) -> None:
            self.key, self.value, self.operation = key, orjson.dumps({"health": "pass"}), None
            self.created, self.delta = datetime.now(UTC), 0

    class Watcher:
        def __init__(self, entries: list[Entry]) -> None:
            self.entries = entries

        async def updates(self, timeout: float) -> Entry | None:
            return self.entries.pop(0) if self.entries else None

        async def stop(self) -> None:
            pass

    class RacyBucket:
        def __init__(self, early_ends: int) -> None:
            self.early_ends = early_ends

        async def watchall(self) -> Watcher:
            if self.early_ends:
                self.early_ends -= 1
                return Watcher([])
            return Watcher([Entry("g1")])

    class Js:
        def __init__(self, early_ends: int) -> None:
            self.buckets = {name: RacyBucket(early_ends) for name in bucket_names("hb")}

        async def key_value(self, name: str) -> RacyBucket:
            return self.buckets[name]

    board, unread = asyncio.run(read_board(Js(2), "hb", 1.0, 5.0))
    assert [row["device"] for row in board.rows()] == ["g1"] and unread == []
    board, unread = asyncio.run(read_board(Js(3), "hb", 1.0, 5.0))  # three times: none, really
    assert board.rows() == [] and unread == []


@pytest.mark.parametrize("live_too", [False, True], ids=["replayed-only", "then-a-live-one"])
def test_a_replayed_beat_after_an_early_end_of_the_values_measures_nothing(
        live_too: bool) -> None:
    """The same race in a gate's own watcher: a heartbeat stored before the watch began (here
    an hour ago, as a roster entry may be) arriving after nats-py said "no more values" is a
    replay, not a delivery to measure the clock by. Taken as one, it measured this clock an
    hour ahead of the server's, and until a smaller sample came every other gate's scan was
    read an hour late. Only entries stored after the bucket's last sequence at the start
    measure (`watch(measure_after=...)`). Stand-in watcher, as above (the race cannot be
    provoked against a real server)."""
    from datetime import UTC, datetime, timedelta

    from agent.venue.heartbeat import GateBoard, watch

    now = datetime.now(UTC)

    class Entry:
        def __init__(self, revision: int, created: datetime) -> None:
            self.key, self.value, self.operation = "g1", orjson.dumps({"health": "pass"}), None
            self.revision, self.created, self.delta = revision, created, 0

    class Watcher:
        def __init__(self, entries: list[Entry | None]) -> None:
            self.entries = entries

        async def updates(self, timeout: float) -> Entry | None:
            if not self.entries:
                await asyncio.sleep(0.01)
                raise TimeoutError
            return self.entries.pop(0)

        async def stop(self) -> None:
            pass

    class Bucket:
        def __init__(self) -> None:
            self.watcher = Watcher([None, Entry(4, now - timedelta(hours=1))]
                                   + ([Entry(5, now)] if live_too else []))

        async def watchall(self) -> Watcher:
            return self.watcher

    async def run(board: GateBoard) -> None:
        bucket, stop = Bucket(), asyncio.Event()
        task = asyncio.create_task(watch(bucket, board, False, stop, measure_after=4))
        while bucket.watcher.entries:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    board = GateBoard(1.0)
    asyncio.run(run(board))
    measured = board.measured_offset_s()
    if live_too:
        assert measured is not None and abs(measured) < 60, measured
    else:
        assert measured is None
