"""Shared pieces of the hostile-input tests: one provisioned demo gate per module (read-only
checks share it), and the invariant every fuzz test asserts after a decision."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent.core.codes import normalize_nfc_id
from agent.core.decide import Decision
from agent.runtime.gate import Gate
from agent.runtime.opening import opened_gate
from tests.conftest import DemoSite, make_site


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory: pytest.TempPathFactory) -> DemoSite:
    return make_site(tmp_path_factory.mktemp("site"), datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def shared_gate(shared_site: DemoSite) -> Iterator[Gate]:
    """For dry runs only (`check`, `facts`): nothing is written, so examples cannot interact."""
    with opened_gate(shared_site.config) as g:
        yield g


def cached_codes(gate: Gate) -> tuple[set[str], set[str]]:
    """Every barcode and NFC id in the cache file, read with plain SQL (not the lookup code)."""
    rows = gate.cache.conn.execute("SELECT barcode, nfc_id FROM items").fetchall()
    return {b for b, _ in rows if b}, {n for _, n in rows if n}


def assert_admit_is_cached(gate: Gate, decision: Decision) -> None:
    """The invariant: an admit names a cached item whose barcode or NFC id is the code."""
    if not decision.admit:
        return
    barcodes, nfc_ids = cached_codes(gate)
    code = decision.code
    assert decision.item_id is not None, decision
    assert code in barcodes or code in nfc_ids or normalize_nfc_id(code) in nfc_ids, decision
    row = gate.cache.conn.execute(
        "SELECT barcode, nfc_id, status FROM items WHERE id = ? AND event_id = ?",
        (decision.item_id, decision.event_id)).fetchone()
    assert row is not None, decision
    assert code in (row[0], row[1]) or normalize_nfc_id(code) == row[1], (decision, row)
    # an exit of a ticket inside is never refused, even after a refund (README: "Leaving is
    # never refused for validity reasons"); an entry never admits a refunded or locked ticket
    if decision.direction != "out":
        assert row[2] not in ("refunded", "locked"), (decision, row)
