"""Platform answers that the published spec allows but nobody would enjoy: empty arrays where
objects belong, nulls everywhere, unknown fields, strings for integers, ids beyond 64 bits,
duplicate items, lone surrogates, dates at the ends of the calendar, odd time zones.

Each generated `GET /activated-events`, `/zones/all` and `/entry/tickets` body goes through the
real parsers into a real cache file and then through `Gate.check` for every code it mentions
(and a few it does not): never an exception, never an admit of a code that is not in the
cache. A few go through the real client over an httpx MockTransport, where a shape that cannot
be used must be a BadResponse naming the field — and must not reach the cache.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.config import LaneConfig, parse_config
from agent.core.codes import parse_platform_time
from agent.core.model import parse_activated_events, parse_entry_page, parse_zones
from agent.errors import BadResponse
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.sync import Syncer
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from tests.hostile.conftest import assert_admit_is_cached

NOW = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
EVENT = 501
ZONES = [9001, 9002, 9003]
CODES = ["AAA-1", "AAA-2", "AAA-3", "0x04A22B9C1D5E80", "04A22B9C1D5E80", "", "  ",
         "SUR\ud800", "\u00e9t\u00e9", "x" * 300]

nothing = st.sampled_from([None, [], {}, "", 0, False])
big_ints = st.sampled_from([2**63, -(2**63) - 1, 2**70, 10**30])
ints = st.one_of(st.integers(-5, 10**6), st.integers(-5, 10**6).map(str), big_ints,
                 st.sampled_from(["12abc", "1e3", 1.5, True]))
dates = st.one_of(st.none(), st.sampled_from([
    "2026-07-01 10:00:00", "2026-07-01T10:00:00.000000Z", "2026-07-02", "2026-13-45 99:99:99",
    "0001-01-01 00:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00",
    "9999-12-31 23:59:59", "yesterday", "", "2026-07-01T10:00:00+25:00"]), st.text(max_size=12))
timezones = st.one_of(st.none(), st.sampled_from([
    "Europe/Amsterdam", "Europe", "Etc", "UTC", "", "../../etc/passwd", "a" * 300, "x\x00y",
    "\ud800", "America/New_York", "Pacific/Kiritimati"]), st.text(max_size=10))
junk = st.one_of(nothing, st.text(max_size=10), st.integers(), st.lists(st.integers(), max_size=2))
codes = st.one_of(st.sampled_from(CODES), st.text(max_size=12), nothing, st.integers(0, 99))
unknown_fields = st.dictionaries(st.sampled_from(["zzz", "createdAt", "meta", "links"]), junk,
                                 max_size=2)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that may be absent (the key is then dropped), null, an empty array, or a value."""
    return st.one_of(st.just(_ABSENT), nothing, strategy)


_ABSENT = object()


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """An object with those fields (absent ones dropped) plus unknown ones — or an empty array
    where the object belongs, as the platform's PHP sends for empty objects."""
    built = st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not _ABSENT})
    return st.one_of(st.builds(lambda a, b: {**b, **a}, built, unknown_fields), st.just([]),
                     st.none())


scan_rows = st.lists(obj(zoneId=st.one_of(st.sampled_from(ZONES), ints),
                         scan=st.sampled_from(["in", "out", "sideways", "", None]),
                         scannedOn=dates, uuid=st.one_of(st.sampled_from(["u1", "u1", "u2"]),
                                                         junk)), max_size=4)
