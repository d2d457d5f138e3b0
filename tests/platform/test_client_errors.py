"""Unit tests of the client's error mapping, headers, retries and URL rules (mock transport).

Integration over real sockets is in test_sandbox_integration.py; here every failure the
platform link can produce is scripted, to pin down which ApiError each one becomes, that
messages say what to do, and that the token never leaks into them.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from agent.errors import (
    BadResponse,
    ConfigError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Transport,
    Unauthenticated,
    Validation,
    register_secret,
)
from agent.platform.client import PlatformClient, check_base_url
from agent.platform.governor import Governor

TOKEN = "7|UnitTestSecretTokenValue"
register_secret(TOKEN)


class InstantClock:
    """Sleeps return at once but time moves, so backoff and poll limits run instantly."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def make_client(handler, **kw) -> tuple[PlatformClient, InstantClock]:
    clock = InstantClock()
    client = PlatformClient("https://api.example.test/v1", TOKEN, 42, "nl", 5.0,
                            Governor(1000, 1.0, 0), transport=httpx.MockTransport(handler),
                            clock=clock, **kw)
    return client, clock


def call(client: PlatformClient, coro_fn):
    async def go():
        async with client:
            return await coro_fn(client)
    return asyncio.run(go())


def answer(status: int, body=None, headers=None, raw: bytes | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if raw is not None:
            return httpx.Response(status, content=raw, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


@pytest.mark.parametrize(("status", "body", "kind", "hint"), [
    (401, {"message": "Unauthenticated."}, Unauthenticated, "api.token_file"),
    (403, {"message": "Your trial has expired."}, Forbidden, "trial"),
    (404, {"message": "No query results for model [Event]."}, NotFound, "event id"),
    (500, {"message": "Server Error."}, ServerError, "retry"),
    (503, None, ServerError, "retry"),
    (418, {"message": "teapot"}, BadResponse, "418"),
])
def test_status_maps_to_one_specific_error_with_a_hint(status, body, kind, hint):
    client, _ = make_client(answer(status, body))
    with pytest.raises(kind) as info:
        call(client, lambda c: c.config())
    assert hint in str(info.value)
    assert "GET /config" in str(info.value)
    assert info.value.status == status


def test_422_carries_laravel_field_errors():
    body = {"message": "The given data was invalid.",
            "errors": {"tickets.3.barcode": ["The selected barcode is invalid."]}}
    client, _ = make_client(answer(422, body))
    with pytest.raises(Validation) as info:
        call(client, lambda c: c.upload_scans("u-1", [{"barcode": "X"}]))
    assert info.value.errors == {"tickets.3.barcode": ["The selected barcode is invalid."]}
    assert "tickets.3.barcode" in str(info.value)


@pytest.mark.parametrize(("headers", "wait"), [({"X-Available-In-Seconds": "17"}, 17.0),
                                               ({}, 60.0), ({"X-Available-In-Seconds": "x"}, 60.0)])
def test_429_reports_the_wait_and_blocks_the_governor(headers, wait):
    client, _ = make_client(answer(429, {"message": "Too Many Attempts."},
                                   {"X-Remaining-Requests": "0", **headers}))
    with pytest.raises(RateLimited) as info:
        call(client, lambda c: c.activated_events())
    assert info.value.wait_s == wait
    status = client.governor.get_status()
    assert status["remaining"] == 0
    assert status["rate_limited_for_s"] == pytest.approx(wait, abs=0.5)  # real clock ticks


@pytest.mark.parametrize("exc", [httpx.ConnectError("connection refused"),
                                 httpx.ReadTimeout("timed out"),
                                 httpx.RemoteProtocolError("peer closed connection")])
def test_transport_failures_become_transport_errors_after_bounded_retries(exc):
    calls = []

    def handler(request):
        calls.append(request)
        raise exc

    client, clock = make_client(handler, max_retries=2)
    with pytest.raises(Transport) as info:
        call(client, lambda c: c.zones(1))
    assert isinstance(info.value.__cause__, httpx.HTTPError)
    assert len(calls) == 3 and clock.slept == [0.5, 1.0]


def test_non_json_and_wrong_shape_are_bad_responses():
    client, _ = make_client(answer(200, raw=b"<html>proxy error</html>"))
    with pytest.raises(BadResponse) as info:
        call(client, lambda c: c.config())
    assert isinstance(info.value.__cause__, ValueError)
    client, _ = make_client(answer(200, body=[1, 2]))
    with pytest.raises(BadResponse, match="expected a JSON dict"):
        call(client, lambda c: c.config())


def test_get_is_retried_on_5xx_but_login_is_never_retried():
    seen = []

    def flaky(request):
        seen.append(request.url.path)
        if len(seen) == 1:
            return httpx.Response(502, json={"message": "Bad gateway"})
        return httpx.Response(200, json={"id": "8"})

    client, _ = make_client(flaky)
    assert call(client, lambda c: c.config()) == {"id": "8"}
    assert len(seen) == 2
    seen.clear()
    client, _ = make_client(lambda r: (seen.append(1), httpx.Response(500, json={}))[1])
    with pytest.raises(ServerError):
        call(client, lambda c: c.login("a@b.c", "pw", "gate"))
    assert len(seen) == 1


def test_every_request_carries_auth_company_language_and_user_agent():
    got: list[httpx.Request] = []

    def handler(request):
        got.append(request)
        return httpx.Response(200, json={"user": {}}, headers={
            "Content-Language": "nl", "X-Remaining-Requests": "55",
            "X-Available-In-Seconds": "60", "Date": "Mon, 01 Jan 2livre"})

    client, _ = make_client(handler)
    call(client, lambda c: c.whoami())
    headers = got[0].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-NU-COMPANY-ID"] == "42"
    assert headers["Accept-Language"] == "nl"
    assert headers["User-Agent"].startswith("gate-agent/")
    status = client.get_status()
    assert status["remaining"] == 55 and status["content_language"] == "nl"
    assert status["requests"] == {"ok": 1}


def test_token_never_appears_in_errors_or_status_even_when_echoed():
    echo = {"message": f"Token {TOKEN} is revoked (Bearer {TOKEN})"}
    client, _ = make_client(answer(401, echo))
    with pytest.raises(Unauthenticated) as info:
        call(client, lambda c: c.whoami())
    assert TOKEN not in str(info.value)
    assert TOKEN not in json.dumps(client.get_status())
    assert "***" in str(info.value)


def test_async_poll_gives_up_after_the_limit_with_a_clear_error():
    polls = []

    def handler(request):
        if "asyncUuid" in request.url.params:
            polls.append(request)
        return httpx.Response(202, json={"asyncUuid": "abc"})

    client, clock = make_client(handler, async_poll_limit_s=30)
    with pytest.raises(Transport, match="async_poll_limit_s"):
        call(client, lambda c: c.entry_tickets(1, limit=1000, async_mode=True))
    assert polls and clock.t <= 40
    assert client.governor.get_status()["granted"]["REFRESH"] == 1  # polls are not counted


@pytest.mark.parametrize("link", [
    "https://evil.example/v1/events/tickets?page=3&eventId=1",
    "http://api.oconner.com/v1/entry/tickets?page=3",
    "/v1/entry/tickets?page=3", "entry/tickets?page=3&async=true&asyncUuid=x"])
def test_a_pagination_link_only_names_a_page_asked_of_the_base_url(link):
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"content": []})

    client, _ = make_client(handler)
    call(client, lambda c: c.entry_tickets(1, page_url=link))
    (request,) = seen
    assert request.url.host == httpx.URL(client.base_url).host  # the token stays home
    assert request.url.path.endswith("/entry/tickets")
    assert request.url.params["page"] == "3" and request.url.params["eventId"] == "1"
    assert "async" not in request.url.params and "asyncUuid" not in request.url.params


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost/v1",
                                 "http://[::1]:9/v1", "http://127.9.9.9/v1",
                                 "https://api.nuwebgroup.com/v1/"])
def test_base_url_accepts_https_and_loopback_http(url):
    assert check_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://api.nuwebgroup.com/v1", "http://10.0.0.5/v1",
                                 "ftp://x/v1", "api.nuwebgroup.com"])
def test_base_url_refuses_plain_http_beyond_loopback(url):
    with pytest.raises(ConfigError) as info:
        check_base_url(url)
    assert info.value.key == "api.base_url"
