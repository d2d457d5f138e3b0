"""Child process for the crash test: device CONFIG claims CODE on the bus, then stops between
the claim and its journal commit (prints CLAIMED and waits) so the parent can SIGKILL it.

The pause is the only thing injected: `Gate._journaled` (the journal transaction) is wrapped
to wait before running once a claim has been granted. Everything else is the real gate."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from agent.config import load_config
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.venue.bus import VenueBus
from agent.venue.claims import VenueLink


def main(config_path: str, code: str) -> None:
    config = load_config(config_path)
    assert config.venue is not None
    bus = VenueBus(config.venue, config.store_dir, config.store_dir / "journal.db", config_path)
    bus.start()
    while not bus.connected:
        time.sleep(0.01)
    gate = Gate(TicketCache(config.store_dir / "cache.db"),
                Journal(config.store_dir / "journal.db"), config, VenueLink(bus, "local"))
    real = gate._journaled

    def pause_after_claim(*args, **kwargs):  # type: ignore[no-untyped-def]
        claim = args[-1]
        if claim is not None and claim.outcome == "granted":
            print("CLAIMED", claim.uuid, flush=True)
            time.sleep(3600)  # the parent kills us here: claimed, not journaled
        return real(*args, **kwargs)

    gate._journaled = pause_after_claim  # type: ignore[method-assign]
    gate.scan(code, config.lane("north-in"), datetime.now(UTC))
    print("NOT REACHED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
