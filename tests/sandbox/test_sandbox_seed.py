"""The sandbox's data: deterministic lazy seed (1M items cheaply), export/load round trip,
and the paging/delta promise (no item is ever missed) under arbitrary concurrent changes.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import uuid
from datetime import UTC, datetime

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.model import parse_activated_events, parse_entry_page, parse_zones
from agent.sandbox.app import build_app
from agent.sandbox.seed import export_seed, generated_seed, load_seed
from agent.sandbox.state import SandboxClock, SandboxState
from agent.sandbox.store import ItemStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_a_million_items_cost_no_memory_until_changed():
    tracemalloc.start()
    seed = generated_seed(1_000_000, now=NOW)
    store = ItemStore(seed)
    first, total = store.listing(1001, None, 1, 100, products=False)
    tail, _ = store.listing(1001, None, total // 100, 100, False)  # the last page
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000
    assert total == 1_000_000 - 50_000 and len(first) == 100
    assert [row["const"]["barcode"] for row in tail][-1] == "SF0999999"
    assert all(row["itemType"] != "product" for row in first + tail)
    assert store.find("SF0999999").index == 999_999
    assert store.find("HSF0000021").historic and store.find("HSF0000022") is None


def test_the_seed_is_deterministic_and_covers_every_kind_of_item():
    a, b = generated_seed(200, now=NOW), generated_seed(200, now=NOW)
    items = [a.items[1001].item(i) for i in range(200)]
    assert items == [b.items[1001].item(i) for i in range(200)]
    kinds = {i["itemType"] for i in items}
    statuses = {(i["variable"] or {}).get("status", "sold") for i in items}
    assert kinds == {"ticket", "season_ticket", "product"}
    assert statuses == {"sold", "scanned", "refunded", "locked"}
    assert items[9]["parentOrderItemId"] == items[8]["id"]
    assert items[11]["variable"]["nfcId"] == "0x04A10000000B"
    assert items[21]["variable"]["historicBarcodes"] == ["HSF0000021"]
    assert items[0]["variable"] == []  # the documented quirk for never-scanned items
    assert {z["id"] for z in items[0]["zoneData"]["accessToZones"]} == {5001, 5002}
    events = parse_activated_events(a.events)
    assert events[0].gates and events[0].timeslots and events[0].timezone == "Europe/London"


def test_export_reads_back_with_the_model_parsers_and_as_a_seed_file(tmp_path):
    seed = generated_seed(60, now=NOW)
    paths = export_seed(seed, tmp_path)
    assert {p.name for p in paths} >= {"activated-events.json", "tickets-1001.json"}
    events = parse_activated_events(json.loads((tmp_path / "activated-events.json").read_text()))
    wrapped = json.loads((tmp_path / "zones-1001.json").read_text())
    assert wrapped["eventId"] == 1001  # each file says its event (gate-agent import *.json)
    zones = parse_zones(wrapped["zones"], 1001)
    page = parse_entry_page(json.loads((tmp_path / "tickets-1001.json").read_text()))
    assert [e.id for e in events] == [1001, 1002]
    assert any(z.is_default_entry for z in zones)
    assert len(page.items) == 60 and page.items[13].status == "refunded"
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps({
        "events": seed.events,
        "zones": {"1001": seed.zones[1001]},
        "tickets": {"1001": json.loads((tmp_path / "tickets-1001.json").read_text())["content"]},
    }))
    loaded = load_seed(seed_file, now=NOW)
    store = ItemStore(loaded)
    assert store.find("SF0000042").index == 42 and store.find("HSF0000021").historic
    assert loaded.items[1002].count() == 0 and loaded.zones[1002][0]["name"] == "Entry"


class ManualClock(SandboxClock):
    def __init__(self) -> None:
        super().__init__()
        self.t = NOW.timestamp()

    def now(self) -> float:
        return self.t + self.offset_s


steps = st.lists(st.tuples(st.sampled_from(["page", "scan", "tick", "back"]),
                           st.integers(0, 59)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(steps=steps, limit=st.integers(1, 25))
def test_paging_and_deltas_never_miss_a_change(steps, limit):
    """Pass 1 pages through while items change (and the server clock jumps, even backwards);
    a delta from its listEndTime then returns every item changed after the pass started."""
    asyncio.run(_paging_scenario(steps, limit))


async def _paging_scenario(steps, limit) -> None:
    clock = ManualClock()
    state = SandboxState(generated_seed(60, now=NOW), rpm=100_000, clock=clock)
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        auth = {"Authorization": f"Bearer {state.default_token}"}

        async def get(url: str) -> dict:
            response = await client.get(url, headers=auth)
            response.raise_for_status()
            return response.json()

        page = await get(f"/v1/entry/tickets?eventId=1001&limit={limit}&includeProducts=true")
        seen = {i["id"] for i in page["content"]}
        changed_during: set[int] = set()
        for action, n in steps:
            if action == "page" and page["pagination"].get("next"):
                page = await get(page["pagination"]["next"])
                seen |= {i["id"] for i in page["content"]}
            elif action == "scan":
                answer = await client.post("/v1/entry/tickets", headers=auth, json={
                    "uuid": str(uuid.uuid4()),
                    "tickets": [{"uuid": str(uuid.uuid4()), "barcode": f"SF{n:07d}",
                                 "eventId": 1001, "scannedOn": "2026-06-01 12:00:00",
                                 "status": "scanned"}]})
                answer.raise_for_status()
                changed_during.add(100000 + n)
            elif action == "tick":
                clock.t += n / 10
            else:
                clock.offset_s -= n
        while page["pagination"].get("next"):
            page = await get(page["pagination"]["next"])
            seen |= {i["id"] for i in page["content"]}
        assert seen == {100000 + i for i in range(60)}
        delta = await get("/v1/entry/tickets?eventId=1001&limit=100&includeProducts=true"
                          f"&startTime={page['listEndTime']}")
        assert changed_during <= {i["id"] for i in delta["content"]}
