"""Fixtures for sync and upload against the sandbox over loopback: gate sites (config, token,
store dir) wired to one sandbox, clients, and helpers to fill a journal quickly."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor
from agent.platform.sync import Syncer
from agent.platform.upload import Uploader
from agent.runtime.gate import Gate
from agent.runtime.opening import open_cache, open_journal
from agent.sandbox.harness import Sandbox, start_sandbox
from agent.store import journal as journal_mod
from agent.store.journal import Journal, JournalRow

EVENT = 1001


@dataclass
class Site:
    """One gate device: its own config file, token file and store directory."""

    root: Path
    config_path: Path
    config: Config
    sandbox: Sandbox

    @property
    def cache_path(self) -> Path:
        return self.config.store_dir / "cache.db"

    def client(self, token: str | None = None, **kw: Any) -> PlatformClient:
        """A client as the CLI builds it (governor from [api]); no client-side retries unless
        asked, so an injected fault reaches the code under test."""
        kw.setdefault("max_retries", 0)
        return PlatformClient.from_config(self.config.api, token or self.sandbox.token,
                                          Governor.from_config(self.config.api), **kw)

    def syncer(self, client: PlatformClient, **kw: Any) -> Syncer:
        return Syncer(self.config, client, self.cache_path, **kw)

    def uploader(self, journal: Journal, client: PlatformClient, batch_size: int = 500
                 ) -> Uploader:
        return Uploader(journal, client, batch_size=batch_size,
                        scanned_by=self.config.api["scanned_by"] or None)

    def gate(self) -> Gate:
        return Gate(open_cache(self.config), open_journal(self.config), self.config)


def make_site(root: Path, sb: Sandbox, *, name: str = "gate-a", budget_share: float = 1.0,
              rpm: int = 60, extra: str = "") -> Site:
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, sb.token.encode())
    os.close(fd)
    config_path = root / "config.toml"
    config_path.write_text(f"""
[api]
base_url = "{sb.url}"
token_file = "{token_file}"
token_env = ""
company_id = {sb.company_id}
requests_per_minute = {rpm}
budget_share = {budget_share}
device_name = "{name}"
scanned_by = 7
timeout_s = 10

[store]
dir = "{root / 'state'}"

[events]
ids = [{EVENT}]

[[lanes]]
name = "main"
gate_id = 1
direction = "in"
max_entries = 1

[[lanes]]
name = "vip"
gate_id = 1
zone_id = 5002
direction = "auto"
max_entries = 0
{extra}
""", encoding="utf-8")
    return Site(root, config_path, load_config(config_path), sb)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A small, generous sandbox: 1200 generated tickets, fast async results, a high limit."""
    with start_sandbox(tickets=1200, async_delay_s=0.02, rpm=1000) as sb:
        yield sb


@pytest.fixture
def site(tmp_path: Path, sandbox: Sandbox) -> Site:
    return make_site(tmp_path / "gate-a", sandbox, rpm=1000)


def noon(sb: Sandbox) -> datetime:
    """Noon UTC on the seed's day: inside every ticket's validity and zone 5002's hours."""
    assert sb.state is not None
    return sb.state.seed.base_time + timedelta(days=1, hours=12)


def expected_ids(count: int, products: bool = False) -> set[int]:
    """Item ids of a generated event 1001 listing (products only with includeProducts)."""
    return {100000 + i for i in range(count) if products or i % 20 != 7}


def cached_ids(cache_path: Path, event_id: int = EVENT) -> list[int]:
    import sqlite3

    conn = sqlite3.connect(cache_path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM items WHERE event_id = ?",
                                           (event_id,))]
    finally:
        conn.close()


def pending_row(barcode: str, scanned_on: datetime, *, admit: bool = True,
                direction: str = "in", zone_id: int | None = None, message: str = "Welcome",
                status: str | None = None, detail: str | None = None,
                event_id: int = EVENT) -> JournalRow:
    """A journal row as Gate.scan would write it for a decided barcode."""
    return JournalRow(
        uuid=str(uuid.uuid4()), code=barcode, kind="barcode", barcode=barcode, nfc_id=None,
        item_id=None, event_id=event_id, zone_id=zone_id, zone_is_default=zone_id is None,
        gate_id=1, lane="main", direction=direction, admit=admit,
        status=status or ("valid" if admit else "denied"), status_detail=detail,
        message=message, scanned_on=scanned_on.astimezone(UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"))


def fill_journal(journal: Journal, rows: list[JournalRow]) -> None:
    """Insert many rows in one transaction (Journal.record fsyncs each row: too slow for 10k)."""
    values = [tuple(getattr(r, c) for c in journal_mod._COLUMNS) for r in rows]
    journal.conn.execute("BEGIN IMMEDIATE")
    journal.conn.executemany(journal_mod._INSERT, values)
    journal.conn.execute("COMMIT")


def backlog(n: int, start: datetime) -> list[JournalRow]:
    """`n` admitted scans of distinct valid barcodes, one second apart."""
    return [pending_row(f"SF{i:07d}", start + timedelta(seconds=i)) for i in range(n)]


def uploaded_uuids(sb: Sandbox) -> list[str]:
    """Scan uuids the sandbox recorded (duplicates it skipped are excluded)."""
    return [u["uuid"] for u in sb.received()["uploads"] if "skipped" not in u]
