"""The status endpoint: `GET /status` (JSON), `GET /metrics` (Prometheus), `GET /healthz`.

A starlette app served by uvicorn inside the daemon's event loop. It listens on loopback by
default; on any other address `[status] token` is required (the daemon refuses to start
without it) and every request must carry `Authorization: Bearer <token>`, else 401. Scanned
codes in `/status` are masked unless the request is authenticated (agent.ops.redact).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.errors import ConfigError
from agent.ops.redact import masked_report


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


def build_app(report: Callable[[], dict[str, Any]], metrics: Callable[[], bytes],
              token: str = "") -> Starlette:
    def authenticated(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

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

    return Starlette(routes=[
        Route("/status", guard(status)),
        Route("/healthz", guard(healthz)),
        Route("/metrics", guard(prometheus)),
    ])
