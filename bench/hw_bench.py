"""Hardware-path benchmark: scan -> relay through the real daemon, NFC tap -> decision.

Prints figures; it is not a test (exit 0 whatever the figures, non-zero only if the benchmark
itself breaks). `make bench` runs it with the others; alone:

    .venv/bin/python bench/hw_bench.py [--scans 2000] [--taps 300]

Set-up (all real processes and OS objects, nothing mocked):
- the platform sandbox as a subprocess, seeded with one event of 2,100 barcode tickets and 400
  tickets paired to NFC tags (7-byte UIDs);
- the real daemon (`gate-agent run`, via agent.runtime.devrun.DaemonProcess) with two lanes:
  `serial` reads a pty that plays a USB serial scanner (`serial://...`), `nfc` reads nfcpy's
  UDP driver (`nfc:udp:...`) where drivers/nfc_sim.py plays a Type 2 tag; each lane has a
  `sim:` relay logging every pulse with the daemon's CLOCK_MONOTONIC (`?log=PATH`, `mono_ns`).
  The daemon syncs the tickets from the sandbox and uploads the scans back while measured.

(a) scan -> relay (and -> indicator): `time.monotonic_ns()` just before writing `CODE\\r\\n` to the pty master,
    to the `mono_ns` of the pulse the daemon logs (same machine, same clock). Every code is a
    different valid ticket, sent only after the previous pulse, so each one admits and the
    debounce never applies. Floor, measured in the same run and interleaved in blocks of 100:
    the same write to a second pty read back on its slave side with pyserial (no decision).
    The lane also has a `sim:` green light and display logging with the same clock: their
    figures are the decision-to-indicator path (issue 17) beside the relay's.
(b) NFC tap -> decision: from `present_now()` on the simulated tag (a fresh paired UID each
    time) to the `mono_ns` of the relay pulse. Floor: plain nfcpy on a second simulated tag,
    from presentation to nfcpy's on-connect callback with the tag's UID (no gate-agent code).
    Floor and stack taps alternate; while one reader notices its tag leaving (nfcpy's presence
    check, ~0.3 s of timeouts) the other is measured. The simulated tag answers the poll the
    reader is already waiting on (see drivers/nfc_sim.py), so the figures show the stack, not
    where in nfcpy's 1 s UDP poll timeout a tap happened to land.

The first 50 scans / 10 taps of each kind are warm-up, not counted. Figures go to
bench/results/hw.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import serial  # noqa: E402
from benchfile import save_results  # noqa: E402

from agent.runtime.devrun import DaemonProcess  # noqa: E402
from agent.sandbox.harness import Sandbox, start_sandbox_process  # noqa: E402
from drivers.nfc_sim import Type2TagSimulator  # noqa: E402

EVENT_ID, ZONE_ID, GATE_ID = 7001, 7101, 71
BARCODE_TICKETS, TAG_TICKETS = 2_100, 400
WARMUP_SCANS, WARMUP_TAPS, BLOCK = 50, 10, 100
WAIT_S = 3.0
RESULTS = Path(__file__).resolve().parent / "results" / "hw.json"


# -- platform data ----------------------------------------------------------------------------


def barcode(i: int) -> str:
    return f"HWB{i:07d}"


def tag_uid(i: int) -> bytes:
    """Seven bytes like an NTAG (NXP's 0x04 first), distinct per i."""
    return bytes.fromhex(f"04{0xB1000000 + i:012X}")


def _ticket(item_id: int, code: str, nfc: str | None) -> dict[str, Any]:
    return {"id": item_id, "itemType": "ticket", "parentOrderItemId": None,
            "const": {"barcode": code, "type": "Standard", "typeId": 11},
            "stable": {"customerName": f"Guest {item_id}"},
            "variable": {"nfcId": nfc, "status": "sold"} if nfc else [],
            "zoneData": {"accessToZones": [{"id": ZONE_ID}], "scans": []}}


def seed(now: datetime) -> dict[str, Any]:
    """One running event, an in-only Entry zone, barcode tickets and tag-paired tickets."""
    fmt = "%Y-%m-%d %H:%M:%S"
    event = {"id": EVENT_ID, "name": "Bench Night", "venue": "Lab", "timezone": "UTC",
             "start": (now - timedelta(hours=2)).strftime(fmt),
             "end": (now + timedelta(hours=6)).strftime(fmt),
             "scanningMode": "pair-nfc-no-credits", "gates": [{"id": GATE_ID, "name": "A"}],
             "timeslots": []}
    items = [_ticket(1 + i, barcode(i), None) for i in range(BARCODE_TICKETS)]
    items += [_ticket(100_001 + i, f"HWN{i:07d}", "0x" + tag_uid(i).hex().upper())
              for i in range(TAG_TICKETS)]
    return {"companyName": "Bench Co", "events": [event],
            "zones": {str(EVENT_ID): [{"id": ZONE_ID, "name": "Entry", "scan": "in"}]},
            "tickets": {str(EVENT_ID): items}}


# -- the rig ----------------------------------------------------------------------------------


class Pty:
    """A pty pair; the slave's path is what a `serial://` URL or pyserial opens."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)  # the pts lives while the master is open

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        os.close(self.master)


class PulseLog:
    """Follows a `sim:` relay's JSON-lines log; `next()` waits for the next pulse line."""

    def __init__(self, path: Path):
        path.touch()
        self.fh = path.open("r", encoding="utf-8")
        self.buf = ""

    def next(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            self.buf += self.fh.readline()
            if self.buf.endswith("\n"):
                line, self.buf = self.buf, ""
                return json.loads(line)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)


class Rig:
    """Sandbox process + daemon process + ptys + simulated tags, torn down by `close()`."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        now = datetime.now(UTC).replace(microsecond=0)
        seed_file = tmp / "seed.json"
        seed_file.write_text(json.dumps(seed(now)))
        self.sandbox: Sandbox = start_sandbox_process(seed_file=seed_file, rpm=100_000)
        self.scanner = Pty()
        self.floor_pty = Pty()
        self.tag = Type2TagSimulator(tag_uid(0))
        self.floor_tag = Type2TagSimulator(bytes.fromhex("05000000000000"))
        token = tmp / "token"
        token.write_text(self.sandbox.token)
        token.chmod(0o600)
        self.store = tmp / "state"
        config = tmp / "config.toml"
        config.write_text(f"""
[api]
base_url = "{self.sandbox.url}"
company_id = {self.sandbox.company_id}
token_file = "{token}"
requests_per_minute = 6000
budget_share = 1.0

[store]
dir = "{self.store}"

[events]
ids = [{EVENT_ID}]

[sync]
upload_interval_s = 2.0
delta_interval_s = 10.0

[status]
listen = "127.0.0.1:0"

[[lanes]]
name = "serial"
gate_id = {GATE_ID}
direction = "in"
readers = ["serial://{self.scanner.path}"]
relay = "sim:serial?log={tmp / 'serial-pulses.jsonl'}"
light_green = "sim:serial-green?log={tmp / 'serial-green.jsonl'}"
display = "sim:serial-display?log={tmp / 'serial-display.jsonl'}"

[[lanes]]
name = "nfc"
gate_id = {GATE_ID}
direction = "in"
readers = ["nfc:udp:127.0.0.1:{self.tag.port}?targets=106A"]
relay = "sim:nfc?log={tmp / 'nfc-pulses.jsonl'}"
""", encoding="utf-8")
        self.serial_pulses = PulseLog(tmp / "serial-pulses.jsonl")
        self.serial_green = PulseLog(tmp / "serial-green.jsonl")
        self.serial_display = PulseLog(tmp / "serial-display.jsonl")
        self.nfc_pulses = PulseLog(tmp / "nfc-pulses.jsonl")
        self.daemon = DaemonProcess(config, self.store, cwd=ROOT).start()

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Daemon up, every ticket synced, both readers connected."""
        self.daemon.wait_ready()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.daemon.status()
            items = sum(e["items"] for e in report["cache"].get("events") or [])
            lanes = {lane["name"]: lane["readers_connected"] for lane in report["lanes"]}
            if items == BARCODE_TICKETS + TAG_TICKETS and all(lanes.values()):
                return report
            time.sleep(0.1)
        raise TimeoutError("daemon did not sync the bench event / connect its readers")

    def close(self) -> None:
        self.daemon.stop()
        self.sandbox.stop()
        self.tag.close()
        self.floor_tag.close()
        self.scanner.close()
        self.floor_pty.close()


# -- (a) serial scan -> relay -------------------------------------------------------------


def measure_serial(rig: Rig, scans: int) -> dict[str, Any]:
    port = serial.Serial(rig.floor_pty.path, 9600, timeout=WAIT_S)
    floor: list[int] = []
    stack: list[int] = []
    green: list[int] = []  # pty write -> green light on (the admit pattern)
    relay_to_green: list[int] = []  # relay pulse -> green light: the indicators' own share
    shown: list[int] = []  # pty write -> text on the display
    missed: list[str] = []
    total = scans + WARMUP_SCANS
    i = 0
    try:
        while i < total:
            for _ in range(min(BLOCK, total - i)):  # floor: pty write -> pyserial read
                line = f"FLOOR{i:07d}\r\n".encode()
                start = time.monotonic_ns()
                rig.floor_pty.write(line)
                got = port.read_until(b"\n")
                end = time.monotonic_ns()
                if got.endswith(b"\n"):
                    floor.append(end - start)
                else:
                    missed.append(f"floor {line!r}")
                time.sleep(0.002)
            for _ in range(min(BLOCK, total - i)):  # stack: pty write -> daemon's relay pulse
                code = barcode(i)
                start = time.monotonic_ns()
                rig.scanner.write(code.encode() + b"\r\n")
                pulse = rig.serial_pulses.next(WAIT_S)
                light = rig.serial_green.next(WAIT_S)
                text = rig.serial_display.next(WAIT_S)
                if pulse is None or light is None or text is None:
                    missed.append(code)
                else:
                    stack.append(int(pulse["mono_ns"]) - start)
                    green.append(int(light["mono_ns"]) - start)
                    relay_to_green.append(int(light["mono_ns"]) - int(pulse["mono_ns"]))
                    shown.append(int(text["mono_ns"]) - start)
                i += 1
                time.sleep(0.002)  # a person's pace is far slower; this only separates reads
    finally:
        port.close()
    return {"floor": floor[WARMUP_SCANS:], "stack": stack[WARMUP_SCANS:], "missed": missed,
            "sent": total, "indicator": green[WARMUP_SCANS:],
            "relay_to_indicator": relay_to_green[WARMUP_SCANS:], "display": shown[WARMUP_SCANS:]}


# -- (b) NFC tap -> decision ---------------------------------------------------------------


class FloorReader:
    """Plain nfcpy polling the floor tag with the options the nfc: driver uses.

    Two timestamps per tap: `on-discover` (anticollision done: the UID is known, the floor
    asked for) and `on-connect` (after nfcpy's tag activation, which is where the nfc: driver
    reports the scan). For NXP tags activation probes AUTHENTICATE and GET_VERSION with 10 ms
    timeouts each; a tag that supports neither (as this simulated one) costs both.
    """

    def __init__(self, port: int):
        import nfc

        self.clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
        self.seen: queue.Queue[tuple[int, int, bytes]] = queue.Queue()
        self.stopping = threading.Event()
        self._discovered = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="floor nfc")
        self.thread.start()

    def _run(self) -> None:
        def on_discover(target: Any) -> bool:
            self._discovered = time.monotonic_ns()
            return True

        def on_connect(tag: Any) -> bool:
            self.seen.put((self._discovered, time.monotonic_ns(), bytes(tag.identifier)))
            return True

        options = {"targets": ["106A"], "on-discover": on_discover, "on-connect": on_connect,
                   "iterations": 1, "interval": 0.1, "beep-on-connect": True}
        while not self.stopping.is_set():
            self.clf.connect(rdwr=options, terminate=self.stopping.is_set)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(3)
        self.clf.close()


