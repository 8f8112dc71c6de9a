"""The key lifecycle's pure rules: expiry as a duration or a time, and a key's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.keys import parse_expiry, status_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", NOW + timedelta(days=30)),
    ("12h", NOW + timedelta(hours=12)),
    ("1d12h", NOW + timedelta(days=1, hours=12)),
    ("2w", NOW + timedelta(weeks=2)),
    ("90m", NOW + timedelta(minutes=90)),
    ("3600S", NOW + timedelta(hours=1)),
    ("2026-06-01T00:00:00", datetime(2026, 6, 1, tzinfo=UTC)),  # no offset: UTC
    ("2026-06-01T02:00:00+02:00", datetime(2026, 6, 1, tzinfo=UTC)),
])
def test_an_expiry_is_a_duration_from_now_or_a_time_in_utc(text: str, expected: datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "30", "30 days", "0h", "h12", "12h30", "1y", "999999w999999w", "tomorrow"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_expiry(text, NOW)


def test_a_revoked_key_stays_revoked_and_an_expired_one_is_expired_from_its_instant() -> None:
    assert status_of(NOW, None, NOW) == "revoked"
    assert status_of(NOW, NOW + timedelta(days=1), NOW) == "revoked"
    assert status_of(None, NOW, NOW) == "expired"
    assert status_of(None, NOW + timedelta(microseconds=1), NOW) == "active"
    assert status_of(None, None, NOW) == "active"
