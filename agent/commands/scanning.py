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
from typing import TYPE_CHECKING, Any

from agent.commands import explain, plain
from agent.config import load_config
from agent.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("import", parents=[common],
                              help="load platform JSON files (tickets, events, zones) into the cache")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a saved GET /entry/tickets, /activated-events or /zones/all response")
    p.add_argument("--event", type=int, metavar="ID", help="event id for files that do not say it")
    p.add_argument("--json", action="store_true", help="one JSON object per file imported")
    explain(p, "Provision the ticket cache from platform JSON files, with no network. Each file "
               "is one transaction; with the daemon running, it imports them itself.",
            ["sudo gate-agent import events.json zones.json tickets.json",
             "gate-agent import tickets-page1.json --event 501"],
            "0 imported; 2 a file that is not JSON in a platform shape (nothing of it applied)")
    p.set_defaults(func=cmd_import)

    for name, helptext in (("check", "dry run: what would this code do? (records nothing)"),
                           ("scan", "a real manual scan: decided, journaled, uploaded later")):
        p = subparsers.add_parser(name, parents=[common], help=helptext)
        p.add_argument("code", metavar="CODE", help="barcode or NFC id (0x...)" +
                       ("; '-' reads codes from standard input" if name == "scan" else ""))
        p.add_argument("--lane", metavar="LANE", help="lane name (default: the first lane)")
        p.add_argument("--direction", choices=("in", "out", "auto"),
                       help="override the lane's direction")
        p.add_argument("--kind", choices=("barcode", "nfc"), help="how to read CODE")
        p.add_argument("--json", action="store_true", help="one JSON object per decision")
        if name == "check":
            p.add_argument("--at", metavar="ISO8601", help="decide as of this time")
            explain(p, "Dry run: what would this code do on this lane, now or at --at? Records "
                       "nothing, opens nothing.",
                    ["gate-agent check NU-VALID-0001 --lane entry",
                     "gate-agent check 0x04A22B9C1D5E80 --at 2026-11-28T19:30+01:00 --json"],
                    "0 it would be admitted; 1 it would be refused; 2 a mistake in the "
                    "configuration or the arguments")
        else:
            explain(p, "A real manual scan: decided, journaled and uploaded like a reader's. "
                       "With the daemon running, the daemon decides it. '-' reads one code per "
                       "line from standard input.",
                    ["sudo gate-agent scan NU-VALID-0001 --lane entry",
                     "sudo gate-agent scan - --json < codes.txt"],
                    "0 every code was admitted; 1 at least one was refused; 2 a mistake in "
                    "the configuration or the arguments, or no code on standard input")
        p.set_defaults(func=cmd_check if name == "check" else cmd_scan)

    p = subparsers.add_parser("queue", parents=[common],
                              help="scans waiting for upload, quarantined, or kept local")
    p.add_argument("--json", action="store_true", help="counts and scans as one JSON object")
    p.add_argument("--all", action="store_true", help="include sent scans")
    p.add_argument("--limit", type=_positive, default=50, metavar="N",
                   help="show at most the N oldest scans (default 50)")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    explain(p, "Scans waiting for upload, quarantined by the platform (with its reason) or "
               "kept local, oldest first.",
            ["gate-agent queue", "gate-agent queue --json --limit 1000 | jq '.scans[].reason'",
             "sudo gate-agent queue retry"],
            "0 listed; 2 a configuration mistake")
    r = qsub.add_parser("retry", parents=[common], help="put quarantined scans back in the outbox")
    r.add_argument("uuids", nargs="*", metavar="UUID",
                   help="only these scans (default: all quarantined)")
    explain(r, "Put quarantined scans back in the outbox after fixing what the platform "
               "refused; the next upload sends them.",
            ["sudo gate-agent queue retry", "sudo gate-agent queue retry 3f1c...-uuid"],
            "0 put back (all quarantined scans, or every UUID given); 2 a UUID that is not a "
            "quarantined scan (nothing is put back), or a configuration mistake")
    r.set_defaults(func=cmd_queue_retry)
    p.set_defaults(func=cmd_queue)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


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
    from rich.console import Console

    from agent.platform.provision import read_import_file
    from agent.runtime.controlclient import acting_on_store

    config = load_config(args.config)
    # Read here, with this user's rights (a file in root's home), then applied by the daemon
    # or as the store's owner.
    files = [(path, read_import_file(path)) for path in args.files]
    with acting_on_store(config) as daemon:
        if daemon is not None:
            results = daemon.call("import", event=args.event,
                                  files=[{"name": n, "text": t} for n, t in files])
        else:
            from agent.runtime import work
            from agent.runtime.opening import open_cache

            cache = open_cache(config)
            try:
                results = work.import_files(cache, files, args.event)
            finally:
                cache.close()
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    console = Console()
    for r in results:
        console.print(imported_line(r))
    return 0


def imported_line(r: dict[str, Any]) -> Text:
    """One imported file, named as given (a file name may hold brackets)."""
    extra = f", {r['skipped']} skipped (no id)" if r["skipped"] else ""
    event = f" for event {r['event_id']}" if r["event_id"] else ""
    return plain(f"{r['path']}: {r['count']} {r['kind']}{event}{extra}")


