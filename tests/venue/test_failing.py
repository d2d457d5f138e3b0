"""agent.venue.failing: the one "error, and since when" record the bus and its status reads
keep (publish, apply, venue.db and journal.db opens, status reads of venue.db)."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime

from agent.core.codes import parse_utc_iso
from agent.venue.failing import Failing


def test_a_run_keeps_its_first_time_and_its_latest_error() -> None:
    failing = Failing()
    assert (failing.error, failing.since) == (None, None)
    assert failing.fields("apply") == {"apply_error": None, "apply_failing_since": None}
    assert not failing.clear()  # nothing to say: it was working
    before = datetime.now(UTC).replace(microsecond=0)
    assert failing.fail("database is locked")  # the first of a run: said
    since = failing.since
    assert since is not None and parse_utc_iso(since) >= before
    assert not failing.fail("database is locked")  # the same again: not said again
    time.sleep(0.01)  # later (the time is to the microsecond)
    assert failing.fail("database or disk is full")  # another error: said
    assert (failing.error, failing.since) == ("database or disk is full", since)
    assert failing.fields("db_open") == {"db_open_error": "database or disk is full",
                                         "db_open_failing_since": since}
    assert failing.clear()  # it was failing: the caller says it works again
    assert failing.fields("db_open") == {"db_open_error": None, "db_open_failing_since": None}
    assert failing.fail("database is locked")  # a new run: a new time
    assert failing.since is not None and failing.since > since


def test_status_never_reads_an_error_without_its_time() -> None:
    """One thread fails and clears the record as the bus's threads do while another reads
    status's pair as the daemon's loop does: never one field without the other."""
    failing = Failing()
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            failing.fail("locked")
            failing.clear()

    thread = threading.Thread(target=flip)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns between any two bytecodes
    thread.start()
    try:
        seen = set()
        for _ in range(50_000):
            fields = failing.fields("publish")
            seen.add((fields["publish_error"] is None, fields["publish_failing_since"] is None))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert seen <= {(True, True), (False, False)}, seen
