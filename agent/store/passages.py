"""What the turnstile itself reported, kept in the journal file beside the scans (issue 17).

`passages`: one row per admit on a lane with a passage input, written in the same transaction
as the scan (so the uploader can never see the admit without its hold). States:

    waiting      the lane is waiting for the passage pulse; the upload holds the row
    passed       the pulse came in time: the admit stands
    voided       it did not: the scans row is rewritten to a refusal (`denied/notPassed`,
                 uploaded as `failed`), the admit as decided stays here — the journal keeps
                 both facts — and the ticket can be used again. Also an admit whose gate
                 never opened (relay missing or its pulse failed: `void_unopened`, with a
                 note), on any lane with a relay, passage input or not
    interrupted  an entry's wait that nobody finished — the agent stopped while waiting
                 (crash, power cut), the lane stopped (reload), or the wait outlived
                 PASSAGE_HOLD_LIMIT_S: the admit stands. The relay had opened and nobody can
                 say the person did not pass; voiding would free the ticket for a second
                 person (docs/turnstile.md). An exit's wait ended the same ways is voided
                 instead: taking an exit nobody saw as made frees the ticket to come in again
                 while its holder may still be inside (`settle_stale_waits`)

`lane_events`: alarms (forced passage, held open), emergency and manual releases, with who,
and one row per counted passage (`people_in` / `people_out`, detail = the zone counted into):
the people per zone are summed from these at start, so a restart does not lose the count.
Every change is a guarded update (`... AND state = 'waiting'`), so of the lane, the uploader's
bound and a restart exactly one settles a wait.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent.core.codes import utc_iso

if TYPE_CHECKING:
    from agent.store.journal import Journal

NOT_PASSED = "notPassed"
NOT_PASSED_MESSAGE = "Not passed: the turnstile did not turn; the ticket can be used again"
GATE_NOT_OPENED_MESSAGE = ("Gate did not open: the relay failed; the ticket can be used "
                           "again")
STATES = ("waiting", "passed", "voided", "interrupted")
# why an exit's wait nobody finished is voided (the passages row's note)
EXIT_VOIDED_NOTE = "an exit nobody saw is voided (its holder may still be inside)"
PEOPLE_KINDS = {"in": "people_in", "out": "people_out"}  # lane_events kinds of a counted passage


def await_passage(journal: Journal, uuid: str, seq: int, lane: str, direction: str,
                  zone_id: int | None, status: str, detail: str | None, at: str) -> None:
    """Inside the scan's `scan_transaction()`: this admit (journaled as `seq`) waits for its
    passage. The seq is how the upload's hold and a void find the scan (the journal keeps no
    index on uuid, migration 0007)."""
    journal.conn.execute(
        "INSERT INTO passages (uuid, scan_seq, lane, direction, zone_id, state, admitted_status,"
        " admitted_detail, waiting_since) VALUES (?, ?, ?, ?, ?, 'waiting', ?, ?, ?)",
        (uuid, seq, lane, direction, zone_id, status, detail, at))


@dataclass(frozen=True)
class Settled:
    """What `settle_stale_waits` did: entries left standing, and the exits voided (each
    scan's uuid, event, item and venue mark, for the venue's void)."""

    stood: int
    voided: list[dict[str, Any]]


def settle_stale_waits(conn: sqlite3.Connection, older_than_s: float,
                       why: str = "no passage answer within the upload's hold limit") -> Settled:
    """Inside a write transaction: waits older than `older_than_s` that nobody finished.
    An entry stands ("interrupted": voiding would guess "not passed" and free the ticket for
    a second person); an exit is voided (taking it as made would be the guess that frees the
    ticket, the holder perhaps still inside, the ticket handed back over the barrier)."""
    now = datetime.now(UTC)
    cutoff = utc_iso(now - timedelta(seconds=older_than_s))
    exits = conn.execute(
        "UPDATE passages SET state = 'voided', resolved_at = ?, note = ? WHERE state = 'waiting'"
        " AND direction = 'out' AND waiting_since <= ? RETURNING uuid, scan_seq",
        (utc_iso(now), f"{why}; {EXIT_VOIDED_NOTE}", cutoff)).fetchall()
    voided = [scan for uuid, seq in exits
              if (scan := _refuse(conn, seq, uuid, NOT_PASSED_MESSAGE)) is not None]
    stood = conn.execute(
        "UPDATE passages SET state = 'interrupted', resolved_at = ?, note = ?"
        " WHERE state = 'waiting' AND waiting_since <= ?",
        (utc_iso(now), f"{why}; the admit stands", cutoff)).rowcount
    return Settled(stood, voided)


def _refuse(conn: sqlite3.Connection, seq: int, uuid: str,
            message: str) -> dict[str, Any] | None:
    """Inside a void's transaction: the scan becomes a refusal (uploaded as `failed`, the
    ticket usable again); its event, item, venue mark and time for the venue's void (a void
    the bus cannot take now is judged again by the sweep, by its time among the rest:
    agent.store.journal `unjournaled`)."""
    conn.execute(
        "UPDATE scans SET admit = 0, status = 'denied', status_detail = ?, message = ?"
        " WHERE seq = ? AND uuid = ? AND upload_state = 'pending'",
        (NOT_PASSED, message, seq, uuid))
    row = conn.execute("SELECT uuid, event_id, item_id, venue, scanned_on FROM scans"
                       " WHERE seq = ? AND uuid = ?", (seq, uuid)).fetchone()
    return None if row is None else dict(zip(
        ("uuid", "event_id", "item_id", "venue", "scanned_on"), row, strict=True))


class PassageLog:
    """A lane's (or the daemon's) view of the two tables, on its own journal connection."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.conn = journal.conn

    def passed(self, uuid: str, at: str) -> bool:
        """The pulse came: the admit stands. False when the wait was settled already."""
        with self.journal.scan_transaction():
            return self.conn.execute(
                "UPDATE passages SET state = 'passed', resolved_at = ? WHERE uuid = ?"
                " AND state = 'waiting'", (at, uuid)).rowcount == 1

    def stand(self, uuid: str, at: str, note: str) -> bool:
        """No one can confirm the passage (input down): the admit stands, marked so."""
        with self.journal.scan_transaction():
            return self.conn.execute(
                "UPDATE passages SET state = 'interrupted', resolved_at = ?, note = ?"
                " WHERE uuid = ? AND state = 'waiting'", (at, note, uuid)).rowcount == 1

    def void(self, uuid: str, at: str, note: str | None = None) -> dict[str, Any] | None:
        """No pulse in time (or an exit's wait nobody can finish, `note` says why): rewrite
        the scan to a refusal in the same transaction. Returns the scan (event, item, venue
        mark) for the venue's void; None if settled already."""
        with self.journal.scan_transaction():
            voided = self.conn.execute(
                "UPDATE passages SET state = 'voided', resolved_at = ?, note = ? WHERE uuid = ?"
                " AND state = 'waiting' RETURNING scan_seq", (at, note, uuid)).fetchall()
            if not voided:
                return None
            return self._refuse(voided[0][0], uuid, NOT_PASSED_MESSAGE)

    def void_unopened(self, uuid: str, seq: int, at: str, note: str) -> dict[str, Any] | None:
        """The gate never opened for this admit (its relay is missing or the pulse failed):
        the admit does not stand. Like `void`, the scan is rewritten to `denied/notPassed`
        (message GATE_NOT_OPENED_MESSAGE) and the admit as decided is kept in `passages` as
        `voided` with `note` — a row inserted now, or the lane's own wait when it has a
        passage input. Only a scan no upload has taken yet (pending, in no batch): one the
        uploader took in the instant between the commit and the failed pulse has gone to the
        platform as an entry, so it stands (None; the caller says so). Called on the lane's
        thread with its gate's connection, only when a release failed — never on a good scan."""
        with self.journal.scan_transaction():
            found = self.conn.execute(
                "SELECT lane, direction, zone_id, status, status_detail, scanned_on FROM scans"
                " WHERE seq = ? AND uuid = ? AND admit = 1 AND upload_state = 'pending'"
                " AND batch_uuid IS NULL", (seq, uuid)).fetchone()
            if found is None:
                return None
            lane, direction, zone_id, status, detail, scanned_on = found
            kept = self.conn.execute(
                "INSERT INTO passages (uuid, scan_seq, lane, direction, zone_id, state,"
                " admitted_status, admitted_detail, waiting_since, resolved_at, note)"
                " VALUES (?, ?, ?, ?, ?, 'voided', ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE"
                " SET state = 'voided', resolved_at = excluded.resolved_at, note = excluded.note"
                " WHERE state = 'waiting'",
                (uuid, seq, lane, direction, zone_id, status, detail, scanned_on, at,
                 note)).rowcount
            if not kept:
                return None  # its passage was settled already: that answer stands
            return self._refuse(seq, uuid, GATE_NOT_OPENED_MESSAGE)

    def _refuse(self, seq: int, uuid: str, message: str) -> dict[str, Any] | None:
        return _refuse(self.conn, seq, uuid, message)

    def settle_interrupted(self) -> Settled:
        """At start-up: every wait left by the previous run is settled — entries stand,
        exits are voided (see module docstring). The voided exits' venue claims are voided by
        the venue bus's sweep, which judges every claim again after a restart by the
        journal (agent.venue.bus)."""
        with self.journal.scan_transaction():
            return settle_stale_waits(self.conn, 0.0, "the agent stopped while waiting for the "
                                      "passage")

    def event(self, at: str, lane: str | None, kind: str, by: str | None = None,
              detail: str | None = None) -> None:
        with self.journal.scan_transaction():
            self.conn.execute("INSERT INTO lane_events (at, lane, kind, by, detail)"
                              " VALUES (?, ?, ?, ?, ?)", (at, lane, kind, by, detail))

    def count_person(self, at: str, lane: str, direction: str, zone: str) -> None:
        """One passage counted into `zone` (+1 in, -1 out), kept for the next start."""
        self.event(at, lane, PEOPLE_KINDS[direction], None, zone)

    def people_since(self, lane: str, since: str) -> dict[str, int]:
        """People per zone counted by `lane`'s passages at or after `since` (utc_iso)."""
        rows = self.conn.execute(
            "SELECT detail, SUM(CASE kind WHEN 'people_in' THEN 1 ELSE -1 END) FROM lane_events"
            " WHERE lane = ? AND kind IN ('people_in', 'people_out') AND at >= ?"
            " GROUP BY detail", (lane, since))
        return {str(zone): int(n) for zone, n in rows}

    def prune_people(self, older_than: str) -> int:
        """Delete counted-passage rows before `older_than` (utc_iso): only the counting day's
        are ever summed, and one row a person would otherwise grow the file all season."""
        with self.journal.scan_transaction():
            return self.conn.execute(
                "DELETE FROM lane_events WHERE kind IN ('people_in', 'people_out') AND at < ?",
                (older_than,)).rowcount

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """Alarms and releases, newest first (the counted passages are left out: one a person)."""
        cur = self.conn.execute("SELECT seq, at, lane, kind, by, detail FROM lane_events"
                                " WHERE kind NOT IN ('people_in', 'people_out')"
                                " ORDER BY seq DESC LIMIT ?", (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def state(self, uuid: str) -> str | None:
        row = self.conn.execute("SELECT state FROM passages WHERE uuid = ?", (uuid,)).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM passages GROUP BY state"):
            out[state] = n
        return out


def now_iso() -> str:
    return utc_iso(datetime.now(UTC))
