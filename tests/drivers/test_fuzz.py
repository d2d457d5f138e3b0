"""Property tests of the two pure decoders fed by untrusted devices (serial bytes, key events).

Scanners emit noise at power-up, get misconfigured, and are unplugged mid-line. Whatever comes
in, the decoders must not crash, must not invent a code, and must deliver each well-formed
line exactly once however the stream is sliced into reads.
"""

from __future__ import annotations

from evdev import InputEvent, ecodes
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.codes import clean_code
from drivers.hid import _PLAIN, _SHIFTED, ENTER_KEYS, SHIFT_KEYS, KeyDecoder
from drivers.serial_scanner import _DROP, LineDecoder

MAX = 64


def reference_lines(stream: bytes, max_bytes: int) -> list[str]:
    """The specification, written the obvious way on the whole stream at once."""
    out = []
    segments = stream.replace(b"\r", b"\n").split(b"\n")[:-1]  # last one is unterminated
    for seg in segments:
        kept = seg.translate(None, _DROP)
        if len(kept) > max_bytes or len(seg) > 4 * max_bytes:
            continue
        text = clean_code(kept.decode("utf-8", errors="replace"))
        if text:
            out.append(text)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=12))
def test_any_bytes_any_slicing_match_the_reference(stream: bytes, cuts: list[int]) -> None:
    dec = LineDecoder(max_bytes=MAX)
    got = [line for piece in split_at(stream, cuts) for line in dec.feed(piece)]
    assert got == reference_lines(stream, MAX)
    for line in got:
        assert line and line == clean_code(line) and len(line.encode()) <= MAX * 3


codes = st.text(
    alphabet=st.characters(blacklist_categories=("C", "Z")), min_size=1, max_size=20
)


@settings(max_examples=200, deadline=None)
@given(st.lists(codes, min_size=1, max_size=8),
       st.lists(st.sampled_from([b"\r", b"\n", b"\r\n"]), min_size=8, max_size=8),
       st.lists(st.integers(min_value=0), max_size=20))
def test_well_formed_lines_arrive_exactly_once(lines: list[str], terms: list[bytes],
                                               cuts: list[int]) -> None:
    stream = b"".join(line.encode() + terms[i] for i, line in enumerate(lines))
    dec = LineDecoder(max_bytes=256)
    got = [line for piece in split_at(stream, cuts) for line in dec.feed(piece)]
    assert got == lines


KEYS = sorted(set(_PLAIN) | SHIFT_KEYS | ENTER_KEYS) + [ecodes.KEY_F1, ecodes.KEY_ESC, 9999]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([ecodes.EV_KEY, ecodes.EV_SYN, ecodes.EV_MSC]),
                          st.sampled_from(KEYS), st.integers(min_value=-1, max_value=3)),
                max_size=200))
def test_random_key_events_never_crash_or_invent(events: list[tuple[int, int, int]]) -> None:
    dec = KeyDecoder(max_len=32)
    typable = set(_PLAIN.values()) | set(_SHIFTED.values())
    for etype, code, value in events:
        line = dec.feed(InputEvent(0, 0, etype, code, value))
        if line is not None:
            assert line == clean_code(line) and 0 < len(line) <= 32
            assert set(line) <= typable
            assert etype == ecodes.EV_KEY and code in ENTER_KEYS and value == 1


def type_text(text: str, enter: int) -> list[InputEvent]:
    """Key events a US-layout wedge scanner sends for `text` then Enter."""
    by_char = {ch: (code, False) for code, ch in _PLAIN.items() if code not in range(71, 84)}
    by_char.update({ch: (code, True) for code, ch in _SHIFTED.items() if ch not in by_char})
    events = []
    for ch in text:
        code, shift = by_char[ch]
        if shift:
            events.append(InputEvent(0, 0, ecodes.EV_KEY, ecodes.KEY_LEFTSHIFT, 1))
        events += [InputEvent(0, 0, ecodes.EV_KEY, code, 1), InputEvent(0, 0, ecodes.EV_SYN, 0, 0),
                   InputEvent(0, 0, ecodes.EV_KEY, code, 0)]
        if shift:
            events.append(InputEvent(0, 0, ecodes.EV_KEY, ecodes.KEY_LEFTSHIFT, 0))
    return events + [InputEvent(0, 0, ecodes.EV_KEY, enter, 1),
                     InputEvent(0, 0, ecodes.EV_KEY, enter, 0)]


typable_text = st.text(alphabet=sorted((set(_PLAIN.values()) | set(_SHIFTED.values())) - {" "}),
                       min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(typable_text, min_size=1, max_size=6),
       st.sampled_from(sorted(ENTER_KEYS)))
def test_typed_codes_arrive_exactly_once(texts: list[str], enter: int) -> None:
    dec = KeyDecoder()
    events = [e for text in texts for e in type_text(text, enter)]
    assert dec.feed_all(events) == texts
