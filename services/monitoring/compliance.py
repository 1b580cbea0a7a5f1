"""Duty compliance of assistance cadres and resident-team members, found when a quarter
has ended. Pure domain code: no I/O.

Duties (domain brief section 6), each threshold in ``DutySettings``:

- ``quarterly_visit`` (period ``YYYY-Qn``): each paired household is visited on at
  least ``visits_per_quarter`` distinct days of the quarter.
- ``monthly_contact`` (period ``YYYY-MM``): each paired household is contacted on at
  least ``contacts_per_month`` distinct days of each month; a call, a message and a
  visit all count as contact (a visit is more than a call).
- ``team_days`` (period ``YYYY-MM``): a resident-team member is present at the
  village on at least ``team_days_per_month`` distinct days of each month.

Who owes what:

- A pairing covers ``[assigned_on, released_on)``: the release day is no longer
  paired (as ``CadreReleased`` and the registry's member removal dates read). Several
  pairings of the same household (released and paired again) add up, overlaps once.
- A household paired for part of a period still owes the duty when it was paired on
  at least ``min_paired_days_quarter`` days of the quarter (default 30) or
  ``min_paired_days_month`` days of the month (default 15). A cadre paired in the
  last weeks of a quarter, or released in its first weeks, had no fair chance to
  organise a visit; a cadre paired for a month of it had.
- Visits and contacts count in the period they fall in (China date), whether or not
  that day was a paired day: a visit on the release day is still a visit. Counting is
  by distinct days: two calls on one day are one day of contact.
- Team days are owed only when ``team_days`` is given (not None): the caller knows
  whether the cadre served on a resident team that quarter.
- A threshold of 0 switches the duty off.

Each finding is a ``DutyNonCompliance`` payload; ``finding_id`` is a UUID v5 of
``cadre|duty|period|household`` (household empty for team days), so running the
check again gives the same ids and the stream per finding deduplicates it.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from contracts.monitoring import DutyNonCompliance
from eventkit.errors import DomainError

CHINA_TZ = timezone(timedelta(hours=8))
# uuid5(NAMESPACE_URL, "urn:tpa:monitoring:duty-finding"); fixed forever: finding ids derive from it
FINDING_NAMESPACE = uuid.UUID("9d46bcee-f2e9-5fec-a7ef-80fc292f4ad4")
DUTIES = ("quarterly_visit", "monthly_contact", "team_days")
_QUARTER = re.compile(r"^([0-9]{4})-Q([1-4])$")
_MONTH = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")

Pairing = tuple[str, str | None, date, date | None]  # household_id, village_code, assigned_on, released_on


@dataclass(frozen=True)
class DutySettings:
    """Duty thresholds; provinces may set their own."""

    visits_per_quarter: int = 1
    contacts_per_month: int = 1
    team_days_per_month: int = 20
    min_paired_days_quarter: int = 30
    min_paired_days_month: int = 15

    def __post_init__(self) -> None:
        for name, high in (("visits_per_quarter", 92), ("contacts_per_month", 31), ("team_days_per_month", 31),
                           ("min_paired_days_quarter", 92), ("min_paired_days_month", 31)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ValueError(f"{name} must be a whole number from 0 to {high}, got {value!r}")
        if self.min_paired_days_quarter < 1 or self.min_paired_days_month < 1:
            raise ValueError("min_paired_days_quarter and min_paired_days_month must be at least 1")


DEFAULT_DUTIES = DutySettings()


# --- periods ----------------------------------------------------------------------------------


def quarter_of(day: date) -> str:
    """'2025-Q1' for any day of January to March 2025."""
    return f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}"


def _parse_quarter(quarter: Any) -> tuple[int, int]:
    m = _QUARTER.match(quarter) if isinstance(quarter, str) else None
    if m is None:
        raise DomainError("invalid_quarter", f"quarter must look like 2025-Q1, not {quarter!r}", field="quarter")
    return int(m.group(1)), int(m.group(2))


def months_of(quarter: str) -> list[str]:
    """The months of a quarter: months_of('2025-Q2') == ['2025-04', '2025-05', '2025-06']."""
    year, q = _parse_quarter(quarter)
    return [f"{year:04d}-{m:02d}" for m in range(3 * q - 2, 3 * q + 1)]


def month_bounds(month: str) -> tuple[date, date]:
    """First day and the day after the last day of a 'YYYY-MM' month."""
    m = _MONTH.match(month) if isinstance(month, str) else None
    if m is None:
        raise DomainError("invalid_month", f"month must look like 2025-01, not {month!r}", field="month")
    year, number = int(m.group(1)), int(m.group(2))
    if not 2000 <= year <= 2100:
        raise DomainError("invalid_month", f"year {year} is outside 2000-2100", field="month")
    start = date(year, number, 1)
    end = date(year + 1, 1, 1) if number == 12 else date(year, number + 1, 1)
    return start, end


def quarter_bounds(quarter: str) -> tuple[date, date]:
    """First day and the day after the last day of a 'YYYY-Qn' quarter."""
    months = months_of(quarter)
    return month_bounds(months[0])[0], month_bounds(months[-1])[1]


def finding_id(cadre_id: str, duty: str, period: str, household_id: str | None = None) -> str:
    """Stable id of a finding: the same cadre, duty, period and household give the same id."""
    return str(uuid.uuid5(FINDING_NAMESPACE, f"{cadre_id}|{duty}|{period}|{household_id or ''}"))


# --- inputs -------------------------------------------------------------------------------------


def _day(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what}: a datetime needs a UTC offset")
        return value.astimezone(CHINA_TZ).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{what}: {value!r} is not a date")


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _days(start: date, end: date) -> set[date]:
    return {start + timedelta(days=i) for i in range((end - start).days)}


@dataclass
class _Paired:
    days: set[date]
    village_code: str | None
    assigned_on: date


def _paired_days(pairings: Iterable[Pairing], start: date, end: date) -> dict[str, _Paired]:
    """household -> the days of [start, end) it was paired, and its village (of the latest pairing)."""
    out: dict[str, _Paired] = {}
    for row in pairings:
        household_id, village, assigned, released = row
        assigned = _day(assigned, "assigned_on")
        released = _day(released, "released_on") if released is not None else None
        first = max(assigned, start)
        last = min(released, end) if released is not None else end
        days = _days(first, last) if first < last else set()
        entry = out.get(household_id)
        if entry is None:
            out[household_id] = _Paired(days, village, assigned)
        else:
            entry.days |= days
            if assigned >= entry.assigned_on:
                entry.village_code, entry.assigned_on = village or entry.village_code, assigned
    return out


def _by_household(rows: Iterable[tuple[str, Any]], what: str, start: date, end: date) -> dict[str, set[date]]:
    out: dict[str, set[date]] = {}
    for household_id, day in rows:
        d = _day(day, what)
        if start <= d < end:
            out.setdefault(household_id, set()).add(d)
    return out


# --- findings -----------------------------------------------------------------------------------


def quarterly_findings(cadre_id: str, quarter: str, pairings: Iterable[Pairing],
                       visits: Iterable[tuple[str, Any]], contacts: Iterable[tuple[str, Any]],
                       team_days: Iterable[tuple[str | None, Any]] | None,
                       settings: DutySettings | None = None, *, now: datetime) -> list[dict[str, Any]]:
    """The duties ``cadre_id`` missed in ``quarter`` ('YYYY-Qn'), as ``DutyNonCompliance`` payloads
    (JSON-ready dicts, ``detected_at`` = ``now``): quarterly visits, then monthly contacts by month,
    then team days by month; households in id order.

    ``pairings``: the cadre's pairings (household_id, village_code, assigned_on, released_on or None),
    from ``CadreAssigned``/``CadreReleased``. ``visits``: (household_id, day) of the cadre's
    check-ins; ``contacts``: (household_id, day) of calls and messages; ``team_days``: (village_code,
    day) of resident-team days, or None when the cadre was not on a resident team. Days are dates,
    ISO strings or aware datetimes (read as China dates). Raises ``DomainError`` ``invalid_quarter``
    (422) or ``period_not_ended`` (409) when the quarter has not ended by ``now`` (China date)."""
    now = _aware(now)
    settings = settings or DEFAULT_DUTIES
    if not isinstance(cadre_id, str) or not cadre_id.strip():
        raise DomainError("missing_field", "cadre_id is required", field="cadre_id")
    start, end = quarter_bounds(quarter)
    today = now.astimezone(CHINA_TZ).date()
    if today < end:
        raise DomainError("period_not_ended", f"quarter {quarter} ends on {end - timedelta(days=1)}: duties are "
                          f"checked from {end}", 409, field="quarter", checkable_from=end.isoformat())
    paired = _paired_days(pairings, start, end)
    visited = _by_household(visits, "visit day", start, end)
    contacted = _by_household(contacts, "contact day", start, end)
    findings: list[dict[str, Any]] = []

    def finding(duty: str, period: str, household_id: str | None, village: str | None, expected: int,
                actual: int) -> None:
        findings.append(DutyNonCompliance(
            finding_id=finding_id(cadre_id, duty, period, household_id), cadre_id=cadre_id, duty=duty,
            period=period, household_id=household_id, village_code=village, expected=expected, actual=actual,
            detected_at=now).model_dump(mode="json"))

    households = sorted(paired)
    if settings.visits_per_quarter:
        for household_id in households:
            entry = paired[household_id]
            if len(entry.days) < settings.min_paired_days_quarter:
                continue
            actual = len(visited.get(household_id, ()))
            if actual < settings.visits_per_quarter:
                finding("quarterly_visit", quarter, household_id, entry.village_code, settings.visits_per_quarter,
                        actual)
    months = [(month, *month_bounds(month)) for month in months_of(quarter)]
    if settings.contacts_per_month:
        for month, first, after in months:
            for household_id in households:
                entry = paired[household_id]
                if sum(1 for d in entry.days if first <= d < after) < settings.min_paired_days_month:
                    continue
                days = visited.get(household_id, set()) | contacted.get(household_id, set())
                actual = sum(1 for d in days if first <= d < after)
                if actual < settings.contacts_per_month:
                    finding("monthly_contact", month, household_id, entry.village_code,
                            settings.contacts_per_month, actual)
    if team_days is not None and settings.team_days_per_month:
        rows = [(village, _day(day, "team day")) for village, day in team_days]
        for month, first, after in months:
            in_month = {d: village for village, d in sorted(rows, key=lambda r: (r[1], r[0] or ""))
                        if first <= d < after}
            actual = len(in_month)
            if actual < settings.team_days_per_month:
                villages = Counter(v for v in in_month.values() if v)
                village = min(villages, key=lambda v: (-villages[v], v)) if villages else None
                finding("team_days", month, None, village, settings.team_days_per_month, actual)
    return findings
