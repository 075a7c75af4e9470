"""core.times: RFC 3339 written as UTC with milliseconds; read with Z, an offset, or none (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.core.times import format_rfc3339, parse_rfc3339


def test_a_time_is_written_in_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 11, 23, 14, 37, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_rfc3339(moment) == "2026-11-23T13:37:00.123Z"


@pytest.mark.parametrize(
    "raw",
    ["2026-11-23T13:37:00.123Z", "2026-11-23T14:37:00.123+01:00", "2026-11-23T13:37:00.123"],
)
def test_z_an_offset_or_no_offset_read_back_as_the_same_instant(raw: str) -> None:
    assert parse_rfc3339(raw) == datetime(2026, 11, 23, 13, 37, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["yesterday", "", "2026-13-01T00:00:00Z"])
def test_what_is_not_a_time_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(raw)
