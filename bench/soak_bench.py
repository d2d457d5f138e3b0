"""Soak: the real daemon under steady scanning for minutes, watched for drift and lost scans.

Prints figures; it is not a test (exit 0 whatever the figures, non-zero only if the benchmark
itself breaks). `make bench` runs it with the others (default 2 minutes, so the whole
`make bench` stays near 10 minutes); longer alone:

    .venv/bin/python bench/soak_bench.py [--minutes 10] [--rate 20]

Set-up (real processes and OS objects, as in tests/faults/):
- the platform sandbox as a subprocess (its own GIL), seeded with
  `agent.demo_data.sandbox_seed(now, extra_tickets=N)`, with a low rate limit (120 requests a
  minute) so the daemon's governor has to ration sync and upload requests;
- the real daemon (`gate-agent run`, via agent.runtime.devrun.DaemonProcess) with two pty "USB serial"
  scanners (tests/rigs.PtyDevice) and `sim:` relays logging pulses: `entry` (default zone,
  direction in, single access) and `floor` (Main floor, an in&out zone with capacity,
  direction auto, unlimited entries); `debounce_ms = 0`; `delta_interval_s = 1`,
  `upload_interval_s = 0.5`, batches of 100, so sync and upload run hundreds of times.

Load: `--rate` scans a second in total (default 20), alternating lanes on a fixed schedule.
Entry: 75 % first scans of fresh tickets (valid), 15 % repeats of admitted tickets
(alreadyIn), 10 % unknown codes (denied, kept local). Floor: tickets that came in at the
entry walk onto the floor and out again (auto direction: valid in / valid out; at most 60 on
the floor at once, far under the capacity), plus 5 % unknown codes. The expected status of
every scan is known, and each lane's decisions are compared with it in order.

Samples every 10 s: daemon RSS (VmRSS) and threads from /proc/PID/status, open fds
(/proc/PID/fd), journal.db + WAL size, journal pending (/status), and the p50/p99 of the
`latency_ms` of decisions logged in that interval. Baseline measured in the same run: the idle
daemon (ready, cache synced, no scans) sampled for 10 s before the load starts.

At the end: feeding stops, every fed scan must be decided, the outbox drains, the daemon stops
with SIGTERM; then every journaled uploadable scan must be on the platform exactly once (by
scan uuid; lost = 0, duplicated = 0). Drift figures: RSS first minute vs last minute, fd and
thread counts (max - min), p99 of the first vs the last interval, and an RSS slope after the
first minute. Figures go to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchfile import save_results  # noqa: E402

from agent import demo_data  # noqa: E402
from agent.runtime.devrun import DaemonProcess, Record  # noqa: E402
from agent.sandbox.harness import Sandbox, start_sandbox_process  # noqa: E402
from tests.rigs import PtyDevice, wait_until  # noqa: E402

LANES = ("entry", "floor")
RPM = 120
SAMPLE_S = 10.0
FLOOR_MAX = 60
RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"


# -- the site ---------------------------------------------------------------------------------


class Site:
    """Sandbox process + daemon process + two pty scanners, torn down by `close()`."""

    def __init__(self, root: Path, tickets: int):
        self.root = root
        seed = root / "seed.json"
        seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC), tickets)))
        self.tickets = tickets
        self.sandbox: Sandbox = start_sandbox_process(seed_file=seed, rpm=RPM, window_s=60.0)
        self.scanners: dict[str, PtyDevice] = {}
        for name in LANES:
            (root / name).mkdir()
            self.scanners[name] = PtyDevice(root / name)
        token = root / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, self.sandbox.token.encode())
        os.close(fd)
        self.store = root / "state"
        lanes = ""
        for name in LANES:
            floor = name == "floor"
            lanes += f"""
[[lanes]]
name = "{name}"
gate_id = {demo_data.GATE_NORTH}
direction = "{'auto' if floor else 'in'}"
max_entries = {0 if floor else 1}
debounce_ms = 0
{f'zone_id = {demo_data.FLOOR_ZONE}' if floor else ''}
readers = ["serial://{self.scanners[name].path}"]
relay = "sim:{name}?log={root / 'relays.jsonl'}"
"""
        config = root / "config.toml"
        config.write_text(f"""
