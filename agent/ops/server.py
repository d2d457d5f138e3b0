"""The status endpoint: `GET /status` (JSON), `GET /metrics` (Prometheus), `GET /healthz`, and
the web dashboard: `/` (this gate), `/venue` (every gate of the venue), `/api/venue`, `/assets/*`.

A starlette app served by uvicorn inside the daemon's event loop. It listens on loopback by
default; on any other address `[status] token` is required (the daemon refuses to start
without it) and every request must carry `Authorization: Bearer <token>`, else 401. Scanned
codes in `/status` are masked unless the request is authenticated (agent.ops.redact).

A browser cannot add that header to a page it navigates to, so the dashboard has one public
page, `/login`: the token typed there sets an HttpOnly, SameSite=Strict cookie holding an HMAC
of the token (never the token itself), accepted instead of the header. Every other path, pages
and assets included, follows the same rule as `/status`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.errors import ConfigError
from agent.ops.dashboard import PAGES, load_assets
from agent.ops.redact import masked_report

COOKIE = "gate_dashboard"
LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>gate-agent</title>
<style>body{font:16px system-ui,sans-serif;margin:2rem auto;max-width:22rem;padding:0 1rem}
input,button{font:inherit;width:100%;padding:.6rem;margin:.3rem 0;box-sizing:border-box}</style>
</head><body><h1>gate-agent</h1><p>{message}</p><form method="post" action="/login">
<input type="hidden" name="next" value="{next}"><label>Status token
<input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Open the dashboard</button></form></body></html>"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_listen(listen: str, token: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not is_loopback(host) and not token:
        raise ConfigError(f"listening on {host} (not loopback) requires a token",
                          key="status.token")
    return host, int(port)


def session_value(token: str) -> str:
    """The dashboard cookie: proves the token was typed, without storing it in the browser."""
    return hmac.new(token.encode(), b"gate-agent dashboard", hashlib.sha256).hexdigest()


def build_app(report: Callable[[], dict[str, Any]], metrics: Callable[[], bytes],
              token: str = "", venue: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    assets = load_assets()

    def authenticated(request: Request) -> bool:
        if not token:
            return False
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session_value(token).encode())

    def authorised(request: Request) -> bool:
        return not token or authenticated(request)

    def guard(handler: Callable[[Request], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse({"message": "Unauthenticated."}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return handler(request)
        return endpoint

    def status(request: Request) -> Response:
        snap = report() if authenticated(request) else masked_report(report())
        return Response(json.dumps(snap, default=str, indent=1),
                        media_type="application/json")

    def healthz(_: Request) -> Response:
        snap = report()
        code = 503 if snap["health"] == "fail" else 200
        return JSONResponse({"health": snap["health"], "reasons": snap["reasons"]},
                            status_code=code)

    def prometheus(_: Request) -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def venue_data(_: Request) -> Response:
        data = venue() if venue is not None else {"venue": None, "gates": []}
        return Response(json.dumps(data, default=str), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    def page(request: Request) -> Response:
        if not authorised(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        body, kind = assets[PAGES[request.url.path]]
        return Response(body, media_type=kind, headers={"Cache-Control": "no-store"})

    def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return JSONResponse({"message": "Not found."}, status_code=404)
        return Response(found[0], media_type=found[1])

    async def login(request: Request) -> Response:
        wanted = request.query_params.get("next", "/")
        message = "Type this gate's [status] token."
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            wanted = (form.get("next") or ["/"])[0]
            given = (form.get("token") or [""])[0]
            if token and hmac.compare_digest(given.encode(), token.encode()):
                done = RedirectResponse(wanted if wanted in PAGES else "/", status_code=303)
                done.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
                return done
            message = "That is not this gate's token."
        text = LOGIN_PAGE.replace("{message}", message).replace(
            "{next}", html.escape(wanted if wanted in PAGES else "/"))
        return Response(text, status_code=200 if request.method == "GET" else 401,
                        media_type="text/html; charset=utf-8")

    return Starlette(routes=[
        Route("/status", guard(status)),
        Route("/healthz", guard(healthz)),
        Route("/metrics", guard(prometheus)),
        Route("/api/venue", guard(venue_data)),
        Route("/assets/{name}", guard(asset)),
        Route("/login", login, methods=["GET", "POST"]),
        *(Route(path, page) for path in PAGES),
    ])
