"""Where a venue claim's time goes: per-step timestamps of `Gate.scan` with a venue claim.

Prints figures; not a test. Gate A alone in the process (as on a turnstile), one real
nats-server on loopback, a single-access lane, scans paced `--gap-ms` apart; the same device's
files without a venue are scanned in between (interleaved) for the local-only steps.

    .venv/bin/python bench/claim_breakdown.py --scans 400

Steps of a claimed scan (each the p50/p99 of its own duration, so they need not add up):
  decide      the first decision (facts + decide), outside the journal's lock
  read seq    the subject's last sequence read from venue.db
  claim step  the claim call: decide, read seq, build and hand over the HPUB (in flight), or
              all that and the wait for the answer (answered before the commit)
  hand over   lane thread -> bus loop: from the claim's start until the HPUB is written
  round trip  HPUB written -> ack read, on the bus loop
  wake lane   the ack read -> the lane thread running again (after its commit, in flight)
  journal     the transaction: second decision, settle, insert, commit (fsync)
  wait        in flight: after the commit, the wait for the answer (0 when it came first)
  settle row  in flight, no grant: the row marked offline or voided (a commit without fsync)
  second decide  the transaction's fresh decision (only when the claim's was not reused)
  after       after the commit (wake the publisher)
and whether this gate's own consumer/applier ran during the journal transaction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from socket_claims import SocketClaims  # noqa: E402
from venue_bench import pct  # noqa: E402

from agent import demo_data  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.runtime.daemon import SWITCH_INTERVAL_S  # noqa: E402
from agent.runtime.gate import Gate  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal  # noqa: E402
from agent.venue.claim_channel import Answered  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402
from tests.venue.rig import venue_devices  # noqa: E402


class Marks:
    """Timestamps of the scan in progress (perf_counter), by step name."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.steps: dict[str, list[float]] = defaultdict(list)

    def mark(self, name: str) -> None:
        self.now.setdefault(name, time.perf_counter())

    def around(self, real: Any, before: str | None = None, after: str | None = None) -> Any:
        """`real`, marking `before` as it is called and `after` as it returns."""
        def call(*args: Any, **kwargs: Any) -> Any:
            if before:
                self.mark(before)
            try:
                return real(*args, **kwargs)
            finally:
                if after:
                    self.mark(after)
        return call

    def span(self, name: str, start: str, end: str) -> None:
        if start in self.now and end in self.now:
            self.steps[name].append(self.now[end] - self.now[start])


def instrument(gate: Gate, marks: Marks) -> None:
    """Wrap the gate's, link's and bus's steps with timestamps (bench only)."""
    link = gate.venue
    assert link is not None and gate.journal is not None
    bus = link.bus
    real_claim, real_publish, real_after = link.claim, bus.publish_claim, link.after_commit
    real_seq = link.store.subject_seq
    real_txn, real_apply = gate.journal.scan_transaction, bus._apply

    def claim(decide_now: Any, *args: Any, **kwargs: Any) -> Any:
        def timed_decide() -> Any:
            marks.mark("decide0")
            try:
                return decide_now()
            finally:
                marks.mark("decide1")
        try:
            return real_claim(timed_decide, *args, **kwargs)
        finally:
            marks.mark("claimed")

    real_start, real_land, real_settle = bus.start_claim, link.land, gate._mark_row

    def start_claim(*args: Any) -> Any:
        marks.mark("submit")
        js = bus._js
        real_js_publish = js.publish

        async def timed(*a: Any, **k: Any) -> Any:  # the js.publish path (lean off)
            marks.mark("loop_start")
            try:
                return await real_js_publish(*a, **k)
            finally:
                marks.mark("ack")
        js.publish = timed
        try:
            return real_start(*args)
        finally:
            js.publish = real_js_publish

    @contextmanager
    def scan_transaction() -> Iterator[None]:
        marks.mark("txn0")
        with real_txn():
            yield
        marks.mark("txn1")

    channel = bus._claims
    real_send, real_reply = channel.send, channel.on_reply
    around = marks.around
    for target, name, wrapper in (
            (channel, "send", around(real_send, "loop_start")),
            (channel, "on_reply", around(real_reply, "ack")),
            (link, "claim", claim), (link.store, "subject_seq", around(real_seq, "seq0", "seq1")),
            (bus, "publish_claim", around(real_publish, after="woken")),
            (bus, "start_claim", start_claim), (link, "land", around(real_land, "land0", "woken")),
            (gate, "_mark_row", around(real_settle, "settle0", "settle1")),
            (gate.journal, "scan_transaction", scan_transaction),
            (link, "after_commit", around(real_after, "after0", "after1")),
            (bus, "_apply", around(real_apply, "apply0", "apply1")),
            (gate, "_decide", around(gate._decide, "decide2_0", "decide2_1"))):
        setattr(target, name, wrapper)


