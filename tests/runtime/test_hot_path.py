"""What one scan asks SQLite (issue 18): the statements on the hot path, traced on the real
cache and journal connections, and the platform's scans taken from the item just parsed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent import demo_data
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from tests.conftest import DemoSite
from tests.core.test_decide import scanned_elsewhere

C = demo_data.CODES


def _traced(gate: Gate) -> list[str]:
    statements: list[str] = []
    for conn in (gate.cache.conn, gate.journal.conn if gate.journal else None):
        if conn is not None:
            conn.set_trace_callback(statements.append)
    return statements


def test_a_scan_is_one_lookup_one_state_read_and_one_commit(gate: Gate, site: DemoSite) -> None:
    lane = replace(gate.config.lane("north-in"))
    statements = _traced(gate)
    first = gate.scan(C["valid"], lane, site.now)
    assert first.decision.admit and first.uuid
    words = [s.split()[0].upper() for s in statements]
    assert words == ["BEGIN", "SELECT", "SELECT", "INSERT", "COMMIT"], statements
    assert not any("platform_scans" in s for s in statements)


def test_platform_scans_still_count_without_being_read_back(gate: Gate, site: DemoSite) -> None:
    """An item another device scanned (zoneData.scans): refused as already inside, from the
    item parsed for the lookup, with no query of the platform_scans table."""
    scanned_elsewhere(gate)
    statements = _traced(gate)
    result = gate.scan(C["valid2"], gate.config.lane("north-in"), site.now)
    assert (result.decision.admit, result.decision.status) == (False, "alreadyIn")
    assert result.uuid  # the refusal is journaled
    assert not any("platform_scans" in s for s in statements)


def test_a_miss_asks_one_statement_for_replaced_barcode_and_empty_cache(
        gate: Gate, site: DemoSite, tmp_path: Path) -> None:
    """Unknown, replaced and (on an empty cache) every code: one lookup plus one statement
    that answers both "replaced where?" and "anything cached at all?"."""
    lane = gate.config.lane("north-in")
    for code, detail in (("NEVER-ISSUED-1", "unknownCode"), (C["historic"], "historicBarcode")):
        statements = _traced(gate)
        result = gate.scan(code, lane, site.now)
        assert (result.decision.admit, result.decision.detail) == (False, detail)
        assert result.uuid  # the refusal is journaled
        words = [s.split()[0].upper() for s in statements]
        assert words == ["BEGIN", "SELECT", "SELECT", "INSERT", "COMMIT"], statements
    assert gate.check(C["historic"], lane, site.now).event_id == demo_data.EVENT_ID
    empty = TicketCache(tmp_path / "empty.db")
    try:
        blank = Gate(empty, None, gate.config)
        for code, kind in (("NEVER-ISSUED-1", None), ("04:A2:2B:1C", None), ("0x04A2", "nfc")):
            assert blank.check(code, lane, site.now, kind=kind).detail == "cacheEmpty"
        assert gate.check("NEVER-ISSUED-1", lane, site.now).detail == "unknownCode"
    finally:
        empty.close()
