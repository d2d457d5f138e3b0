"""Untrusted reader input end to end: serial byte streams through `LineDecoder`, NFC ids and
NDEF payloads through the NFC driver, into `Gate.check` against a provisioned cache.

tests/drivers/test_fuzz.py proves the decoders alone (no crash, exact lines); here the lines go
on through the real lookup and engine, and the property is the gate's: whatever arrives, no
exception and no admit of a code that is not in the cache.
"""

from __future__ import annotations

from types import SimpleNamespace

import ndef
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import demo_data
from agent.core.codes import normalize_nfc_id
from agent.runtime.gate import Gate
from drivers.base import make_scan
from drivers.nfc import NfcReader, ndef_text
from drivers.serial_scanner import LineDecoder
from tests.conftest import DemoSite
from tests.hostile.conftest import assert_admit_is_cached

C = demo_data.CODES
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pieces a scanner (or line noise) can put on the wire.
fragments = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([c.encode() for c in C.values()]),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r"]),
    st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x1b[31m", b"\x1b]0;title\x07", b"\x1bc",
                     b"\xc3\x28", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80",  # bad UTF-8
                     b"\xef\xbb\xbf", b"\t", b"\x08"]),
    st.integers(min_value=200, max_value=5000).map(lambda n: b"A" * n),  # over-long line
)


def _lanes(site: DemoSite):
    return [site.config.lane(name) for name in ("north-in", "north-out", "floor")]


@SETTINGS
@given(st.lists(fragments, max_size=30), st.lists(st.integers(1, 64), min_size=1, max_size=8),
       st.sampled_from(["north-in", "north-out", "floor"]))
@example([b"\x00" + C["valid"].encode(), b"\r\n"], [3], "north-in")  # NUL is dropped: admit
@example([C["valid"].encode() + b"\xed\xa0\x80\n"], [64], "north-in")  # surrogate bytes
@example([b"A" * 5000, C["valid"].encode(), b"\n"], [7], "north-in")  # huge line swallows it
def test_serial_stream_through_decoder_and_gate(shared_gate: Gate, shared_site: DemoSite,
                                                parts: list[bytes], sizes: list[int],
                                                lane_name: str) -> None:
    stream = b"".join(parts)
    decoder = LineDecoder()
    lane = shared_site.config.lane(lane_name)
    pos, i = 0, 0
    while pos < len(stream):  # the port hands over arbitrary slices
        chunk = stream[pos:pos + sizes[i % len(sizes)]]
        pos, i = pos + len(chunk), i + 1
        for line in decoder.feed(chunk):
            decision = shared_gate.check(line, lane, shared_site.now)
            assert_admit_is_cached(shared_gate, decision)
            assert len(decision.code) <= 256


def test_known_code_with_noise_decides_like_the_clean_code(shared_gate: Gate,
                                                           shared_site: DemoSite) -> None:
    """Positive control for the property above: noise the decoder strips does not change the
    decision; noise it keeps (an escape sequence's printable tail) makes the code unknown."""
    lane = shared_site.config.lane("north-in")
    decoder = LineDecoder()
    stripped, kept = decoder.feed(b"\x00\xff" + C["valid"].encode() + b"\x7f\r\n"
                                  + b"\x1b[31m" + C["valid"].encode() + b"\n")
    assert shared_gate.check(stripped, lane, shared_site.now).admit
    refused = shared_gate.check(kept, lane, shared_site.now)
    assert (refused.admit, refused.detail) == (False, "unknownCode")


# -- NFC identifiers ---------------------------------------------------------------------------

tag_bytes = bytes.fromhex(demo_data.NFC_TAG[2:])
spellings = st.builds(
    lambda sep, upper, prefix: prefix + sep.join(
        f"{b:02X}" if upper else f"{b:02x}" for b in tag_bytes),
    st.sampled_from(["", ":", "-", " "]), st.booleans(), st.sampled_from(["", "0x", "0X"]))
junk_ids = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF:- xX", max_size=140),
    st.binary(max_size=40).map(lambda b: b.hex()),
)


