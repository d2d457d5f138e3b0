"""Issue 13's "crashes and lies" in the CLI, each as a real subprocess: truthful exit codes,
`cacheEmpty`, `-c` anywhere, `status --url .../status`, `queue --limit`, a closed pipe, [api]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from agent import demo_data
from agent.ops.status import evaluate
from tests.conftest import PROJECT_ROOT, DemoSite, run_cli

C = demo_data.CODES


def test_scan_stdin_exit_code_tells_whether_all_were_admitted(site: DemoSite) -> None:
    cfg = str(site.config_path)
    refused = run_cli("scan", "--config", cfg, "--lane", "floor", "-",
                      stdin=f"{C['refunded']}\n{C['unknown']}\n")
    assert refused.returncode == 1, refused.stdout
    admitted = run_cli("scan", "--config", cfg, "--lane", "floor", "-", stdin=f"{C['valid']}\n")
    assert admitted.returncode == 0, admitted.stdout


def test_an_empty_cache_says_so_instead_of_blaming_the_ticket(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(demo_data.demo_config(tmp_path / "state"))
    out = run_cli("check", "--config", str(config), "--json", C["valid"])
    assert out.returncode == 1
    answer = json.loads(out.stdout)
    assert answer["statusDetail"] == "cacheEmpty" and "No tickets synced yet" in answer["message"]


def test_config_before_the_command_and_from_the_environment(site: DemoSite) -> None:
    before = run_cli("-c", str(site.config_path), "check", C["valid"], "--json")
    assert before.returncode == 0, before.stderr
    env = run_cli("check", C["valid"], "--json", env={"GATE_AGENT_CONFIG": str(site.config_path)})
    assert env.returncode == 0, env.stderr


def test_queue_limit_and_a_closed_pipe(site: DemoSite) -> None:
    codes = "".join(f"{C['unknown']}-{i}\n" for i in range(30))
    run_cli("scan", "--config", str(site.config_path), "-", stdin=codes)
    limited = json.loads(run_cli("queue", "--config", str(site.config_path), "--json",
                                 "--limit", "5").stdout)
    assert len(limited["scans"]) == 5 and limited["more"] is True
    table = run_cli("queue", "--config", str(site.config_path), "--limit", "3")
    assert "the oldest 3 shown" in table.stdout
    piped = subprocess.run(
        f"{sys.executable} -m agent queue --all --json --config {site.config_path} | head -c 20",
        shell=True, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


def test_status_url_as_the_daemon_logs_it(site: DemoSite) -> None:
    asked: list[str] = []
    report = {"health": "pass", "reasons": [], "version": "x", "uptime_s": 1, "lanes": [],
              "journal": {}, "cache": {}, "platform": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            body = json.dumps(report).encode() if self.path == "/status" else b"{}"
            self.send_response(200 if self.path == "/status" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/status"
        out = run_cli("status", "--config", str(site.config_path), "--url", url, "--json")
        # from another machine: no config file there, none needed to ask a URL
        env = {k: v for k, v in os.environ.items() if k != "GATE_AGENT_CONFIG"}
        elsewhere = run_cli("status", "--url", url, "--json", env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert asked == ["/status"] * 2 and json.loads(out.stdout)["health"] == "pass"


def test_run_refuses_a_config_without_api(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\ndir = "{tmp_path / "state"}"\n')
    out = run_cli("run", "--config", str(config), timeout=30)
    assert out.returncode == 2 and "[api] is missing" in out.stderr, out.stderr
    assert not (tmp_path / "state").exists()


def test_status_reasons_are_deduplicated_and_fail_first() -> None:
    now = datetime.now(UTC)
    failing = {"failing_since": 1.0, "last_error": "connect refused"}
    snap = {"lanes": [], "cache": {"events": []},
            "platform": {"last_error_at": "2026-01-01T00:00:01Z", "last_error": "connect refused"},
            "jobs": {"upload": failing, "delta": failing, "refresh": failing}}
    health, reasons = evaluate(snap, now, 3600)
    codes = [r.code for r in reasons]
    assert health == "fail" and codes == ["cache_empty", "platform_unreachable"], codes


def test_import_lists_as_json_too(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(demo_data.demo_config(tmp_path / "state"))
    files = demo_data.write_demo_files(tmp_path / "files", datetime.now(UTC))
    out = run_cli("import", "--config", str(config), "--json", *map(str, files))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["kind"] for r in rows][:1] == ["events"] and len(rows) == len(files)


def test_the_sync_summary_keeps_every_pass_it_watched() -> None:
    """Through the daemon, its own next delta pass may start while the answer to `sync --full`
    is made; its start (no item yet) once replaced the full pass in the summary (CI: items 0
    for an event of 12). Every pass is kept, in order; the table adds up an event's passes."""
    import argparse
    import contextlib
    import io

    from agent.commands.platform import _Bar, _print_sync
    from agent.platform.sync import SyncProgress

    bar = _Bar(None)
    for phase, pages, items in (("full", 0, 0), ("full", 1, 12), ("tickets", 0, 0),
                                ("tickets", 1, 2)):
        bar(SyncProgress(phase=phase, event_id=501, pages=pages, items=items))
    bar(SyncProgress(phase="full", event_id=502, pages=0, items=0))
    assert [(p["event"], p["mode"], p["items"]) for p in bar.passes] == [
        (501, "full", 12), (501, "tickets", 2), (502, "full", 0)]
    out = io.StringIO()
    result = {"requests": 3, "passes": bar.passes,
              "events": [{"id": 501, "name": "Demo", "items": 20, "cursor": None}]}
    with contextlib.redirect_stdout(out):
        _print_sync(argparse.Namespace(json=False, full=True), result)
    row = out.getvalue().split("Demo", 1)[1].split("\n", 1)[0].split()
    assert "14" in row and "20" in row  # applied 12 + 2, cached 20


def test_a_full_pass_reported_around_a_delta_beside_it_counts_once() -> None:
    """A delta on the live cache runs beside a full resync (agent.platform.sync): their
    reports interleave. Each pass is known by when it began, so the full pass's later pages
    update its own line instead of adding a second one (which the table would add up)."""
    from agent.commands.platform import _Bar
    from agent.platform.sync import SyncProgress

    bar = _Bar(None)
    reports = (("full", 100.0, 0, 0), ("full", 100.0, 1, 1000), ("tickets", 105.0, 0, 0),
               ("tickets", 105.0, 1, 3), ("full", 100.0, 2, 1140), ("tickets", 109.0, 0, 0),
               ("tickets", 109.0, 1, 1))
    for phase, started, pages, items in reports:
        bar(SyncProgress(phase=phase, event_id=501, pages=pages, items=items, started=started))
    assert [(p["mode"], p["items"]) for p in bar.passes] == [
        ("full", 1140), ("tickets", 3), ("tickets", 1)]
