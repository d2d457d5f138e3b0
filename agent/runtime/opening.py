"""Opening what every command needs from a config: the cache, the journal, the gate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.config import Config
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal

CACHE_FILE = "cache.db"
JOURNAL_FILE = "journal.db"


def open_cache(config: Config) -> TicketCache:
    return TicketCache(config.store_dir / CACHE_FILE,
                       keep_personal_data=config.store["keep_personal_data"])


def open_journal(config: Config) -> Journal:
    return Journal(config.store_dir / JOURNAL_FILE)


@contextmanager
def opened_gate(config: Config) -> Iterator[Gate]:
    """The journal is opened first: a damaged cache must not stop scans being recorded."""
    journal = open_journal(config)
    try:
        cache = open_cache(config)
        try:
            yield Gate(cache, journal, config)
        finally:
            cache.close()
    finally:
        journal.close()
