"""Cadre attendance: visits, contacts and resident-team days sent by the app in offline
batches. Pure domain code: no I/O, no frameworks.

One ``CadreAttendance`` stream per cadre (stream type ``attendance``, stream id = the
cadre's user id). ``ingest`` takes one batch as the app sends it (a list of objects,
see ``ITEM_FIELDS``) and records ``VisitCheckedIn``, ``VisitCheckedOut``,
``VisitLogged``, ``ContactLogged`` and ``TeamDayRecorded`` events.

Batch semantics
---------------

- **Per item, not all-or-nothing.** Valid items are recorded; each invalid item is
  reported with its index, ``client_event_id``, a code and a reason. The app cannot
  correct offline data that was captured weeks ago, and refusing a whole batch for
  one bad item would lose valid attendance. The result (``BatchResult``) lists every
  item as ``accepted``, ``duplicate`` or ``rejected``, in the batch's order.
- **Idempotent.** An item whose ``client_event_id`` is already recorded in the stream
  (or earlier in the same batch) is a ``duplicate``: skipped, not an error, so
  re-sending a batch after a lost response is harmless. A rejected item is not
  recorded, so its ``client_event_id`` stays free: re-sending it gives the same
  answer, or is accepted once the missing piece (e.g. its visit's check-in) has
  arrived. A second team day for a day already recorded is also a ``duplicate``
  (``team_day_already_recorded``): one team day per cadre per day.
- **Device order.** Items are processed in ``occurred_at`` order (offline batches may
  be unordered); at the same instant check-ins go first and check-outs last, then
  ties go by ``client_event_id``; ``occurred_at`` is kept as the device
  sent it (with its offset) and ``received_at`` is ``now``.
- **Time window.** An item more than ``max_clock_skew`` after ``now`` is refused
  (``occurred_in_future``: the device clock is wrong); one older than
  ``max_backdate_days`` is refused (``too_old``).
- **Visits.** A check-in opens a visit (``visit_id`` is made by the device); a
  check-out closes it (same household, not before the check-in); a visit log needs
  its visit's check-in recorded before it (in the stream or earlier in the batch).
  A cadre may have several visits open at once (a forgotten check-out does not
  block the next visit). Whether the cadre is paired with the household is not
  checked here: compliance counts only paired households.
- **Households.** The application passes, for the batch's household ids, what the
  registry knows: ``household_villages`` (village code) and ``household_locations``
  (``CoordinatesSet``). A household id that is a key of neither mapping is unknown
  to the registry and the item is refused (``unknown_household``); a value of None
  means "known, but that fact is missing".

Check-in flags (recorded, never refusals)
-----------------------------------------

- ``distance_m``: great-circle distance from the household's coordinates (None when
  the household has none; then no geofence applies and ``geofence_m`` is None).
- ``outside_geofence``: ``distance_m > geofence_m + allowance``, where the allowance
  is the fix's ``accuracy_m`` (the true position may be that far from the reported
  one), capped at ``max_accuracy_allowance_m`` so that a coarse cell-tower or IP fix
  cannot stretch the fence to kilometres. Exactly on the boundary is inside.
- ``speed_kmh``: from the previous check-in by ``occurred_at`` (in the whole stream,
  so an older batch arriving late is compared with the right neighbour): the lowest
  speed consistent with both fixes, i.e. the distance less both allowances (never
  below 0), over the elapsed time but at least ``min_speed_interval_s`` (device
  clocks tick in seconds and may be nudged by network time; two fixes a second
  apart must not give an absurd speed from GPS jitter). ``impossible_travel`` when
  it exceeds ``max_speed_kmh``.

Flags are decided on the rounded values that the event carries (``distance_m`` and
``speed_kmh`` to 0.1), so anyone re-checking an event gets the same answer.

Event handlers (``when_*``) use only event data.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import ValidationError

from contracts import monitoring as ev
from contracts.base import EventModel
from contracts.registry import UUID_PATTERN, VILLAGE_CODE_PATTERN
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

EARTH_RADIUS_M = 6371008.8  # IUGG mean radius of the WGS-84 ellipsoid
CHINA_TZ = timezone(timedelta(hours=8))  # no daylight saving time; days are China dates
KINDS = ("check_in", "check_out", "visit_log", "contact", "team_day")
CHANNELS = ("call", "message")
MAX_ID = 128        # client_event_id, visit_id
MAX_TEXT = 2000     # notes, note
MAX_REF = 512       # photo_ref
MAX_NEEDS = 20
MAX_NEED = 64
MAX_CALL_S = 86_400

# At the same device second a visit's check-in goes first and its check-out last.
_TIE_RANK = {"check_in": 0, "visit_log": 1, "contact": 1, "team_day": 1, "check_out": 2}

ITEM_FIELDS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind -> (required fields besides client_event_id, kind, occurred_at; optional fields)
    "check_in": (("latitude", "longitude", "visit_id", "household_id"), ("accuracy_m", "photo_ref")),
    "check_out": (("latitude", "longitude", "visit_id", "household_id"), ("accuracy_m",)),
    "visit_log": (("visit_id", "household_id", "notes"), ("needs",)),
    "contact": (("household_id", "channel"), ("duration_s", "note")),
    "team_day": (("latitude", "longitude", "village_code"), ("accuracy_m", "day")),
}

_UUID = re.compile(UUID_PATTERN)
_VILLAGE = re.compile(VILLAGE_CODE_PATTERN)

Location = tuple[float, float]
ItemStatus = Literal["accepted", "duplicate", "rejected"]


# --- geometry and time ----------------------------------------------------------------------


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS-84 points (degrees), on a sphere of
    the mean Earth radius. Longitudes wrap: points either side of the antimeridian are close.
    Error against the ellipsoid is below 0.5 %, far less than phone GPS error at these ranges."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    a = min(1.0, max(0.0, a))
    return 2 * EARTH_RADIUS_M * math.atan2(math.sqrt(a), math.sqrt(1 - a))


def china_date(at: datetime) -> date:
    """The China date of an instant: the day a visit, contact or team day counts for."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is needed")
    return at.astimezone(CHINA_TZ).date()


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _day(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(value)


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttendanceSettings:
    """Attendance checks; provinces may set their own.

    ``max_speed_kmh`` 120: cadres move between villages by car or motorbike on county and
    township roads; 120 km/h is China's expressway speed limit and roads are never shorter
    than the straight line, so a straight-line speed above it between two check-ins cannot
    have been driven (a high-speed train between towns is not how a cadre goes from one
    household to the next). ``min_speed_interval_s`` 60 and the accuracy allowance keep GPS
    jitter between close fixes from looking like travel (see the module notes).
    ``max_clock_skew`` 10 minutes tolerates an unsynchronised phone clock; later is a wrong
    clock. ``max_backdate_days`` 30: an app offline longer than a month is not credible
    attendance, and late data would change duty results of closed months."""

    geofence_m: float = 500.0
    max_accuracy_allowance_m: float = 1000.0
    max_speed_kmh: float = 120.0
    min_speed_interval_s: float = 60.0
    max_clock_skew: timedelta = timedelta(minutes=10)
    max_backdate_days: int = 30
    max_batch_items: int = 1000

    def __post_init__(self) -> None:
        for name in ("geofence_m", "max_accuracy_allowance_m", "max_speed_kmh", "min_speed_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_speed_kmh <= 0 or self.min_speed_interval_s <= 0:
            raise ValueError("max_speed_kmh and min_speed_interval_s must be positive")
        if not isinstance(self.max_clock_skew, timedelta) or self.max_clock_skew < timedelta(0):
            raise ValueError("max_clock_skew must be a timedelta >= 0")
        for name in ("max_backdate_days", "max_batch_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def allowance(self, accuracy_m: float | None) -> float:
        """Metres a fix may be off: its reported accuracy, capped; 0 when not reported."""
        return 0.0 if accuracy_m is None else min(accuracy_m, self.max_accuracy_allowance_m)


DEFAULT_SETTINGS = AttendanceSettings()


# --- state ---------------------------------------------------------------------------------------


@dataclass
class Visit:
    visit_id: str
    household_id: str
    village_code: str | None
    checked_in_at: datetime
    latitude: float
    longitude: float
    accuracy_m: float | None
    checked_out_at: datetime | None = None
    minutes_at_household: float | None = None
    logs: int = 0

    @property
    def open(self) -> bool:
        return self.checked_out_at is None


@dataclass(frozen=True)
class CheckInPoint:
    occurred_at: datetime  # UTC
    client_event_id: str
    latitude: float
    longitude: float
    accuracy_m: float | None


def _point_key(p: CheckInPoint) -> tuple[datetime, str]:
    return p.occurred_at, p.client_event_id


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemResult:
    """What became of one item of a batch. ``code``/``reason``/``field`` explain a duplicate or a
    rejection; ``flags`` and ``details`` describe an accepted item (check-in distance, speed...)."""

    index: int
    client_event_id: str | None
    status: ItemStatus
    kind: str | None = None
    event_type: str | None = None
    code: str | None = None
    reason: str | None = None
    field: str | None = None
    flags: tuple[str, ...] = ()
    details: Mapping[str, Any] = dataclass_field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "client_event_id": self.client_event_id,
                               "status": self.status, "kind": self.kind}
        if self.event_type is not None:
            out["event_type"] = self.event_type
        if self.code is not None:
            out["code"] = self.code
            out["reason"] = self.reason
        if self.field is not None:
            out["field"] = self.field
        if self.flags:
            out["flags"] = list(self.flags)
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class BatchResult:
    """Every item of the batch, in the batch's order."""

    items: tuple[ItemResult, ...]

    def _with(self, status: ItemStatus) -> tuple[ItemResult, ...]:
        return tuple(i for i in self.items if i.status == status)

    @property
    def accepted(self) -> tuple[ItemResult, ...]:
        return self._with("accepted")

    @property
    def duplicates(self) -> tuple[ItemResult, ...]:
        return self._with("duplicate")

    @property
    def rejected(self) -> tuple[ItemResult, ...]:
        return self._with("rejected")

    def to_json(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted), "duplicates": len(self.duplicates),
                "rejected": len(self.rejected), "items": [i.to_json() for i in self.items]}


# --- item validation ----------------------------------------------------------------------------------


def _invalid(code: str, message: str, field_name: str | None = None, status: int = 422) -> DomainError:
    return DomainError(code, message, status, **({"field": field_name} if field_name else {}))


def _present(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(raw: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = raw.get(name)
    if not _present(raw, name):
        raise _invalid("missing_field", f"{name} is required", name)
    if not isinstance(value, str):
        raise _invalid("invalid_value", f"{name} must be a string", name)
    text = value.strip()
    if len(text) > limit:
        raise _invalid("too_long", f"{name} is longer than {limit} characters", name)
    return text


def _optional_text(raw: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str | None:
    return _text(raw, name, limit) if _present(raw, name) else None


def _number(raw: Mapping[str, Any], name: str, code: str) -> float:
    value = raw.get(name)
    if value is None:
        raise _invalid("missing_field", f"{name} is required", name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(code, f"{name} must be a number", name)
    return float(value)


def _location(raw: Mapping[str, Any]) -> Location:
    lat = _number(raw, "latitude", "invalid_location")
    lon = _number(raw, "longitude", "invalid_location")
    if not -90 <= lat <= 90:
        raise _invalid("invalid_location", f"latitude {lat} is outside -90..90", "latitude")
    if not -180 <= lon <= 180:
        raise _invalid("invalid_location", f"longitude {lon} is outside -180..180", "longitude")
    if lat == 0 and lon == 0:
        # 0,0 is in the Gulf of Guinea: it is what devices report when they have no fix.
        raise _invalid("invalid_location", "latitude 0, longitude 0 is not a position fix (the device had no fix)",
                       "latitude")
    return lat, lon


def _accuracy(raw: Mapping[str, Any]) -> float | None:
    if raw.get("accuracy_m") is None:
        return None
    value = _number(raw, "accuracy_m", "invalid_accuracy")
    if value < 0:
        raise _invalid("invalid_accuracy", "accuracy_m must be >= 0", "accuracy_m")
    return value


def _client_event_id(raw: Mapping[str, Any]) -> str:
    value = raw.get("client_event_id")
    if not _present(raw, "client_event_id"):
        raise _invalid("missing_field", "client_event_id is required (the item cannot be deduplicated without it)",
                       "client_event_id")
    if not isinstance(value, str):
        raise _invalid("invalid_client_event_id", "client_event_id must be a string", "client_event_id")
    if len(value) > MAX_ID or value != value.strip():
        raise _invalid("invalid_client_event_id", f"client_event_id must be at most {MAX_ID} characters without "
                       "surrounding spaces", "client_event_id")
    return value


def _kind(raw: Mapping[str, Any]) -> str:
    value = raw.get("kind")
    if value is None:
        raise _invalid("missing_field", "kind is required", "kind")
    if value not in KINDS:
        raise _invalid("invalid_kind", f"kind must be one of {', '.join(KINDS)}, not {value!r}", "kind")
    return value


def _occurred_at(raw: Mapping[str, Any]) -> datetime:
    value = raw.get("occurred_at")
    if value is None:
        raise _invalid("missing_field", "occurred_at is required", "occurred_at")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _invalid("invalid_occurred_at", "occurred_at must be an ISO 8601 date-time with an offset, "
                           "e.g. 2025-03-10T09:30:00+08:00", "occurred_at") from None
    if not isinstance(value, datetime):
        raise _invalid("invalid_occurred_at", "occurred_at must be an ISO 8601 date-time", "occurred_at")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _invalid("invalid_occurred_at", "occurred_at needs a UTC offset (e.g. +08:00): device time "
                       "without one is ambiguous", "occurred_at")
    return value


def _visit_id(raw: Mapping[str, Any]) -> str:
    return _text(raw, "visit_id", MAX_ID)


def _needs(raw: Mapping[str, Any]) -> list[str]:
    value = raw.get("needs")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
        raise _invalid("invalid_needs", "needs must be a list of non-empty strings", "needs")
    needs = list(dict.fromkeys(n.strip() for n in value))
    if len(needs) > MAX_NEEDS or any(len(n) > MAX_NEED for n in needs):
        raise _invalid("invalid_needs", f"needs takes at most {MAX_NEEDS} entries of at most {MAX_NEED} "
                       "characters", "needs")
    return needs


@dataclass(frozen=True)
class _Item:
    index: int
    client_event_id: str
    kind: str
    occurred_at: datetime
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class _Context:
    now: datetime
    settings: AttendanceSettings
    household_locations: Mapping[str, Location | None]
    household_villages: Mapping[str, str | None]
    village_locations: Mapping[str, Location | None]
    batch_check_ins: Mapping[str, datetime]  # visit_id -> earliest check-in time in this batch


# --- the aggregate -----------------------------------------------------------------------------------


class CadreAttendance(Aggregate):
    """One cadre's attendance record (stream id = the cadre's user id)."""

    stream_type = ev.ATTENDANCE

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.client_event_ids: set[str] = set()
        self.visits: dict[str, Visit] = {}
        self.check_ins: list[CheckInPoint] = []     # sorted by (occurred_at, client_event_id)
        self.team_days: dict[date, str] = {}        # day -> village code
        self.contacts = 0
        self.visit_logs = 0

    # -- queries -----------------------------------------------------------------------------

    @property
    def open_visits(self) -> dict[str, Visit]:
        return {k: v for k, v in self.visits.items() if v.open}

    @property
    def visits_done(self) -> list[Visit]:
        """Visits checked in and out, by check-in time."""
        return sorted((v for v in self.visits.values() if not v.open), key=lambda v: v.checked_in_at)

    @property
    def last_check_in(self) -> CheckInPoint | None:
        """The latest check-in by device time."""
        return self.check_ins[-1] if self.check_ins else None

    def previous_check_in(self, at: datetime) -> CheckInPoint | None:
        """The latest check-in at or before ``at`` (device time)."""
        i = bisect.bisect_right(self.check_ins, at.astimezone(timezone.utc), key=lambda p: p.occurred_at)
        return self.check_ins[i - 1] if i else None

    # -- command -----------------------------------------------------------------------------

    def ingest(self, items: Sequence[Any], *, now: datetime,
               household_locations: Mapping[str, Location | None],
               household_villages: Mapping[str, str | None],
               settings: AttendanceSettings | None = None,
               village_locations: Mapping[str, Location | None] | None = None) -> BatchResult:
        """Record one offline batch from the app; see the module notes. ``now`` is the server
        time the batch arrived (``received_at``). Raises ``DomainError`` only for a batch that is
        not a list (``invalid_batch``) or is too long (``batch_too_large``); items are answered
        one by one in the result."""
        now = _aware(now)
        settings = settings or DEFAULT_SETTINGS
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise DomainError("invalid_batch", "the batch must be a list of items", field="items")
        if len(items) > settings.max_batch_items:
            raise DomainError("batch_too_large", f"a batch takes at most {settings.max_batch_items} items; "
                              f"this one has {len(items)}: send it in parts", field="items",
                              limit=settings.max_batch_items, size=len(items))
        results: dict[int, ItemResult] = {}
        queue: list[_Item] = []
        for index, raw in enumerate(items):
            client_id: str | None = None
            kind: str | None = None
            try:
                if not isinstance(raw, Mapping):
                    raise _invalid("invalid_item", "each item must be an object")
                client_id = _client_event_id(raw)
                if client_id in self.client_event_ids:
                    results[index] = _duplicate(index, client_id, raw.get("kind"), "already_recorded",
                                                f"event {client_id} is already recorded")
                    continue
                kind = _kind(raw)
                queue.append(_Item(index, client_id, kind, _occurred_at(raw), raw))
            except DomainError as err:
                results[index] = _rejected(index, client_id, kind, err)
        queue.sort(key=lambda i: (i.occurred_at, _TIE_RANK[i.kind], i.client_event_id, i.index))
        batch_check_ins: dict[str, datetime] = {}
        for item in queue:
            visit_id = item.raw.get("visit_id")
            if item.kind == "check_in" and isinstance(visit_id, str):
                batch_check_ins.setdefault(visit_id.strip(), item.occurred_at)
        ctx = _Context(now, settings, household_locations, household_villages, village_locations or {},
                       batch_check_ins)
        handlers = {"check_in": self._check_in, "check_out": self._check_out, "visit_log": self._visit_log,
                    "contact": self._contact, "team_day": self._team_day}
        for item in queue:
            if item.client_event_id in self.client_event_ids:
                results[item.index] = _duplicate(item.index, item.client_event_id, item.kind, "already_recorded",
                                                 f"event {item.client_event_id} is sent twice in this batch")
                continue
            try:
                self._require_window(item, ctx)
                results[item.index] = handlers[item.kind](item, ctx)
            except DomainError as err:
                results[item.index] = _rejected(item.index, item.client_event_id, item.kind, err)
        return BatchResult(tuple(results[i] for i in range(len(items))))

    # -- item handlers ------------------------------------------------------------------------------

    def _require_window(self, item: _Item, ctx: _Context) -> None:
        latest = ctx.now + ctx.settings.max_clock_skew
        if item.occurred_at > latest:
            raise _invalid("occurred_in_future", f"occurred_at {item.occurred_at.isoformat()} is more than "
                           f"{_minutes(ctx.settings.max_clock_skew)} minutes after the server time "
                           f"{ctx.now.isoformat()}: the device clock is wrong", "occurred_at")
        earliest = ctx.now - timedelta(days=ctx.settings.max_backdate_days)
        if item.occurred_at < earliest:
            raise _invalid("too_old", f"occurred_at {item.occurred_at.isoformat()} is more than "
                           f"{ctx.settings.max_backdate_days} days before the server time {ctx.now.isoformat()}: "
                           "offline items must be sent within that time", "occurred_at")

    def _household(self, item: _Item, ctx: _Context) -> str:
        household_id = _text(item.raw, "household_id", MAX_ID)
        if not _UUID.match(household_id):
            raise _invalid("invalid_household_id", "household_id must be a lower-case UUID", "household_id")
        if household_id not in ctx.household_villages and household_id not in ctx.household_locations:
            raise _invalid("unknown_household", f"household {household_id} is not in the register", "household_id",
                           404)
        return household_id

    def _check_in(self, item: _Item, ctx: _Context) -> ItemResult:
        raw, s = item.raw, ctx.settings
        visit_id = _visit_id(raw)
        household_id = self._household(item, ctx)
        lat, lon = _location(raw)
        accuracy = _accuracy(raw)
        photo_ref = _optional_text(raw, "photo_ref", MAX_REF)
        existing = self.visits.get(visit_id)
        if existing is not None:
            state = "open" if existing.open else "already checked out"
            raise _invalid("visit_already_open" if existing.open else "visit_already_closed",
                           f"visit {visit_id} was checked in at {existing.checked_in_at.isoformat()} and is {state}: "
                           "a check-in needs a new visit_id", "visit_id", 409)
        flags: list[str] = []
        home = ctx.household_locations.get(household_id)
        distance = geofence = None
        outside = False
        if home is not None:
            distance = round(haversine_m(home[0], home[1], lat, lon), 1)
            geofence = s.geofence_m
            outside = distance > s.geofence_m + s.allowance(accuracy)
            if outside:
                flags.append("outside_geofence")
        speed = None
        impossible = False
        previous = self.previous_check_in(item.occurred_at)
        if previous is not None:
            gap = haversine_m(previous.latitude, previous.longitude, lat, lon)
            gap = max(0.0, gap - s.allowance(previous.accuracy_m) - s.allowance(accuracy))
            seconds = max((item.occurred_at - previous.occurred_at).total_seconds(), s.min_speed_interval_s)
            speed = round(gap / seconds * 3.6, 1)
            impossible = speed > s.max_speed_kmh
            if impossible:
                flags.append("impossible_travel")
        village = ctx.household_villages.get(household_id)
        self._record(item, ctx, ev.VisitCheckedIn, latitude=lat, longitude=lon, accuracy_m=accuracy,
                     visit_id=visit_id, household_id=household_id, village_code=village, photo_ref=photo_ref,
                     distance_m=distance, outside_geofence=outside, geofence_m=geofence, speed_kmh=speed,
                     impossible_travel=impossible)
        return _accepted(item, ev.VisitCheckedIn, flags, distance_m=distance, geofence_m=geofence, speed_kmh=speed,
                         previous_check_in=previous.client_event_id if previous else None)

    def _visit_for(self, item: _Item, ctx: _Context, visit_id: str, household_id: str, action: str) -> Visit:
        visit = self.visits.get(visit_id)
        if visit is None:
            pending = ctx.batch_check_ins.get(visit_id)
            if pending is not None and pending > item.occurred_at:
                raise _invalid(f"{action}_before_check_in", f"the {action.replace('_', ' ')} at "
                               f"{item.occurred_at.isoformat()} is before visit {visit_id}'s check-in at "
                               f"{pending.isoformat()}", "occurred_at", 409)
            code = "visit_not_open" if action == "check_out" else "unknown_visit"
            if pending is not None:
                raise _invalid(code, f"visit {visit_id}'s check-in in this batch was not accepted", "visit_id", 409)
            raise _invalid(code, f"visit {visit_id} has no check-in: send the check-in first (it may be in "
                           "another batch)", "visit_id", 409)
        if visit.household_id != household_id:
            raise _invalid("household_mismatch", f"visit {visit_id} is at household {visit.household_id}, not "
                           f"{household_id}", "household_id", 409)
        return visit

    def _check_out(self, item: _Item, ctx: _Context) -> ItemResult:
        raw = item.raw
        visit_id = _visit_id(raw)
        household_id = self._household(item, ctx)
        lat, lon = _location(raw)
        accuracy = _accuracy(raw)
        visit = self._visit_for(item, ctx, visit_id, household_id, "check_out")
        if not visit.open:
            raise _invalid("visit_already_closed", f"visit {visit_id} was already checked out at "
                           f"{visit.checked_out_at.isoformat()}", "visit_id", 409)  # type: ignore[union-attr]
        if item.occurred_at < visit.checked_in_at:
            raise _invalid("check_out_before_check_in", f"the check-out at {item.occurred_at.isoformat()} is before "
                           f"the check-in at {visit.checked_in_at.isoformat()}", "occurred_at", 409)
        minutes = round((item.occurred_at - visit.checked_in_at).total_seconds() / 60, 2)
        self._record(item, ctx, ev.VisitCheckedOut, latitude=lat, longitude=lon, accuracy_m=accuracy,
                     visit_id=visit_id, household_id=household_id, minutes_at_household=minutes)
        return _accepted(item, ev.VisitCheckedOut, (), minutes_at_household=minutes)

    def _visit_log(self, item: _Item, ctx: _Context) -> ItemResult:
        raw = item.raw
        visit_id = _visit_id(raw)
        household_id = self._household(item, ctx)
        notes = _text(raw, "notes")
        needs = _needs(raw)
        self._visit_for(item, ctx, visit_id, household_id, "visit_log")
        self._record(item, ctx, ev.VisitLogged, visit_id=visit_id, household_id=household_id, notes=notes,
                     needs=needs)
        return _accepted(item, ev.VisitLogged, ())

    def _contact(self, item: _Item, ctx: _Context) -> ItemResult:
        raw = item.raw
        household_id = self._household(item, ctx)
        channel = raw.get("channel")
        if channel is None:
            raise _invalid("missing_field", "channel is required", "channel")
        if channel not in CHANNELS:
            raise _invalid("invalid_channel", f"channel must be one of {', '.join(CHANNELS)}", "channel")
        duration = raw.get("duration_s")
        if duration is not None:
            if channel != "call":
                raise _invalid("unexpected_field", "duration_s is only for a call", "duration_s")
            if isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_CALL_S:
                raise _invalid("invalid_duration", f"duration_s must be whole seconds from 0 to {MAX_CALL_S}",
                               "duration_s")
        note = _optional_text(raw, "note")
        self._record(item, ctx, ev.ContactLogged, household_id=household_id, channel=channel, duration_s=duration,
                     note=note)
        return _accepted(item, ev.ContactLogged, ())

    def _team_day(self, item: _Item, ctx: _Context) -> ItemResult:
        raw = item.raw
        village = _text(raw, "village_code", MAX_ID)
        if not _VILLAGE.match(village):
            raise _invalid("invalid_village_code", "village_code must be 12 digits", "village_code")
        lat, lon = _location(raw)
        accuracy = _accuracy(raw)
        day = china_date(item.occurred_at)
        if raw.get("day") is not None:
            try:
                given = _day(raw["day"])
            except (TypeError, ValueError):
                raise _invalid("invalid_day", "day must be a date, e.g. 2025-03-10", "day") from None
            if given != day:
                raise _invalid("day_mismatch", f"day {given} is not the China date of occurred_at "
                               f"({item.occurred_at.isoformat()} is {day})", "day")
        if day in self.team_days:
            return _duplicate(item.index, item.client_event_id, item.kind, "team_day_already_recorded",
                              f"a team day is already recorded for {day} (at village {self.team_days[day]})")
        reference = ctx.village_locations.get(village)
        distance = round(haversine_m(reference[0], reference[1], lat, lon), 1) if reference is not None else None
        self._record(item, ctx, ev.TeamDayRecorded, latitude=lat, longitude=lon, accuracy_m=accuracy,
                     village_code=village, day=day, distance_m=distance)
        return _accepted(item, ev.TeamDayRecorded, (), day=day.isoformat(), distance_m=distance)

    def _record(self, item: _Item, ctx: _Context, model: type[EventModel], **data: Any) -> None:
        try:
            event = model(cadre_id=self.id, client_event_id=item.client_event_id, occurred_at=item.occurred_at,
                          received_at=ctx.now, **data)
        except ValidationError as exc:  # a safety net: the checks above should have caught it
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise _invalid("invalid_item", f"{where}: {first.get('msg')}", where or None) from None
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    # -- event handlers --------------------------------------------------------------------------

    def when_VisitCheckedIn(self, d: dict[str, Any]) -> None:
        self.client_event_ids.add(d["client_event_id"])
        at = _at(d["occurred_at"]).astimezone(timezone.utc)
        self.visits[d["visit_id"]] = Visit(d["visit_id"], d["household_id"], d.get("village_code"), at,
                                           d["latitude"], d["longitude"], d.get("accuracy_m"))
        bisect.insort(self.check_ins, CheckInPoint(at, d["client_event_id"], d["latitude"], d["longitude"],
                                                   d.get("accuracy_m")), key=_point_key)

    def when_VisitCheckedOut(self, d: dict[str, Any]) -> None:
        self.client_event_ids.add(d["client_event_id"])
        visit = self.visits.get(d["visit_id"])
        if visit is not None:
            visit.checked_out_at = _at(d["occurred_at"]).astimezone(timezone.utc)
            visit.minutes_at_household = d.get("minutes_at_household")

    def when_VisitLogged(self, d: dict[str, Any]) -> None:
        self.client_event_ids.add(d["client_event_id"])
        self.visit_logs += 1
        visit = self.visits.get(d["visit_id"])
        if visit is not None:
            visit.logs += 1

    def when_ContactLogged(self, d: dict[str, Any]) -> None:
        self.client_event_ids.add(d["client_event_id"])
        self.contacts += 1

    def when_TeamDayRecorded(self, d: dict[str, Any]) -> None:
        self.client_event_ids.add(d["client_event_id"])
        self.team_days[_day(d["day"])] = d["village_code"]


# --- result helpers -------------------------------------------------------------------------------


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _accepted(item: _Item, model: type[EventModel], flags: Sequence[str], **details: Any) -> ItemResult:
    return ItemResult(item.index, item.client_event_id, "accepted", item.kind, model.event_type,
                      flags=tuple(flags), details={k: v for k, v in details.items() if v is not None})


def _duplicate(index: int, client_id: str, kind: Any, code: str, reason: str) -> ItemResult:
    return ItemResult(index, client_id, "duplicate", kind if kind in KINDS else None, code=code, reason=reason)


def _rejected(index: int, client_id: str | None, kind: str | None, err: DomainError) -> ItemResult:
    field_name = err.details.get("field")
    return ItemResult(index, client_id, "rejected", kind, code=err.code, reason=str(err),
                      field=field_name if isinstance(field_name, str) else None)