def run(root: Path, url: str, n: int, gap_s: float, ab: str) -> dict[str, Any]:
    """`ab`: every other scan with that change off (B), the rest with it on (A), interleaved
    in one run: `hold` (the consumer holds back while a lane claims), `reuse` (the
    transaction takes the claim's decision again when nothing changed), `both`, `lean` (the
    claim as one HPUB answered in the client's reader, agent.venue.claim_channel), `settle`
    (no loop wake-up after a granted claim's commit, VenueBus.claim_settled), `lean+settle`,
    `socket` (an experiment: the lane writes and reads its claim on a blocking socket of its
    own, bench/socket_claims.py, against the lean path; both answered before the commit),
    `flight` (the first claim in flight while the admit commits, agent.venue.claims)."""
    marks = Marks()
    overlap: dict[str, int] = defaultdict(int)
    with venue_devices(root / "bd", [url], 1, n + 10, prefix="bd") as devices:
        a = devices[0]
        gate = a.gate()
        lane = gate.config.lane("north-in")
        cfg = load_config(a.config_path)
        plain = Gate(TicketCache(cfg.store_dir / "cache.db"),
                     Journal(cfg.store_dir.parent / "plain-journal.db"), cfg)
        instrument(gate, marks)
        sockets = SocketClaims(url) if ab == "socket" else None
        lean_start = a.bus._claims.start

        def socket_start(subject: str, body: bytes, headers: dict[str, str]) -> Answered:
            assert sockets is not None
            return Answered(sockets.request(subject, body, headers, a.bus.timeout_s))

        plain_scan: list[float] = []
        try:
            for i in range(n):
                code = demo_data.bulk_barcode(i)
                time.sleep(gap_s)
                t0 = time.perf_counter()
                plain.scan(code, lane, datetime.now(UTC))
                plain_scan.append(time.perf_counter() - t0)
                variant = "B " if ab and i % 2 else ("A " if ab else "")
                off = variant == "B "
                a.bus.hold_while_claiming = not (off and ab in ("hold", "both"))
                gate.reuse_first_decision = not (off and ab in ("reuse", "both"))
                a.bus.lean_claims = not (off and ab in ("lean", "lean+settle"))
                a.bus.lean_settle = not (off and ab in ("settle", "lean+settle"))
                gate.claims_in_flight = ab != "socket" and not (off and ab == "flight")
                if sockets is not None:
                    a.bus._claims.start = lean_start if off else socket_start  # type: ignore[method-assign]
                time.sleep(gap_s)
                marks.now = {"start": time.perf_counter()}
                result = gate.scan(code, lane, datetime.now(UTC))
                marks.now["end"] = time.perf_counter()
                assert result.decision.admit, result.decision
                # did this gate's applier run while the lane was in its journal transaction?
                a.bus.wait_applied(gate.venue.last_granted_seq, 1.0)  # type: ignore[union-attr]
                time.sleep(0.001)
                m = marks.now
                if "apply0" in m and m["apply0"] < m["txn1"] and m.get("apply1", 0) > m["txn0"]:
                    overlap[variant] += 1
                marks.span(variant + "scan", "start", "end")
                if variant == "B ":
                    continue
                marks.span("decide", "decide0", "decide1")
                marks.span("read seq", "seq0", "seq1")
                marks.span("hand over", "submit", "loop_start")
                marks.span("round trip", "loop_start", "ack")
                marks.span("wake lane", "ack", "woken")
                marks.span("claim step", "decide0", "claimed")
                marks.span("claim -> txn", "claimed", "txn0")
                marks.span("journal", "txn0", "txn1")
                marks.span("wait", "land0", "woken")
                marks.span("settle row", "settle0", "settle1")
                marks.span("after", "after0", "after1")
                marks.span("second decide (n: not reused)", "decide2_0", "decide2_1")
                marks.span("ack -> applier", "ack", "apply0")
        finally:
            plain.close()
            if sockets is not None:
                sockets.close()
    return {"steps": marks.steps, "plain": plain_scan, "overlap": dict(overlap), "n": n}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=400)
    ap.add_argument("--gap-ms", type=float, default=10.0)
    ap.add_argument("--ab", choices=["", "flight", "hold", "reuse", "both", "lean", "settle",
                                            "lean+settle", "socket"], default="",
                    help="interleave scans with (A) and without (B) one change (see run())")
    args = ap.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with tempfile.TemporaryDirectory(prefix="claim-breakdown-") as tmp:
        nodes = start_venue(Path(tmp) / "nats", 1)
        try:
            out = run(Path(tmp), nodes[0].url, args.scans, args.gap_ms / 1000, args.ab)
        finally:
            for node in nodes:
                node.kill()
    rows = [("scan without venue", out["plain"])] + list(out["steps"].items())
    for name, values in rows:
        print(f"{name:20s} p50 {pct(values, 0.5) * 1000:7.3f} ms  "
              f"p99 {pct(values, 0.99) * 1000:7.3f} ms  n {len(values)}")
    plain = pct(out["plain"], 0.5)
    for name, values in out["steps"].items():
        if name.endswith("scan"):
            print(f"{name:20s} added p50 {(pct(values, 0.5) - plain) * 1000:7.3f} ms")
    for variant, count in sorted(out["overlap"].items()):
        print(f"{variant}applier ran during the journal transaction in {count} scans")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
