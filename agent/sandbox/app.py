"""The sandbox's HTTP face: a Starlette app that answers like the platform under `/v1`.

Every platform request goes through `handle`: auth (401), company header (403), 2-hour async
results (`asyncUuid` polls, not counted), the per-company rolling-window rate limit (429 with
`X-Remaining-Requests`/`X-Available-In-Seconds` on every authenticated answer), `?async=true`
(202 `{asyncUuid}`), then the endpoint. Faults that need the raw connection (latency, resets,
5xx, malformed JSON) are applied by `FaultLayer` around the whole app.
"""

from __future__ import annotations

import asyncio
import json
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.sandbox import rules
from agent.sandbox.control import control_routes
from agent.sandbox.state import DEMO_EMAIL, DEMO_PASSWORD, SandboxState
from agent.sandbox.store import fmt, parse_time

LANGUAGES = ("en", "nl", "de", "fr", "es")
AFTER_COMMIT = "sandbox.after_commit"  # scope key: the fault to apply to an applied request's answer
OTHER_HOST = "https://api.oconner.example"  # the spec's links name other hosts
Answer = tuple[int, Any]


def _msg(text: str, **extra: Any) -> dict[str, Any]:
    return {"message": text, **extra}


def invalid(errors: dict[str, list[str]]) -> Answer:
    return 422, _msg("The given data was invalid.", errors=errors)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class Platform:
    """The `/v1` endpoints, bound to one SandboxState."""

    def __init__(self, state: SandboxState):
        self.state = state

    async def handle(self, request: Request) -> Response:
        st = self.state
        path = "/" + request.path_params.get("path", "").strip("/")
        raw = await request.body() if request.method == "POST" else b""
        lang = request.headers.get("accept-language", "en").split(",")[0].split("-")[0].strip()
        headers = {"Content-Language": lang if lang in LANGUAGES else "en"}
        with st.lock:
            st.received.per_endpoint[f"{request.method} {path}"] += 1
            status, body = self._dispatch(request, path, raw, headers)
            headers["Date"] = formatdate(st.clock.now(), usegmt=True)
            if request.method == "POST" and status < 400:
                roll, f = st.rng.random(), st.faults
                if roll < f.lost_after_commit_rate:
                    request.scope[AFTER_COMMIT] = "lost"
                elif roll < f.lost_after_commit_rate + f.error_after_commit_rate:
                    request.scope[AFTER_COMMIT] = "error"
        return JSONResponse(body, status_code=status, headers=headers)

    def _dispatch(self, request: Request, path: str, raw: bytes,
                  headers: dict[str, str]) -> Answer:
        st, q = self.state, request.query_params
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return invalid({"body": ["The request body must be JSON."]})
        company_raw = request.headers.get("x-nu-company-id")
        company = st.company_id if not company_raw else \
            int(company_raw) if company_raw.strip().isdigit() else -1
        if path == "/login" and request.method == "POST":
            # No token yet: counted against the company named (or the default one).
            allowed, remaining = st.take_slot(company if company > 0 else st.company_id)
            headers["X-Remaining-Requests"] = str(remaining)
            headers["X-Available-In-Seconds"] = str(int(st.window_s))
            if not allowed:
                return 429, _msg("Too Many Attempts.")
            if _flag(q.get("async")):
                return invalid({"async": ["Requests carrying a password cannot be async."]})
            return self.login(body)
        auth = request.headers.get("authorization", "")
        user = st.user_for(auth[7:].strip() if auth.lower().startswith("bearer ") else None)
        if user is None:
            return 401, _msg("Unauthenticated.")
        if company not in user.companies or st.faults.trial_expired:
            return 403, _msg("This action is unauthorized.")
        if q.get("asyncUuid"):
            return self.poll(q["asyncUuid"], company, headers)
        allowed, remaining = st.take_slot(company)
        headers["X-Remaining-Requests"] = str(remaining)
        headers["X-Available-In-Seconds"] = str(int(st.window_s))
        if not allowed:
            return 429, _msg("Too Many Attempts.")
        answer = self.route(request, path, body)
        if _flag(q.get("async")) and answer[0] < 400:
            return 202, {"asyncUuid": st.park(answer[0], answer[1], company)}
        return answer

    def poll(self, key: str, company: int, headers: dict[str, str]) -> Answer:
        st = self.state
        now = st.clock.now()
        st.expire_async(now)
        result = st.async_results.get(key)
        headers["X-Remaining-Requests"] = str(st.remaining(company))
        headers["X-Available-In-Seconds"] = str(int(st.window_s))
        if result is None or result.company_id != company:
            return 404, _msg("No query results for model [AsyncRequest].")
        if now < result.ready_at:
            return 202, {"asyncUuid": key}
        return result.status, result.body

    def route(self, request: Request, path: str, body: Any) -> Answer:
        st, method = self.state, request.method
        now = st.clock.now()
        try:
            if (method, path) == ("GET", "/"):
                return 200, {"user": {"id": 8, "name": "Gate Demo", "email": DEMO_EMAIL}}
            if (method, path) == ("GET", "/config"):
                return 200, {"id": "8", "name": "Gate Demo", "login": DEMO_EMAIL,
                             "companyId": str(st.company_id),
                             "companyName": st.seed.company_name, "nfcKey": "12356789",
                             "permissions": {"zonesScan": True, "admitGuests": True}}
            if (method, path) == ("GET", "/activated-events"):
                return 200, st.seed.events
            if (method, path) == ("GET", "/zones/all"):
                event_id = self._event_id(request.query_params.get("eventId"))
                return 200, [dict(z) for z in st.seed.zones.get(event_id, [])]
            if (method, path) == ("GET", "/entry/tickets"):
                return self.entry_tickets(request)
            if (method, path) == ("POST", "/entry/tickets"):
                return self.upload(body, now)
            if (method, path) == ("POST", "/tickets/pair"):
                return self._once(st.pair_replies, body,
                                  lambda: rules.pair(st.store, body, now))
            if (method, path) in (("POST", "/zones/scan"), ("POST", "/zones/check")):
                record = path == "/zones/scan"
                run = lambda: rules.zone_decision(  # noqa: E731
                    st.store, st.zones, body, now, record, st.faults.scan_time_form)
                return self._once(st.scan_replies, body, run) if record else (200, run())
        except rules.Invalid as exc:
            return invalid(exc.errors)
        except LookupError as exc:
            return 404, _msg(f"No query results for model [{exc.args[0]}].")
        return 404, _msg(f"The route {path.lstrip('/')} could not be found.")

    def _event_id(self, raw: str | None) -> int:
        if not raw or not raw.isdigit():
            raise rules.Invalid({"eventId": ["The event id field is required."]})
        if int(raw) not in self.state.seed.items:
            raise LookupError("Event")
        return int(raw)

    @staticmethod
    def _once(replies: dict[str, Any], body: Any, run: Any) -> Answer:
        key = body.get("uuid") if isinstance(body, dict) else None
        if isinstance(key, str) and key in replies:
            return 200, replies[key]
        answer = run()
        if isinstance(key, str) and key:
            replies[key] = answer
        return 200, answer

    def login(self, body: Any) -> Answer:
        body = body if isinstance(body, dict) else {}
        missing = {k: [f"The {k.replace('_', ' ')} field is required."]
                   for k in ("email", "password", "device_name") if not body.get(k)}
        if missing:
            return invalid(missing)
        if body["email"] != DEMO_EMAIL or body["password"] != DEMO_PASSWORD:
            return invalid({"email": ["The provided credentials are incorrect."]})
        return 200, {"token": self.state.issue_token()}

    def upload(self, body: Any, now: float) -> Answer:
        """A repeated request uuid gets the first answer and records nothing; `upload_answer`
        other than "success" takes the rows and applies none (not stored under the uuid, so a
        retry once the platform recovers is applied)."""
        st = self.state
        key = body.get("uuid") if isinstance(body, dict) else None
        rows = body.get("tickets") if isinstance(body, dict) else None
        rows = rows if isinstance(rows, list) else []
        if isinstance(key, str) and key in st.upload_replies:
            st.received.uploads.extend(rules.received_row(r, key, "replayed request")
                                       for r in rows)
            st.received.request_uuids.append(key)
            return 200, st.upload_replies[key]
        if st.faults.upload_answer != "success" and isinstance(key, str):
            st.received.uploads.extend(
                rules.received_row(r, key, f"answered {st.faults.upload_answer}") for r in rows)
            st.received.request_uuids.append(key)
            if st.faults.upload_answer == "accepted_202":
                return 202, {"success": True}
            return 200, {"success": False}
        answer = rules.upload(st.store, body, st.scan_uuids, now, st.received.uploads,
                              st.faults.scan_time_form)
        assert isinstance(key, str)
        st.upload_replies[key] = answer
        st.received.request_uuids.append(key)
        return 200, answer

    def entry_tickets(self, request: Request) -> Answer:
        st, q = self.state, request.query_params
        event_id = self._event_id(q.get("eventId"))
        top = 1000 if _flag(q.get("async")) else 100
        limit_raw = q.get("limit", "100")
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= top:
            return invalid({"limit": [f"The limit must be between 1 and {top}."]})
        limit = int(limit_raw)
        start = parse_time(q["startTime"]) if q.get("startTime") else None
        if q.get("startTime") and start is None:
            return invalid({"startTime": ["The start time is not a valid date."]})
        page_raw = q.get("page", "1")
        if not page_raw.isdigit() or int(page_raw) < 1:
            return invalid({"page": ["The page must be at least 1."]})
        page = int(page_raw)
        pass_start = int(q["passStart"]) if q.get("passStart", "").isdigit() \
            else int(st.clock.now())
        st.store.hold_horizon(float(pass_start))
        zones, products = _flag(q.get("includeZones")), _flag(q.get("includeProducts"))
        content, total = st.store.listing(event_id, start, page, limit, products)
        if not zones:
            for item in content:
                item.pop("zoneData", None)
        params = {"eventId": event_id, "limit": limit, "includeZones": str(zones).lower(),
                  "includeProducts": str(products).lower(), "passStart": pass_start}
        if q.get("startTime"):
            params["startTime"] = q["startTime"]
        last = max(1, -(-total // limit))
        link = self._link_base(request)
        links = {"first": link + urlencode(dict(params, page=1)),
                 "last": link + urlencode(dict(params, page=last)),
                 "self": link + urlencode(dict(params, page=page))}
        if page > 1:
            links["prev"] = link + urlencode(dict(params, page=min(page - 1, last)))
        if page * limit < total:
            links["next"] = link + urlencode(dict(params, page=page + 1))
        return 200, {"content": content, "listEndTime": fmt(pass_start), "total": total,
                     "pagination": links, "dataCaptureQuestions": []}

    def _link_base(self, request: Request) -> str:
        """Where the links point, by `link_style`: our own absolute URL, a bare path, or the
        spec's style of another host (and plain http, as a TLS-terminating proxy writes)."""
        style, path = self.state.faults.link_style, request.url.path
        if style == "path":
            return f"{path}?"
        if style == "other_host":
            return f"{OTHER_HOST.replace('https:', 'http:')}/v1/events/tickets?"
        return f"{request.url.scheme}://{request.url.netloc}{path}?"


class FaultLayer:
    """ASGI wrapper applying latency, connection resets, 5xx and malformed JSON to `/v1`."""

    def __init__(self, app: ASGIApp, state: SandboxState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        with self.state.lock:
            f, rng = self.state.faults, self.state.rng
            latency = f.latency_s
            roll = rng.random()
            reset = roll < f.reset_rate
            error = not reset and roll < f.reset_rate + f.error_rate
            broken = not reset and not error and \
                roll < f.reset_rate + f.error_rate + f.malformed_rate
        if latency:
            await asyncio.sleep(latency)
        if not (reset or error or broken):
            await self.app(scope, receive, _after_commit(scope, send))
            return
        if reset:  # promise a body, send half of it, hang up: the client sees a dropped link
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"content": [', "more_body": True})
            raise ConnectionResetError("sandbox: injected connection reset")
        if error:
            await JSONResponse(_msg("Server Error."), status_code=500)(scope, receive, send)
            return
        if broken:
            await Response(b'{"content": [{"id": 1,', status_code=200,
                           media_type="application/json")(scope, receive, send)
            return


def _after_commit(scope: Scope, send: Send) -> Send:
    """`send` for an answer the platform may lose after applying its request: the handler
    marks the scope (`AFTER_COMMIT`), and the answer goes out as a dropped link or a 500."""

    async def guarded(message: Any) -> None:
        fault = scope.get(AFTER_COMMIT)
        if fault is None:
            await send(message)
            return
        if message["type"] != "http.response.start":
            return  # the real answer's body is swallowed
        if fault == "lost":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"succ', "more_body": True})
            raise ConnectionResetError("sandbox: answer lost after commit")
        body = json.dumps(_msg("Server Error.")).encode()
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return guarded


def build_app(state: SandboxState) -> ASGIApp:
    """The whole sandbox: platform under /v1, control under /_sandbox, faults around both."""
    platform = Platform(state)
    routes = [Route("/v1", platform.handle, methods=["GET", "POST"]),
              Route("/v1/{path:path}", platform.handle, methods=["GET", "POST"]),
              *control_routes(state)]
    return FaultLayer(Starlette(routes=routes), state)
