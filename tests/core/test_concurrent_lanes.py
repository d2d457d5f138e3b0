"""Two lanes of one daemon deciding the same single-access ticket at the same moment."""

from __future__ import annotations

import threading

from agent import demo_data
from agent.config import LaneConfig
from agent.gate import Gate
from agent.runtime import open_cache, open_journal
from tests.conftest import DemoSite


def test_a_copied_ticket_at_two_lanes_is_admitted_once(site: DemoSite) -> None:
    """Each lane has its own Gate and SQLite connections, as in the daemon; a barrier releases
    both threads together, over and over. Exactly one of each pair may admit."""
    gates = [Gate(open_cache(site.config), open_journal(site.config), site.config)
             for _ in range(2)]
    lanes = [LaneConfig(name=f"lane{i}", direction="in", max_entries=1, debounce_ms=0)
             for i in range(2)]
    codes = [demo_data.CODES[k] for k in ("valid", "valid2", "floor", "vip", "replaced",
                                          "nfc_ticket", "entry_only")]
    barrier = threading.Barrier(2)
    admits: list[str] = []

    def lane(i: int) -> None:
        for code in codes:
            barrier.wait()
            result = gates[i].scan(code, lanes[i], site.now)
            if result.decision.admit:
                admits.append(code)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for gate in gates:
        gate.close()
    assert sorted(admits) == sorted(codes)  # each ticket once, never twice
