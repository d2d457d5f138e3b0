"""When the venue leader runs round one's daily full pass (`sync.full_resync_at`, local time)."""

from __future__ import annotations

from datetime import datetime, timedelta

from agent.venue.leader_sync import next_daily


def test_next_daily_is_the_next_local_time_of_day() -> None:
    base = datetime(2026, 12, 6, 3, 59, 30).astimezone()
    at = datetime.fromtimestamp(next_daily("04:00", base.timestamp())).astimezone()
    assert (at.hour, at.minute, at.date()) == (4, 0, base.date())
    after = base + timedelta(minutes=1)  # 04:00:30: today's is past, tomorrow's is next
    at = datetime.fromtimestamp(next_daily("04:00", after.timestamp())).astimezone()
    assert (at.hour, at.minute, at.date()) == (4, 0, (base + timedelta(days=1)).date())
    exactly = base.replace(hour=4, minute=0, second=0)
    assert next_daily("04:00", exactly.timestamp()) > exactly.timestamp()  # never twice
