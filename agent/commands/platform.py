"""`gate-agent sync | upload | login`: the technician's hands on the platform link.

The daemon does all of this on a schedule; these commands exist for the first fill of a new
gate, for "sync now" before doors open, for draining a backlog after an outage and for putting
a fresh token in place. They use the same Syncer, Uploader, governor and client as the daemon,
so what they do (and the requests they spend) is exactly what the daemon would do.

Run them while the daemon is stopped, or accept that the two share the company's rate limit:
both keep within `api.budget_share`, but each counts only its own requests. Uploading while
the daemon uploads is safe: batches are claimed in the journal (`Journal.claim_batch`), so the
same scans never go out under two request uuids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import explain, plain
from agent.config import Config, load_config
from agent.errors import (
    ConfigError,
    GateAgentError,
    StoreAccess,
    Transport,
    register_secret,
)
from agent.files import write_private

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from rich.table import Table
    from rich.text import Text

    from agent.platform.client import PlatformClient
    from agent.platform.sync import SyncProgress


def _quiet_logs() -> None:
    """The commands report failures themselves, in one line each; without this, Python's
    last-resort handler would print the library's warning about the same failure again."""
    logging.getLogger("agent").addHandler(logging.NullHandler())


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "sync", parents=[common], help="refresh events/zones and tickets from the platform now",
        description="Refresh events and zones, then a delta pass over each served event "
                    "(or, with --full, rebuild the whole cache beside the live one and swap it "
                    "in atomically). Interrupted passes resume where they stopped.")
    p.add_argument("--full", action="store_true",
                   help="list everything again (without --event: rebuild and swap the cache)")
    p.add_argument("--event", type=int, action="append", metavar="ID",
                   help="only this event (repeatable; default: the configured events)")
    p.add_argument("--json", action="store_true", help="one JSON summary, no progress bar")
    p.description += " With the daemon running, the daemon does it (a --full swap included)."
    explain(p, p.description, ["sudo gate-agent sync", "sudo gate-agent sync --full",
                               "gate-agent sync --event 501 --json"],
            "0 synced; 1 the platform failed (the cache keeps what it had); 2 a configuration "
            "mistake or no token; 130 interrupted (resumes where it stopped)")
    p.set_defaults(func=cmd_sync)

    p = subparsers.add_parser("upload", parents=[common],
                              help="send journaled scans to the platform now")
    p.add_argument("--drain", action="store_true", help="until the outbox is empty")
    p.add_argument("--json", action="store_true", help="one JSON summary")
    explain(p, "Send journaled scans to the platform now: one batch, or all with --drain. "
               "Nothing is sent twice (batch and scan uuids). With the daemon running, it sends.",
            ["sudo gate-agent upload --drain", "gate-agent upload --json"],
            "0 sent; 1 the platform refused or failed (scans stay queued); 2 a configuration "
            "mistake or no token")
    p.set_defaults(func=cmd_upload)

    p = subparsers.add_parser(
        "login", parents=[common], help="get a platform token (POST /login) into api.token_file",
        description="Asks for the password without echoing it (or reads one line from standard "
                    "input when that is not a terminal) and stores the token with mode 0600.")
    p.add_argument("--email", metavar="EMAIL", help="the platform user's e-mail")
    p.add_argument("--device-name", metavar="NAME",
                   help="name the token is issued for (default: api.device_name, else the host "
                        "name)")
    p.description += " A running daemon is handed the new token and uses it at once."
    explain(p, p.description, ["sudo gate-agent login --email gate@example.com",
                               "printf '%s\\n' \"$PW\" | sudo gate-agent login --email E"],
            "0 logged in; 1 the platform refused the login; 2 a configuration mistake")
    p.set_defaults(func=cmd_login)


# -- shared ---------------------------------------------------------------------------------


def _client(config: Config, token: str) -> PlatformClient:
    from agent.platform.client import PlatformClient
    from agent.platform.governor import Governor

    return PlatformClient.from_config(config.api, token, Governor.from_config(config.api))


