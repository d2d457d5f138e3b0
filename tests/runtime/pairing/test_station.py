"""PairingStation against the platform sandbox: the platform decides, the cache follows at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent import demo_data
from agent.runtime.pairing import PairingOffline, PairingRefused, PairingStation
from agent.store.journal import iter_all
from tests.runtime.pairing.conftest import Station, tag_of

C = demo_data.CODES
EVENT = demo_data.EVENT_ID
OLD_TAG = demo_data.NFC_TAG  # on C["nfc_ticket"] (item 12) in both the sandbox and the cache
NEW_TAG = "0x04C0FFEE000001"


def test_pairing_reaches_the_platform_and_the_cache(station: Station) -> None:
    with PairingStation(station.config) as ps:
        result = ps.pair(C["valid"], "04:c0:ff:ee:00:00:01")
        hits = ps.gate.cache.find_nfc(NEW_TAG) if ps.gate else []
        decision = ps.gate.check(NEW_TAG, station.config.lane(None), datetime.now(UTC)) \
            if ps.gate else None
    assert (result.nfc_id, result.barcode, result.event_id, result.item_id) == \
        (NEW_TAG, C["valid"], EVENT, 1)
    assert result.replaced is None and result.moved_from == () and result.admit is None
    assert station.platform_tag(C["valid"]) == NEW_TAG
    assert [(h.event_id, h.item.id, h.item.nfc_id) for h in hits] == [(EVENT, 1, NEW_TAG)]
    assert decision is not None and decision.admit and decision.item_id == 1  # tag works now
    assert station.pair_requests() == 1


def test_a_tag_moves_off_the_other_ticket_of_the_event(station: Station) -> None:
    with PairingStation(station.config) as ps:
        result = ps.pair(C["valid2"], OLD_TAG)
    assert result.moved_from == (12,)
    assert station.platform_tag(C["valid2"]) == OLD_TAG
    assert station.platform_tag(C["nfc_ticket"]) is None
    cache = station.local()
    try:
        assert [h.item.id for h in cache.find_nfc(OLD_TAG)] == [2]
        assert tag_of(cache, C["nfc_ticket"]) is None
    finally:
        cache.close()


def test_second_tag_needs_again_then_replaces_the_old_one(station: Station) -> None:
    with PairingStation(station.config) as ps:
        with pytest.raises(PairingRefused, match="already has a tag .*--again") as info:
            ps.pair(C["nfc_ticket"], NEW_TAG)
        assert OLD_TAG in str(info.value)
        assert ps.gate is not None and ps.gate.cache.find_nfc(NEW_TAG) == []  # nothing changed
        assert station.platform_tag(C["nfc_ticket"]) == OLD_TAG
        result = ps.pair(C["nfc_ticket"], NEW_TAG, again=True)
        assert result.replaced == OLD_TAG
        assert ps.gate.cache.find_nfc(OLD_TAG) == []
        assert [h.item.id for h in ps.gate.cache.find_nfc(NEW_TAG)] == [12]
    assert station.platform_tag(C["nfc_ticket"]) == NEW_TAG


def test_pairing_the_same_tag_again_needs_no_flag(station: Station) -> None:
    with PairingStation(station.config) as ps:
        result = ps.pair(C["nfc_ticket"], OLD_TAG)
    assert result.replaced is None and result.moved_from == ()


def test_admit_journals_a_scan_of_the_new_tag(station: Station) -> None:
    lane = station.config.lane("north-in")
    with PairingStation(station.config) as ps:
        result = ps.pair(C["valid"], NEW_TAG, admit_lane=lane)
        assert ps.gate is not None and ps.gate.journal is not None
        rows = list(iter_all(ps.gate.journal))
    assert result.admit is not None and result.admit.decision.admit
    assert result.admit.decision.status == "valid"
    assert len(rows) == 1
    row = rows[0]
    assert (row["uuid"], row["kind"], row["nfc_id"], row["barcode"], row["item_id"]) == \
        (result.admit.uuid, "nfc", NEW_TAG, C["valid"], 1)
    assert (row["lane"], row["direction"], row["admit"], row["upload_state"]) == \
        ("north-in", "in", 1, "pending")


def test_unknown_and_replaced_barcodes_are_refused_before_asking_the_platform(
        station: Station) -> None:
    with PairingStation(station.config) as ps:
        with pytest.raises(PairingRefused, match="not in this gate's ticket cache"):
            ps.pair(C["unknown"], NEW_TAG)
        with pytest.raises(PairingRefused, match="replaced barcode"):
            ps.pair(C["historic"], NEW_TAG)
        with pytest.raises(PairingRefused, match="not an NFC tag id"):
            ps.pair(C["valid"], "NU-VALID-0002")
    assert station.pair_requests() == 0


def test_a_ticket_in_two_events_needs_the_event(station: Station) -> None:
    with PairingStation(station.config) as ps:
        with pytest.raises(PairingRefused, match=r"several events \(501, 502\).*--event"):
            ps.pair(C["season"], NEW_TAG)
        with pytest.raises(PairingRefused, match="belongs to event"):
            ps.pair(C["valid"], NEW_TAG, event_id=demo_data.OTHER_EVENT_ID)
        result = ps.pair(C["season"], NEW_TAG, event_id=demo_data.OTHER_EVENT_ID)
        assert ps.gate is not None
        assert [(h.event_id, h.item.id) for h in ps.gate.cache.find_nfc(NEW_TAG)] == \
            [(demo_data.OTHER_EVENT_ID, 10)]
    assert result.event_id == demo_data.OTHER_EVENT_ID
    assert station.platform_tag(C["season"], demo_data.OTHER_EVENT_ID) == NEW_TAG
    assert station.platform_tag(C["season"], EVENT) is None  # pairings are per event


def test_offline_changes_nothing_locally(station: Station) -> None:
    station.sandbox.stop()  # the platform is gone: connection refused
    with PairingStation(station.config) as ps:
        with pytest.raises(PairingOffline, match="needs the platform.*nothing changed locally"):
            ps.pair(C["valid2"], OLD_TAG, admit_lane=station.config.lane(None))
        assert ps.gate is not None and ps.gate.journal is not None
        assert [h.item.id for h in ps.gate.cache.find_nfc(OLD_TAG)] == [12]
        assert list(iter_all(ps.gate.journal)) == []  # no admit either


def test_platform_errors_other_than_422_are_refusals(station: Station) -> None:
    station.sandbox.set_faults(error_rate=1.0)
    with PairingStation(station.config) as ps:
        with pytest.raises(PairingRefused, match="did not pair the tag.*nothing changed"):
            ps.pair(C["valid"], NEW_TAG)
        assert ps.gate is not None and ps.gate.cache.find_nfc(NEW_TAG) == []
