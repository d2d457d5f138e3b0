"""`gate-agent devices ...`: find, test and pair readers and relays (the technician's tools).

    devices list [--json]                    what is attached, with the URL to use
    devices test URL [--timeout S] [--ms MS] one scan from a reader / one pulse of a relay
    devices pair LANE URL [--role R] [--no-validate]
    devices pair URL --role emergency        the fire panel's contact (the device's, no lane)
    devices unpair [LANE] URL
    devices show [--json]                    each lane's devices: config file + paired

Exit codes of `test`: 0 success, 1 no scan before the timeout, 2 the device is unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from agent.commands import explain, plain
from agent.config import Config, check_lane_outputs, load_config
from agent.errors import ConfigError, DriverUnavailable, UsageError
from agent.runtime import bindings

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

EXIT_OK, EXIT_NO_SCAN, EXIT_UNAVAILABLE = 0, 1, 2


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    devices = subparsers.add_parser("devices", help="find, test and pair readers and relays")
    explain(devices, "Find attached readers and relays, test one, and pair devices to lanes.",
            ["gate-agent devices list", "gate-agent devices pair entry serial:///dev/ttyACM0"])
    sub = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", parents=[common], help="list attached devices and their URLs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    explain(p, "Serial ports, NFC readers, input devices and GPIO chips found on this machine, "
               "each with the URL to use in [[lanes]] or `devices pair`.",
            ["gate-agent devices list", "gate-agent devices list --json"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("test", parents=[common], help="read one scan, or pulse a relay once")
    p.add_argument("url", metavar="URL",
                   help="driver URL, e.g. serial:///dev/ttyACM0 or gpio:/dev/gpiochip0:17")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for a scan (default 15)")
    p.add_argument("--ms", type=int, default=500, metavar="MS",
                   help="relay pulse length (default 500)")
    p.add_argument("--role", choices=("reader", "relay", "input", "emergency", "display"),
                   help="default: from the URL scheme; input waits for a pulse (active, then "
                        "inactive) on a passage or emergency contact")
    explain(p, "Wait for one scan from a reader and print it, or pulse a relay once. Stop the "
               "daemon first if it holds the device.",
            ["gate-agent devices test serial:///dev/ttyACM0 --timeout 30",
             "gate-agent devices test gpio:/dev/gpiochip0:17 --ms 800"],
            "0 a scan was read or the relay pulsed; 1 no scan before the timeout; 2 the device "
            "is unavailable")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("pair", parents=[common], help="bind a device to a lane")
    p.add_argument("lane", metavar="LANE", nargs="?",
                   help="lane name from [[lanes]] (none with --role emergency)")
    p.add_argument("url", metavar="URL", help="device URL (see `gate-agent devices list`)")
    p.add_argument("--role", choices=("reader", *bindings.SINGLE_ROLES, *bindings.DEVICE_ROLES),
                   help="default: from the URL scheme (relay_out: the exit release; "
                        "emergency: the fire panel's contact, for every lane)")
    p.add_argument("--no-validate", action="store_true", help="do not open the device first")
    explain(p, "Bind a reader or relay to a lane, kept in <store.dir>/devices.json. With the "
               "daemon running, it does the pairing itself and uses the device at once.",
            ["sudo gate-agent devices pair entry serial:///dev/serial/by-id/usb-Scanner",
             "sudo gate-agent devices pair entry gpio:/dev/gpiochip0:17 --role relay",
             "sudo gate-agent devices pair gpio:/dev/gpiochip0:22?active_low=1 --role emergency"],
            "0 paired; 2 unknown lane, the device is unavailable, or a configuration mistake")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("unpair", parents=[common], help="remove a paired device from a lane")
    p.add_argument("lane", metavar="LANE", nargs="?",
                   help="lane name from [[lanes]] (none for the emergency input)")
    p.add_argument("url", metavar="URL", help="the paired device's URL")
    explain(p, "Remove a paired device from a lane, or the paired emergency input (devices "
               "from the config file stay).",
            ["sudo gate-agent devices unpair entry serial:///dev/ttyACM0",
             "sudo gate-agent devices unpair sim:fire"],
            "0 unpaired; 2 that device is not paired to that lane, or an unknown lane")
    p.set_defaults(func=cmd_unpair)

    p = sub.add_parser("show", parents=[common], help="show each lane's readers and relay")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    explain(p, "Each lane's readers and relay, from the config file and from pairings.",
            ["gate-agent devices show", "gate-agent devices show --json"])
    p.set_defaults(func=cmd_show)


def _role(args: argparse.Namespace) -> str:
    from drivers import default_role

    return str(args.role or default_role(args.url))


def cmd_list(args: argparse.Namespace) -> int:
    from drivers.discover import as_json, discover

    categories = discover()
    if args.json:
        print(json.dumps(as_json(categories), indent=2))
        return EXIT_OK
    from rich.console import Console

    console = Console()
    for shown in found_view(categories):
        console.print(shown)
    return EXIT_OK


def found_view(categories: list[Any]) -> list[Text | Table]:
    """`devices list` as printed: a table per category, or a line saying what to do (a hint
    such as `pip install gate-agent[hid]` shown as it is, brackets and all)."""
    from rich.table import Table

    shown: list[Text | Table] = []
    for cat in categories:
        if not cat.rows:
            shown.append(plain((cat.name, "bold"), f": none found. {cat.hint}"))
            continue
        table = Table(title=plain(cat.name), title_justify="left")
        for col in ("URL", "device", "USB id"):
            table.add_column(col, overflow="fold")
        for row in cat.rows:
            table.add_row(*map(plain, (row.url, row.description, row.usb_id)))
        shown.append(table)
    return shown


def cmd_test(args: argparse.Namespace) -> int:
    from drivers import open_output, open_reader

    try:
        if _role(args) in ("input", "emergency", "display"):
            return _test_signal(args)
        if _role(args) == "relay":
            out = open_output(args.url)
            try:
                out.pulse(args.ms)
                time.sleep(args.ms / 1000 + 0.05)
            finally:
                out.close()
            print(f"{args.url}: pulsed {args.ms} ms, relay off again")
            return EXIT_OK
        reader = open_reader(args.url)
        reader.probe()
        print(f"{args.url}: waiting up to {args.timeout:g} s for a scan...", file=sys.stderr)
        scan = reader.read_one(args.timeout)
    except DriverUnavailable as exc:
        print(f"gate-agent: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if scan is None:
        print(f"gate-agent: no scan from {args.url} within {args.timeout:g} s "
              "(present a ticket or tag; check the scanner's mode and terminator)", file=sys.stderr)
        return EXIT_NO_SCAN
    print(f"code: {scan.code}\nkind: {scan.kind}\nraw:  {scan.raw.hex(' ')}")
    return EXIT_OK


def _test_signal(args: argparse.Namespace) -> int:
    """`devices test --role input|display` (issue 17); DriverUnavailable goes to the caller."""
    from drivers.registry import open_display, open_input

    if args.role == "display":
        display = open_display(args.url)
        try:
            display.show("gate-agent test")
        finally:
            display.close()
        print(f"{args.url}: showed 'gate-agent test'")
        return EXIT_OK
    print(f"{args.url}: waiting up to {args.timeout:g} s for a pulse...", file=sys.stderr)
    if not open_input(args.url).wait_pulse(args.timeout):
        print(f"gate-agent: no pulse on {args.url} within {args.timeout:g} s (turn the arm, "
              "or close the contact; check active_low)", file=sys.stderr)
        return EXIT_NO_SCAN
    print(f"{args.url}: pulse seen (active, then inactive)")
    return EXIT_OK


def _validate(url: str, role: str) -> None:
    from drivers import open_output, open_reader
    from drivers.registry import open_display, open_input

    if role in (*bindings.INPUT_ROLES, *bindings.DEVICE_ROLES):
        open_input(url).probe()
    elif role == "display":
        open_display(url).close()
    elif role in bindings.SINGLE_ROLES:
        open_output(url).close()
    else:
        open_reader(url).probe()


def _usable(url: str, role: str) -> bool:
    """Open the device once before pairing it; False (said on stderr) when it is not there."""
    try:
        _validate(url, role)
    except DriverUnavailable as exc:
        print(f"gate-agent: error: {exc} (pair with --no-validate to skip this check)",
              file=sys.stderr)
        return False
    return True


def cmd_pair(args: argparse.Namespace) -> int:
    from agent.runtime.controlclient import acting_on_store

    config = load_config(args.config)
    role = _role(args)
    if role in bindings.DEVICE_ROLES:
        if args.lane is not None:
            raise ConfigError(f"the {role} input serves every lane: pair it without a lane "
                              f"(gate-agent devices pair {args.url} --role {role})",
                              key="device.emergency_input")
        return _pair_device(args, config, role)
    if args.lane is None:
        raise ConfigError("name the lane: gate-agent devices pair LANE URL (lanes: "
                          f"{', '.join(lane.name for lane in config.lanes) or 'none'})",
                          key="lanes")
    lane = config.lane(args.lane)  # ConfigError naming the lanes when unknown
    if not args.no_validate and not _usable(args.url, role):
        return EXIT_UNAVAILABLE
    if role in bindings.OUTPUT_ROLES:  # refused before it is saved, naming the key
        check_lane_outputs(bindings.merge_lane(lane, {role: args.url}), config.path,
                           f"lanes.{lane.name}")
    with acting_on_store(config) as daemon:
        if daemon is not None:
            daemon.call("pair", lane=lane.name, url=args.url, role=role)
            applied = f"; the running daemon (PID {daemon.pid}) uses it now"
        else:
            bindings.pair(config.store_dir, lane.name, args.url, role)
            applied = "; used from the next start (or `systemctl reload gate-agent`)"
    print(f"paired {args.url} to lane {lane.name} as {role} "
          f"({bindings.bindings_path(config.store_dir)}){applied}")
    return EXIT_OK


def _pair_device(args: argparse.Namespace, config: Config, role: str) -> int:
    """`devices pair URL --role emergency`: the device-level contact, kept in devices.json."""
    from agent.runtime.controlclient import acting_on_store

    if not args.no_validate and not _usable(args.url, role):
        return EXIT_UNAVAILABLE
    with acting_on_store(config) as daemon:
        if daemon is not None:
            daemon.call("pair", lane=None, url=args.url, role=role)
            applied = f"; the running daemon (PID {daemon.pid}) watches it now"
        else:
            bindings.pair_device(config.store_dir, role, args.url)
            applied = "; used from the next start (or `systemctl reload gate-agent`)"
    print(f"paired {args.url} as the {role} input for every lane "
          f"({bindings.bindings_path(config.store_dir)}){applied}")
    return EXIT_OK


def cmd_unpair(args: argparse.Namespace) -> int:
    from agent.runtime.controlclient import acting_on_store

    config = load_config(args.config)
    if args.lane is None:
        return _unpair_device(args, config)
    lane = config.lane(args.lane)
    with acting_on_store(config) as daemon:
        if daemon is not None:
            found = daemon.call("unpair", lane=lane.name, url=args.url)["found"]
        else:
            found = bindings.unpair(config.store_dir, lane.name, args.url)
    if not found:
        raise UsageError(f"{args.url} is not paired to lane {lane.name} (`gate-agent devices "
                         "show` lists what is; devices from the config file are removed there)")
    print(f"unpaired {args.url} from lane {lane.name}")
    return EXIT_OK


def _unpair_device(args: argparse.Namespace, config: Config) -> int:
    from agent.runtime.controlclient import acting_on_store

    with acting_on_store(config) as daemon:
        if daemon is not None:
            found = daemon.call("unpair", lane=None, url=args.url)["found"]
        else:
            found = bindings.unpair_device(config.store_dir, args.url)
    if not found:
        raise UsageError(f"{args.url} is not the paired emergency input (name the lane to "
                         "unpair a lane's device)")
    print(f"unpaired {args.url} (emergency input); [device] emergency_input applies again")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """Socket-first, as pairing is: the running daemon reads the pairings it works with (a
    technician without sudo may not read `<store.dir>/devices.json`); without one, read here
    as the store's owner."""
    from rich.console import Console

    from agent.runtime.controlclient import reading_store

    config = load_config(args.config)
    if not config.lanes:
        raise ConfigError("no [[lanes]] configured; add one", path=config.path, key="lanes")
    with reading_store(config) as daemon:
        view = daemon.call("devices_show") if daemon is not None \
            else bindings.paired_view(config)
    rows, device = view["lanes"], view["device"]
    if args.json:
        print(json.dumps({"lanes": rows, "device": device}, indent=2))
        return EXIT_OK
    Console().print(lanes_table(rows, device))
    return EXIT_OK


def lanes_table(rows: list[dict[str, Any]], device: dict[str, dict[str, str]]) -> Table:
    """`devices show` as a table (lane names and URLs shown as they are)."""
    from rich.table import Table

    table = Table(title="lanes", title_justify="left")
    for col in ("lane", "role", "URL", "source"):
        table.add_column(col, overflow="fold")
    for row in rows:
        if not row["readers"] and not row["relay"] and not row["relay_out"]:
            table.add_row(*map(plain, (row["lane"], "-", "no devices (devices pair LANE URL)",
                                       "")))
        for reader in row["readers"]:
            table.add_row(*map(plain, (row["lane"], "reader", reader["url"], reader["source"])))
        for role in bindings.SINGLE_ROLES:
            if row.get(role):
                table.add_row(*map(plain, (row["lane"], role, row[role]["url"],
                                           row[role]["source"])))
    for key, shown in device.items():  # every lane's: the fire panel
        table.add_row(*map(plain, ("(all lanes)", key, shown["url"], shown["source"])))
    return table
