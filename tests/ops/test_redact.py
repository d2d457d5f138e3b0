"""Issue 11 item 9: scanned codes in /status are masked unless the request is authenticated."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agent.ops.redact import mask_code, masked_report
from agent.ops.server import build_app

CODE = "NU-VALID-0001"


def report() -> dict[str, Any]:
    return {"health": "pass", "reasons": [{"level": "warn", "code": "no_token", "message": "m"}],
            "lanes": [{"name": "in", "last_scan": {"code": CODE, "status": "valid"}},
                      {"name": "idle", "last_scan": None}]}


def get(token: str, path: str, auth: str | None = None) -> httpx.Response:
    app = build_app(report, lambda: b"gate_health 0.0\n", token)
    headers = {"Authorization": auth} if auth else {}

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1") as client:
            return await client.get(path, headers=headers)
    return asyncio.run(call())


def test_status_without_a_token_masks_codes() -> None:
    response = get("", "/status")
    assert response.status_code == 200 and CODE not in response.text
    lanes = response.json()["lanes"]
    assert lanes[0]["last_scan"] == {"code": "…0001", "status": "valid"}
    assert lanes[1]["last_scan"] is None
    assert response.json()["reasons"][0]["code"] == "no_token"  # reason codes are not scans


def test_status_authenticated_with_the_token_shows_codes() -> None:
    assert get("s3cret", "/status", "Bearer s3cret").json()["lanes"][0]["last_scan"]["code"] \
        == CODE
    assert get("s3cret", "/status", "Bearer wrong").status_code == 401
    assert CODE not in get("", "/status", "Bearer anything").text  # no token: nobody is


def test_mask_code() -> None:
    assert mask_code("NU-VALID-0001") == "…0001"
    assert mask_code("0x04A22B9C1D5E80") == "…5E80"
    assert mask_code("1234567") == "…"  # short codes are not half revealed
    assert mask_code("") == "" and mask_code(None) is None
    assert masked_report({"health": "pass"}) == {"health": "pass"}
