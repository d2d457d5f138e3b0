"""`make demo`: the whole gate on one machine — platform sandbox, daemon, simulated hardware.

1. starts the platform sandbox (loopback) seeded with a festival running now;
2. starts `gate-agent run` as a child process with three lanes whose readers and relays are
   `sim:` drivers (scans arrive on a Unix socket, relay pulses are logged to a file);
3. waits for the first sync, then feeds a scripted queue of attendees to the lanes' readers and
   prints every decision and relay pulse as the daemon reports it;
4. shows the scans arriving at the platform (exactly once, by scan uuid), the status summary,
   and stops the daemon with SIGTERM. About 20 seconds; no hardware, no network.
Then the second act, a venue of three gates on one bus (agent/demo_venue.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from agent import demo_data
from agent.commands import plain
from agent.commands.daemon import render
from agent.files import write_private
from agent.runtime.devrun import DaemonProcess
from agent.sandbox.harness import start_sandbox
from drivers.sim import send_scan

C = demo_data.CODES
LANES = ("north-in", "north-out", "floor")

# (lane, code, what the operator sees)
SCRIPT = [
    ("north-in", C["valid"], "Ada's ticket"),
    ("north-in", C["valid"], "Ada's ticket read again at once (scanner repeat)"),
    ("north-in", C["valid2"], "Alan's ticket"),
    ("north-in", C["refunded"], "a refunded ticket"),
    ("north-in", C["locked"], "an order being changed"),
    ("north-in", C["future"], "a ticket valid from tomorrow"),
    ("north-in", C["historic"], "a replaced (old) barcode"),
    ("north-in", C["other_event"], "a ticket for tomorrow's event"),
    ("north-in", C["unknown"], "a code nobody issued"),
    ("north-in", demo_data.NFC_TAG, "an NFC wristband paired to a ticket"),
    ("north-in", C["floor"], "Grace's ticket"),
    ("floor", C["floor"], "Grace walks onto the main floor"),
    ("floor", C["entry_only"], "a terrace-only ticket at the floor (wrong zone)"),
    ("floor", C["floor"], "Grace leaves the floor (a little later)"),
    ("floor", C["floor"], "Grace comes back (re-entry)"),
    ("north-out", C["valid"], "Ada leaves the venue"),
    ("north-in", C["valid"], "Ada tries to come back (single access)"),
]


def _relays(name: str, direction: str, log: Path) -> str:
    """One release per direction: the entry relay, the exit relay, or both on an auto lane."""
    entry = f'relay = "sim:{name}?log={log}"\n'
    exit_ = f'relay_out = "sim:{name}-out?log={log}"\n'
    return {"in": entry, "out": exit_, "auto": entry + exit_}[direction]


def _config(root: Path, url: str, company: int, token_file: Path) -> Path:
    lanes = []
    for name in LANES:
        direction = {"north-in": "in", "north-out": "out", "floor": "auto"}[name]
        zone = f"zone_id = {demo_data.FLOOR_ZONE}\n" if name == "floor" else ""
        lanes.append(
            f'[[lanes]]\nname = "{name}"\ngate_id = {demo_data.GATE_NORTH}\n{zone}'
            f'event_ids = [{demo_data.EVENT_ID}]\n'
            f'direction = "{direction}"\nmax_entries = {0 if name == "floor" else 1}\n'
            f'readers = ["sim:{name}?socket={root / (name + ".sock")}"]\n'
            f'{_relays(name, direction, root / "relays.jsonl")}debounce_ms = 300\n')
    text = (
        f'[api]\nbase_url = "{url}"\ncompany_id = {company}\ntoken_file = "{token_file}"\n'
        f'device_name = "demo-gate"\n\n[store]\ndir = "{root / "state"}"\n\n'
        f'[events]\nids = [{demo_data.EVENT_ID}, {demo_data.OTHER_EVENT_ID}]\n\n'
        '[sync]\nupload_interval_s = 1.0\ndelta_interval_s = 3.0\n\n'
        '[status]\nlisten = "127.0.0.1:0"\n\n' + "\n".join(lanes))
    path = root / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _show_decision(console: Console, record: dict, what: str) -> None:
    admit = record.get("admit")
    ignored = record.get("statusDetail") == "duplicateRead"  # not an attempt: no row, no pulse
    colour = "green" if admit else "yellow" if ignored else "red"
    word = "ADMIT " if admit else "IGNORE" if ignored else "REFUSE"
    detail = f"/{record['statusDetail']}" if record.get("statusDetail") else ""
    relay = ("  relay pulsed", "cyan") if record.get("relay") else ""
    console.print(plain((f"{record['lane']:>9} | {what}", "dim")))
    console.print(plain(f"{'':>9}   ", (word, f"bold {colour}"),
                        f" {record['direction']:<3} {record['code']:<16} "
                        f"{'ignored' if ignored else record['status']}{detail}  ",
                        (f"{record['latency_ms']:.2f} ms", "dim"), relay))


def run(root: Path) -> int:
    console = Console()
    started = time.monotonic()
    seed = root / "seed.json"
    seed.write_text(json.dumps(demo_data.sandbox_seed(datetime.now(UTC))), encoding="utf-8")
    console.print(Rule("1. the platform sandbox"))
    sandbox = start_sandbox(seed_file=seed, rpm=60)
    token_file = root / "token"
    write_private(token_file, sandbox.token)
    console.print(f"sandbox at {sandbox.url} (company {sandbox.company_id})")
    config = _config(root, sandbox.url, sandbox.company_id, token_file)
    daemon = DaemonProcess(config, root / "state")
    try:
        console.print(Rule("2. gate-agent run (3 lanes, simulated readers and relays)"))
        daemon.start()
        daemon.wait_ready()
        console.print(f"daemon ready; status at {daemon.status_url}/status")
        _wait_synced(daemon)
        console.print(Rule("3. attendees"))
        previous: dict[str, str] = {}
        for index, (lane, code, what) in enumerate(SCRIPT, start=1):
            if previous.get(lane) == code and "again" not in what:
                time.sleep(0.35)  # a person, not a scanner repeat: past the lane's debounce
            previous[lane] = code
            send_scan(root / f"{lane}.sock", code)
            record = daemon.wait_decisions(index)[index - 1]
            _show_decision(console, record, what)
        pulses = [json.loads(line) for line in (root / "relays.jsonl").read_text().splitlines()]
        console.print(f"[cyan]{len(pulses)} relay pulses[/] logged by the simulated relays")
        console.print(Rule("4. uploads arriving at the platform"))
        expected = _wait_uploaded(daemon, sandbox)
        received = sandbox.received()
        _show_uploads(console, received, expected)
        console.print(Rule("5. status"))
        render(daemon.status(), console)
    finally:
        exit_code = daemon.stop()
        sandbox.stop()
    console.print(Rule(f"daemon stopped (exit {exit_code}); demo took "
                       f"{time.monotonic() - started:.0f} s"))
    return exit_code


def _wait_synced(daemon: DaemonProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = daemon.status()["cache"].get("events") or []
        synced = {e["id"] for e in events if e["items"] and e["last_sync"]}
        if {demo_data.EVENT_ID, demo_data.OTHER_EVENT_ID} <= synced:
            return
        time.sleep(0.2)
    raise TimeoutError("the daemon did not finish its first sync")


def _wait_uploaded(daemon: DaemonProcess, sandbox, timeout: float = 20.0) -> int:
    """Wait until every uploadable journaled scan reached the sandbox; returns that count."""
    deadline = time.monotonic() + timeout
    while True:
        journal = daemon.status()["journal"]
        if journal.get("pending") == 0 or time.monotonic() > deadline:
            return int(journal.get("sent", 0))
        time.sleep(0.3)


def _show_uploads(console: Console, received: dict, expected: int) -> None:
    rows = received.get("uploads") or []
    table = Table(title=f"POST /entry/tickets: {len(received.get('requestUuids') or [])} "
                        f"request(s), {len(rows)} scan(s)")
    for col in ("scannedOn (UTC)", "barcode", "scan", "status", "statusDetail", "uuid"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(plain, (str(row.get("scannedOn")), str(row.get("barcode")),
                                   str(row.get("scan")), str(row.get("status")),
                                   str(row.get("statusDetail") or ""), str(row.get("uuid"))[:8])))
    console.print(table)
    uuids = [row.get("uuid") for row in rows]
    console.print(f"{len(set(uuids))} distinct scan uuids for {expected} scans the gate sent; "
                  f"duplicates: {len(uuids) - len(set(uuids))}")


def main() -> int:
    from agent import demo_venue

    with tempfile.TemporaryDirectory(prefix="gate-agent-demo-") as tmp:
        code = run(Path(tmp))
        if code == 0:  # the second act: a venue of three gates (agent/demo_venue.py)
            (Path(tmp) / "venue").mkdir()
            code = demo_venue.run(Path(tmp) / "venue", Console())
        return code


if __name__ == "__main__":
    sys.exit(main())
