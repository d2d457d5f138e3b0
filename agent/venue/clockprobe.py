"""One measurement of this clock against the venue bus server's, taken as a session connects.

Other gates' scans are placed on this gate's clock by its offset from the bus server's clock
(agent.venue.heartbeat `GateBoard`), measured from the heartbeats' deliveries. The first of
those comes up to `[venue] heartbeat_s` after connecting (the next beat of any gate), and until
then this gate cannot interleave other gates' scans with its own: it refuses the entries whose
answer depends on that order (agent.core.scanstate, `clockUnmeasured`), and the daemon waits a
moment before opening its lanes. So one sample is taken at once: JetStream's stream info
answer carries the server's time as it wrote it (`ts`); this clock when the answer arrives,
minus that, is the offset plus the answer's travel time — the same kind of sample as a
heartbeat's delivery delay, so the board keeps the smallest of both. A server that leaves
`ts` out (older versions may) or does not answer in time gives no sample: the heartbeats
measure it, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.venue.stream_identity import raw_stream_info

log = logging.getLogger("gate_agent.venue")

PROBE_TIMEOUT_S = 2.0


async def server_delay(js: Any, stream: str, clock: Callable[[], float],
                       timeout_s: float = PROBE_TIMEOUT_S) -> float | None:
    """`clock()` when the server's answer about `stream` arrived, minus the server's time in
    it (seconds); None when there is no answer in `timeout_s` or no readable `ts` in it."""
    try:
        reply = await raw_stream_info(js, stream, timeout_s)
    except Exception as exc:  # noqa: BLE001 - no sample: the heartbeats measure the clock
        log.info("venue: clock not measured at connect (%s: %s)", type(exc).__name__, exc)
        return None
    received = clock()
    stamp = reply.get("ts")
    try:
        server = datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    except ValueError:
        server = None
    if server is None:
        log.info("venue: the bus server's stream info has no time (`ts`): this clock is "
                 "measured by the first heartbeat")
        return None
    return received - server
