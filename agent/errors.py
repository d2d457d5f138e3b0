"""The one error tree of gate-agent.

Every failure a user can meet is one of these, so the CLI and the daemon can print a clear,
specific message (naming the config key, the device or the file) and never a traceback::

    GateAgentError
    ├── ConfigError            bad or missing configuration (names file and section.key)
    ├── ImportFileError        a provisioning file that is not in the platform's shape
    ├── StoreBusy              another daemon holds the store (names its PID)
    ├── StoreAccess            no daemon answers and this user may not use store.dir (sudo)
    ├── UsageError             a mistake in the command's arguments or input (names it)
    ├── ControlError           the running daemon's control socket refused or failed
    │   ├── DaemonSilent       it accepted but did not answer in time (the store stays its)
    │   └── DaemonOutdated     it runs an older version that lacks the op asked: restart it
    ├── StoreError             SQLite trouble
    │   ├── CacheCorrupt       the ticket cache is unreadable: rebuild it (journal untouched)
    │   ├── CacheNotAccessible the ticket cache is not this user's (or on a read-only disk)
    │   ├── CacheUnavailable   a read of the open cache failed while running: refuse, rebuild
    │   └── JournalUnavailable the journal cannot be written: the gate must not admit
    ├── VenueStreamLost        a venue stream deleted or made again: its session sets up again
    ├── VenueNoStreamLeader    a venue stream with no leader: nothing decided on a replica's word
    ├── DriverError            hardware trouble
    │   └── DriverUnavailable  a driver's library or device is missing (names the URL)
    └── ApiError               anything the platform link reports (see below)
        ├── Unauthenticated    401: token missing, wrong or revoked
        ├── Forbidden          403: no access to the company, or its trial expired
        ├── NotFound           404
        ├── Validation         422: with the platform's field errors
        ├── RateLimited        429: with the wait in seconds
        ├── ServerError        5xx
        ├── Transport          connect/read timeouts, resets, TLS failures
        └── BadResponse        not JSON, or not the documented shape
            └── NotDelivered   an answer that does not say success (`success: false`, a
                               202 to a request that was not async): nothing is delivered

Messages never contain the API token: `redact()` is applied wherever text from outside
(URLs, response bodies) is put into a message.
"""

from __future__ import annotations

import re
from typing import Any


class GateAgentError(Exception):
    """Base of every error gate-agent raises on purpose."""

    exit_code = 1


class ConfigError(GateAgentError):
    """The configuration is wrong; the message names the file and `section.key`."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        where = ""
        if path and key:
            where = f"{path}: {key}: "
        elif path:
            where = f"{path}: "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")


class ImportFileError(GateAgentError):
    """A provisioning file is not JSON in one of the platform's response shapes."""

    exit_code = 2


class StoreBusy(GateAgentError):
    """Another gate-agent daemon holds `store.dir`: one daemon per store (names its PID)."""

    exit_code = 2


class StoreAccess(GateAgentError):
    """A command must work on `store.dir` itself (no daemon answers on the control socket)
    and this user may not: it needs the store's owner (`sudo`). Said before anything is done,
    never as a PermissionError traceback half-way through."""

    exit_code = 2


class UsageError(GateAgentError):
    """A mistake in what the command was given (an argument, its standard input): names it."""

    exit_code = 2


class ControlError(GateAgentError):
    """The running daemon could not be reached over its control socket, or refused a request
    (its own error's exit code is kept, so the CLI answers as if it had done the work)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class DaemonSilent(ControlError):
    """A daemon took the control connection (or has a listening socket) but did not answer
    within `[control] answer_timeout_s`. It is taken as running, hung: the command stops
    (exit 1) rather than wait for ever, and never works on the store itself instead, since
    the silent daemon still holds it open (two writers is what the lock exists to prevent)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class DaemonOutdated(ControlError):
    """The running daemon does not know the control op this command asks for: it was started
    from an older version than the one installed since (an upgrade without a restart). Nothing
    was done; the command stops (exit 2, a state of the install to put right, like a config
    mistake) naming the restart, and never works on the store itself instead, since that
    daemon still holds it."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class StoreError(GateAgentError):
    """SQLite could not do what was asked."""


class CacheCorrupt(StoreError):
    """The ticket cache file is damaged; a full resync rebuilds it. The journal is separate."""


class CacheNotAccessible(StoreError):
    """The ticket cache file, its -wal/-shm or their directory cannot be used by this user
    (owner, mode, a read-only file system), or another process holds it locked: not damaged,
    so never moved aside or rebuilt; the message names the file and its owner or how to find
    its holder, and what to type (agent.access)."""


class CacheUnavailable(StoreError):
    """A read of the open ticket cache failed while the gate runs (the file was damaged under
    it, or the disk fails). Not `CacheCorrupt` (that is found when opening the file, which is
    then moved aside) and never `JournalUnavailable`: the journal still works, so the scan is
    refused (`cacheUnavailable`) and that refusal is journaled; the daemon rebuilds the cache."""


class VenueUnavailable(StoreError):
    """A lane's read of venue.db failed while it decides (damaged under it, a table missing,
    the disk): the venue's admits of the ticket are unknown, so the scan is refused
    (`storeUnavailable`) and that refusal journaled, as with a store that cannot be opened."""


class JournalUnavailable(StoreError):
    """The scan journal cannot be written (disk full, read-only, damaged). Fail closed."""


class VenueStreamLost(GateAgentError):
    """The venue's stream was deleted (not found for a while) or made again (another creation
    time, or sequences below what this gate applied): the bus session ends, so its setup runs
    again (agent.venue.stream_identity)."""


class VenueNoStreamLeader(GateAgentError):
    """A venue stream has no leader now (no quorum, or an election under way): a replica
    answered for it, and nothing about the stream's identity is decided on that answer; the
    step is tried again (agent.venue.stream_identity `leader_answer`)."""


class VenueStreamUnknown(GateAgentError):
    """Whether a venue stream exists could not be told: its create failed and JetStream did not
    answer its stream info (a timeout, no responders, no quorum). Neither a reason to create it
    anew nor to go on as if it existed: the set-up step fails, says so, and is tried again
    (agent.venue.streams `_exists`)."""


class DriverError(GateAgentError):
    """A reader or output failed."""


class DriverUnavailable(DriverError):
    """A driver cannot be opened: its library is not installed or its device is absent."""

    def __init__(self, url: str, reason: str, hint: str = ""):
        self.url = url
        self.reason = reason
        self.hint = hint
        text = f"{url}: {reason}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class ApiError(GateAgentError):
    """The platform link failed. `status` is the HTTP status when there was one."""

    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, body: Any = None):
        super().__init__(redact(message))
        if status is not None:
            self.status = status
        self.body = body


class Unauthenticated(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Validation(ApiError):
    status = 422

    def __init__(self, message: str, *, errors: dict[str, list[str]] | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.errors = errors or {}


class RateLimited(ApiError):
    status = 429

    def __init__(self, message: str, *, wait_s: float, **kw: Any):
        super().__init__(message, **kw)
        self.wait_s = wait_s


class ServerError(ApiError):
    pass


class Transport(ApiError):
    pass


class BadResponse(ApiError):
    pass


class NotDelivered(BadResponse):
    """The platform answered without error but did not confirm it: the rows stay pending."""


_SECRETS: set[str] = set()
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._|~+/=-]+")


def register_secret(secret: str) -> None:
    """Remember a secret (the API token) so that `redact` removes it from any text."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    """Replace every registered secret and any bearer credential in `text` with `***`."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)