def _offline_hint(config: Config) -> str:
    """What the gate still has when the platform cannot be reached."""
    from agent.runtime.opening import CACHE_FILE
    from agent.store.cache import TicketCache

    path = config.store_dir / CACHE_FILE
    if not path.exists():
        return "no ticket cache yet: the gate refuses every code until a sync succeeds"
    cache = TicketCache(path, keep_personal_data=config.store["keep_personal_data"])
    try:
        status = cache.get_status()
    finally:
        cache.close()
    parts = [f"event {e['id']}: {e['items']} items, last sync {e['last_sync'] or 'never'}"
             for e in status["events"] if e["items"]]
    if not parts:
        return "no ticket cache yet: the gate refuses every code until a sync succeeds"
    return "the gate keeps deciding on its cache (" + "; ".join(parts) + ")"


# -- sync -----------------------------------------------------------------------------------


class _Bar:
    """Feeds SyncProgress reports into one rich progress task per event pass.

    `passes` lists every pass of the command, in the order they began: a full resync's
    listing and its catch-up deltas, or a delta's passes. Through the daemon only the
    command's own passes are relayed (agent.runtime.controlops: not the daemon's delta job,
    which may run beside a full resync, nor another command's). A pass is known by its event,
    its mode and when it began, so reports that interleave never count one pass twice."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.tasks: dict[tuple[int | None, str], TaskID] = {}
        self.passes: list[dict[str, Any]] = []
        self._pass_of: dict[tuple[int, str, float | None], dict[str, Any]] = {}

    def __call__(self, p: SyncProgress) -> None:
        if p.event_id is not None and p.phase in ("full", "tickets"):
            figures = {"event": p.event_id, "mode": p.phase, "items": p.items, "pages": p.pages,
                       "total": p.total}
            known = self._pass_of.get((p.event_id, p.phase, p.started))
            if known is None:
                self.passes.append(figures)
                self._pass_of[(p.event_id, p.phase, p.started)] = figures
            else:
                known.update(figures)
        if self.progress is None or p.phase not in ("full", "tickets", "swapping"):
            return
        key = (p.event_id, p.phase if p.phase != "swapping" else "full")
        if not self.tasks:
            self.progress.start()  # lazily: an early failure prints its one line, no empty bar
        if key not in self.tasks:
            label = f"event {p.event_id} " + ("full" if p.phase == "full" else "delta")
            self.tasks[key] = self.progress.add_task(label, total=None, pages=0, requests=0)
        self.progress.update(self.tasks[key], completed=p.items, total=p.total or None,
                             pages=p.pages, requests=p.requests)


def cmd_sync(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import acting_on_store

    _quiet_logs()
    config = load_config(args.config)
    if config.venue is not None:  # the venue leader owns the budget: it runs the pass
        from agent.commands.venue import sync_through_leader

        result = sync_through_leader(config, args)
        return _print_sync(args, result)
    with acting_on_store(config) as daemon:
        if daemon is not None:
            from agent.platform.sync import SyncProgress

            Console(stderr=True).print(plain(f"the running daemon (PID {daemon.pid}) syncs; "
                                             "its progress:"))
            progress = _progress_bar(args)
            bar = _Bar(progress)
            try:
                result = daemon.call("sync", on_progress=lambda p: bar(SyncProgress(**p)),
                                     full=args.full, events=args.event or [])
            finally:
                if progress is not None and bar.tasks:
                    progress.stop()
            result["passes"] = bar.passes
        else:
            result = _sync_here(config, args)
    return _print_sync(args, result)


def _print_sync(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console

    Console().print(sync_table(args.full, result))
    return 0


def sync_table(full: bool, result: dict[str, Any]) -> Table:
    """The sync summary: per event, items applied (every pass watched) and cached; event
    names from the platform shown as they are."""
    from rich.table import Table

    by = f" by venue leader {result['leader']}" if result.get("leader") else ""
    table = Table(title=plain(f"sync {'full' if full else 'delta'}{by}: "
                              f"{result['requests']} requests"
                              + (f", {result['wall_s']} s" if "wall_s" in result else "")))
    for col in ("event", "name", "items applied", "items cached", "cursor"):
        table.add_column(col)
    applied: dict[int, int] = {}
    for p in result["passes"]:  # an event's passes: a full one, a delta after it
        applied[p["event"]] = applied.get(p["event"], 0) + p["items"]
    for e in result["events"]:
        table.add_row(*map(plain, (str(e["id"]), e["name"] or "", str(applied.get(e["id"], "-")),
                                   str(e["items"]), e["cursor"] or "-")))
    return table


def _progress_bar(args: argparse.Namespace) -> Progress | None:
    """The bar both paths show on stderr (none with --json): items applied, pages, requests."""
    if args.json:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("items, {task.fields[pages]} pages, {task.fields[requests]} requests"),
        TimeElapsedColumn(), console=Console(stderr=True))


def _sync_here(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """No daemon: this command syncs, as the store's owner, with a progress bar."""
    import asyncio

    from agent.platform.token import load_token
    from agent.runtime.storeaccess import own_rights

    if args.event:
        config = dataclasses.replace(config, events={**config.events, "ids": list(args.event)})
    with own_rights():
        token = load_token(config.api, config_path=config.path)
    progress = _progress_bar(args)
    bar = _Bar(progress)
    started = time.monotonic()
    try:
        try:
            result = asyncio.run(_sync(config, token, args, bar))
        finally:
            if progress is not None and bar.tasks:
                progress.stop()
    except Transport as exc:
        raise Transport(f"{exc}. Offline? {_offline_hint(config)}") from exc
    result["wall_s"] = round(time.monotonic() - started, 2)
    result["passes"] = bar.passes
    return result


