"""`make demo`: a self-contained tour of gate-agent on a generated event, no hardware, no network.

It provisions a gate from the platform's JSON shapes (`gate-agent import`), then walks a scripted
queue of attendees through the real command line — the same code paths a reader's scan takes —
and shows the outbox that would be uploaded.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from agent import demo_data
from agent.cli import main as cli

SCRIPT = [
    ("north-in", "valid", "in", "a valid ticket"),
    ("north-in", "valid", "in", "the same ticket again (duplicate)"),
    ("north-in", "refunded", "in", "a refunded ticket"),
    ("north-in", "locked", "in", "an order being changed"),
    ("north-in", "future", "in", "a ticket valid from tomorrow"),
    ("north-in", "expired", "in", "a ticket that expired an hour ago"),
    ("north-in", "historic", "in", "a replaced (old) barcode"),
    ("north-in", "replaced", "in", "its current barcode"),
    ("north-in", "product", "in", "a parking product at a ticket lane"),
    ("north-in", "other_event", "in", "a ticket for tomorrow's event"),
    ("north-in", "unknown", "in", "a code nobody issued"),
    ("north-in", demo_data.NFC_TAG, "in", "an NFC wristband paired to a ticket"),
    ("north-out", "valid", "out", "Ada leaves through the exit lane"),
    ("north-out", "valid", "out", "...and the exit is scanned twice"),
    ("north-in", "valid", "in", "Ada tries to come back (single access)"),
    ("floor", "floor", "auto", "Grace enters the main floor"),
    ("floor", "floor", "auto", "...and leaves (auto direction)"),
    ("floor", "floor", "auto", "...and comes back (re-entry allowed)"),
    ("floor", "vip", "auto", "a VIP on the floor"),
]


def run(workdir: Path) -> int:
    console = Console()
    now = datetime.now(UTC)
    store = workdir / "state"
    config = workdir / "config.toml"
    config.write_text(demo_data.demo_config(store), encoding="utf-8")
    console.print(Rule("gate-agent demo: provisioning from platform JSON"))
    files = demo_data.write_demo_files(workdir / "platform", now)
    rc = cli(["import", "--config", str(config), *map(str, files)])
    if rc:
        return rc
    console.print(Rule("scans"))
    for lane, key, _direction, what in SCRIPT:
        code = demo_data.CODES.get(key, key)
        console.print(f"[dim]{lane:>9} | {what}[/]")
        cli(["scan", "--config", str(config), "--lane", lane, code])
    console.print(Rule("dry run at a later time"))
    console.print("[dim]would the early-bird ticket pass tomorrow?[/]")
    tomorrow = (now + timedelta(days=1, hours=1)).replace(microsecond=0).isoformat()
    cli(["check", "--config", str(config), "--lane", "north-in", "--at", tomorrow,
         demo_data.CODES["future"]])
    console.print(Rule("outbox (to be uploaded to the platform)"))
    cli(["queue", "--config", str(config)])
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gate-agent-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