items = obj(
    id=st.one_of(st.integers(1, 6), st.integers(1, 6).map(str), ints),  # small: duplicates
    itemType=st.sampled_from(["ticket", "product", "season_ticket", "voucher", ""]),
    parentOrderItemId=ints,
    const=obj(barcode=codes, transactionId=st.one_of(st.text(max_size=5),
                                                     st.lists(junk, max_size=3)),
              typeId=ints, type=st.text(max_size=8), historicBarcodes=st.lists(codes, max_size=2)),
    stable=obj(customerName=st.text(max_size=8), customerEmail=st.text(max_size=8),
               validFrom=dates, validTo=dates, dateOfBirth=dates, passport=junk),
    variable=obj(status=st.sampled_from(["sold", "scanned", "refunded", "locked", "weird"]),
                 nfcId=st.one_of(st.sampled_from(["0x04A22B9C1D5E80", "04:a2:2b:9c:1d:5e:80",
                                                  "zz", "0x"]), st.text(max_size=10)),
                 scannedOn=dates, historicBarcodes=st.lists(codes, max_size=2)),
    zoneData=obj(accessToZones=st.one_of(st.lists(obj(id=st.one_of(st.sampled_from(ZONES), ints)),
                                                  max_size=3), junk),
                 scans=st.one_of(scan_rows, junk)),
)
ticket_bodies = st.fixed_dictionaries({
    "content": st.lists(st.one_of(items, junk), max_size=8),
    "listEndTime": st.one_of(dates, junk), "total": st.one_of(ints, junk),
    "pagination": st.one_of(obj(next=st.none(), self=st.text(max_size=5)), junk),
    "dataCaptureQuestions": st.one_of(junk, st.lists(junk, max_size=2)),
})
events = obj(id=st.one_of(st.just(EVENT), st.just(str(EVENT)), ints), name=st.text(max_size=8),
             timezone=timezones, start=dates, end=dates,
             scanningMode=st.sampled_from(["qr-only", "pair-nfc-no-credits", "bogus"]),
             gates=st.one_of(st.lists(obj(id=ints, name=junk), max_size=2), junk),
             timeslots=st.one_of(st.lists(obj(id=ints, ticketTypeIds=st.lists(ints, max_size=2)),
                                          max_size=2), junk))
event_bodies = st.one_of(st.lists(st.one_of(events, junk), max_size=3),
                         st.fixed_dictionaries({"companyId": ints, "companyName": junk,
                                                "events": st.lists(events, max_size=3)}))
zones = obj(id=st.one_of(st.sampled_from(ZONES), ints), name=st.sampled_from(["Entry", "VIP", ""]),
            scan=st.sampled_from(["in", "in&out", "auto", "x"]), capacity=ints, attendance=ints,
            openingDate=dates, closingDate=dates, minAge=ints, maxAge=ints,
            accessPermission=st.one_of(st.lists(st.text(max_size=4), max_size=2), junk))
zone_bodies = st.lists(st.one_of(zones, junk), max_size=4)

LANES = [LaneConfig(name="entry"), LaneConfig(name="vip", zone_id=9002, direction="auto",
                                              max_entries=0, include_products=True),
         LaneConfig(name="out", direction="out", grace_minutes=1440, age_unknown="admit")]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bodies")
    config = parse_config({"store": {"dir": str(root)}})
    cache = TicketCache(root / "cache.db")
    g = Gate(cache, None, config)  # dry runs only; journal None is never consulted by check()
    yield g
    cache.close()


def _reset(cache: TicketCache) -> None:
    with cache.transaction():
        for table in ("items", "events", "zones", "historic_barcodes", "platform_scans"):
            cache.conn.execute(f"DELETE FROM {table}")
    cache.reload()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(event_bodies, zone_bodies, ticket_bodies)
@example([{"id": EVENT, "timezone": "Europe"}], [{"id": 9001, "name": "Entry"}],
         {"content": [{"id": 1, "const": {"barcode": "AAA-1"}}]})  # tz that is a directory
@example([], [], {"content": [{"id": 2**64, "const": {"barcode": "AAA-1"}}]})  # > int64
@example([], [], {"content": [{"id": 3, "const": {"barcode": "SUR\ud800"}}]})  # lone surrogate
@example([], [], {"content": [{"id": 1, "const": {"barcode": "AAA-1"},
                               "stable": {"validFrom": "0001-01-01T00:00:00+14:00",
                                          "validTo": "9999-12-31T23:59:59-12:00"}}]})
@example([], [], {"content": [{"id": 1, "const": {"barcode": "AAA-1"}, "variable": []},
                              {"id": 1, "const": {"barcode": "AAA-1"},
                               "variable": {"status": "refunded"}}]})  # duplicate: last wins
@example([], [], {"content": [{"id": 1, "variable": {"status": "refunded", "nfcId": 0},
                               "zoneData": {"scans": [{}]}}]})  # refunded, inside: may leave