async def _sync(config: Config, token: str, args: argparse.Namespace, bar: _Bar
                ) -> dict[str, Any]:
    from agent.platform.sync import Syncer
    from agent.runtime import work
    from agent.runtime.opening import CACHE_FILE

    cache_path = config.store_dir / CACHE_FILE
    async with _client(config, token) as client:
        syncer = Syncer(config, client, cache_path, on_progress=bar)
        try:
            return await work.sync_pass(syncer, full=args.full, event_ids=args.event)
        finally:
            syncer.close()


# -- upload ---------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.runtime.controlclient import acting_on_store

    _quiet_logs()
    config = load_config(args.config)
    if config.venue is not None:  # the venue leader uploads: hand the scans to the bus
        from agent.commands.venue import upload_through_bus

        outcome = upload_through_bus(config, args)
    else:
        with acting_on_store(config) as daemon:
            if daemon is not None:
                outcome = daemon.call("upload", drain=args.drain)
            else:
                outcome = _upload_here(config, args.drain)
    said, trouble = upload_lines(outcome, config.path)
    if args.json:
        print(json.dumps(outcome))
    else:
        Console().print(said)
    if trouble is None:
        return 0
    Console(stderr=True).print(trouble, soft_wrap=True)
    return 1


def upload_lines(outcome: dict[str, Any], config_path: str | None) -> tuple[Text, Text | None]:
    """What `upload` says, and what went wrong (the platform's words, shown as they are)."""
    said = (f"handed {outcome['handed']} to the venue bus (the venue leader uploads them)"
            if outcome.get("venue") else f"sent {outcome['sent']}, quarantined "
            f"{outcome['quarantined']} in {outcome['requests']} request(s)")
    line = plain(f"{said}; {outcome['pending']} pending, "
                 f"{outcome['quarantined_total']} quarantined in the journal")
    error = outcome["error"]
    if error is None:
        return line, None
    if outcome["auth"]:
        return line, plain(
            f"gate-agent: uploads are paused: {error}. All {outcome['pending']} pending scans "
            f"are kept. Fix: `gate-agent login --config {config_path}` (or put a valid token in "
            f"api.token_file), then `gate-agent upload --drain`.")
    return line, plain(f"gate-agent: upload stopped: {error}. {outcome['pending']} scans stay "
                       "queued and are resent later with the same batch uuid (nothing is sent "
                       "twice).")


