"""RFC 3339 times, the one format guardq writes (verdicts, dead-letter history, retry due times, logs)
and reads (retry due times, `--since`/`--until`): UTC with milliseconds, ``2026-11-23T13:37:00.123Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC with milliseconds."""
    return format_rfc3339(datetime.fromtimestamp(seconds, UTC))


def utc_now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with milliseconds."""
    return format_rfc3339(datetime.now(UTC))


def parse_rfc3339(raw: str) -> datetime:
    """An aware datetime from an RFC 3339 time (``Z`` or an offset; UTC when it has none).

    Raises ``ValueError`` when ``raw`` is not such a time."""
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
