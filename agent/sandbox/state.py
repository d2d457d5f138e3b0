"""The sandbox's platform-level state: tokens, companies, rate windows, async results, faults.

One `SandboxState` per server, guarded by one lock (handlers run on the event loop; the test
harness and the control endpoint change it from other threads). Time comes from
`SandboxClock`, whose offset is the "server clock offset" fault and which tests can advance
to expire async results without waiting two hours.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.sandbox.seed import Seed
from agent.sandbox.store import ItemStore

ASYNC_TTL_S = 2 * 3600
DEMO_EMAIL, DEMO_PASSWORD = "gate@example.com", "sandbox-password"


class SandboxClock:
    """Wall-clock time plus an adjustable offset (the server's notion of now)."""

    def __init__(self, offset_s: float = 0.0):
        self.offset_s = offset_s

    def now(self) -> float:
        return time.time() + self.offset_s


LINK_STYLES = ("absolute", "path", "other_host")
SCAN_TIME_FORMS = ("iso_z", "upload")
UPLOAD_ANSWERS = ("success", "success_false", "accepted_202")


@dataclass
class Faults:
    """Run-time fault injection and platform variations; rates are probabilities per platform
    request (0..1). `*_before` faults hit before the platform looks at a request; the
    `*_after_commit` ones after it applied a POST (its effect is kept, its answer is not)."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    lost_after_commit_rate: float = 0.0  # applied, then the connection drops mid-answer
    error_after_commit_rate: float = 0.0  # applied, then answered 500
    storm: bool = False  # answer every request with 429
    async_delay_s: float = 0.3
    trial_expired: bool = False
    # Variations the spec allows (not faults): how `pagination` links are written, how scan
    # times are echoed in `variable.scannedOn`/`zoneData.scans[].scannedOn`, and what a
    # `POST /entry/tickets` answers (`success_false`/`accepted_202` apply nothing).
    link_style: str = "absolute"
    scan_time_form: str = "iso_z"
    upload_answer: str = "success"

    def check(self) -> None:
        """ValueError for a variation the sandbox does not know."""
        for name, allowed in (("link_style", LINK_STYLES), ("scan_time_form", SCAN_TIME_FORMS),
                              ("upload_answer", UPLOAD_ANSWERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")


@dataclass
class TokenInfo:
    user_id: int
    companies: set[int]
    revoked: bool = False


@dataclass
class AsyncResult:
    ready_at: float
    created: float
    status: int
    body: Any
    company_id: int


@dataclass
class Received:
    """What reached the platform. `uploads` holds every ticket row received, duplicates
    included, each with its `requestUuid`; a row that changed nothing says why in `skipped`
    ("duplicate uuid", "replayed request", "refused 422", "answered success:false", ...)."""

    uploads: list[dict[str, Any]] = field(default_factory=list)
    request_uuids: list[str] = field(default_factory=list)
    rate_limited: int = 0
    per_endpoint: Counter[str] = field(default_factory=Counter)


class SandboxState:
    """Everything the sandbox knows; hold `lock` while reading or changing it."""

    def __init__(self, seed: Seed, *, token: str = "sandbox-token", rpm: int = 60,
                 window_s: float = 60.0, control_token: str | None = None,
                 clock: SandboxClock | None = None, rng_seed: int = 1):
        self.lock = threading.RLock()
        self.seed = seed
        self.store = ItemStore(seed)
        self.clock = clock or SandboxClock()
        self.rpm, self.window_s = rpm, window_s
        self.company_id = seed.company_id
        self.other_company_id = seed.company_id + 1  # exists, but our token may not act on it
        self.tokens: dict[str, TokenInfo] = {token: TokenInfo(8, {seed.company_id})}
        self.default_token = token
        self.control_token = control_token or uuid.uuid4().hex
        self.faults = Faults()
        self.rng = random.Random(rng_seed)
        self.windows: dict[int, deque[float]] = {}
        self.async_results: dict[str, AsyncResult] = {}
        self.upload_replies: dict[str, dict[str, Any]] = {}
        self.pair_replies: dict[str, dict[str, Any]] = {}
        self.scan_replies: dict[str, dict[str, Any]] = {}
        self.scan_uuids: set[str] = set()
        self.received = Received()
        self.zones = {int(z["id"]): (eid, z) for eid, zs in seed.zones.items() for z in zs}

    # -- auth ----------------------------------------------------------------------------
    def user_for(self, token: str | None) -> TokenInfo | None:
        info = self.tokens.get(token or "")
        return info if info is not None and not info.revoked else None

    def issue_token(self, user_id: int = 8) -> str:
        token = f"{len(self.tokens) + 1}|{uuid.uuid4().hex}"
        self.tokens[token] = TokenInfo(user_id, {self.company_id})
        return token

    def revoke(self, token: str) -> bool:
        info = self.tokens.get(token)
        if info is None:
            return False
        info.revoked = True
        return True

    # -- rate limit ----------------------------------------------------------------------
    def take_slot(self, company_id: int) -> tuple[bool, int]:
        """Count one request for the company: (allowed, remaining after it)."""
        now = self.clock.now()
        window = self.windows.setdefault(company_id, deque())
        while window and window[0] <= now - self.window_s:
            window.popleft()
        if self.faults.storm or len(window) >= self.rpm:
            self.received.rate_limited += 1
            return False, 0
        window.append(now)
        return True, self.rpm - len(window)

    def remaining(self, company_id: int) -> int:
        now = self.clock.now()
        window = self.windows.get(company_id, deque())
        return max(0, self.rpm - sum(1 for t in window if t > now - self.window_s))

    # -- async ---------------------------------------------------------------------------
    def park(self, status: int, body: Any, company_id: int) -> str:
        now = self.clock.now()
        self.expire_async(now)
        key = str(uuid.uuid4())
        self.async_results[key] = AsyncResult(now + self.faults.async_delay_s, now, status,
                                              body, company_id)
        return key

    def expire_async(self, now: float) -> None:
        for key in [k for k, r in self.async_results.items() if r.created + ASYNC_TTL_S < now]:
            del self.async_results[key]

    # -- control -------------------------------------------------------------------------
    def set_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply known fault fields (unknown names raise KeyError)."""
        known = asdict(self.faults)
        updated = dict(known)
        for name, value in changes.items():
            if name == "clock_offset_s":
                continue
            if name not in known:
                raise KeyError(name)
            updated[name] = type(known[name])(value)
        faults = Faults(**updated)
        faults.check()
        self.faults = faults
        if "clock_offset_s" in changes:
            self.clock.offset_s = float(changes["clock_offset_s"])
        return self.fault_status()

    def fault_status(self) -> dict[str, Any]:
        return {**asdict(self.faults), "clock_offset_s": self.clock.offset_s}

    def received_report(self) -> dict[str, Any]:
        r = self.received
        return {"uploads": list(r.uploads), "requestUuids": list(r.request_uuids),
                "rateLimited": r.rate_limited, "perEndpoint": dict(r.per_endpoint),
                "asyncPending": len(self.async_results)}

    def reset_received(self) -> None:
        self.received = Received()