[api]
base_url = "{self.sandbox.url}"
company_id = {self.sandbox.company_id}
token_file = "{token}"
device_name = "soak-gate"
timeout_s = 15
requests_per_minute = {RPM}
budget_share = 1.0

[store]
dir = "{self.store}"

[events]
ids = [{demo_data.EVENT_ID}]

[sync]
upload_interval_s = 0.5
upload_batch_size = 100
delta_interval_s = 1

[status]
listen = "127.0.0.1:0"
{lanes}""", encoding="utf-8")
        self.daemon = DaemonProcess(config, self.store, cwd=ROOT).start()

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Daemon up, the whole event synced, both scanners connected."""
        self.daemon.wait_ready(timeout=60)
        want = self.tickets  # plus the demo event's own few items
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.daemon.status()
            items = sum(e["items"] for e in report["cache"].get("events") or []
                        if e["id"] == demo_data.EVENT_ID)
            if items >= want and all(lane["readers_connected"] for lane in report["lanes"]):
                return
            time.sleep(0.2)
        raise TimeoutError("daemon did not sync the event / connect its scanners")

    def close(self) -> None:
        self.daemon.kill()
        self.sandbox.stop()
        for scanner in self.scanners.values():
            scanner.unplug()


# -- load -------------------------------------------------------------------------------------


