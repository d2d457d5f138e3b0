"""Text from scans, the platform, the venue and the machine is printed exactly as it is.

rich reads `[...]` in a string as markup and `:name:` as an emoji: an event named
`Rock [/b] Night [VIP]` made `status` exit 70 (MarkupError), a customer `Anna [/i] Smith` made
`scan` journal the admit and then crash before the steward saw ADMIT, a code `AB[/]CD` ended
`scan -` half-way, and the hint `pip install gate-agent[hid]` lost its `[hid]`.

Every command's output is fed markup-like text in every field that comes from outside
(hypothesis, over `[`, `]`, `\\`, `/`, `:` and the like) and must show it character for
character; then the audit's cases run end to end as real subprocesses on a real store.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.console import Console

from agent import demo_data
from agent.commands import daemon, devices, pairing, platform, scanning, venue
from agent.core.decide import Decision
from agent.runtime.gate import ScanResult
from agent.runtime.pairing import PairResult, pair_answer
from drivers.discover import Category, DeviceRow
from tests.conftest import DemoSite, run_cli

C = demo_data.CODES
OUTSIDE = st.text(alphabet="[]\\/:=#@!_-. abiVIPsmle", min_size=1, max_size=24).filter(
    lambda s: s.strip() == s)  # a cell's edges are padding, not text
EXAMPLES = ["Rock [/b] Night [VIP]", "Anna [/i] Smith", "AB[/]CD", "QR[/b]1",
            "pip install gate-agent[hid]", "\\[bold]", "x\\", ":smile:", "[tickets.0.barcode: x]"]


def _printed(*shown: Any, draw: Callable[[Console], None] | None = None) -> str:
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    for thing in shown:
        console.print(thing)
    if draw is not None:
        draw(console)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _values(s: str, n: int) -> list[str]:
    """n different values carrying `s`, so each field is found on its own."""
    return [f"{i}{s}" for i in range(n)]


def _decision(code: str, message: str, name: str) -> Decision:
    return Decision(admit=True, status="valid", detail=None, direction="in", message=message,
                    code=code, kind="barcode", ticket={"name": name})


def _all_outputs(s: str) -> tuple[str, list[str]]:
    """Everything every command prints from outside text, with `s` in each such field."""
    v = _values(s, 40)
    report = {
        "health": "warn", "version": "1", "uptime_s": 3,
        "reasons": [{"level": "warn", "code": "x", "message": v[0]}],
        "lanes": [{"name": v[1], "readers_connected": 0, "readers": [], "relay": None,
                   "queue": 0, "last_scan": {"status": v[2], "at": ""},
                   "decisions_5min": {v[3]: 1}, "decisions_total": {},
                   "passage": {"people": {}, "totals": {}, "waiting": 0}}],
        "emergency": {"active": True, "since": v[4]},
        "journal": {"oldest_pending": v[5]},
        "cache": {"events": [{"id": 1, "name": v[6], "items": 1, "last_sync": v[7]}]},
        "venue": {"venue": v[8], "device": v[9], "connected": True, "lag": 0,
                  "claims_granted": 0, "claims_conflicted": 0, "claims_timed_out": 0,
                  "decided_offline": 0, "conflicts": 0, "gates": {v[10]: 1},
                  "leader": {"leader": v[11]}},
        "platform": {"remaining": 1, "last_error": v[12], "clock_skew_s": 0},
    }
    answer = {**_decision(v[13], v[14], v[15]).as_dict(), "uuid": None, "record": True}
    listing = {"counts": {"pending": 1, "quarantined": 0, "local": 0, "sent": 0},
               "more": False, "scans": [{"scanned_on": "2026-01-01T00:00:00Z", "lane": v[16],
                                         "code": v[17], "direction": "in", "status": v[18],
                                         "status_detail": None, "upload_state": "pending",
                                         "reason": v[19]}]}
    found = [Category("hid", [], f"pip install gate-agent{v[20]}"),
             Category("serial", [DeviceRow("serial", v[21], v[22], v[23])])]
    paired = PairResult(v[24], v[25], 1, 2, v[26], (), v[27],
                        ScanResult(_decision(v[28], v[29], ""), None))
    sync = {"requests": 1, "passes": [], "leader": v[30],
            "events": [{"id": 1, "name": v[31], "items": 1, "cursor": v[32]}]}
    upload = {"sent": 0, "quarantined": 0, "requests": 1, "pending": 0,
              "quarantined_total": 0, "error": v[33], "auth": False}
    gates = [{"device": v[34], "state": "online", "age_s": 1.0,
              "reasons": [{"message": v[35]}]}]
    printed = _printed(
        scanning.imported_line({"path": v[36], "count": 1, "kind": "tickets", "event_id": 1,
                                "skipped": 0}),
        scanning.queue_table(listing), *devices.found_view(found),
        devices.lanes_table([{"lane": v[37], "readers": [{"url": v[38], "source": "config"}],
                              "relay": None, "relay_out": None}], {}),
        platform.sync_table(False, sync), *platform.upload_lines(upload, "c.toml"),
        venue.gates_table(v[39], gates),
        venue.quarantine_table("v", [{"row": {"barcode": v[0]}, "at": "", "reason": v[1]}]),
        venue.conflicts_table([{"scanned_on": "", "event_id": 1, "item_id": 1, "zone_id": 1,
                                "device": "d", "lane": "l", "offline": 0, "detail": v[2]}]),
        draw=lambda console: (daemon.render(report, console),
                              scanning._show(answer, False, console),
                              pairing._show(pair_answer(paired), console)))
    return printed, v


@settings(max_examples=150, deadline=None)
@given(OUTSIDE)
@example("pip install gate-agent[hid]")
@example("Rock [/b] Night [VIP]")
@example("\\[bold]")
@example(":smile:")
@example("[/]")
def test_every_output_shows_outside_text_exactly(s: str) -> None:
    printed, values = _all_outputs(s)
    missing = [value for value in values if value not in printed]
    assert not missing, (missing, printed)


def test_the_hint_keeps_its_extra_in_brackets() -> None:
    printed = _printed(*devices.found_view([Category("hid", [], "pip install gate-agent[hid]")]))
    assert "pip install gate-agent[hid]" in printed


# -- end to end: the audit's cases on a real store, as real subprocesses --------------------


def _provision_with_markup(site: DemoSite, name: str, event_name: str) -> None:
    payloads = demo_data.build(site.now)
    payloads["events"][0]["name"] = event_name
    for item in payloads["tickets"]["content"]:
        if item["const"]["barcode"] == C["valid"]:
            item["stable"]["customerName"] = name
    folder = site.root / "markup[b]"
    folder.mkdir()
    files = []
    for key in ("events", "zones", "tickets"):
        path = folder / f"{key}[i].json"
        path.write_text(json.dumps(payloads[key]), encoding="utf-8")
        files.append(str(path))
    out = run_cli("import", "--config", str(site.config_path), *files, env=_env())
    assert out.returncode == 0, out.stderr
    assert all(f in out.stdout for f in files), out.stdout  # file names with brackets, too


WIDE = {"COLUMNS": "400"}


def _env() -> dict[str, str]:
    import os
    return {**os.environ, **WIDE}


def test_markup_in_names_and_codes_never_stops_a_command(site: DemoSite) -> None:
    cfg = str(site.config_path)
    _provision_with_markup(site, "Anna [/i] Smith", "Rock [/b] Night [VIP]")
    check = run_cli("check", "--config", cfg, C["valid"], env=_env())
    assert check.returncode == 0, check.stderr
    assert "ADMIT" in check.stdout and "(Anna [/i] Smith)" in check.stdout
    scan = run_cli("scan", "--config", cfg, C["valid"], env=_env())
    assert scan.returncode == 0, scan.stderr  # the steward sees ADMIT, not a crash
    assert "ADMIT" in scan.stdout and "(Anna [/i] Smith)" in scan.stdout
    many = run_cli("scan", "--config", cfg, "-", env=_env(),
                   stdin=f"{C['valid2']}\nAB[/]CD\n{C['floor']}\n")
    lines = many.stdout.splitlines()
    assert len(lines) == 3 and "Traceback" not in many.stderr, (many.stdout, many.stderr)
    assert "AB[/]CD" in lines[1] and C["floor"] in lines[2]  # the third was scanned too
    reader = run_cli("scan", "--config", cfg, "QR[/b]1", env=_env())
    assert reader.returncode == 1 and "QR[/b]1" in reader.stdout, reader.stderr
    queue = run_cli("queue", "--config", cfg, env=_env())
    assert queue.returncode == 0, queue.stderr
    assert "QR[/b]1" in queue.stdout and "AB[/]CD" in queue.stdout


def test_status_shows_an_event_named_with_markup(site: DemoSite) -> None:
    report = {"health": "pass", "reasons": [{"level": "warn", "code": "platform_refused",
                                             "message": "[tickets.0.barcode: invalid]"}],
              "version": "x", "uptime_s": 1, "lanes": [], "journal": {},
              "cache": {"events": [{"id": 501, "name": "Rock [/b] Night [VIP]", "items": 3}]},
              "platform": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(report).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run_cli("status", "--config", str(site.config_path), "--url",
                      f"http://127.0.0.1:{server.server_port}", env=_env())
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    assert "Event 501 Rock [/b] Night [VIP]: 3 items" in out.stdout
    assert "[tickets.0.barcode: invalid]" in out.stdout


def test_import_files_named_with_markup(site: DemoSite, tmp_path: Path) -> None:
    """(The names are checked in _provision_with_markup; here a file the import refuses.)"""
    bad = tmp_path / "x[b].json"
    bad.write_text("[1, 2")
    out = run_cli("import", "--config", str(site.config_path), str(bad))
    assert out.returncode == 2 and str(bad) in out.stderr
