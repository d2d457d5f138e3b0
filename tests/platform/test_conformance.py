"""Conformance: every request the client sends and every answer the sandbox gives, checked
against the platform's published OpenAPI 3.1 contract (../shared/nu-api/openapi.json).

The exchanges are recorded by a transport wrapped around the real one, while a scenario drives
every client method (successes, 401, 404, 422, 429, async) over loopback. OpenAPI 3.1 schemas
are JSON Schema 2020-12, so jsonschema validates them directly with `$ref`s resolved in the
document. Deliberate deviations, each documented in docs/platform.md, are applied as explicit
patches in `DEVIATIONS` rather than by weakening the check.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import agent
from agent.errors import ApiError
from agent.platform.client import PlatformClient
from agent.platform.governor import Governor

SPEC_PATH = Path(agent.__file__).parents[1].parent / "shared/nu-api/openapi.json"
pytestmark = pytest.mark.skipif(
    not SPEC_PATH.is_file(),
    reason=f"platform contract not found at {SPEC_PATH} (only present beside the checkout)")

USED = [("get", "/activated-events"), ("get", "/zones/all"), ("get", "/entry/tickets"),
        ("post", "/entry/tickets"), ("post", "/tickets/pair"), ("get", "/config"), ("get", "/"),
        ("post", "/login"), ("post", "/zones/scan"), ("post", "/zones/check")]
# Query parameters the sandbox puts into its own pagination links (opaque to clients).
# `page` is in the spec's own links (`?page=N`) but not among the operation's parameters.
LINK_PARAMS = {"passStart", "page"}
ASYNC_ACCEPTED = {"type": "object", "required": ["asyncUuid"],
                  "properties": {"asyncUuid": {"type": "string"}}}


class Recorder(httpx.AsyncHTTPTransport):
    """A real transport that keeps (request, status, headers, body) of every exchange."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[httpx.Request, int, httpx.Headers, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        raw = await response.aread()
        self.exchanges.append((request, response.status_code, response.headers,
                               json.loads(raw) if raw else None))
        return httpx.Response(response.status_code, headers=response.headers, content=raw,
                              request=request)


def load_spec() -> dict[str, Any]:
    spec = json.loads(SPEC_PATH.read_text())
    # Deviation 1: `variable` is [] for never-scanned items (the platform's own examples).
    items = spec["paths"]["/entry/tickets"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]["properties"]["content"]["items"]["properties"]
    items["variable"] = {"anyOf": [items["variable"], {"type": "array", "maxItems": 0}]}
    return spec


