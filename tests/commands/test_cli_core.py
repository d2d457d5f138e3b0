"""The technician's commands as real subprocesses: import, check, scan, scan -, queue."""

from __future__ import annotations

import json
from pathlib import Path

from agent import demo_data
from tests.conftest import DemoSite, run_cli

C = demo_data.CODES


def test_import_then_check_writes_nothing(site: DemoSite, tmp_path: Path) -> None:
    cfg = str(site.config_path)
    out = run_cli("import", "--config", cfg, *map(str, site.files))
    assert out.returncode == 0, out.stderr
    assert "13 tickets for event 501" in out.stdout
    check = run_cli("check", "--config", cfg, "--json", C["valid"])
    data = json.loads(check.stdout)
    assert check.returncode == 0 and data["admit"] and data["status"] == "valid"
    assert {"admit", "status", "statusDetail", "direction", "message"} <= data.keys()
    queue = json.loads(run_cli("queue", "--config", cfg, "--json").stdout)
    assert queue["counts"]["pending"] == 0 and queue["scans"] == []


def test_check_at_a_later_time(site: DemoSite) -> None:
    cfg = str(site.config_path)
    now = run_cli("check", "--config", cfg, "--json", C["future"])
    assert now.returncode == 1 and json.loads(now.stdout)["statusDetail"] == \
        "outsideOfValidityPeriod"
    at = (site.now.replace(microsecond=0)).isoformat().replace("+00:00", "Z")
    later = run_cli("check", "--config", cfg, "--json", "--at",
                    at.replace(at[:10], _plus_days(site, 1)), C["future"])
    assert later.returncode == 0, later.stdout + later.stderr
    bad = run_cli("check", "--config", cfg, "--at", "tomorrow-ish", C["future"])
    assert bad.returncode == 2 and "--at 'tomorrow-ish'" in bad.stderr


def _plus_days(site: DemoSite, days: int) -> str:
    from datetime import timedelta
    return (site.now + timedelta(days=days, hours=1)).strftime("%Y-%m-%d")


def test_scan_journals_and_prints_uuid(site: DemoSite) -> None:
    cfg = str(site.config_path)
    first = json.loads(run_cli("scan", "--config", cfg, "--json", C["valid"]).stdout)
    assert first["admit"] and len(first["uuid"]) == 36
    second = run_cli("scan", "--config", cfg, "--json", C["valid"])
    assert second.returncode == 1 and json.loads(second.stdout)["status"] == "alreadyIn"
    human = run_cli("scan", "--config", cfg, "--lane", "north-out", C["valid"])
    assert "ADMIT" in human.stdout and "out" in human.stdout
    queue = json.loads(run_cli("queue", "--config", cfg, "--json").stdout)
    assert [s["uuid"] for s in queue["scans"]][0] == first["uuid"]
    assert queue["counts"]["pending"] == 3


def test_scan_stdin_answers_each_line(site: DemoSite) -> None:
    codes = "\n".join([C["valid"], "", C["valid"] + "\r", C["refunded"], "\x00garbage\xff"])
    out = run_cli("scan", "--config", str(site.config_path), "--json", "--lane", "floor", "-",
                  stdin=codes + "\n")
    assert out.returncode == 1, out.stderr  # some were refused: not a success
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(d["status"], d["statusDetail"]) for d in lines] == [
        ("valid", None), ("denied", "duplicateRead"), ("denied", "refunded"),
        ("denied", "unknownCode")]
    assert lines[1]["uuid"] is None  # a debounced read is not journaled


