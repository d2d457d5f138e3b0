"""`gate-agent import | check | scan | queue`: the technician's offline tools.

`check` is a dry run that writes nothing (`--at` asks "would this pass then?"); `scan` is a real
manual scan — journaled and counted exactly like a reader's — and `scan -` reads codes from
standard input, one per line, answering each as it goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.config import load_config
from agent.core.decide import Decision
from agent.errors import ConfigError
from agent.platform.provision import import_file
from agent.runtime.opening import open_cache, open_journal, opened_gate


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("import", parents=[common],
                              help="load platform JSON files (tickets, events, zones) into the cache")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--event", type=int, help="event id for files that do not say it")
    p.set_defaults(func=cmd_import)

    for name, helptext in (("check", "dry run: what would this code do? (records nothing)"),
                           ("scan", "a real manual scan: decided, journaled, uploaded later")):
        p = subparsers.add_parser(name, parents=[common], help=helptext)
        p.add_argument("code", help="barcode or NFC id (0x...)" +
                       ("; '-' reads codes from standard input" if name == "scan" else ""))
        p.add_argument("--lane", help="lane name (default: the first lane)")
        p.add_argument("--direction", choices=("in", "out", "auto"),
                       help="override the lane's direction")
        p.add_argument("--kind", choices=("barcode", "nfc"), help="how to read CODE")
        p.add_argument("--json", action="store_true", help="one JSON object per decision")
        if name == "check":
            p.add_argument("--at", metavar="ISO8601", help="decide as of this time")
        p.set_defaults(func=cmd_check if name == "check" else cmd_scan)

    p = subparsers.add_parser("queue", parents=[common],
                              help="scans waiting for upload, quarantined, or kept local")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="include sent scans")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    r = qsub.add_parser("retry", parents=[common], help="put quarantined scans back in the outbox")
    r.add_argument("uuids", nargs="*", help="only these scans (default: all quarantined)")
    r.set_defaults(func=cmd_queue_retry)
    p.set_defaults(func=cmd_queue)


def _parse_at(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {text!r} is not an ISO 8601 time (e.g. 2026-11-28T19:30+01:00)")\
            from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: the machine's local time
    return moment.astimezone(UTC)


def cmd_import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    cache = open_cache(config)
    console = Console()
    try:
        for path in args.files:
            result = import_file(cache, path, datetime.now(UTC), args.event)
            extra = f", {result.skipped} skipped (no id)" if result.skipped else ""
            event = f" for event {result.event_id}" if result.event_id else ""
            console.print(f"{result.path}: {result.count} {result.kind}{event}{extra}")
    finally:
        cache.close()
    return 0


def _show(decision: Decision, uuid: str | None, as_json: bool, console: Console) -> None:
    if as_json:
        data = decision.as_dict()
        if uuid is not None or not decision.record:
            data["uuid"] = uuid
        print(json.dumps(data), flush=True)
        return
    colour = "green" if decision.admit else "red"
    word = "ADMIT" if decision.admit else "REFUSE"
    detail = f"/{decision.detail}" if decision.detail else ""
    who = decision.ticket.get("name") or ""
    console.print(f"[bold {colour}]{word}[/] {decision.direction:<3} {decision.code}  "
                  f"{decision.status}{detail}  {decision.message}"
                  + (f"  ({who})" if who else ""), highlight=False)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    lane = config.lane(args.lane)
    with opened_gate(config) as gate:
        decision = gate.check(args.code, lane, _parse_at(args.at), args.direction, args.kind)
    _show(decision, None, args.json, Console())
    return 0 if decision.admit else 1


def cmd_scan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    lane = config.lane(args.lane)
    console = Console()
    codes = (line.rstrip("\r\n") for line in sys.stdin) if args.code == "-" else iter([args.code])
    last_admit = False
    with opened_gate(config) as gate:
        for code in codes:
            if args.code == "-" and not code.strip():
                continue
            result = gate.scan(code, lane, datetime.now(UTC), args.direction, args.kind,
                               mono_ms=time.monotonic_ns() // 1_000_000)
            _show(result.decision, result.uuid, args.json, console)
            last_admit = result.decision.admit
    return 0 if last_admit or args.code == "-" else 1


def cmd_queue(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = open_journal(config)
    try:
        states = ("pending", "quarantined", "local", "sent") if args.all else (
            "pending", "quarantined", "local")
        rows = journal.rows(states, limit=10_000)
        counts = journal.counts()
    finally:
        journal.close()
    if args.json:
        print(json.dumps({"counts": counts, "scans": rows}))
        return 0
    console = Console()
    table = Table(title=f"Scan queue: {counts['pending']} pending, {counts['quarantined']} "
                        f"quarantined, {counts['local']} local-only, {counts['sent']} sent")
    for col in ("scanned (UTC)", "lane", "code", "dir", "decision", "upload"):
        table.add_column(col, overflow="fold")
    for r in rows:
        decision = r["status"] + (f"/{r['status_detail']}" if r["status_detail"] else "")
        state = r["upload_state"] + (f": {r['reason']}" if r["reason"] else "")
        table.add_row(r["scanned_on"][:19].replace("T", " "), r["lane"], r["code"],
                      r["direction"], decision, state)
    if rows:
        table.caption = "full rows with scan uuids: gate-agent queue --json"
    console.print(table)
    return 0


def cmd_queue_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = open_journal(config)
    try:
        n = journal.retry_quarantined(args.uuids or None)
    finally:
        journal.close()
    Console().print(f"{n} quarantined scan(s) put back in the outbox")
    return 0
