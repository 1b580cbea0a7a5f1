"""Injectable time source (workflow notice periods, funds payment dates).

Domain commands take ``now`` as an argument; the application layer gets it from
a ``Clock`` so that tests can move time (notice periods, overdue steps).
Every clock returns timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a clock needs a timezone-aware datetime")
    return moment.astimezone(timezone.utc)


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _utc(start) if start is not None else datetime(2025, 1, 6, 1, 0, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = _utc(moment)

    def advance(self, delta: timedelta) -> datetime:
        """Move forward (a negative delta moves back) and return the new time."""
        self._now = self._now + delta
        return self._now
