"""The gate's two SQLite files at start-up: the journal, then the cache.

The journal first: without it no scan may be admitted. A damaged journal is kept as it is
and the gate refuses every scan; one that cannot be opened is tried again every
`store_retry_s` (agent.runtime.daemonjobs) and the lanes record scans again by themselves
once it opens. Then the cache: a damaged cache is moved aside, the gate starts degraded on an
empty cache and a full resync is scheduled at once; an interrupted rebuild is discarded and
redone; a cache that is only not this user's (owner, mode, a full or read-only disk) is kept,
the gate runs on an empty in-memory cache and it is tried again until it opens. The journal
is never moved aside or made anew for that: a lost journal loses scans.

Apart from agent.runtime.daemon because these are the decisions about what to do with a file
that is damaged or not ours, each one to be read whole.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import CacheCorrupt, CacheNotAccessible, JournalUnavailable
from agent.platform.sync import discard_unfinished_rebuild
from agent.runtime.opening import CACHE_FILE, drop_older_corrupt_caches
from agent.runtime.storeaccess import not_mine
from agent.store.journal import Journal
from agent.store.passages import PassageLog

if TYPE_CHECKING:
    from agent.runtime.daemon import Daemon

log = logging.getLogger("gate_agent.daemon")


def open_stores(d: Daemon) -> bool:
    """Journal, then cache. Returns True when a full resync must run at once."""
    d.config.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        d.journal = settled(Journal(d.journal_path))
    except JournalUnavailable as exc:
        d.journal_error = not_mine(d.journal_path) or str(exc)
        log.error("%s — every scan will be refused; tried again every %g s",
                  d.journal_error, d.store_retry_s)
    resync = discard_unfinished_rebuild(d.cache_path)
    if resync:
        d.cache_degraded = "an interrupted rebuild was discarded; resyncing"
        log.warning("discarded an unfinished cache rebuild; a full resync will run")
    try:
        d.status_cache = d._open_cache()
    except (CacheCorrupt, CacheNotAccessible) as exc:
        # not damaged, only not ours (the file, its -wal/-shm, the directory, a read-only
        # disk): keep it, say how to fix it
        foreign = str(exc) if isinstance(exc, CacheNotAccessible) \
            else not_mine(d.cache_path)
        if foreign:
            log.error("ticket cache unusable: %s; starting with no tickets", foreign)
            d.cache_unreadable = foreign  # its own status reason: not a rebuild
            d.cache_in_memory = True
            d.status_cache = d._open_cache()
            return False
        aside = d.cache_path.with_name(f"{CACHE_FILE}.corrupt-{int(time.time())}")
        try:
            os.replace(d.cache_path, aside)
        except OSError as move:
            # A read-only or failing store.dir must not crash the start;
            # the gate runs on an empty in-memory cache and status says why.
            log.error("%s; cannot move it aside (%s): starting with no tickets", exc,
                      move.strerror)
            d.cache_degraded = (f"cache unusable and store.dir not writable "
                                f"({move.strerror}); fix store.dir, then restart")
            d.cache_in_memory = True
            d.status_cache = d._open_cache()
            return False
        for suffix in ("-wal", "-shm"):
            Path(str(d.cache_path) + suffix).unlink(missing_ok=True)
        log.error("%s; moved aside to %s, starting with an empty cache", exc, aside.name)
        drop_older_corrupt_caches(aside)
        d.cache_degraded = f"cache was damaged (moved to {aside.name}); rebuilding"
        d.status_cache = d._open_cache()
        resync = True
    return resync


def settled(journal: Journal) -> Journal:
    """`journal`, its admits left waiting for a passage by the last run settled."""
    result = PassageLog(journal).settle_interrupted()
    if result.stood or result.voided:
        log.warning("%d admit(s) were waiting for their passage when the agent "
                    "stopped: %d entry admit(s) stand, %d exit(s) nobody saw are voided "
                    "(docs/turnstile.md)", result.stood + len(result.voided),
                    result.stood, len(result.voided))
    return journal