@SETTINGS
@given(junk_ids)
@example("0x" + "F" * 200)  # longer than any tag UID
@example("0x")
@example("\ud800")
def test_nfc_identifiers_normalise_or_are_refused(shared_gate: Gate, shared_site: DemoSite,
                                                  raw: str) -> None:
    norm = normalize_nfc_id(raw)
    if norm is not None:
        assert norm.startswith("0x") and len(norm) % 2 == 0 and 4 <= len(norm) <= 66
        assert int(norm, 16) >= 0 and norm[2:] == norm[2:].upper()
        assert normalize_nfc_id(norm) == norm
    lane = shared_site.config.lane("north-in")
    facts = shared_gate.facts(raw, lane, kind="nfc")
    assert facts.kind == "nfc"
    for cand in facts.candidates:
        assert cand.item.nfc_id == facts.code
    decision = shared_gate.check(raw, lane, shared_site.now, kind="nfc")
    assert_admit_is_cached(shared_gate, decision)
    if decision.admit:
        assert normalize_nfc_id(raw) == demo_data.NFC_TAG


@settings(max_examples=50, deadline=None)
@given(spellings)
def test_every_spelling_of_a_paired_tag_admits(shared_gate: Gate, shared_site: DemoSite,
                                               raw: str) -> None:
    decision = shared_gate.check(raw, shared_site.config.lane("north-in"), shared_site.now,
                                 kind="nfc")
    assert decision.admit and decision.code == demo_data.NFC_TAG, decision


# -- NDEF payloads -----------------------------------------------------------------------------

class FakeNdef:
    """nfcpy's `tag.ndef`: `records` decodes the octets with ndeflib in 'relax' mode, as nfcpy
    does (tag/__init__.py), so a malformed message raises inside the driver's own call."""

    def __init__(self, octets: bytes) -> None:
        self.octets = octets

    @property
    def records(self) -> list:
        return list(ndef.message_decoder(self.octets, errors="relax"))


UID = bytes.fromhex("04a1b2c3d4e5f6")
record_texts = st.one_of(st.text(max_size=60), st.sampled_from(list(C.values())),
                         st.sampled_from(["\x00" + C["valid"], C["valid"] + "\r\n", " ", ""]))
messages = st.one_of(
    st.binary(max_size=120),  # anything at all
    st.lists(st.one_of(record_texts.map(ndef.TextRecord),
                       record_texts.map(lambda t: ndef.UriRecord(t or "x")),
                       st.binary(max_size=20).map(lambda b: ndef.Record("urn:nfc:ext:x", "1", b))),
             min_size=1, max_size=3).map(lambda rs: b"".join(ndef.message_encoder(rs))),
)


@SETTINGS
@given(messages)
@example(b"".join(ndef.message_encoder([ndef.TextRecord(C["valid"])])))
@example(b"\xd1\x01\xff")  # a record header claiming more payload than there is
def test_ndef_payloads_through_driver_and_gate(shared_gate: Gate, shared_site: DemoSite,
                                               octets: bytes) -> None:
    tag = SimpleNamespace(identifier=UID, ndef=FakeNdef(octets))
    text = ndef_text(tag)
    assert text is None or (isinstance(text, str) and text.strip())
    reader = NfcReader("nfc:udp:127.0.0.1:9?ndef=1")  # parses the URL only; opens nothing
    chunk = reader._chunk(tag)
    assert chunk.kind == ("barcode" if text is not None else "nfc")
    scan = make_scan(reader.url, chunk)
    if scan is None:  # a record of only blanks/controls: ignored, like an empty serial line
        return
    for lane in _lanes(shared_site):
        decision = shared_gate.check(scan.code, lane, shared_site.now, kind=scan.kind)
        assert_admit_is_cached(shared_gate, decision)
    if text is not None and text.strip() == C["valid"]:
        assert shared_gate.check(scan.code, shared_site.config.lane("north-in"),
                                 shared_site.now, kind=scan.kind).admit