def _show(answer: dict[str, Any], as_json: bool, console: Console) -> None:
    data = dict(answer)
    record = data.pop("record", True)
    if data.get("uuid") is None and record:
        data.pop("uuid", None)
    if as_json:
        print(json.dumps(data), flush=True)
        return
    colour = "green" if data["admit"] else "red"
    word = "ADMIT" if data["admit"] else "REFUSE"
    detail = f"/{data['statusDetail']}" if data["statusDetail"] else ""
    who = (data.get("ticket") or {}).get("name") or ""
    console.print(plain((word, f"bold {colour}"), f" {data['direction']:<3} {data['code']}  "
                        f"{data['status']}{detail}  {data['message']}"
                        + (f"  ({who})" if who else "")))


def cmd_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import reading_store

    config = load_config(args.config)
    lane = config.lane(args.lane)
    at = _parse_at(args.at)
    with reading_store(config) as daemon:
        if daemon is not None:  # its stores (a technician may not open them): it decides
            answer = daemon.call("check", code=args.code, lane=lane.name,
                                 at=at.isoformat() if args.at else None,
                                 direction=args.direction, kind=args.kind)
        else:
            from agent.runtime import work
            from agent.runtime.opening import opened_gate

            with opened_gate(config) as gate:
                answer = work.answer(gate.check(args.code, lane, at, args.direction,
                                                args.kind), None)
    if answer["record"]:
        answer.pop("uuid")
    _show(answer, args.json, Console())
    return 0 if answer["admit"] else 1


def cmd_scan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import acting_on_store

    config = load_config(args.config)
    lane = config.lane(args.lane)
    console = Console()
    codes = (line.rstrip("\r\n") for line in sys.stdin) if args.code == "-" else iter([args.code])
    codes = (code for code in codes if args.code != "-" or code.strip())
    admitted = refused = 0
    with acting_on_store(config) as daemon:
        if daemon is not None:
            answers = (a for code in codes for a in daemon.call(
                "scan", codes=[code], lane=lane.name, direction=args.direction, kind=args.kind))
            for answer in answers:
                _show(answer, args.json, console)
                admitted, refused = admitted + answer["admit"], refused + (not answer["admit"])
        else:
            from agent.runtime import work
            from agent.runtime.opening import opened_gate

            with opened_gate(config) as gate:
                for code in codes:
                    result = gate.scan(code, lane, datetime.now(UTC), args.direction, args.kind,
                                       mono_ms=time.monotonic_ns() // 1_000_000)
                    _show(work.answer(result.decision, result.uuid), args.json, console)
                    admitted += result.decision.admit
                    refused += not result.decision.admit
    if not admitted and not refused:
        raise UsageError("no codes on standard input (one per line; blank lines are skipped)")
    return 0 if admitted and not refused else 1


def cmd_queue(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import reading_store

    config = load_config(args.config)
    with reading_store(config) as daemon:
        if daemon is not None:
            listing = daemon.call("queue", all=args.all, limit=args.limit)
        else:
            from agent.runtime import work
            from agent.runtime.opening import open_journal

            journal = open_journal(config)
            try:
                listing = work.queue_listing(journal, include_sent=args.all, limit=args.limit)
            finally:
                journal.close()
    if args.json:
        print(json.dumps(listing))
        return 0
    Console().print(queue_table(listing))
    return 0


def queue_table(listing: dict[str, Any]) -> Table:
    """`queue` as a table; codes and the platform's reasons are shown as they are (plain)."""
    from rich.table import Table

    counts, rows = listing["counts"], listing["scans"]
    table = Table(title=f"Scan queue: {counts['pending']} pending, {counts['quarantined']} "
                        f"quarantined, {counts['local']} local-only, {counts['sent']} sent"
                        + (f", {counts['voided']} voided venue claim(s)"
                           if counts.get("voided") else ""))
    for col in ("scanned (UTC)", "lane", "code", "dir", "decision", "upload"):
        table.add_column(col, overflow="fold")
    for r in rows:
        decision = r["status"] + (f"/{r['status_detail']}" if r["status_detail"] else "")
        state = r["upload_state"] + (f": {r['reason']}" if r["reason"] else "")
        table.add_row(*map(plain, (r["scanned_on"][:19].replace("T", " "), r["lane"],
                                   r["code"], r["direction"], decision, state)))
    if listing["more"]:
        table.caption = (f"the oldest {len(rows)} shown (--limit N for more); full rows with "
                         "scan uuids: gate-agent queue --json")
    elif rows:
        table.caption = "full rows with scan uuids: gate-agent queue --json"
    return table


def cmd_queue_retry(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import acting_on_store

    config = load_config(args.config)
    with acting_on_store(config) as daemon:
        if daemon is not None:
            n = daemon.call("queue_retry", uuids=args.uuids)["retried"]
        else:
            from agent.runtime.opening import open_journal

            journal = open_journal(config)
            try:
                n = journal.retry_quarantined(args.uuids or None)
            finally:
                journal.close()
    Console().print(f"{n} quarantined scan(s) put back in the outbox")
    return 0
