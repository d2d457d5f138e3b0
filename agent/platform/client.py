"""The platform client: the one place gate-agent talks HTTP (one httpx.AsyncClient).

Every counted request first takes a slot from the rate governor at the method's priority
(uploads first), carries the auth/company/language/User-Agent headers, has a timeout, and its
answer feeds the governor (rate headers) and `get_status()` (clock skew, outcomes). Failures
become the ApiError tree in `apierrors.to_error`. Retries (bounded, with backoff) only for GETs
and for POSTs keyed by a uuid the platform deduplicates on; never for login.

Async mode (`?async=true`): 202 `{asyncUuid}`, then polls of the same path with `asyncUuid=`
(not counted by the platform, so they skip the governor) until the real answer or
`async_poll_limit_s`.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from agent import __version__
from agent.core.codes import epoch_iso
from agent.core.model import (
    EntryPage,
    Event,
    Zone,
    parse_activated_events,
    parse_entry_page,
    parse_zones,
)
from agent.errors import (
    ApiError,
    BadResponse,
    ConfigError,
    NotDelivered,
    Transport,
    Validation,
)
from agent.platform.errors import header_number, to_error
from agent.platform.governor import Clock, Governor, LoopClock, Priority, Ticket
from agent.platform.jsonbody import loads_strict

MAX_LIMIT, MAX_ASYNC_LIMIT = 100, 1000


def check_base_url(url: str) -> str:
    """Accept https anywhere, plain http only to loopback; ConfigError naming api.base_url."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return url.rstrip("/")
    if parts.scheme == "http" and host:
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if loopback:
            return url.rstrip("/")
        raise ConfigError(f"plain http:// is only allowed to this machine (127.0.0.1, ::1, "
                          f"localhost), got {host}; use https://", key="api.base_url")
    raise ConfigError(f"must be an https:// URL, got {url!r}", key="api.base_url")


@dataclass
class LinkStatus:
    """What `get_status()` reports about the link (never the token)."""

    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_kind: str | None = None  # ApiError class name, lower case ("unauthenticated")
    remaining: int | None = None
    window_s: float | None = None
    rate_limited_until: float | None = None
    skew_s: float | None = None
    content_language: str | None = None