def _absolute_refs(node: Any) -> Any:
    """A copy of a schema fragment whose `#/...` refs name the spec resource `urn:nu-api`."""
    if isinstance(node, dict):
        return {k: ("urn:nu-api" + v if k == "$ref" and isinstance(v, str) and v.startswith("#")
                    else _absolute_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


class Contract:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        resource = Resource.from_contents(spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:nu-api", resource)

    def deref(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = self.pointer(node["$ref"])
        return node

    def pointer(self, ref: str) -> Any:
        node: Any = self.spec
        for part in ref.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        """JSON Schema 2020-12 errors; local `$ref`s point into the whole spec (the registry)."""
        validator = Draft202012Validator(_absolute_refs(schema), registry=self.registry)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"[:300]
                for e in validator.iter_errors(value)]

    def check_request(self, method: str, path: str, request: httpx.Request) -> list[str]:
        op = self.spec["paths"][path][method]
        problems: list[str] = []
        params = {p["name"]: p for p in (self.deref(x) for x in op.get("parameters", []))}
        for extra in ("async", "asyncUuid"):
            params.setdefault(extra, self.spec["components"]["parameters"][extra])
        for name, value in request.url.params.multi_items():
            if name in LINK_PARAMS:
                continue  # deviation 3: our keyset cursor, only inside links we issued
            if name not in params or params[name]["in"] != "query":
                problems.append(f"undocumented query parameter {name}")
                continue
            problems += self._scalar(name, value, params[name]["schema"])
        for name, p in params.items():
            if p["in"] == "query" and p.get("required") and name not in request.url.params \
                    and "asyncUuid" not in request.url.params:
                problems.append(f"missing required query parameter {name}")
        company = request.headers.get("X-NU-COMPANY-ID")
        if company is None or not company.isdigit():
            problems.append("X-NU-COMPANY-ID header missing or not an integer")
        if method == "post":
            body = json.loads(request.content)
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            problems += [f"request body: {e}" for e in self.errors(schema, body)]
        return problems

    def _scalar(self, name: str, value: str, schema: dict[str, Any]) -> list[str]:
        kind = schema.get("type")
        ok = (kind == "integer" and value.lstrip("-").isdigit()) or \
            (kind == "boolean" and value in ("true", "false")) or kind in ("string", None)
        if ok and "enum" in schema and value not in schema["enum"]:
            ok = False
        return [] if ok else [f"query parameter {name}={value!r} is not {schema}"]

    def check_response(self, method: str, path: str, status: int, headers: httpx.Headers,
                       body: Any) -> list[str]:
        op = self.spec["paths"][path][method]
        if status == 202:
            return self.errors(ASYNC_ACCEPTED, body)
        if status == 429:  # deviation 4: documented once in components, not per operation
            response = self.spec["components"]["responses"]["TooManyRequests"]
        elif str(status) in op["responses"]:
            response = self.deref(op["responses"][str(status)])
        else:
            return [f"status {status} is not documented for {method.upper()} {path}"]
        problems = []
        for name in ("X-Remaining-Requests", "X-Available-In-Seconds"):
            if status != 401 and not headers.get(name, "").isdigit():
                problems.append(f"header {name} missing or not an integer")
        schema = response["content"]["application/json"]["schema"]
        if path == "/activated-events" and status == 200 and isinstance(body, list):
            # Deviation 2: a bare array (the documented example), each element an event.
            schema = {"type": "array", "items": schema["properties"]["events"]["items"]}
        return problems + self.errors(schema, body)


async def scenario(url: str, token: str, transport: Recorder) -> None:
    def client(tok: str = token) -> PlatformClient:
        return PlatformClient(url, tok, 1, "en", 5, Governor(1000), transport=transport)

    async with client() as c:
        await c.whoami()
        await c.config()
        await c.activated_events()
        await c.zones(1001)
        page = await c.entry_tickets(1001, limit=100, include_products=True)
        await c.entry_tickets(1001, page_url=page.next_url)
        await c.entry_tickets(1001, limit=1000, async_mode=True)
        row = {"uuid": str(uuid.uuid4()), "barcode": "SF0000001", "eventId": 1001,
               "zoneId": None, "latitude": 51.5, "longitude": -0.17, "secure": False,
               "admittedThroughGateId": 1, "scannedBy": 8, "scannedOn": "2026-01-01 10:00:00",
               "status": "scanned", "statusDetail": None, "scan": "in"}
        await c.upload_scans(str(uuid.uuid4()), [row, {**row, "uuid": str(uuid.uuid4()),
                                                       "status": "failed",
                                                       "statusDetail": "Wrong gate"}])
        await c.entry_tickets(1001, start_time=page.list_end_time)
        await c.pair_tag("SF0000002", "0x0C27069B10A92615528F", 1001, False, str(uuid.uuid4()))
        await c.zone_scan(str(uuid.uuid4()), 5001, barcodes=["SF0000004"])
        await c.zone_check(5001, barcode="SF0000004")
        await c.login("gate@example.com", "sandbox-password", "lane-1")
        for failing in (c.upload_scans(str(uuid.uuid4()), [{**row, "barcode": "NOPE"}]),
                        c.zones(424242), c.login("gate@example.com", "wrong", "x")):
            with pytest.raises(ApiError):
                await failing
    async with client("not-a-token") as c:
        with pytest.raises(ApiError):
            await c.config()


@pytest.mark.parametrize("variation", [
    {"link_style": "absolute", "scan_time_form": "iso_z"},
    {"link_style": "path", "scan_time_form": "upload"},
    {"link_style": "other_host", "scan_time_form": "iso_z", "upload_answer": "success_false"},
])
def test_client_requests_and_sandbox_answers_follow_the_contract(sandbox, variation):
    """Every variation the sandbox offers stays inside the published contract (with the
    documented deviations); `success: false` is a legal answer the client refuses."""
    contract = Contract(load_spec())
    recorder = Recorder()
    refused = variation.get("upload_answer") == "success_false"
    sandbox.set_faults(**{k: v for k, v in variation.items() if k != "upload_answer"})
    asyncio.run(scenario(sandbox.url, sandbox.token, recorder))
    recorder_false = Recorder()
    if refused:
        sandbox.set_faults(upload_answer="success_false")
        with pytest.raises(ApiError, match="success: false"):
            asyncio.run(_one_upload(sandbox.url, sandbox.token, recorder_false))
    sandbox.set_faults(storm=True)
    recorder_429 = Recorder()
    with pytest.raises(ApiError):
        asyncio.run(_one_call(sandbox.url, sandbox.token, recorder_429))
    problems: list[str] = []
    seen_status: set[int] = set()
    exchanges = recorder.exchanges + recorder_false.exchanges + recorder_429.exchanges
    assert not refused or recorder_false.exchanges[0][3] == {"success": False}
    for request, status, headers, body in exchanges:
        path = request.url.path.removeprefix("/v1") or "/"
        method = request.method.lower()
        where = f"{request.method} {path} -> {status}"
        assert (method, path) in USED, where
        seen_status.add(status)
        problems += [f"{where}: {p}" for p in contract.check_request(method, path, request)]
        problems += [f"{where}: {p}" for p in
                     contract.check_response(method, path, status, headers, body)]
    assert not problems, "\n".join(problems[:30])
    assert {200, 202, 401, 404, 422, 429} <= seen_status


async def _one_upload(url: str, token: str, transport: Recorder) -> None:
    async with PlatformClient(url, token, 1, "en", 5, Governor(1000),
                              transport=transport) as c:
        await c.upload_scans(str(uuid.uuid4()), [{
            "uuid": str(uuid.uuid4()), "barcode": "SF0000003", "eventId": 1001, "zoneId": None,
            "scannedOn": "2026-01-01 10:00:00", "status": "scanned", "scan": "in"}])


async def _one_call(url: str, token: str, transport: Recorder) -> None:
    async with PlatformClient(url, token, 1, "en", 5, Governor(1000),
                              transport=transport) as c:
        await c.zones(1001)


def test_every_operation_we_use_is_in_the_contract():
    spec = json.loads(SPEC_PATH.read_text())
    assert spec["openapi"].startswith("3.1")
    missing = [f"{m.upper()} {p}" for m, p in USED if m not in spec["paths"].get(p, {})]
    assert not missing


def test_the_checker_catches_a_broken_answer():
    """Guard against a validator that accepts anything (e.g. a `$ref` resolved to `{}`)."""
    contract = Contract(load_spec())
    bad = {"content": [{"id": "not-an-int", "variable": {"status": "teleported"}}],
           "total": "many"}
    problems = contract.check_response("get", "/entry/tickets", 200,
                                       httpx.Headers({"X-Remaining-Requests": "1",
                                                      "X-Available-In-Seconds": "60"}), bad)
    assert len(problems) >= 3, problems


def test_refs_inside_schemas_resolve_into_the_spec():
    contract = Contract(load_spec())
    schema = {"$ref": "#/components/responses/ValidationError/content/application~1json/schema"}
    assert contract.errors(schema, {"message": "x", "errors": {}}) == []
    assert contract.errors(schema, {"message": 5})


def test_uploaded_scan_rows_follow_the_contract(tmp_path):
    """What the Uploader really sends for journaled scans — admits and refusals, default and
    named zones, in and out, lanes with and without a gate id — fits `POST /entry/tickets`
    (integers where the schema says so: a device name in `scannedBy` would be refused)."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from agent import demo_data
    from agent.platform.upload import ticket_row
    from agent.runtime.opening import opened_gate
    from agent.store.journal import iter_all
    from tests.conftest import make_site

    site = make_site(tmp_path, datetime.now(UTC).replace(microsecond=0))
    c = demo_data.CODES
    with opened_gate(site.config) as gate:
        entry, floor = gate.config.lane("north-in"), gate.config.lane("floor")
        for code, lane in ((c["valid"], entry), (c["valid"], entry), (c["refunded"], entry),
                           (c["historic"], entry), (c["floor"], floor), (c["floor"], floor),
                           (c["valid2"], replace(entry, gate_id=None))):
            gate.scan(code, lane, site.now)
        rows = [r for r in iter_all(gate.journal) if r["upload_state"] == "pending"]
    assert len(rows) == 7
    contract = Contract(load_spec())
    for scanned_by in (None, 42):
        tickets = [ticket_row(r, scanned_by) for r in rows]
        request = httpx.Request("POST", "http://127.0.0.1/v1/entry/tickets",
                                json={"uuid": str(uuid.uuid4()), "tickets": tickets},
                                headers={"X-NU-COMPANY-ID": "1"})
        assert contract.check_request("post", "/entry/tickets", request) == []
    assert "admittedThroughGateId" not in tickets[-1] and tickets[0]["scannedBy"] == 42
    bad = httpx.Request("POST", "http://127.0.0.1/v1/entry/tickets", json={
        "uuid": "u", "tickets": [{**tickets[0], "scannedBy": "gate-a"}]},
        headers={"X-NU-COMPANY-ID": "1"})
    assert contract.check_request("post", "/entry/tickets", bad)  # the checker does check
