"""`gate-agent sandbox`: run the platform emulator on this machine (loopback by default)."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from agent.commands import explain
from agent.errors import ConfigError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "sandbox", parents=[common],
        help="run a local emulator of the ticketing platform (for tests, demos, training)",
        description="Serve the platform's API on HOST:PORT with seeded events and tickets. "
                    "Prints the base_url and token to put in [api].")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--seed", metavar="FILE", help="JSON seed file (see docs/platform.md)")
    source.add_argument("--tickets", type=int, default=1000,
                        help="generated tickets for event 1001 (up to millions; default 1000)")
    p.add_argument("--token", default="sandbox-token", help="the token clients must send")
    p.add_argument("--company-id", type=int, default=1, metavar="ID",
                   help="the company id clients must send (default 1)")
    p.add_argument("--rpm", type=int, default=60, help="company rate limit per window")
    p.add_argument("--window-s", type=float, default=60.0, help="rate window length")
    p.add_argument("--export", metavar="DIR",
                   help="write the seed's events/zones/tickets as JSON files to DIR and exit")
    explain(p, p.description or "", ["gate-agent sandbox --port 8765 --tickets 100000",
                                     "gate-agent sandbox --seed site.json --export ./files"],
            "0 stopped (Ctrl-C) or exported; 2 a bad seed file or option")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.sandbox import harness
    from agent.sandbox.seed import export_seed

    if args.tickets < 0:
        raise ConfigError("--tickets must be 0 or more")
    state = harness.make_state(tickets=args.tickets, seed_file=args.seed, token=args.token,
                               company_id=args.company_id, rpm=args.rpm,
                               window_s=args.window_s)
    if args.export:
        for path in export_seed(state.seed, args.export):
            print(path)
        return 0
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    sock = harness._bind(args.host, args.port)
    url = harness._url(args.host, sock)
    print(f"sandbox platform at {url}")
    print(f"  token:         {state.default_token}")
    print(f"  company id:    {state.company_id}")
    print(f"  control token: {state.control_token} (header X-Sandbox-Control; "
          "not needed from this machine)")
    print("  demo login:    gate@example.com / sandbox-password")
    if not loopback:
        print("  warning: listening beyond this machine over plain http; gate-agent accepts "
              "http:// only for loopback addresses")
    print("Ctrl-C stops it.", flush=True)
    harness.serve(state, sock, "info").run(sockets=[sock])
    return 0