class Feeder(threading.Thread):
    """Types codes into the two scanners on a fixed schedule and remembers what it expects."""

    def __init__(self, site: Site, rate: float, seed: int = 11):
        super().__init__(daemon=True, name="feeder")
        self.site = site
        self.period = 1.0 / rate
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.fresh = 0
        self.admitted: list[str] = []  # came in at the entry (fed as first scans)
        self.on_floor: set[str] = set()
        self.floor_order: deque[str] = deque()  # on the floor, oldest first
        self.expected: dict[str, list[tuple[str, str]]] = {name: [] for name in LANES}
        self.kinds: Counter[str] = Counter()
        self.unknown = 0
        self.late_s = 0.0
        self.error: BaseException | None = None

    def _unknown(self) -> str:
        self.unknown += 1
        return f"SOAK-UNKNOWN-{self.unknown:07d}"

    def _entry(self) -> tuple[str, str, str]:
        roll = self.rng.random()
        if roll < 0.15 and self.admitted:
            return self.rng.choice(self.admitted), "repeat", "alreadyIn"
        if roll < 0.25:
            return self._unknown(), "unknown", "refused"
        if self.fresh >= self.site.tickets:
            raise RuntimeError("out of fresh tickets: raise extra_tickets")
        code = demo_data.bulk_barcode(self.fresh)
        self.fresh += 1
        self.admitted.append(code)
        return code, "first", "valid"

    def _floor(self) -> tuple[str, str, str]:
        roll = self.rng.random()
        if roll < 0.05:
            return self._unknown(), "unknown", "refused"
        inside = len(self.on_floor)
        go_in = inside < FLOOR_MAX // 3 or (inside < FLOOR_MAX and roll < 0.55)
        if go_in:
            for _ in range(20):
                code = self.rng.choice(self.admitted[-2000:]) if self.admitted else None
                if code is not None and code not in self.on_floor:
                    self.on_floor.add(code)
                    self.floor_order.append(code)
                    return code, "floor in", "valid"
        if self.floor_order:
            code = self.floor_order.popleft()
            self.on_floor.discard(code)
            return code, "floor out", "valid"
        return self._unknown(), "unknown", "refused"

    def _write(self, lane: str, code: str) -> None:
        data = code.encode() + b"\r\n"
        scanner = self.site.scanners[lane]
        deadline = time.monotonic() + 5.0
        while data:
            try:
                assert scanner.master is not None
                data = data[os.write(scanner.master, data):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pty of lane {lane} stays full") from None
                time.sleep(0.002)

    def run(self) -> None:
        try:
            start = time.monotonic()
            n = 0
            while not self.stopping.is_set():
                lane = LANES[n % 2]
                code, kind, expect = self._entry() if lane == "entry" else self._floor()
                self.expected[lane].append((code, expect))
                self.kinds[f"{lane}: {kind}"] += 1
                self._write(lane, code)
                n += 1
                wait = start + n * self.period - time.monotonic()
                if wait > 0:
                    self.stopping.wait(wait)
                else:
                    self.late_s = max(self.late_s, -wait)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    @property
    def fed(self) -> int:
        return sum(len(v) for v in self.expected.values())


# -- sampling ---------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def journal_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.glob("journal.db*") if p.is_file())


class Sampler:
    def __init__(self, site: Site):
        self.site = site
        self.seen = 0  # decisions already counted into an interval
        self.rows: list[dict[str, Any]] = []

    def _decisions(self) -> list[Record]:
        return [d for d in self.site.daemon.decisions() if d.get("uuid")]

    def sample(self, t: float, phase: str) -> dict[str, Any]:
        st = proc_status(self.site.pid)
        fds = len(os.listdir(f"/proc/{self.site.pid}/fd"))
        decisions = self._decisions()
        fresh, self.seen = decisions[self.seen:], len(decisions)
        lat = [float(d["latency_ms"]) for d in fresh]
        report = self.site.daemon.status()
        row = {"t_s": round(t, 1), "phase": phase, "rss_kb": st["VmRSS"], "fds": fds,
               "threads": st["Threads"], "journal_bytes": journal_bytes(self.site.store),
               "pending": report["journal"].get("pending"), "decisions": len(fresh),
               "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99),
               "max_ms": max(lat) if lat else None,
               "reasons": [r["code"] for r in report.get("reasons", [])]}
        self.rows.append(row)
        return row


# -- checks -----------------------------------------------------------------------------------


def compare_decisions(feeder: Feeder, decisions: list[Record]) -> dict[str, Any]:
    """Each lane's decisions in order against what was fed; counts mismatches."""
    out: dict[str, Any] = {"statuses": {}, "mismatched": 0, "examples": []}
    for lane in LANES:
        got = [d for d in decisions if d.get("lane") == lane]
        out["statuses"][lane] = dict(Counter(d["status"] for d in got))
        for (code, expect), d in zip(feeder.expected[lane], got, strict=False):
            ok = d.get("code") == code and (
                d["status"] == expect if expect != "refused" else d["status"] != "valid")
            if not ok:
                out["mismatched"] += 1
                if len(out["examples"]) < 5:
                    out["examples"].append({"lane": lane, "fed": code, "expected": expect,
                                            "got": {k: d.get(k) for k in ("code", "status")}})
    return out


def platform_check(store: Path, received: dict[str, Any],
                   decisions: list[Record]) -> dict[str, Any]:
    conn = sqlite3.connect(store / "journal.db")
    try:
        rows = {u: s for u, s in conn.execute("SELECT uuid, upload_state FROM scans")}
    finally:
        conn.close()
    uploads = received["uploads"]
    recorded = Counter(u["uuid"] for u in uploads if not u.get("skipped"))
    to_platform = [u for u, state in rows.items() if state != "local"]
    states = Counter(rows.values())
    return {
        "journal_rows": len(rows), "journal_states": dict(states),
        "decided_not_journaled": sum(1 for d in decisions if d["uuid"] not in rows),
        "uploaded": len(recorded), "kept_local": states.get("local", 0),
        "lost": sum(1 for u in to_platform if recorded[u] == 0),
        "duplicated": sum(1 for u in to_platform if recorded[u] > 1),
        "resent_rows_skipped": sum(1 for u in uploads if u.get("skipped")),
        "on_platform_never_decided": len(set(recorded) - set(rows)),
        "upload_requests": received["perEndpoint"].get("POST /entry/tickets", 0),
        "delta_requests": received["perEndpoint"].get("GET /entry/tickets", 0),
        "per_endpoint": received["perEndpoint"], "rate_limited_429": received["rateLimited"],
    }


# -- figures ----------------------------------------------------------------------------------


def drift(rows: list[dict[str, Any]]) -> dict[str, Any]:
    load = [r for r in rows if r["phase"] == "load"]
    end = load[-1]["t_s"]
    first = [r for r in load if r["t_s"] <= 60.0]
    last = [r for r in load if r["t_s"] > end - 60.0]
    mean_mb = lambda rs: sum(r["rss_kb"] for r in rs) / len(rs) / 1024  # noqa: E731
    rss_first, rss_last = mean_mb(first), mean_mb(last)
    # least-squares slope of RSS after the first minute (warm-up excluded), MB per minute
    tail = [r for r in load if r["t_s"] > 60.0]
    slope = None
    if len(tail) >= 3:
        xs = [r["t_s"] / 60 for r in tail]
        ys = [r["rss_kb"] / 1024 for r in tail]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
            sum((x - mx) ** 2 for x in xs)
    fds = [r["fds"] for r in load]
    threads = [r["threads"] for r in load]
    idle = [r for r in rows if r["phase"] == "idle"]
    return {
        "rss_idle_mb": mean_mb(idle) if idle else None,
        "rss_first_min_mb": rss_first, "rss_last_min_mb": rss_last,
        "rss_drift_mb": rss_last - rss_first, "rss_drift_pct": 100 * (rss_last / rss_first - 1),
        "rss_slope_after_1min_mb_per_min": slope,
        "rss_max_mb": max(r["rss_kb"] for r in load) / 1024,
        "fds_idle": idle[-1]["fds"] if idle else None, "fds_min": min(fds), "fds_max": max(fds),
        "fds_spread": max(fds) - min(fds),
        "threads_idle": idle[-1]["threads"] if idle else None, "threads_min": min(threads),
        "threads_max": max(threads), "threads_spread": max(threads) - min(threads),
        "p99_first_interval_ms": load[0]["p99_ms"], "p99_last_interval_ms": load[-1]["p99_ms"],
        "p99_worst_interval_ms": max(r["p99_ms"] or 0 for r in load),
        "pending_max": max(r["pending"] or 0 for r in load),
        "journal_growth_bytes": load[-1]["journal_bytes"] - load[0]["journal_bytes"],
    }


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "machine": platform.machine()}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title=f"soak: real daemon, {results['rate']:g} scans/s for "
                        f"{results['minutes']:g} min — {results['machine']['cpus']} CPUs, "
                        f"Python {results['machine']['python']}")
    for col in ("t (s)", "phase", "RSS (MB)", "fds", "threads", "journal (KB)", "pending",
                "decisions", "p50 (ms)", "p99 (ms)", "max (ms)", "reasons"):
        table.add_column(col, justify="left" if col in ("phase", "reasons") else "right")
    for r in results["samples"]:
        table.add_row(f"{r['t_s']:.0f}", r["phase"], f"{r['rss_kb'] / 1024:.1f}", str(r["fds"]),
                      str(r["threads"]), f"{r['journal_bytes'] / 1024:,.0f}", str(r["pending"]),
                      f"{r['decisions']:,}", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                      _ms(r["max_ms"]), ",".join(r["reasons"]) or "—")
    console.print(table)

    d, p = results["drift"], results["platform"]
    figures = Table(title="drift and loss")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    slope = d["rss_slope_after_1min_mb_per_min"]
    rows = [
        ("RSS idle baseline (before load)", f"{d['rss_idle_mb']:.1f} MB"),
        ("RSS first minute -> last minute (mean)",
         f"{d['rss_first_min_mb']:.1f} -> {d['rss_last_min_mb']:.1f} MB "
         f"({d['rss_drift_mb']:+.1f} MB, {d['rss_drift_pct']:+.1f} %)"),
        ("RSS slope after the first minute",
         "—" if slope is None else f"{slope:+.2f} MB/min"),
        ("open fds under load (min..max, spread) / idle",
         f"{d['fds_min']}..{d['fds_max']} ({d['fds_spread']}) / {d['fds_idle']}"),
        ("threads under load (min..max, spread) / idle",
         f"{d['threads_min']}..{d['threads_max']} ({d['threads_spread']}) / "
         f"{d['threads_idle']}"),
        ("p99 first interval -> last interval",
         f"{_ms(d['p99_first_interval_ms'])} -> {_ms(d['p99_last_interval_ms'])} ms "
         f"(worst {_ms(d['p99_worst_interval_ms'])})"),
        ("journal pending, max sampled", str(d["pending_max"])),
        ("scans fed / decided (logged)", f"{results['fed']:,} / {results['decided']:,}"),
        ("decisions not as expected", str(results["expected"]["mismatched"])),
        ("journal rows / uploaded / kept local",
         f"{p['journal_rows']:,} / {p['uploaded']:,} / {p['kept_local']:,}"),
        ("lost", f"[bold]{p['lost']}[/bold]"),
        ("duplicated on the platform", f"[bold]{p['duplicated']}[/bold]"),
        ("upload requests / delta syncs / 429s",
         f"{p['upload_requests']:,} / {p['delta_requests']:,} / {p['rate_limited_429']}"),
        ("drain after the feed stopped", f"{results['drain_s']:.1f} s"),
    ]
    for name, value in rows:
        figures.add_row(name, value)
    console.print(figures)
    for lane, statuses in results["expected"]["statuses"].items():
        console.print(f"  {lane}: {statuses}")
    if results["expected"]["examples"]:
        console.print(f"  mismatches: {results['expected']['examples']}")
    console.print(f"total run time {results['run_s']:.0f} s; figures in {results['output']}")


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0,
                        help="minutes of load (default 2; at least 2)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="scans a second, both lanes together (default 20)")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON figures")
    args = parser.parse_args(argv)
    if args.minutes < 2 or not 2 <= args.rate <= 200:
        parser.error("--minutes must be >= 2 (first and last minute), --rate 2..200")
    started = time.perf_counter()
    load_s = args.minutes * 60
    # entry lane gets half the rate, 75 % of it fresh tickets; 15 % margin
    tickets = int(load_s * args.rate / 2 * 0.75 * 1.15) + 200
    results: dict[str, Any] = {"bench": "soak", "started_at": datetime.now(UTC).isoformat(),
                               "machine": machine(), "minutes": args.minutes,
                               "rate": args.rate, "tickets": tickets, "sandbox_rpm": RPM}
    with tempfile.TemporaryDirectory(prefix="gate-agent-soak-") as tmp:
        site = Site(Path(tmp), tickets)
        try:
            site.wait_ready()
            print(f"daemon ready (pid {site.pid}): {tickets:,} tickets synced; idle baseline "
                  f"{SAMPLE_S:g} s, then {args.rate:g} scans/s for {args.minutes:g} min ...",
                  flush=True)
            sampler = Sampler(site)
            t0 = time.monotonic()
            time.sleep(SAMPLE_S)
            sampler.sample(0.0, "idle")
            feeder = Feeder(site, args.rate)
            t0 = time.monotonic()
            feeder.start()
            n = 1
            while n * SAMPLE_S <= load_s + 1e-6:
                time.sleep(max(0.0, t0 + n * SAMPLE_S - time.monotonic()))
                if feeder.error is not None:
                    raise RuntimeError(f"feeder failed: {feeder.error!r}")
                row = sampler.sample(time.monotonic() - t0, "load")
                print(f"  t={row['t_s']:5.0f}s rss={row['rss_kb'] / 1024:6.1f} MB "
                      f"fds={row['fds']} threads={row['threads']} pending={row['pending']} "
                      f"decisions={row['decisions']} p99={_ms(row['p99_ms'])} ms", flush=True)
                n += 1
            feeder.stopping.set()
            feeder.join(10)
            drain_started = time.monotonic()
            fed = feeder.fed
            wait_until(lambda: len(sampler._decisions()) >= fed, 60, "every fed scan decided")
            wait_until(lambda: (s := site.daemon.status())["journal"].get("pending") == 0 and
                       sum(lane["queue"] for lane in s["lanes"]) == 0, 180,
                       "the outbox to drain", step=0.5)
            drain_s = time.monotonic() - drain_started
            sampler.sample(time.monotonic() - t0, "drained")
            final_status = site.daemon.status()
            site.daemon.signal(signal.SIGTERM)
            exit_code = site.daemon.stop()
            decisions = [d for d in site.daemon.decisions() if d.get("uuid")]
            received = site.sandbox.received()
            results["platform"] = platform_check(site.store, received, decisions)
        finally:
            site.close()
    results.update({
        "fed": fed, "fed_by_kind": dict(feeder.kinds), "decided": len(decisions),
        "feeder_max_late_s": feeder.late_s, "expected": compare_decisions(feeder, decisions),
        "drain_s": drain_s, "daemon_exit_code": exit_code, "samples": sampler.rows,
        "drift": drift(sampler.rows),
        "final_status": {k: final_status.get(k) for k in ("journal", "upload", "jobs")},
        "governor": (final_status.get("platform") or {}).get("governor"),
    })
    results["run_s"] = time.perf_counter() - started
    save_results(results, args.output)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