def test_odd_bodies_never_crash_and_never_admit_unknown_codes(gate: Gate, ev: Any, zs: Any,
                                                              tickets: dict[str, Any]) -> None:
    cache = gate.cache
    _reset(cache)
    page = parse_entry_page(tickets)
    stamp = "2026-07-01T17:00:00.000000Z"
    with cache.transaction():
        cache.put_events(parse_activated_events(ev), stamp)
        cache.put_zones(EVENT, parse_zones(zs, EVENT), stamp)
        cache.put_items(EVENT, page.items)
    cache.reload()
    mentioned = {c for c in CODES} | {
        str(i.barcode) for i in page.items if i.barcode} | {
        i.nfc_id for i in page.items if i.nfc_id} | {
        h for i in page.items for h in i.historic_barcodes}
    for code in sorted(mentioned):
        for lane in LANES:
            for kind in (None, "nfc"):
                decision = gate.check(code, lane, NOW, kind=kind)
                assert_admit_is_cached(gate, decision)
    # the last copy of a duplicated id is the one stored
    last = {i.id: i for i in page.items}
    stored = dict(cache.conn.execute("SELECT id, status FROM items").fetchall())
    assert stored == {i: item.status for i, item in last.items()}


def test_the_regressions_above_decide_sensibly(gate: Gate) -> None:
    """What the examples pinned, spelled out: a zone name that is a tzdata directory, dates
    beyond datetime's range and duplicates decide as the data says."""
    assert parse_platform_time("0001-01-01T00:00:00+14:00") is not None
    cache = gate.cache
    _reset(cache)
    body = {"content": [
        {"id": 1, "const": {"barcode": "AAA-1"}, "stable": {"validFrom": "0001-01-01 00:00:00",
                                                           "validTo": "9999-12-31 23:59:59"}},
        {"id": 2, "const": {"barcode": "AAA-2"}, "stable": {"validFrom": "9999-12-31 23:59:59"}},
        {"id": 3, "const": {"barcode": "AAA-3"}},
        {"id": 3, "const": {"barcode": "AAA-3"}, "variable": {"status": "refunded"}},
        {"id": 4, "const": {"barcode": "SUR\ud800"}},
    ]}
    with cache.transaction():
        cache.put_events(parse_activated_events([{"id": EVENT, "timezone": "Europe"}]), "x")
        cache.put_items(EVENT, parse_entry_page(body).items)
    cache.reload()
    assert gate.check("AAA-1", LANES[0], NOW).admit
    late = gate.check("AAA-2", LANES[0], NOW)
    assert (late.admit, late.detail) == (False, "outsideOfValidityPeriod")
    assert gate.check("AAA-3", LANES[0], NOW).detail == "refunded"
    # stored as U+FFFD: the scanned form (cleaned of the surrogate) is not this barcode
    assert gate.check("SUR\ud800", LANES[0], NOW).detail == "unknownCode"
    assert [h.item.id for h in cache.find_barcode("SUR\ufffd\ufffd\ufffd")] == [4]


# -- through the real client ---------------------------------------------------------------------

