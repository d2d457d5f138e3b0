"""Scan times that travel between gates keep their moment, whatever the event's time zone."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.config import load_config
from agent.files import write_private
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.sync import Syncer
from agent.platform.upload import Uploader
from agent.runtime.opening import opened_gate
from agent.sandbox.harness import start_sandbox


def _config(root: Path, url: str, token: str) -> Path:
    write_private(root / "token", token)
    path = root / "config.toml"
    path.write_text(demo_data.demo_config(root / "state").replace(
        'base_url = "http://127.0.0.1:9/v1"',
        f'base_url = "{url}"\ntoken_file = "{root / "token"}"\ntoken_env = ""'))
    return path


@pytest.mark.parametrize("form", ["iso_z", "upload"])
def test_a_scan_at_gate_a_has_the_same_moment_at_gate_b(tmp_path: Path, form: str) -> None:
    """The demo event is in Europe/Amsterdam (UTC+1/+2). Gate A uploads a scan (UTC, as the
    API wants); gate B's delta sync brings it back in the item's zoneData: B must place it at
    the same instant, or in/out order across gates would be wrong for an hour or two. The
    platform echoes it either as ISO 8601 with `Z` or in the upload form (UTC, no zone)."""
    now = datetime.now(UTC).replace(microsecond=0)
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(now)))
    with start_sandbox(seed_file=seed, rpm=1000, async_delay_s=0.01) as sb:
        sb.set_faults(scan_time_form=form)
        configs = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            configs.append(load_config(_config(tmp_path / name, sb.url, sb.token)))

        async def sync(config):
            async with PlatformClient.from_config(config.api, sb.token,
                                                  Governor.from_config(config.api)) as client:
                syncer = Syncer(config, client, config.store_dir / "cache.db")
                try:
                    await syncer.refresh_events()
                    await syncer.delta_all()
                finally:
                    syncer.close()

        async def upload(config, gate):
            async with PlatformClient.from_config(config.api, sb.token,
                                                  Governor.from_config(config.api)) as client:
                return await Uploader(gate.journal, client, batch_size=10).drain()

        a, b = configs
        asyncio.run(sync(a))
        asyncio.run(sync(b))
        with opened_gate(a) as gate_a:
            floor = a.lane("floor")
            assert gate_a.scan(demo_data.CODES["floor"], floor, now).decision.admit
            assert asyncio.run(upload(a, gate_a)) == 1
        asyncio.run(sync(b))
        with opened_gate(b) as gate_b:
            state = gate_b.facts(demo_data.CODES["floor"], b.lane("floor")).candidates[0].state
    assert state.inside and state.entries == 1
    assert state.last_scan == now