def _wait_poll(tag: Type2TagSimulator, timeout: float = WAIT_S) -> None:
    """Until the reader is polling again (it noticed the last tag leave) with a fresh poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        age = tag.waiting_poll_age()
        if age is not None and age < 0.5:
            return
        time.sleep(0.001)
    raise TimeoutError("the NFC reader did not poll again")


def measure_nfc(rig: Rig, taps: int) -> dict[str, Any]:
    floor_reader = FloorReader(rig.floor_tag.port)
    floor: list[int] = []
    activated: list[int] = []
    stack: list[int] = []
    missed = 0
    late = 0
    try:
        for i in range(taps + WARMUP_TAPS):
            uid = bytes.fromhex(f"04{0xC1000000 + i:012X}")  # NXP like the stack's tags
            _wait_poll(rig.floor_tag)
            rig.floor_tag.set_uid(uid)
            start = time.monotonic_ns()
            late += not rig.floor_tag.present_now()
            try:
                found, connected, seen_uid = floor_reader.seen.get(timeout=WAIT_S)
                assert seen_uid == uid, "floor reader saw another tag"
                floor.append(found - start)
                activated.append(connected - start)
            except queue.Empty:
                missed += 1
            rig.floor_tag.present = False

            _wait_poll(rig.tag)
            rig.tag.set_uid(tag_uid(i))
            start = time.monotonic_ns()
            late += not rig.tag.present_now()
            pulse = rig.nfc_pulses.next(WAIT_S)
            if pulse is None:
                missed += 1
            else:
                stack.append(int(pulse["mono_ns"]) - start)
            rig.tag.present = False
    finally:
        floor_reader.close()
    return {"floor": floor[WARMUP_TAPS:], "activated": activated[WARMUP_TAPS:],
            "stack": stack[WARMUP_TAPS:], "missed": missed, "late_polls": late,
            "sent": taps + WARMUP_TAPS}


# -- figures ----------------------------------------------------------------------------------


def summary(samples_ns: list[int]) -> dict[str, Any]:
    s = sorted(samples_ns)
    if not s:
        return {"n": 0}

    def pct(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] / 1e6

    return {"n": len(s), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": s[-1] / 1e6, "mean_ms": sum(s) / len(s) / 1e6}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "machine": platform.machine()}


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    for key, title, floor_name, stack_name in (
        ("serial", "(a) serial scan -> relay pulse, real daemon", "floor: pty write -> pyserial read",
         "stack: pty write -> relay pulse"),
        ("nfc", "(b) NFC tap -> decision (relay pulse), nfcpy UDP driver",
         "floor: nfcpy has the UID (on-discover)", "stack: tap -> relay pulse"),
    ):
        r = results[key]
        table = Table(title=f"{title} — {results['machine']['cpus']} CPUs, "
                            f"Python {results['machine']['python']}")
        for col in ("path", "n", "p50", "p90", "p99", "max"):
            table.add_column(col, justify="left" if col == "path" else "right")
        rows = [(floor_name, r["floor"])]
        if "activated" in r:
            rows.append(("nfcpy tag activation done (on-connect)", r["activated"]))
        after = [(name, r[k]) for k, name in (
            ("indicator", "stack: pty write -> green light (indicator)"),
            ("display", "stack: pty write -> text on the display"),
            ("relay_to_indicator", "relay pulse -> green light (decision-to-indicator)"))
            if k in r]
        for name, fig in (*rows, (stack_name, r["stack"]), *after):
            table.add_row(name, f"{fig['n']:,}", *(f"{fig[k]:.2f} ms" for k in
                                                  ("p50_ms", "p90_ms", "p99_ms", "max_ms")))
        table.add_row("stack - floor", "", f"{r['stack']['p50_ms'] - r['floor']['p50_ms']:.2f} ms",
                      "", f"{r['stack']['p99_ms'] - r['floor']['p99_ms']:.2f} ms", "")
        if "activated" in r:
            table.add_row("stack - activation (gate-agent's share)", "",
                          f"{r['stack']['p50_ms'] - r['activated']['p50_ms']:.2f} ms", "",
                          f"{r['stack']['p99_ms'] - r['activated']['p99_ms']:.2f} ms", "")
        console.print(table)
        extra = f", {r['late_polls']} taps not on a waiting poll" if "late_polls" in r else ""
        console.print(f"  sent {r['sent']:,} (first {r['warmup']} warm-up), missed "
                      f"{r['missed']}{extra}")
    console.print(f"decisions by the daemon: {results['decisions']}; journal after the run: "
                  f"{results['journal']}")
    console.print(f"total run time {results['run_s']:.0f} s; figures in {results['output']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2_000,
                        help="measured serial scans (default 2000, at most 2050)")
    parser.add_argument("--taps", type=int, default=300,
                        help="measured NFC taps (default 300, at most 390)")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON figures")
    args = parser.parse_args(argv)
    if not 1 <= args.scans <= BARCODE_TICKETS - WARMUP_SCANS or \
            not 1 <= args.taps <= TAG_TICKETS - WARMUP_TAPS:
        parser.error("--scans/--taps out of range: every scan needs its own ticket")
    started = time.perf_counter()
    results: dict[str, Any] = {"bench": "hw", "started_at": datetime.now(UTC).isoformat(),
                               "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="gate-agent-hw-") as tmp:
        rig = Rig(Path(tmp))
        try:
            rig.wait_ready()
            print(f"daemon ready: {BARCODE_TICKETS + TAG_TICKETS:,} tickets synced; "
                  f"(a) {args.scans:,} scans + floor ...", flush=True)
            serial_raw = measure_serial(rig, args.scans)
            print(f"(b) {args.taps} NFC taps + floor ...", flush=True)
            nfc_raw = measure_nfc(rig, args.taps)
            decisions: dict[str, int] = {}
            for d in rig.daemon.decisions():
                key = f"{d.get('lane')}:{d.get('status')}"
                decisions[key] = decisions.get(key, 0) + 1
            journal = rig.daemon.status()["journal"]
        finally:
            rig.close()
    for key, raw, warm in (("serial", serial_raw, WARMUP_SCANS), ("nfc", nfc_raw, WARMUP_TAPS)):
        results[key] = {"floor": summary(raw["floor"]), "stack": summary(raw["stack"]),
                        **({"activated": summary(raw["activated"])} if "activated" in raw
                           else {}),
                        "missed": len(raw["missed"]) if isinstance(raw["missed"], list)
                        else raw["missed"], "sent": raw["sent"], "warmup": warm}
        for extra in ("indicator", "relay_to_indicator", "display"):
            if extra in raw:
                results[key][extra] = summary(raw[extra])
        if "late_polls" in raw:
            results[key]["late_polls"] = raw["late_polls"]
    results["decisions"] = decisions
    results["journal"] = {k: journal.get(k) for k in ("pending", "sent", "quarantined", "local")}
    results["run_s"] = time.perf_counter() - started
    save_results(results, args.output)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