def _client(bodies: dict[str, Any]) -> PlatformClient:
    def handler(request: httpx.Request) -> httpx.Response:
        body = bodies[request.url.path.removeprefix("/v1/")]
        return httpx.Response(200, content=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json"})
    return PlatformClient("https://platform.test/v1", "tok-hostile-0123456789", 1, "en", 5.0,
                          Governor(10_000), transport=httpx.MockTransport(handler),
                          max_retries=0)


@pytest.mark.parametrize("path, body, field", [
    ("entry/tickets", {}, "`content` must be a list, got missing"),
    ("entry/tickets", {"content": {}}, "`content` must be a list, got a dict"),
    ("entry/tickets", {"content": None}, "`content` must be a list, got a NoneType"),
    ("entry/tickets", {"content": [], "pagination": {"next": 2}}, "`pagination.next`"),
    ("entry/tickets", [], "expected a JSON dict"),
    ("activated-events", {"companyId": 1, "companyName": "x"}, "`events` must be a list"),
    ("activated-events", {"events": {}}, "`events` must be a list, got a dict"),
    ("zones/all", {"zones": []}, "`data` must be a list, got missing"),
    ("zones/all", "Entry", "expected a JSON list or dict"),
])
def test_unusable_shapes_are_bad_responses_naming_the_field(path: str, body: Any,
                                                           field: str) -> None:
    client = _client({path: body})

    async def call() -> Any:
        async with client:
            if path == "entry/tickets":
                return await client.entry_tickets(EVENT)
            if path == "zones/all":
                return await client.zones(EVENT)
            return await client.activated_events()

    with pytest.raises(BadResponse) as info:
        asyncio.run(call())
    assert field in str(info.value) and path in str(info.value)
    assert "tok-hostile" not in str(info.value)


def test_odd_but_usable_bodies_through_the_client() -> None:
    client = _client({
        "activated-events": {"companyId": "1", "events": [{"id": str(EVENT), "gates": None,
                                                           "timeslots": {}, "extra": [1]}]},
        "zones/all": [{"id": 9001, "name": "Entry", "capacity": "200", "accessPermission":
                       ["A"], "minAge": None}, None, [], {"id": None}],
        "entry/tickets": {"content": [{"id": "7", "const": {"barcode": "AAA-7",
                                                            "transactionId": ["A", None, 3]},
                                       "variable": [], "zoneData": [], "stable": []},
                                      None, "x", {"id": 2**64}],
                          "pagination": [], "total": None, "listEndTime": None},
    })

    async def call() -> Any:
        async with client:
            return (await client.activated_events(), await client.zones(EVENT),
                    await client.entry_tickets(EVENT))

    evs, zs, page = asyncio.run(call())
    assert [e.id for e in evs] == [EVENT] and evs[0].gates == ()
    assert [(z.id, z.capacity) for z in zs] == [(9001, 200)]
    assert [(i.id, i.barcode, i.order_ref, i.access_zones) for i in page.items] == [
        (7, "AAA-7", "A, 3", None)]
    assert page.next_url is None


def test_an_unusable_page_never_replaces_the_cache(tmp_path: Path) -> None:
    """Before the shape check, `{}` from `GET /entry/tickets` read as "no tickets", and a full
    resync swapped an empty cache in: every ticket of the event refused as unknown."""
    store = tmp_path / "state"
    config = parse_config({"store": {"dir": str(store)}, "events": {"ids": [EVENT]},
                           "lanes": [{"name": "entry"}]})
    live = store / "cache.db"
    cache = TicketCache(live)
    with cache.transaction():
        cache.put_items(EVENT, parse_entry_page(
            {"content": [{"id": 1, "const": {"barcode": "AAA-1"}}]}).items)
    cache.close()
    client = _client({"activated-events": [{"id": EVENT}], "zones/all": [{"id": 9001}],
                      "entry/tickets": {"total": 0}})
    syncer = Syncer(config, client, live)

    async def resync() -> None:
        async with client:
            await syncer.full_resync()

    with pytest.raises(BadResponse, match="content"):
        asyncio.run(resync())
    syncer.close()
    cache = TicketCache(live)
    assert [h.item.id for h in cache.find_barcode("AAA-1")] == [1]
    cache.close()


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_numbers_json_cannot_carry_are_bad_responses_never_cached(number: str,
                                                                  tmp_path: Path) -> None:
    """Python's json reads these; the cache's orjson would store them as null, and a validity
    bound of null is "no bound": `validTo: Infinity` must not become an admit."""
    item = ('{"id": 7, "const": {"barcode": "INF-7"}, "stable": {"status": "sold", "validTo": '
            + number + '}, "variable": {}, "zoneData": []}')
    body = ('{"content": [' + item + '], "pagination": {"next": null}, "total": 1}').encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})
    client = PlatformClient("https://platform.test/v1", "tok-hostile-0123456789", 1, "en", 5.0,
                            Governor(10_000), transport=httpx.MockTransport(handler),
                            max_retries=0)

    async def call() -> Any:
        async with client:
            return await client.entry_tickets(EVENT)

    with pytest.raises(BadResponse, match="not JSON") as info:
        asyncio.run(call())
    assert "tok-hostile" not in str(info.value)
    # the same body in an export file (`gate-agent import`) is refused too, and caches nothing
    from agent.errors import ImportFileError
    from agent.platform.provision import import_text
    cache = TicketCache(tmp_path / "cache.db")
    with pytest.raises(ImportFileError, match="not JSON"):
        import_text(cache, tmp_path / "tickets.json", body.decode(), NOW, EVENT)
    assert cache.find_barcode("INF-7") == []
    cache.close()
