"""Child process for the crash tests: device CONFIG claims CODE on the bus and stops at one
step of the scan (prints a line and waits) so the parent can SIGKILL it there. MODE:

    claimed     the claim granted, its journal transaction not begun (no row)
    committed   the admit committed as 'claiming' and the claim granted on the bus, the row
                not settled
    unsent      the admit committed as 'claiming' while its claim never left the process

The pause (and, for `unsent`, the claim kept from the bus: the process dies before its loop
wrote it) is the only thing injected, around `Gate._journaled` and `VenueBus.start_claim`.
Everything else is the real gate."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

from agent.config import load_config
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.venue.bus import VenueBus
from agent.venue.claim_channel import ClaimAnswer, PendingAnswer
from agent.venue.claims import VenueLink


class _NeverSent(PendingAnswer):
    def wait(self, timeout_s: float) -> ClaimAnswer:
        time.sleep(3600)
        raise AssertionError("not reached")


def main(config_path: str, code: str, mode: str = "claimed") -> None:
    config = load_config(config_path)
    assert config.venue is not None
    bus = VenueBus(config.venue, config.store_dir, config.store_dir / "journal.db", config_path)
    bus.start()
    while not bus.ready:
        time.sleep(0.01)
    gate = Gate(TicketCache(config.store_dir / "cache.db"),
                Journal(config.store_dir / "journal.db"), config, VenueLink(bus, "local"))
    real = gate._journaled

    def pause(*args: Any, **kwargs: Any) -> Any:
        claim = args[-1]
        if mode == "claimed" and claim is not None and claim.outcome in ("granted", "in_flight"):
            if claim.outcome == "in_flight":  # sent: wait until the bus has it
                assert claim.pending.wait(5).outcome == "granted"
            print("CLAIMED", claim.uuid, flush=True)
            time.sleep(3600)  # the parent kills us here: claimed, not journaled
        result = real(*args, **kwargs)
        if mode in ("committed", "unsent") and claim is not None and \
                claim.outcome == "in_flight":
            if mode == "committed":
                assert claim.pending.wait(5).outcome == "granted"
            print("COMMITTED", claim.uuid, flush=True)
            time.sleep(3600)  # killed here: the admit durable as 'claiming', not settled
        return result

    if mode == "unsent":
        bus.start_claim = lambda *a, **k: _NeverSent()  # type: ignore[method-assign]
    gate._journaled = pause  # type: ignore[method-assign]
    gate.scan(code, config.lane("north-in"), datetime.now(UTC))
    print("NOT REACHED", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
