"""Events published by the monitoring service.

Attendance (topic ``tpa.monitoring.attendance.v1``, one stream per cadre, stream
id = the cadre's user id): visit check-ins and check-outs at households, visit
logs, phone calls and messages, resident-team days at the village. They come from
the app in offline batches: ``client_event_id`` identifies an event on the device
(a batch sent twice records it once), ``occurred_at`` is the device time and
``received_at`` the server time. Locations are WGS-84 degrees with the device's
accuracy in metres.

Duty compliance (``tpa.monitoring.compliance.v1``, one stream per finding):
``DutyNonCompliance`` names the cadre, the quarter, the duty missed and what was
expected against what was done.

Return-risk alerts (``tpa.monitoring.alert.v1``, one stream per alert):
``ReturnRiskAlertRaised`` -> ``AlertAcknowledged`` -> ``AlertVerificationRequested``
(the workflow service opens a ``return_risk`` case; it also does so at once for an
alert raised with ``requires_verification``) -> ``AlertResolved`` (risk
eliminated, or not confirmed), or ``AlertEscalated`` when it is overdue.

No event carries names, ID numbers or phone numbers: cadres and households appear
by id; notes are free text shown to operators and must not contain personal data.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from contracts.base import EventModel, topic_name
from contracts.registry import UUID_PATTERN, VILLAGE_CODE_PATTERN

ALERT = "alert"
ALERT_TOPIC = topic_name("monitoring", ALERT)
ATTENDANCE = "attendance"
ATTENDANCE_TOPIC = topic_name("monitoring", ATTENDANCE)
COMPLIANCE = "compliance"
COMPLIANCE_TOPIC = topic_name("monitoring", COMPLIANCE)


class ReturnRiskAlertRaised(EventModel):
    """A return-risk rule fired for a household (the stream is the alert)."""

    event_type: ClassVar[str] = "ReturnRiskAlertRaised"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = ALERT_TOPIC
    stream_type: ClassVar[str] = ALERT

    alert_id: str = Field(min_length=1, description="Alert id; equals the stream id.")
    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN)
    risk: str = Field(min_length=1, description="Risk code, e.g. income_drop, medical_expense, disaster.")
    rule_id: str = Field(min_length=1, description="The rule that fired.")
    severity: Literal["low", "medium", "high"]
    requires_verification: bool = Field(description="True when the alert asks for a verification case.")
    object_type: Literal["unstable_lifted_out", "marginal", "sudden_hardship"] | None = Field(
        default=None, description="Suggested monitoring object type; derived from the household's status if absent.")
    detail: str | None = None
    raised_at: datetime
    evidence: dict[str, Any] | None = Field(default=None, description=(
        "The values (and ids, e.g. report or disbursement ids) the rule fired on."))
    evidence_event_ids: list[str] | None = Field(default=None, description=(
        "The event whose arrival made the rule fire (and others it names), for operators to trace."))


class _AlertEvent(EventModel):
    topic: ClassVar[str] = ALERT_TOPIC
    stream_type: ClassVar[str] = ALERT
    schema_version: ClassVar[int] = 1

    alert_id: str = Field(min_length=1, description="Alert id; equals the stream id.")


class AlertAcknowledged(_AlertEvent):
    """An operator took the alert in hand."""

    event_type: ClassVar[str] = "AlertAcknowledged"

    acknowledged_by: str = Field(min_length=1, description="Operator's user id.")
    note: str | None = None
    acknowledged_at: datetime


class AlertVerificationRequested(_AlertEvent):
    """The operator asks for an on-site verification: the workflow opens a return_risk case."""

    event_type: ClassVar[str] = "AlertVerificationRequested"

    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN)
    risk: str = Field(min_length=1)
    object_type: Literal["unstable_lifted_out", "marginal", "sudden_hardship"] | None = None
    requested_by: str = Field(min_length=1)
    requested_at: datetime


class AlertResolved(_AlertEvent):
    """The alert is closed: the risk was eliminated, or verification did not confirm it."""

    event_type: ClassVar[str] = "AlertResolved"

    resolution: Literal["risk_eliminated", "not_confirmed"]
    case_id: str | None = Field(default=None, description="The workflow case that decided it, if any.")
    resolved_by: str = Field(min_length=1)
    note: str | None = None
    resolved_at: datetime


class AlertEscalated(_AlertEvent):
    """The alert stayed open past its time limit and was passed to the next level."""

    event_type: ClassVar[str] = "AlertEscalated"

    from_state: str
    to_level: Literal["township", "county", "city", "province"]
    overdue_since: datetime
    escalated_at: datetime


ALERT_EVENTS: tuple[type[EventModel], ...] = (
    ReturnRiskAlertRaised, AlertAcknowledged, AlertVerificationRequested, AlertResolved, AlertEscalated,
)


# --- attendance ------------------------------------------------------------------------

class _AttendanceEvent(EventModel):
    topic: ClassVar[str] = ATTENDANCE_TOPIC
    stream_type: ClassVar[str] = ATTENDANCE
    schema_version: ClassVar[int] = 1

    cadre_id: str = Field(min_length=1, description="The cadre's user id; equals the stream id.")
    client_event_id: str = Field(min_length=1, max_length=128, description="Id of the event on the device.")
    occurred_at: datetime = Field(description="Device time.")
    received_at: datetime = Field(description="Server time the batch arrived.")


class _Located(BaseModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    accuracy_m: float | None = Field(default=None, ge=0, description="Device-reported accuracy, metres.")


class VisitCheckedIn(_AttendanceEvent, _Located):
    """A cadre checked in at a household. Accepted always; flagged when far from the household
    (``distance_m`` above the geofence) or reached impossibly fast from the previous check-in."""

    event_type: ClassVar[str] = "VisitCheckedIn"

    visit_id: str = Field(min_length=1)
    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    village_code: str | None = Field(default=None, pattern=VILLAGE_CODE_PATTERN)
    photo_ref: str | None = Field(default=None, description="Reference of a photo in the media store.")
    distance_m: float | None = Field(default=None, ge=0, description="From the household's coordinates, if known.")
    outside_geofence: bool = False
    geofence_m: float | None = Field(default=None, ge=0, description="The geofence radius applied.")
    speed_kmh: float | None = Field(default=None, ge=0, description="Speed from the previous check-in, if any.")
    impossible_travel: bool = False


class VisitCheckedOut(_AttendanceEvent, _Located):
    event_type: ClassVar[str] = "VisitCheckedOut"

    visit_id: str = Field(min_length=1)
    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    minutes_at_household: float | None = Field(default=None, ge=0, description="Check-out minus check-in.")


class VisitLogged(_AttendanceEvent):
    """Work notes of a visit and the needs found."""

    event_type: ClassVar[str] = "VisitLogged"

    visit_id: str = Field(min_length=1)
    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    notes: str = Field(min_length=1)
    needs: list[str] = Field(default_factory=list, description="Need kinds found (job, loan, repair, ...).")


class ContactLogged(_AttendanceEvent):
    """A phone call or message to a household."""

    event_type: ClassVar[str] = "ContactLogged"

    household_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})
    channel: Literal["call", "message"]
    duration_s: int | None = Field(default=None, ge=0)
    note: str | None = None


class TeamDayRecorded(_AttendanceEvent, _Located):
    """A resident-team member was present at the village on a day."""

    event_type: ClassVar[str] = "TeamDayRecorded"

    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN)
    day: date
    distance_m: float | None = Field(default=None, ge=0, description="From the village's reference point, if known.")


ATTENDANCE_EVENTS: tuple[type[EventModel], ...] = (
    VisitCheckedIn, VisitCheckedOut, VisitLogged, ContactLogged, TeamDayRecorded,
)


# --- compliance --------------------------------------------------------------------------

class DutyNonCompliance(EventModel):
    """A cadre did not do a duty in a period (found when the period ended)."""

    event_type: ClassVar[str] = "DutyNonCompliance"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = COMPLIANCE_TOPIC
    stream_type: ClassVar[str] = COMPLIANCE

    finding_id: str = Field(min_length=1, description="Derived from cadre, duty, period and household.")
    cadre_id: str = Field(min_length=1)
    duty: Literal["quarterly_visit", "monthly_contact", "team_days"]
    period: str = Field(pattern=r"^[0-9]{4}-(?:Q[1-4]|0[1-9]|1[0-2])$", description="YYYY-Qn or YYYY-MM.")
    household_id: str | None = Field(default=None, pattern=UUID_PATTERN)
    village_code: str | None = Field(default=None, pattern=VILLAGE_CODE_PATTERN)
    expected: int = Field(ge=0)
    actual: int = Field(ge=0)
    detected_at: datetime


COMPLIANCE_EVENTS: tuple[type[EventModel], ...] = (DutyNonCompliance,)