def test_errors_are_one_clear_line(site: DemoSite, tmp_path: Path) -> None:
    missing = run_cli("check", "--config", str(tmp_path / "none.toml"), "X")
    assert missing.returncode == 2 and "file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    lane = run_cli("check", "--config", str(site.config_path), "--lane", "nope", "X")
    assert lane.returncode == 2 and "lanes: north-in, north-out, floor" in lane.stderr
    garbage = tmp_path / "g.json"
    garbage.write_text("[1, 2")
    bad = run_cli("import", "--config", str(site.config_path), str(garbage))
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_corrupt_cache_gives_clear_error_and_keeps_journal(site: DemoSite) -> None:
    cfg = str(site.config_path)
    run_cli("scan", "--config", cfg, C["valid"])
    (site.config.store_dir / "cache.db").write_bytes(b"\x00" * 4096)
    out = run_cli("check", "--config", cfg, C["valid"])
    assert out.returncode == 1 and "sync --full" in out.stderr and "Traceback" not in out.stderr
    queue = json.loads(run_cli("queue", "--config", cfg, "--json").stdout)
    assert queue["counts"]["pending"] == 1


def test_queue_retry_puts_quarantined_back(site: DemoSite) -> None:
    from agent.runtime.opening import open_journal
    cfg = str(site.config_path)
    uuid = json.loads(run_cli("scan", "--config", cfg, "--json", C["valid"]).stdout)["uuid"]
    journal = open_journal(site.config)
    journal.quarantine(uuid, "422: The selected barcode is invalid.")
    journal.close()
    import os
    table = run_cli("queue", "--config", cfg, env={**os.environ, "COLUMNS": "200"})
    assert "quarantined" in table.stdout and "barcode is invalid" in table.stdout
    retry = run_cli("queue", "retry", "--config", cfg)
    assert "1 quarantined scan(s)" in retry.stdout
    assert json.loads(run_cli("queue", "--config", cfg, "--json").stdout)["counts"][
        "pending"] == 1


def test_queue_retry_of_a_uuid_that_is_not_quarantined_is_an_error(site: DemoSite) -> None:
    from agent.runtime.opening import open_journal
    cfg = str(site.config_path)
    uuid = json.loads(run_cli("scan", "--config", cfg, "--json", C["valid"]).stdout)["uuid"]
    journal = open_journal(site.config)
    journal.quarantine(uuid, "422: The selected barcode is invalid.")
    journal.close()
    typo = run_cli("queue", "retry", uuid, "notauuid", "--config", cfg)
    assert typo.returncode == 2 and "notauuid" in typo.stderr, (typo.stdout, typo.stderr)
    assert uuid not in typo.stderr and "nothing was put back" in typo.stderr
    counts = json.loads(run_cli("queue", "--config", cfg, "--json").stdout)["counts"]
    assert (counts["quarantined"], counts["pending"]) == (1, 0)  # all or nothing
    retry = run_cli("queue", "retry", uuid, "--config", cfg)
    assert retry.returncode == 0 and "1 quarantined scan(s)" in retry.stdout


def test_scan_with_nothing_on_stdin_says_so(site: DemoSite) -> None:
    for stdin in ("", "\n  \n"):
        out = run_cli("scan", "--config", str(site.config_path), "-", stdin=stdin)
        assert out.returncode == 2 and "no codes on standard input" in out.stderr, out.stderr


def test_sandbox_export_imports_in_one_go(tmp_path: Path) -> None:
    """`gate-agent import DIR/*.json` after `sandbox --export DIR`: every file says its event
    (the tickets page's pagination links, the zones' wrapper), so no --event is needed."""
    files = tmp_path / "files"
    assert run_cli("sandbox", "--tickets", "12", "--export", str(files)).returncode == 0
    config = tmp_path / "config.toml"
    config.write_text(demo_data.demo_config(tmp_path / "state"))
    out = run_cli("import", "--config", str(config), "--json",
                  *sorted(str(p) for p in files.glob("*.json")))
    assert out.returncode == 0, out.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert (rows["tickets-1001.json"]["event_id"], rows["tickets-1001.json"]["count"]) == \
        (1001, 12)
    assert rows["zones-1001.json"]["event_id"] == 1001 and rows["zones-1001.json"]["count"]
    assert rows["zones-1002.json"]["event_id"] == 1002