class PlatformClient:
    """Async client for the endpoints a gate uses. Use as `async with PlatformClient(...)`."""

    #: The governor priority each method asks for (entry_tickets: DELTA_SYNC with a
    #: start_time, REFRESH without, unless the caller passes `priority=`).
    PRIORITIES: dict[str, Priority] = {
        "upload_scans": Priority.UPLOAD, "zone_scan": Priority.UPLOAD,
        "entry_tickets": Priority.DELTA_SYNC, "activated_events": Priority.REFRESH,
        "zones": Priority.REFRESH, "pair_tag": Priority.OTHER, "zone_check": Priority.OTHER,
        "config": Priority.OTHER, "whoami": Priority.OTHER, "login": Priority.OTHER,
    }

    def __init__(self, base_url: str, token: str, company_id: int, language: str,
                 timeout_s: float, governor: Governor, ca_file: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, *,
                 async_poll_limit_s: float = 120.0, max_retries: int = 2,
                 clock: Clock | None = None):
        self.base_url = check_base_url(base_url)
        self.governor = governor
        self.clock: Clock = clock or LoopClock()
        self.async_poll_limit_s = async_poll_limit_s
        self.max_retries = max_retries
        self.status = LinkStatus()
        self.outcomes: dict[str, int] = {}
        # Awaited after the governor's grant and before each request leaves; what it raises
        # stops the request (the venue leader re-checks its lease here: agent.venue.budget).
        self.before_send: Callable[[], Awaitable[None]] | None = None
        # Called with each answer's `Date` (epoch) and the monotonic time it arrived: the
        # gate's clock compares its own with it (agent.runtime.clock).
        self.on_server_time: Callable[[float, float], None] | None = None
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Accept-Language": language,
            "User-Agent": f"gate-agent/{__version__}",
        }
        if company_id:
            headers["X-NU-COMPANY-ID"] = str(company_id)
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/", headers=headers, timeout=httpx.Timeout(timeout_s),
            verify=tls_context(ca_file), transport=transport, follow_redirects=False,
        )

    def set_token(self, token: str) -> None:
        """Use a renewed token from the next request on (SIGHUP after `gate-agent login`)."""
        self._http.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_config(cls, api: dict[str, Any], token: str, governor: Governor,
                    **kw: Any) -> PlatformClient:
        return cls(api["base_url"], token, api["company_id"], api["language"], api["timeout_s"],
                   governor, api["ca_file"] or None,
                   async_poll_limit_s=api["async_poll_limit_s"], **kw)

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the endpoints -------------------------------------------------------------------

    async def activated_events(self) -> list[Event]:
        """`GET /activated-events` (REFRESH)."""
        body = await self._call("GET", "activated-events", Priority.REFRESH, shape=(list, dict))
        _require_list(body, "events", "GET /activated-events")
        return parse_activated_events(body)

    async def zones(self, event_id: int) -> list[Zone]:
        """`GET /zones/all?eventId=` (REFRESH)."""
        body = await self._call("GET", "zones/all", Priority.REFRESH,
                                params={"eventId": event_id}, shape=(list, dict))
        _require_list(body, "data", "GET /zones/all")
        return parse_zones(body, event_id)

    async def entry_tickets(self, event_id: int, *, start_time: str | None = None,
                            include_zones: bool = True, include_products: bool = False,
                            limit: int = 100, async_mode: bool = False,
                            page_url: str | None = None,
                            priority: Priority | None = None) -> EntryPage:
        """One page of `GET /entry/tickets` (DELTA_SYNC with start_time, else REFRESH).

        Follow `page.next_url` by passing it back as `page_url`. `limit` above 100 needs
        `async_mode` (the platform allows 1000 there).
        """
        top = MAX_ASYNC_LIMIT if async_mode else MAX_LIMIT
        if not 1 <= limit <= top:
            raise ValueError(f"limit must be 1..{top}")
        prio = priority if priority is not None else (
            Priority.DELTA_SYNC if start_time else Priority.REFRESH)
        params: dict[str, Any] = {"eventId": event_id, "limit": limit,
                                  "includeZones": _flag(include_zones),
                                  "includeProducts": _flag(include_products)}
        if start_time:
            params["startTime"] = start_time
        if page_url is not None:
            params.update(page_position(page_url))
        body = await self._call("GET", "entry/tickets", prio, params=params,
                                async_mode=async_mode)
        _require_list(body, "content", "GET /entry/tickets")
        links = body.get("pagination")
        if isinstance(links, dict) and links.get("next") is not None \
                and not isinstance(links["next"], str):
            raise BadResponse(f"GET /entry/tickets: `pagination.next` must be a link or null, "
                              f"got {type(links['next']).__name__}; the page is not applied")
        return parse_entry_page(body)

    async def upload_scans(self, request_uuid: str, tickets: list[dict[str, Any]]) -> Any:
        """`POST /entry/tickets` (UPLOAD); safe to retry: the platform dedupes on uuids.

        Only `{"success": true}` is a delivery: `success` is a boolean in the schema, so
        `false` (or a missing field) is a legal answer that delivered nothing -> NotDelivered."""
        body = await self._call("POST", "entry/tickets", Priority.UPLOAD, retry=True,
                                json={"uuid": request_uuid, "tickets": tickets})
        if body.get("success") is not True:
            said = body.get("message") if isinstance(body.get("message"), str) else None
            err = NotDelivered(
                f"POST /entry/tickets: the platform answered success: "
                f"{jsonlib.dumps(body.get('success'))}" + (f" ({said[:200]})" if said else "")
                + "; the scans stay queued under the same request uuid", status=200, body=body)
            self._failed(err)
            raise err
        return body

    async def pair_tag(self, barcode: str, nfc_id: str, event_id: int, again: bool,
                       uuid: str) -> dict[str, Any]:
        """`POST /tickets/pair` (OTHER): kebab-case body, event id as a string."""
        return await self._call("POST", "tickets/pair", Priority.OTHER, retry=True, json={
            "barcode": barcode, "nfc-id": nfc_id, "event-id": str(event_id),
            "pair-barcode-again": again, "uuid": uuid})

    async def config(self) -> dict[str, Any]:
        """`GET /config` (OTHER): the app user's company, nfcKey and permissions."""
        return await self._call("GET", "config", Priority.OTHER)

    async def whoami(self) -> dict[str, Any]:
        """`GET /` (OTHER): the authenticated user."""
        return await self._call("GET", "", Priority.OTHER)

    async def login(self, email: str, password: str, device_name: str) -> str:
        """`POST /login` (OTHER) -> token. Never async (422 there), never retried."""
        body = await self._call("POST", "login", Priority.OTHER, json={
            "email": email, "password": password, "device_name": device_name})
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise BadResponse("POST /login: the answer has no token")
        return token

    async def zone_scan(self, uuid: str, zone_id: int, *, barcodes: list[str] | None = None,
                        nfc_ids: list[str] | None = None, scan: str = "in",
                        confirmed: bool = False) -> dict[str, Any]:
        """`POST /zones/scan` (UPLOAD: it records a scan a person waits for)."""
        body: dict[str, Any] = {"uuid": uuid, "zoneId": str(zone_id), "scan": scan,
                                "confirmed": confirmed}
        if barcodes:
            body["barcodes"] = barcodes
        if nfc_ids:
            body["nfcIds"] = nfc_ids
        return await self._call("POST", "zones/scan", Priority.UPLOAD, retry=True, json=body)

    async def zone_check(self, zone_id: int, *, barcode: str | None = None,
                         nfc_id: str | None = None, scan: str = "in") -> dict[str, Any]:
        """`POST /zones/check` (OTHER): a dry run, records nothing, so retrying is safe."""
        body: dict[str, Any] = {"zoneId": str(zone_id), "scan": scan}
        if barcode:
            body["barcode"] = barcode
        if nfc_id:
            body["nfcId"] = nfc_id
        return await self._call("POST", "zones/check", Priority.OTHER, retry=True, json=body)

    # -- machinery ---------------------------------------------------------------------

    async def _call(self, method: str, path: str, priority: Priority, *,
                    params: dict[str, Any] | None = None, json: Any = None,
                    retry: bool | None = None, async_mode: bool = False,
                    shape: tuple[type, ...] = (dict,)) -> Any:
        what = f"{method} /{path.split('?')[0]}"
        may_retry = (method == "GET") if retry is None else retry
        params = dict(params or {})
        if async_mode:
            params["async"] = "true"
        attempt = 0
        while True:
            try:
                response = await self._send(method, path, priority, params, json, what)
                if response.status_code == 202 and async_mode:
                    response = await self._poll(path, response, what)
                elif response.status_code == 202:
                    raise NotDelivered(f"{what}: answered 202 (accepted, not done) to a request "
                                       "that was not asynchronous; not counted as done",
                                       status=202)
                return self._decode(response, what, shape)
            except ApiError as err:
                self._failed(err)
                retryable = (err.status is None or err.status >= 500) and \
                    not getattr(err, "no_retry", False)
                if (not may_retry or not retryable or attempt >= self.max_retries
                        or isinstance(err, Validation)):
                    raise
                attempt += 1
                await self.clock.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))

    async def _send(self, method: str, path: str, priority: Priority | None,
                    params: dict[str, Any], json: Any, what: str) -> httpx.Response:
        ticket = await self.governor.acquire(priority) if priority is not None else None
        try:
            if self.before_send is not None:
                await self.before_send()
            response = await self._http.request(method, path, params=params or None, json=json)
            self._observe(response, ticket)
        except httpx.HTTPError as exc:
            raise to_error(what, exc=exc) from exc
        finally:  # answered, failed or timed out: the slot starts ageing now
            if ticket is not None:
                self.governor.done(ticket)
        if response.status_code >= 400:
            err = to_error(what, response=response)
            if response.status_code == 429:
                self.governor.rate_limited(getattr(err, "wait_s", 60.0))
                self.status.rate_limited_until = time.time() + getattr(err, "wait_s", 60.0)
            raise err
        return response

    async def _poll(self, path: str, first: httpx.Response, what: str) -> httpx.Response:
        body = self._decode(first, what, (dict,))
        token = body.get("asyncUuid")
        if not isinstance(token, str) or not token:
            raise BadResponse(f"{what}: 202 without asyncUuid")
        started, delay = self.clock.now(), 0.1
        base = path.split("?")[0]
        while True:
            if self.clock.now() - started > self.async_poll_limit_s:
                err = Transport(f"{what}: the platform did not finish the async request "
                                f"within {self.async_poll_limit_s:.0f} s "
                                "(api.async_poll_limit_s); it will be retried later")
                err.no_retry = True  # type: ignore[attr-defined]  # it already waited long
                raise err
            await self.clock.sleep(delay)
            delay = min(delay * 2, 5.0)
            response = await self._send("GET", base, None, {"asyncUuid": token}, None, what)
            if response.status_code != 202:
                return response

    def _decode(self, response: httpx.Response, what: str, shape: tuple[type, ...]) -> Any:
        try:
            body = loads_strict(response.content)
        except ValueError as exc:
            raise to_error(what, exc=exc) from exc
        if not isinstance(body, shape):
            raise BadResponse(f"{what}: expected a JSON {' or '.join(t.__name__ for t in shape)}"
                              f", got {type(body).__name__}")
        self.status.last_success = time.time()
        self._count("ok")
        return body

    def _observe(self, response: httpx.Response, ticket: Ticket | None = None) -> None:
        headers = response.headers
        remaining = header_number(headers, "X-Remaining-Requests")
        window = header_number(headers, "X-Available-In-Seconds")
        if remaining is not None or window is not None:
            # Polls carry no ticket: they are not counted, and their count is not fresher
            # than the answer to our latest counted request.
            if ticket is not None:
                self.governor.observe(None if remaining is None else int(remaining), window,
                                      ticket)
            self.status.remaining = None if remaining is None else int(remaining)
            self.status.window_s = window
        if "Content-Language" in headers:
            self.status.content_language = headers["Content-Language"]
        date = headers.get("Date")
        if date:
            try:
                server = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                return
            self.status.skew_s = round(server - time.time(), 1)
            if self.on_server_time is not None:
                self.on_server_time(server, time.monotonic())

    def _failed(self, err: ApiError) -> None:
        self.status.last_error = str(err)
        self.status.last_error_at = time.time()
        self.status.last_error_kind = type(err).__name__.lower()
        self._count(self.status.last_error_kind)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def get_status(self) -> dict[str, Any]:
        """Last success/error (ISO 8601 UTC), rate state, skew, outcome counts."""
        s = self.status
        limited = s.rate_limited_until if s.rate_limited_until and \
            s.rate_limited_until > time.time() else None
        return {
            "base_url": self.base_url, "last_success": epoch_iso(s.last_success),
            "last_error": s.last_error, "last_error_at": epoch_iso(s.last_error_at),
            "last_error_kind": s.last_error_kind,
            "remaining": s.remaining, "window_s": s.window_s, "rate_limited_until": epoch_iso(limited),
            "clock_skew_s": s.skew_s, "content_language": s.content_language,
            "requests": dict(self.outcomes), "governor": self.governor.get_status(),
        }


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification always on; `ca_file` adds a private CA to the system's trusted ones."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {ca_file}: {exc}", key="api.ca_file") from exc
    return context


def page_position(link: str) -> dict[str, str]:
    """What a pagination link says about the page: its query parameters, nothing else.

    Platforms write these links as a bare path, an absolute URL on the base URL, or one naming
    another host or scheme (the spec's own examples; a TLS-terminating proxy turns https into
    http). Whatever it names, the page is requested from `api.base_url`'s `entry/tickets`, so
    the token never goes anywhere else; the link's parameters (page number, and any of its own
    such as a pass marker) override the request's. Async flags are ours to set, not the link's."""
    return {k: v for k, v in parse_qsl(urlsplit(link).query, keep_blank_values=True)
            if k not in ("async", "asyncUuid")}


def _require_list(body: Any, key: str, what: str) -> None:
    """A bare list passes; an object must hold a list under `key`. Anything else is unusable:
    read as "no events/zones/tickets" it would empty the cache (a full resync swaps in what it
    got), so it is a BadResponse naming the field, and the pass is retried later."""
    if isinstance(body, list) or isinstance(body.get(key), list):
        return
    got = "missing" if key not in body else f"a {type(body[key]).__name__}"
    raise BadResponse(f"{what}: `{key}` must be a list, got {got}; the answer is not applied")


def _flag(value: bool) -> str:
    return "true" if value else "false"
