"""Two lanes of one daemon deciding the same single-access ticket at the same moment."""

from __future__ import annotations

import threading

from agent import demo_data
from agent.config import LaneConfig
from agent.runtime.gate import Gate
from agent.runtime.opening import open_cache, open_journal
from tests.conftest import DemoSite
from tests.procs import communicate_while, dir_state, join_while

STALL_S = 120  # this long with no decision (thread) or journal commit (process): a hang


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
    scanned = [0, 0]  # each lane's decisions so far: what the wait below watches
    errors: list[BaseException] = []

    def lane(i: int) -> None:
        try:
            for code in codes:
                barrier.wait()
                result = gates[i].scan(code, lanes[i], site.now)
                scanned[i] += 1
                if result.decision.admit:
                    admits.append(code)
        except BaseException as exc:  # reported below; abort frees the other lane
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        join_while(threads, lambda: tuple(scanned), stall_s=STALL_S, what="a lane's thread")
    finally:
        for gate in gates:
            gate.close()
    assert not errors, errors
    assert sorted(admits) == sorted(codes)  # each ticket once, never twice


RACER = """
import os, sys, time
from datetime import UTC, datetime
from agent.config import load_config
from agent.runtime.opening import opened_gate
config = load_config(sys.argv[1]); go = sys.argv[2]; codes = sys.argv[3].split(",")
lane = config.lane("north-in")
with opened_gate(config) as gate:
    gate.check(codes[0], lane, datetime.now(UTC))  # warm up before the start line
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    for code in codes:
        if gate.scan(code, lane, datetime.now(UTC)).decision.admit:
            print(code, flush=True)
"""


def test_daemon_and_manual_scan_processes_never_both_admit(site: DemoSite) -> None:
    """Two processes (as the daemon and a technician's `gate-agent scan`) scan the same 300
    single-access tickets at the same moment: SQLite's write lock, taken before the scan state
    is read, makes them take turns. Every ticket is admitted exactly once."""
    import subprocess
    import sys

    from agent.platform.provision import import_file
    from tests.conftest import PROJECT_ROOT
    tickets = site.root / "bulk.json"
    import json
    tickets.write_text(json.dumps({"content": demo_data.bulk_tickets(300)}))
    cache = open_cache(site.config)
    import_file(cache, tickets, site.now, event_id=demo_data.EVENT_ID)
    cache.close()
    codes = ",".join(demo_data.bulk_barcode(i) for i in range(300))
    go = site.root / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(site.config_path), str(go),
                               codes], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    go.touch()
    admitted: list[str] = []
    for proc in procs:  # as long as they take, while their journal commits keep coming
        out, _ = communicate_while(proc, lambda: dir_state(site.config.store_dir),
                                   stall_s=STALL_S, what="a scanning process")
        assert proc.returncode == 0
        admitted += out.split()
    assert len(admitted) == 300 and len(set(admitted)) == 300