def _upload_here(config: Config, drain: bool) -> dict[str, Any]:
    """No daemon: this command uploads, as the store's owner."""
    import asyncio

    from agent.platform.token import load_token
    from agent.runtime.opening import open_journal
    from agent.runtime.storeaccess import own_rights

    with own_rights():
        token = load_token(config.api, config_path=config.path)
    journal = open_journal(config)
    try:
        return asyncio.run(_upload(config, token, journal, drain))
    finally:
        journal.close()


async def _upload(config: Config, token: str, journal: Any, drain: bool) -> dict[str, Any]:
    from agent.platform.upload import Uploader
    from agent.runtime import work

    async with _client(config, token) as client:
        uploader = Uploader(journal, client, batch_size=config.sync["upload_batch_size"],
                            scanned_by=config.api["scanned_by"] or None,
                            retention_days=config.store["sent_retention_days"])
        return await work.upload_pass(uploader, drain=drain)


# -- login ----------------------------------------------------------------------------------


def _read_password() -> str:
    """getpass on a terminal (never echoed); one line of standard input for scripts."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("Password: ")
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def write_token(path: Path, token: str) -> None:
    """Write the token so that it is never readable by others, not even for an instant."""
    write_private(path, token + "\n")


def _can_write(path: Path) -> bool:
    """Whether `write_token` may put a file at `path` (it writes a temporary file beside it
    and renames it, creating missing directories): asked before POST /login."""
    here = path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    return os.access(here, os.W_OK | os.X_OK)


def cmd_login(args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from agent.runtime.controlclient import answering_daemon

    _quiet_logs()
    config = load_config(args.config)
    target = config.api["token_file"]
    if not target:
        raise ConfigError("is empty: login needs a file to store the token in",
                          path=config.path, key="api.token_file")
    path = Path(target).expanduser()
    # Before POST /login issues a token: where it will go. A token the platform issued that
    # this command cannot keep would stay valid there, unused.
    daemon, why = answering_daemon(config)
    storable = _can_write(path)
    if daemon is None and not storable:
        raise StoreAccess(
            f"this user (uid {os.geteuid()}) may not write the token file {path}, and no "
            f"gate-agent daemon answers on its control socket to take the token ({why}): "
            "run `sudo gate-agent login`, or log in while the daemon runs with its socket "
            "open to you ([control] group); nothing was asked of the platform")
    email = args.email
    if not email:
        if not sys.stdin.isatty():
            raise ConfigError("--email is required when the password comes from standard input")
        email = input("Email: ").strip()
    password = _read_password()
    if not password:
        raise ConfigError("no password given")
    register_secret(password)
    device = args.device_name or config.api["device_name"] or socket.gethostname()

    async def go() -> str:
        async with _client(config, "login-no-token-yet") as client:
            return await client.login(email, password, device)

    token = asyncio.run(go())
    register_secret(token)
    console = Console()
    if storable:
        try:
            write_token(path, token)
        except OSError as exc:
            if daemon is None:
                raise GateAgentError(
                    f"the platform issued a token for device {device!r}, but it could not be "
                    f"stored in {path} ({exc.strerror}); revoke it on the platform, fix the "
                    "file's directory and log in again") from None
            storable = False
    stored = (f"stored in {path} (mode 0600)" if storable else
              f"NOT stored in {path} (uid {os.geteuid()} may not write it): the daemon keeps "
              "it until it restarts; `sudo gate-agent login` stores one for good")
    console.print(plain(f"logged in as {email}; token for device {device!r} {stored}. Older "
                        "tokens stay valid until revoked on the platform."), soft_wrap=True)
    if daemon is not None:
        daemon.call("token", token=token)
        console.print(plain(f"the running daemon (PID {daemon.pid or 'unknown'}) uses the new "
                            "token from now on"))
        return 0
    shadow = [name for name in ("CREDENTIALS_DIRECTORY", config.api["token_env"])
              if name and os.environ.get(name)]
    if shadow:
        console.print(plain(f"note: ${shadow[0]} is set and is read before api.token_file; "
                            "unset it for the new token to be used"))
    return 0
