"""RFC 3339 times as the server writes them (``2026-03-01T09:30:00.123456Z``), to and from
timezone-aware datetimes. ``datetime.fromisoformat`` reads ``Z`` and fractions of any length
only from Python 3.11 on, so the SDK normalises them itself."""

from __future__ import annotations

import re
from datetime import datetime, timezone

# Date, time, optional fraction, offset; the fraction is cut to microseconds.
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> datetime:
    """A timezone-aware datetime; ``ValueError`` for text that is not RFC 3339."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    base, fraction, offset = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset in ("Z", "z") else offset
    return datetime.fromisoformat(f"{base.replace(' ', 'T')}.{micros}{offset}")


def format_time(at: datetime) -> str:
    """RFC 3339 in UTC; a naive datetime is refused (its zone would be a guess)."""
    if at.tzinfo is None:
        raise ValueError("a naive datetime has no time zone: pass an aware one (e.g. tzinfo=timezone.utc)")
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
