"""A gate's first tickets, on a fresh install that serves every activated event (no
`events.ids`): the events come from the refresh job (`GET /activated-events`, then each event's
zones), the tickets from the delta job, which syncs the events the cache knows.

The delta job used to start 1.5 s after the daemon, on the bet that the refresh had finished by
then. On a slow link (a venue's mobile uplink, a platform answering in a second) it had not: the
first delta found no event in the empty cache, synced nothing, and the gate refused every ticket
as unknown until the next delta, `sync.delta_interval_s` later (30 s by default). Now the first
delta waits for the first refresh to end (done or failed), however long it takes.

Real daemon (subprocess), the platform sandbox on loopback with a 2 s latency on every answer.
"""

from __future__ import annotations

import time

from tests.runtime.daemon.conftest import Site, wait_synced


def test_the_first_tickets_follow_the_first_refresh_on_a_slow_link(site: Site) -> None:
    text = site.config.read_text()
    assert "\n[events]\nids = [" in text
    # every activated event (the demo's two), and the 30 s delta interval of the defaults
    text = text.replace("\n[events]\nids = [", "\n[events]\n# ids = [", 1)
    site.config.write_text(text.replace("delta_interval_s = 2.0", "delta_interval_s = 30.0"))
    site.sandbox.set_faults(latency_s=2.0)  # the refresh alone takes 3 answers: 6 s
    daemon = site.daemon().start()
    try:
        daemon.wait_ready()
        started = time.monotonic()
        report = wait_synced(daemon, timeout=25)  # well before the second delta (30 s)
        took = time.monotonic() - started
        synced = [e for e in report["cache"]["events"] if e["items"]]
        assert synced, report["cache"]
        print(f"first tickets {took:.1f} s after ready (2 s per platform answer)")
    finally:
        assert daemon.stop() == 0
