"""A venue leader's term on the bus, written so that every version of the agent reads it.

A term (`Term`) is the lease bucket's creation time (`epoch`) and the KV revision of the create
that won the lease (`revision`), compared in that order (agent.venue.lease says why: a bucket
made again restarts its revisions at 1). A leader stamps every catalog message with it in two
headers (`stamp_headers`):
- `Venue-Leader-Term: <revision>`: the integer every version of the agent reads. A gate of
  before this change takes the header as one integer (`int(...)`) and drops anything else as
  stale — so the combined `<epoch>/<revision>` one version wrote made every gate not yet
  upgraded drop an upgraded leader's whole catalog during a rolling upgrade: refunds and
  blocks never applied there (a fail-open);
- `Venue-Leader-Epoch: <epoch>`: read by gates since.

Reading (`read_stamp`) accepts the two headers, the combined `<epoch>/<revision>` of that one
version (gates may still run it), and a bare `<revision>` of a leader of before (no epoch: a
`Stamp` with `epoch` None). Anything else — a header not made of ASCII digits, an epoch
without a term, the two forms disagreeing — is `TermUnreadable`: the message is refused (the
reader logs and counts why), never applied on a guess.

Fencing (`newer_or_same`): a stamp with an epoch is compared with the newest term applied as
(epoch, revision). A stamp without one (a leader of before, during a rolling upgrade) is
compared by revision against the newest term's revision, as the code of before compared every
term, and is taken to lead in the bucket of that newest term: it becomes (newest epoch,
revision), so an upgraded leader's late publish of an older revision of that bucket is still
dropped after it. A term stored before epochs existed has epoch 0 (cache migration
`0007_catalog_term_epoch`), below every term with one. What no reader can tell: a leader of
before that froze in a bucket since made again and publishes late — without an epoch its
message is compared as a message of the newest bucket, as every gate of before compares it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.core.codes import utc_iso

TERM_HEADER = "Venue-Leader-Term"
EPOCH_HEADER = "Venue-Leader-Epoch"

_DIGITS = re.compile(r"\d{1,19}", re.ASCII)
_COMBINED = re.compile(r"(\d{1,19})/(\d{1,19})", re.ASCII)
_SHOWN = 40  # characters of an unreadable header quoted in the refusal


@dataclass(frozen=True, order=True)
class Term:
    """A leader's term, ordered across lease buckets made again: `epoch` is the bucket's
    creation time in microseconds since 1970 (the server's clock), `revision` the KV revision
    of the create that won the lease in that bucket."""

    epoch: int
    revision: int

    def __str__(self) -> str:
        return f"{self.epoch}/{self.revision}"


@dataclass(frozen=True)
class Stamp:
    """A term as one message carries it: `epoch` None for a leader of before epochs."""

    revision: int
    epoch: int | None

    def __str__(self) -> str:
        return str(self.revision) if self.epoch is None else f"{self.epoch}/{self.revision}"


class TermUnreadable(ValueError):
    """A message's term headers cannot be read: the message is refused, never guessed at."""


def stamp_headers(term: Term) -> dict[str, str]:
    """The headers a leader stamps its messages with (see the module docstring)."""
    return {TERM_HEADER: str(term.revision), EPOCH_HEADER: str(term.epoch)}


def read_stamp(headers: Mapping[str, str] | None) -> Stamp:
    """A message's term, or TermUnreadable saying why. No term header at all: revision 0
    without an epoch (the lowest; as the code of before read it)."""
    headers = headers or {}
    term, epoch = headers.get(TERM_HEADER), headers.get(EPOCH_HEADER)
    if epoch is not None and _DIGITS.fullmatch(epoch) is None:
        raise TermUnreadable(f"{EPOCH_HEADER} {_quoted(epoch)} is not a number")
    if term is None:
        if epoch is not None:
            raise TermUnreadable(f"{EPOCH_HEADER} without {TERM_HEADER}")
        return Stamp(0, None)
    if _DIGITS.fullmatch(term) is not None:
        return Stamp(int(term), None if epoch is None else int(epoch))
    combined = _COMBINED.fullmatch(term)
    if combined is None:
        raise TermUnreadable(f"{TERM_HEADER} {_quoted(term)} is neither <revision> nor "
                             "<epoch>/<revision>")
    if epoch is not None and int(epoch) != int(combined.group(1)):
        raise TermUnreadable(f"{TERM_HEADER} {_quoted(term)} and {EPOCH_HEADER} {epoch} "
                             "name different lease buckets")
    return Stamp(int(combined.group(2)), int(combined.group(1)))


def newer_or_same(stamp: Stamp, newest: Term) -> Term | None:
    """The newest term after a message stamped `stamp` is applied, or None when the message
    is older than `newest` (dropped). See the module docstring for a stamp without an
    epoch."""
    if stamp.epoch is None:
        return Term(newest.epoch, stamp.revision) if stamp.revision >= newest.revision \
            else None
    seen = Term(stamp.epoch, stamp.revision)
    return seen if seen >= newest else None


def epoch_text(epoch: int) -> str:
    """An epoch (microseconds since 1970) as status JSON writes every time: ISO 8601 UTC, to
    the microsecond (exact: the header's integer and this text name the same instant)."""
    return utc_iso(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch))


def _quoted(text: str) -> str:
    return repr(text[:_SHOWN] + ("..." if len(text) > _SHOWN else ""))
