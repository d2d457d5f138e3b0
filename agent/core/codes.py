"""Normalising what readers produce and what the platform sends: codes, NFC ids and times.

Kept free of I/O so the decision engine, the cache and the drivers agree on one spelling.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_CODE_LEN = 256
_HEX = re.compile(r"[0-9A-F]+")
_NFC_SEPARATORS = re.compile(r"[\s:\-]")
EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
LATEST = datetime(9999, 12, 29, tzinfo=UTC)


def clean_code(raw: str) -> str:
    """Return a scanned code without control characters and surrounding blanks, capped in length.

    Scanners and keyboards add CR/LF, NULs, escape sequences; none of those are part of a
    barcode. The result may be empty, which the engine treats as an unknown code.
    """
    if raw.isprintable():  # no character of category C*: nothing to drop (the usual case)
        return raw.strip()[:MAX_CODE_LEN]
    kept = "".join(
        ch for ch in raw if not unicodedata.category(ch).startswith("C")
    )
    return kept.strip()[:MAX_CODE_LEN]


def normalize_nfc_id(raw: str) -> str | None:
    """Return the platform's NFC id form (`0x` + upper-case hex), or None if `raw` is not hex.

    Accepts any case, with or without `0x`, with colons, dashes or blanks between bytes
    (`04:a2:2b:...` as many readers print it).
    """
    text = _NFC_SEPARATORS.sub("", raw.strip()).upper()
    if text.startswith("0X"):
        text = text[2:]
    if not text or len(text) > 64 or not _HEX.fullmatch(text):
        return None
    if len(text) % 2:
        text = "0" + text
    return "0x" + text


def looks_like_nfc(code: str) -> bool:
    """True when a typed or scanned code is spelled like an NFC id rather than a barcode.

    Only codes with an explicit `0x` prefix or byte separators count: plain hex-looking
    barcodes (e.g. `A1B2C3`) must stay barcodes.
    """
    text = code.strip()
    if text[:2].lower() == "0x":
        return normalize_nfc_id(text) is not None
    if ":" in text and normalize_nfc_id(text) is not None:
        return True
    return False


_ZONE_INFOS: dict[str | None, ZoneInfo] = {}  # zone_info's answers, a few names at most


def zone_info(name: str | None) -> ZoneInfo:
    """The event's time zone, UTC when unknown (the platform does not always send one).

    Each decision asks for its event's zone: remembered by name (a dict lookup instead of
    `ZoneInfo`'s own cache behind its constructor, ~1k instructions; issue 18), for at most
    64 names (they come from the platform's events)."""
    found = _ZONE_INFOS.get(name)
    if found is None:
        found = _zone_info(name)
        if len(_ZONE_INFOS) < 64:
            _ZONE_INFOS[name] = found
    return found


def _zone_info(name: str | None) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass  # OSError: a name like "Europe" or "Etc" is a directory of tzdata, not a zone
    return ZoneInfo("UTC")


def parse_platform_time(value: object, tz: ZoneInfo | None = None, *,
                        end_of_day: bool = False) -> datetime | None:
    """Parse a platform date-time into an aware UTC datetime, or None when absent or unparsable.

    The docs show both `YYYY-MM-DD HH:MM:SS` (no zone: taken in the event's zone `tz`) and
    ISO 8601 with microseconds and `Z`. A bare date (`YYYY-MM-DD`) is a whole day in `tz`: its
    first instant, or with `end_of_day` its last (so a `validTo` of a date covers that day).
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if end_of_day and "T" not in text.upper():  # no time part: a bare date
        try:
            moment = moment + timedelta(days=1) - timedelta(microseconds=1)
        except OverflowError:  # 9999-12-31
            return LATEST
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz or UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # "0001-01-01 00:00:00" east of UTC lies before year 1
        return EARLIEST if moment.year < 5000 else LATEST
    # Clamped a day inside datetime's range, so the engine's grace arithmetic and local-time
    # display can never overflow; the order of dates is kept.
    return min(max(moment, EARLIEST), LATEST)


def format_upload_time(moment: datetime) -> str:
    """The platform's upload format: UTC, `YYYY-MM-DD HH:MM:SS`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


_UTC_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"
_TWO_DIGITS = tuple("%02d" % n for n in range(100))  # noqa: UP031 - month, day, h, m, s


def utc_iso(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds: how gate-agent stores its own times (sortable text).

    Built from a table of two-digit strings rather than by %-formatting (~6.6k instructions
    against ~10.9k; `strftime` costs twice that) as every scan stamps its row (issue 18): the
    same text for every year from 1000 on. Earlier years go through `strftime`, which writes them unpadded on
    glibc, so the text stays exactly what it always was."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    year = moment.year
    if year < 1000:
        return moment.strftime(_UTC_ISO)
    two = _TWO_DIGITS
    return (f"{year}-{two[moment.month]}-{two[moment.day]}T{two[moment.hour]}:"
            f"{two[moment.minute]}:{two[moment.second]}."
            f"{str(moment.microsecond + 1_000_000)[1:]}Z")


def epoch_iso(seconds: float | None) -> str | None:
    """A wall-clock epoch time as `utc_iso` text (None stays None): every time in status JSON
    is ISO 8601 UTC, never an epoch float."""
    return None if seconds is None else utc_iso(datetime.fromtimestamp(seconds, UTC))


def shift_utc_iso(text: str | None, seconds: float) -> str | None:
    """`utc_iso` text moved by `seconds` (None stays None), clamped to EARLIEST..LATEST: a time
    read on one clock, written on another that is `seconds` ahead of it (the venue's scans,
    kept on the bus server's clock, read on this gate's: agent.store.venue `zone_scans`)."""
    if text is None or not seconds:
        return text
    moment = parse_platform_time(text)
    if moment is None:  # unreadable: undated, as derived state takes it
        return None
    try:
        return utc_iso(min(max(moment + timedelta(seconds=seconds), EARLIEST), LATEST))
    except OverflowError:  # beyond datetime's range: the clamp's end on that side
        return utc_iso(LATEST if seconds > 0 else EARLIEST)


def parse_utc_iso(text: str) -> datetime:
    """Inverse of `utc_iso` (ValueError for any other text).

    `fromisoformat` is some fifty times cheaper than `strptime` (the hot path reads back each
    own admit of a ticket), but it accepts more spellings than `utc_iso` writes; its answer is
    kept only when `utc_iso` gives the very text back, else `strptime` decides, as before."""
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        moment = None
    if moment is not None and moment.tzinfo is UTC and utc_iso(moment) == text:
        return moment
    return datetime.strptime(text, _UTC_ISO).replace(tzinfo=UTC)


def age_on(birth: datetime, moment: datetime) -> int:
    """Whole years between a date of birth and `moment` (both aware)."""
    b, m = birth.date(), moment.date()
    return m.year - b.year - ((m.month, m.day) < (b.month, b.day))


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
