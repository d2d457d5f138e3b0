"""`gate-agent pair-tag`: the NFC pairing station (ticket barcode + wristband -> pairing).

    pair-tag BARCODE --reader URL        pair one ticket to the next tag presented
    pair-tag --reader URL                a queue of attendees: barcodes typed/scanned on stdin
    pair-tag --reader URL --scanner URL  ... or read from a barcode scanner
        [--event ID] [--again] [--admit [--lane L]] [--once] [--timeout S]

Exit codes (one pairing: BARCODE or --once): 0 paired (and admitted with --admit), 1 not
paired (or paired but refused entry), 2 a device cannot be opened, 3 the platform cannot be
reached (nothing changed). A queue ends with Ctrl-C or end of input and exits 0.

With the daemon running, the daemon pairs (control ops `pair_tag_ticket`, `pair_tag`): a
technician in the control socket's group needs no sudo. Without one, this command pairs on the
store itself, each step as the store's owner and its readers with this user's own rights
(`agent.runtime.controlclient.acting_on_store`, `PairingStation`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Protocol

from agent.commands import explain, plain
from agent.config import LaneConfig, load_config
from agent.errors import DaemonOutdated, DaemonSilent, DriverUnavailable, GateAgentError

if TYPE_CHECKING:
    from rich.console import Console

    from agent.runtime.controlclient import ControlClient
    from agent.runtime.pairing import PairingStation

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_OFFLINE = 0, 1, 2, 3


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("pair-tag", parents=[common],
                              help="pair NFC tags (wristbands) to tickets; optionally admit")
    p.add_argument("barcode", nargs="?", metavar="BARCODE",
                   help="ticket barcode; without it, barcodes come from --scanner or stdin "
                        "until Ctrl-C")
    p.add_argument("--reader", required=True, metavar="URL",
                   help="NFC reader URL, e.g. nfc:usb (see `gate-agent devices list`)")
    p.add_argument("--scanner", metavar="URL", help="barcode scanner URL for the queue")
    p.add_argument("--event", type=int, metavar="ID",
                   help="event id (default: the cached ticket's event)")
    p.add_argument("--again", action="store_true",
                   help="re-pair a ticket that already has a tag (the old tag stops working)")
    p.add_argument("--admit", action="store_true",
                   help="also admit the attendee through --lane (pair and admit in one step)")
    p.add_argument("--lane", metavar="LANE", help="lane for --admit (default: the first lane)")
    explain(p, "The NFC pairing station: a ticket's barcode (argument, --scanner or typed), then "
               "a tag; paired on the platform, then in the local cache at once. Loops over a "
               "queue of barcodes until Ctrl-C.",
            ["gate-agent pair-tag NU-VALID-0001 --reader nfc:usb",
             "gate-agent pair-tag --reader nfc:usb --scanner serial:///dev/ttyACM0 --admit"],
            "0 paired; 1 the platform refused, or the running daemon did not answer; 2 the "
            "reader is unavailable, no daemon runs and this user may not use store.dir (it "
            "names the sudo to use), or the running daemon is older than this command "
            "(restart it); 3 offline")
    p.add_argument("--once", action="store_true", help="pair one attendee, then exit")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for a tag (default 30)")
    p.set_defaults(func=cmd_pair_tag)


def cmd_pair_tag(args: argparse.Namespace) -> int:
    """Socket-first, like every store command: with a daemon running, it pairs (its cache,
    token and rate budget, its lanes for --admit) while this command keeps the readers; without
    one, this command pairs on the store itself as its owner, holding the store's lock."""
    from rich.console import Console

    from agent.runtime.controlclient import acting_on_store
    from agent.runtime.pairing import PairingStation
    from agent.runtime.storeaccess import same_identity
    from drivers.feed import ScanFeed

    config = load_config(args.config)
    lane = config.lane(args.lane) if args.admit else None
    console = Console(highlight=False, soft_wrap=True)
    single = bool(args.barcode) or args.once
    with ExitStack() as stack:
        try:  # with this user's own rights, now and at each reconnect (a device only root
            # may open): the store is worked on as its owner in steps, never around them
            tags = stack.enter_context(ScanFeed(args.reader, open_guard=same_identity))
            scanner = stack.enter_context(ScanFeed(args.scanner, open_guard=same_identity)) \
                if args.scanner and not args.barcode else None
        except DriverUnavailable as exc:
            print(f"gate-agent: error: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        daemon = stack.enter_context(acting_on_store(config, per_step=True))
        desk: _Desk = _ThroughDaemon(daemon) if daemon is not None else \
            _Here(stack.enter_context(PairingStation(config)))
        barcodes = _barcodes(args.barcode, scanner, console)
        done = failed = 0
        try:
            for barcode in barcodes:
                code = _one(desk, tags, barcode, args, lane, console)
                done += code == EXIT_OK
                failed += code != EXIT_OK
                if single:
                    return code
        except KeyboardInterrupt:
            console.print()
        console.print(plain(f"pairing station closed: {done} paired, {failed} not"))
    return EXIT_OK


class _Desk(Protocol):
    """Who pairs: answers as `ticket_answer` / `pair_answer` give them."""

    def ticket(self, barcode: str, event_id: int | None) -> dict[str, Any]: ...

    def pair(self, barcode: str, tag: str, event_id: int | None, again: bool,
             lane: LaneConfig | None) -> dict[str, Any]: ...


class _Here:
    def __init__(self, station: PairingStation):
        self.station = station

    def ticket(self, barcode: str, event_id: int | None) -> dict[str, Any]:
        from agent.runtime.pairing import ticket_answer

        return ticket_answer(self.station.ticket(barcode, event_id))

    def pair(self, barcode: str, tag: str, event_id: int | None, again: bool,
             lane: LaneConfig | None) -> dict[str, Any]:
        from agent.runtime.pairing import pair_answer

        return pair_answer(self.station.pair(barcode, tag, event_id=event_id, again=again,
                                             admit_lane=lane))


class _ThroughDaemon:
    def __init__(self, daemon: ControlClient):
        self.daemon = daemon

    def ticket(self, barcode: str, event_id: int | None) -> dict[str, Any]:
        answer: dict[str, Any] = self.daemon.call("pair_tag_ticket", barcode=barcode,
                                                  event=event_id)
        return answer

    def pair(self, barcode: str, tag: str, event_id: int | None, again: bool,
             lane: LaneConfig | None) -> dict[str, Any]:
        answer: dict[str, Any] = self.daemon.call(
            "pair_tag", barcode=barcode, tag=tag, event=event_id, again=again,
            admit_lane=None if lane is None else lane.name)
        return answer


def _barcodes(given: str | None, scanner: Any, console: Console) -> Iterator[str]:
    """The queue of attendees: the argument, the barcode scanner, or lines of stdin."""
    if given:
        yield given
        return
    while True:
        console.print(plain(("next attendee:", "bold"), " scan or type the ticket barcode"),
                      style="cyan")
        if scanner is not None:
            scan = scanner.next(None)
            assert scan is not None
            if scan.kind != "barcode":
                console.print(plain(("NOT PAIRED", "red"), f" the scanner read a tag ({scan.code}),"
                                    " not a ticket barcode"))
                continue
            yield scan.code
            continue
        line = sys.stdin.readline()
        if not line:
            return  # end of input
        if line.strip():
            yield line.strip()


def _one(desk: _Desk, tags: Any, barcode: str, args: argparse.Namespace,
         lane: LaneConfig | None, console: Console) -> int:
    """Pair one attendee; every failure is printed and becomes an exit code, never a raise
    (but a daemon that stopped answering, or is older than this command, ends the session:
    DaemonSilent, DaemonOutdated)."""
    from agent.runtime.pairing import PairingRefused

    try:
        hit = desk.ticket(barcode, args.event)
        who = f" ({hit['customer_name']})" if hit["customer_name"] else ""
        tags.drain()  # a tap from before this attendee must not be paired to this ticket
        console.print(plain(f"ticket {hit['barcode']} event {hit['event_id']}{who}: present the "
                            f"tag on {args.reader} (within {args.timeout:g} s)"))
        scan = tags.next(args.timeout)
        if scan is None:
            raise PairingRefused(f"no tag within {args.timeout:g} s; {hit['barcode']} not "
                                 "paired")
        if scan.kind != "nfc":
            raise PairingRefused(f"the reader sent {scan.code!r}, not a tag id (is the reader "
                                 "in ndef=1 mode? drop that option)")
        result = desk.pair(barcode, scan.code, args.event, args.again, lane)
    except (DaemonSilent, DaemonOutdated):  # no attendee can be paired through it
        raise
    except GateAgentError as exc:  # PairingOffline's 3 kept, also from the daemon
        console.print(plain(("NOT PAIRED", "bold red"), f" {exc}"))
        return EXIT_OFFLINE if exc.exit_code == EXIT_OFFLINE else EXIT_FAILED
    return _show(result, console)


def _show(result: dict[str, Any], console: Console) -> int:
    notes = []
    if result["replaced"]:
        notes.append(f"replaces tag {result['replaced']}")
    if result["moved_from"]:
        notes.append("tag moved from item " + ", ".join(map(str, result["moved_from"])))
    extra = f" ({'; '.join(notes)})" if notes else ""
    console.print(plain(("PAIRED", "bold green"), f" {result['nfc_id']} -> {result['barcode']} "
                        f"(event {result['event_id']}, item {result['item_id']}){extra}"))
    if result["local_error"]:
        console.print(plain(("warning:", "yellow"), f" {result['local_error']}"))
    d = result["admit"]
    if d is None:
        return EXIT_OK
    word, colour = ("ADMIT", "green") if d["admit"] else ("REFUSE", "red")
    detail = f"/{d['statusDetail']}" if d["statusDetail"] else ""
    console.print(plain((word, f"bold {colour}"), f" {d['direction']:<3} {d['code']}  "
                        f"{d['status']}{detail}  {d['message']}"))
    return EXIT_OK if d["admit"] else EXIT_FAILED
