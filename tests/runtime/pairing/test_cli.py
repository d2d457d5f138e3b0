"""`gate-agent pair-tag` as a technician runs it: a subprocess, tags and barcodes arriving on
`sim:` readers over their Unix sockets, the platform sandbox behind it."""

from __future__ import annotations

import signal

from agent import demo_data
from agent.store.journal import Journal, iter_all
from drivers.sim import send_scan
from tests.runtime.pairing.conftest import TAG_A, TAG_B, Station, tag_of

C = demo_data.CODES
PROMPT = "present the tag"


def test_one_barcode_paired_and_admitted(station: Station) -> None:
    tags = station.root / "tag.sock"
    run = station.cli(C["valid"], "--reader", f"sim:tag?socket={tags}", "--admit",
                      "--lane", "north-in")
    assert "(Ada Lovelace)" in run.wait_line(PROMPT)
    send_scan(tags, "04:aa:aa:aa:aa:aa:01")
    code, out, err = run.finish()
    assert code == 0, (out, err)
    assert f"PAIRED {TAG_A} -> {C['valid']} (event 501, item 1)" in out
    assert f"ADMIT in  {TAG_A}  valid" in out
    assert station.platform_tag(C["valid"]) == TAG_A
    cache = station.local()
    journal = Journal(station.site.config.store_dir / "journal.db")
    try:
        assert [h.item.id for h in cache.find_nfc(TAG_A)] == [1]
        rows = list(iter_all(journal))
    finally:
        cache.close()
        journal.close()
    assert [(r["nfc_id"], r["item_id"], r["admit"], r["lane"]) for r in rows] == \
        [(TAG_A, 1, 1, "north-in")]


def test_queue_on_stdin_until_ctrl_c(station: Station) -> None:
    """Three attendees: paired, unknown barcode, second tag without --again; then Ctrl-C."""
    tags = station.root / "tag.sock"
    run = station.cli("--reader", f"sim:tag?socket={tags}")
    run.wait_line("next attendee")
    run.type(C["valid2"])
    run.wait_line(PROMPT)
    send_scan(tags, TAG_B)
    run.wait_line("PAIRED")
    run.type(C["unknown"])
    assert "not in this gate's ticket cache" in run.wait_line("NOT PAIRED")
    run.type(C["nfc_ticket"])
    run.wait_line(PROMPT, count=2)
    send_scan(tags, TAG_A)
    refused = run.wait_line("NOT PAIRED", count=2)
    assert f"already has a tag ({demo_data.NFC_TAG})" in refused and "--again" in refused
    run.wait_line("next attendee", count=4)
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish()
    assert code == 0, (out, err)
    assert "pairing station closed: 1 paired, 2 not" in out
    assert station.platform_tag(C["valid2"]) == TAG_B
    assert station.platform_tag(C["nfc_ticket"]) == demo_data.NFC_TAG
    cache = station.local()
    try:
        assert tag_of(cache, C["valid2"]) == TAG_B
        assert tag_of(cache, C["nfc_ticket"]) == demo_data.NFC_TAG
    finally:
        cache.close()


def test_scanner_queue_once_with_again(station: Station) -> None:
    tags, scans = station.root / "tag.sock", station.root / "scan.sock"
    run = station.cli("--reader", f"sim:tag?socket={tags}", "--scanner",
                      f"sim:scan?socket={scans}", "--once", "--again")
    run.wait_line("next attendee")
    send_scan(scans, C["nfc_ticket"])
    run.wait_line(PROMPT)
    send_scan(tags, TAG_B)
    code, out, err = run.finish()
    assert code == 0, (out, err)
    assert f"PAIRED {TAG_B} -> {C['nfc_ticket']}" in out
    assert f"replaces tag {demo_data.NFC_TAG}" in out
    assert station.platform_tag(C["nfc_ticket"]) == TAG_B


def test_offline_exits_3_and_changes_nothing(station: Station) -> None:
    station.sandbox.stop()
    tags = station.root / "tag.sock"
    run = station.cli(C["valid"], "--reader", f"sim:tag?socket={tags}", "--admit")
    run.wait_line(PROMPT)
    send_scan(tags, TAG_A)
    code, out, err = run.finish()
    assert code == 3, (out, err)
    assert "NOT PAIRED pairing needs the platform" in out and "nothing changed locally" in out
    assert "ADMIT" not in out
    cache = station.local()
    try:
        assert cache.find_nfc(TAG_A) == [] and tag_of(cache, C["valid"]) is None
    finally:
        cache.close()


def test_no_tag_before_the_timeout_and_a_missing_reader(station: Station) -> None:
    run = station.cli(C["valid"], "--reader", f"sim:tag?socket={station.root / 't.sock'}",
                      "--timeout", "0.3")
    code, out, _ = run.finish()
    assert code == 1 and "no tag within 0.3 s; NU-VALID-0001 not paired" in out
    run = station.cli(C["valid"], "--reader", f"serial://{station.root / 'no-such-tty'}")
    code, out, err = run.finish()
    assert code == 2 and "no-such-tty" in err and "PAIRED" not in out
    assert station.pair_requests() == 0
