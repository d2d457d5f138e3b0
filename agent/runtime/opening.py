"""Opening what every command needs from a config: the cache, the journal, the gate.

The gate (and through it the venue bus and nats) is imported only by `opened_gate`: `queue`,
`import` and `release --events` open the journal or the cache alone, and start faster so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import Config
from agent.store.cache import TicketCache
from agent.store.journal import Journal

if TYPE_CHECKING:
    from agent.runtime.gate import Gate

CACHE_FILE = "cache.db"
JOURNAL_FILE = "journal.db"

log = logging.getLogger(__name__)


def open_cache(config: Config) -> TicketCache:
    return TicketCache(config.store_dir / CACHE_FILE,
                       keep_personal_data=config.store["keep_personal_data"])


def open_journal(config: Config) -> Journal:
    return Journal(config.store_dir / JOURNAL_FILE)


@contextmanager
def opened_gate(config: Config) -> Iterator[Gate]:
    """The journal is opened first: a damaged cache must not stop scans being recorded."""
    from agent.runtime.gate import Gate

    journal = open_journal(config)
    try:
        cache = open_cache(config)
        try:
            yield Gate(cache, journal, config)
        finally:
            cache.close()
    finally:
        journal.close()


def drop_older_corrupt_caches(kept: Path) -> list[Path]:
    """Delete the damaged caches moved aside before `kept` (`cache.db.corrupt-<time>`, the
    newest, kept for diagnosis). Each is as big as the cache (hundreds of MB at 1M items) and
    holds the same ticket data; a gate whose storage keeps damaging it must not fill its disk
    with copies. Returns the files deleted; one that cannot be deleted is logged and left."""
    dropped = []
    for old in sorted(kept.parent.glob(f"{CACHE_FILE}.corrupt-*")):
        if old == kept or not old.is_file():
            continue
        try:
            old.unlink()
        except OSError as exc:
            log.warning("could not delete the older damaged cache %s: %s", old.name,
                        exc.strerror)
            continue
        dropped.append(old)
    if dropped:
        log.info("deleted %d older damaged cache(s): %s", len(dropped),
                 ", ".join(p.name for p in dropped))
    return dropped
