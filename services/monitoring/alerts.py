"""Return-risk alerts: the ``Alert`` aggregate (one stream per alert). Pure domain code.

Lifecycle (events of ``contracts.monitoring``, stream type ``alert``)::

    raised --acknowledge--> acknowledged --request_verification--> verification_requested
       \\                       \\                                      |
        +-----------------------+--- resolve (not_confirmed) ----------+--- resolve (risk_eliminated
                                                                             or not_confirmed) --> resolved

- ``raise_`` records ``ReturnRiskAlertRaised`` for a rule's ``Finding``. An alert raised with
  ``requires_verification`` starts in ``verification_requested``: the workflow service opens the
  ``return_risk`` case on the raised event itself, so no ``AlertVerificationRequested`` follows.
- ``resolve`` with ``not_confirmed`` is allowed from every open state (an operator may close an
  alert the facts do not bear out before any verification); ``risk_eliminated`` only after a
  verification was requested (only a verification case can find a risk eliminated).
- ``escalate`` passes an overdue open alert to a higher level (``village`` -> ``township`` ->
  ``county`` -> ``city`` -> ``province``); the state does not change.
- Nothing is accepted after ``resolved`` (409 ``alert_closed``); a command the state does not
  allow is 409 ``invalid_transition`` with ``current_state``.

Overdue (``Alert.overdue``, pure): each open state has a time limit from entering it
(``OverdueLimits``: raised and not acknowledged after 48 h, acknowledged and nothing done after
72 h) and every open alert must be decided within 15 days of discovery (domain.md section 10:
"at most 15 days from discovery to decision"). An escalated alert is overdue again only
``reescalate_after`` its last escalation, so each level gets time to act.

One open alert per household and risk: the alert id is a fresh UUID given by the caller; the
application layer keeps ``alert_key(household_id, risk)`` under a unique constraint while the
alert is open (and releases it when the alert is resolved).

Commands take ``now`` (timezone-aware) and raise ``DomainError`` (404 unknown alert, 409 state
conflict, 422 invalid input) or record events. Event handlers (``when_*``) use only event data.
"""

from __future__ import annotations

import json

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from contracts import monitoring as ev
from contracts.base import EventModel
from contracts.registry import UUID_PATTERN, VILLAGE_CODE_PATTERN
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

from .rules import OBJECT_TYPES, SEVERITIES, Finding

STATES = ("raised", "acknowledged", "verification_requested", "resolved")
OPEN_STATES = frozenset({"raised", "acknowledged", "verification_requested"})
LEVELS = ("village", "township", "county", "city", "province")
INITIAL_LEVEL = "village"
ESCALATION_LEVELS = LEVELS[1:]  # AlertEscalated.to_level
RESOLUTIONS = ("risk_eliminated", "not_confirmed")
# command -> states it may start from
TRANSITIONS: dict[str, frozenset[str]] = {
    "acknowledge": frozenset({"raised"}),
    "request_verification": frozenset({"acknowledged"}),
    "resolve": OPEN_STATES,
    "escalate": OPEN_STATES,
}
RESOLVABLE_FROM: dict[str, frozenset[str]] = {
    "risk_eliminated": frozenset({"verification_requested"}),
    "not_confirmed": OPEN_STATES,
}
MAX_TEXT = 2000
MAX_DETAIL = 500
MAX_ACTOR = 200
_UUID = re.compile(UUID_PATTERN)
_VILLAGE = re.compile(VILLAGE_CODE_PATTERN)
_KEY_PART = re.compile(r"^[0-9A-Za-z_]+$")


def _conflict(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(code, message, 409, **details)


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _at(value: Any) -> datetime:
    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).astimezone(timezone.utc)


def _actor(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError("missing_field", f"{field_name} is required", field=field_name)
    if len(value.strip()) > MAX_ACTOR:
        raise DomainError("too_long", f"{field_name} is longer than {MAX_ACTOR} characters", field=field_name)
    return value.strip()


def _note(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DomainError("invalid_value", f"{field_name} must be text", field=field_name)
    text = value.strip()
    if len(text) > MAX_TEXT:
        raise DomainError("too_long", f"{field_name} is longer than {MAX_TEXT} characters", field=field_name)
    return text or None


def alert_key(household_id: str, risk: str) -> str:
    """The key of "one open alert per household and risk": ``<household id>:<risk>``. Stable (no time or
    alert id in it); the application layer keeps it unique among open alerts."""
    if not isinstance(household_id, str) or not _UUID.match(household_id):
        raise DomainError("invalid_id", "household_id must be a lower-case UUID", field="household_id")
    if not isinstance(risk, str) or not _KEY_PART.match(risk):
        raise DomainError("invalid_risk", f"risk {risk!r} is not a risk code", field="risk")
    return f"{household_id}:{risk}"


# --- overdue -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverdueLimits:
    """Time limits of open alerts. ``raised``/``acknowledged``/``verification_requested``: from entering
    the state (None: no limit of its own); ``decision``: from discovery (raising) to resolution, in every
    open state; ``reescalate_after``: least time between two escalations."""

    raised: timedelta | None = timedelta(hours=48)
    acknowledged: timedelta | None = timedelta(hours=72)
    verification_requested: timedelta | None = None  # the return_risk case has its own step limits
    decision: timedelta = timedelta(days=15)
    reescalate_after: timedelta = timedelta(hours=48)

    def __post_init__(self) -> None:
        for name in ("raised", "acknowledged", "verification_requested", "decision", "reescalate_after"):
            value = getattr(self, name)
            if value is None and name in ("decision", "reescalate_after"):
                raise ValueError(f"overdue limit {name} is required")
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise ValueError(f"overdue limit {name} must be a positive duration, got {value!r}")

    @classmethod
    def from_hours(cls, hours: Mapping[str, Any]) -> OverdueLimits:
        """From configuration: ``{"raised": 48, "acknowledged": 72, "verification_requested": null,
        "decision": 360, "reescalate_after": 48}`` (hours; missing keys keep the defaults)."""
        fields = ("raised", "acknowledged", "verification_requested", "decision", "reescalate_after")
        values: dict[str, timedelta | None] = {}
        for name, value in hours.items():
            if name not in fields:
                raise ValueError(f"unknown overdue limit {name!r}; expected one of {', '.join(fields)}")
            if value is None:
                values[name] = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"overdue limit {name} must be a positive number of hours, got {value!r}")
            else:
                values[name] = timedelta(hours=value)
        return cls(**values)  # type: ignore[arg-type]

    def for_state(self, state: str) -> timedelta | None:
        return getattr(self, state) if state in OPEN_STATES else None


DEFAULT_LIMITS = OverdueLimits()


@dataclass(frozen=True)
class Overdue:
    """An open alert past its time limit: ``limit`` is the limit that fell due (a state, or ``decision``)."""

    alert_id: str
    state: str
    level: str
    limit: str
    due_at: datetime
    overdue_by: timedelta
    next_level: str | None


# --- aggregate -----------------------------------------------------------------------------------


class Alert(Aggregate):
    stream_type = ev.ALERT

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.household_id: str | None = None
        self.village_code: str | None = None
        self.risk: str | None = None
        self.rule_id: str | None = None
        self.severity: str | None = None
        self.requires_verification = False
        self.object_type: str | None = None
        self.detail: str | None = None
        self.raised_at: datetime | None = None
        self.state: str | None = None
        self.state_since: datetime | None = None
        self.level: str | None = None
        self.last_change_at: datetime | None = None
        self.acknowledged_by: str | None = None
        self.acknowledged_at: datetime | None = None
        self.acknowledge_note: str | None = None
        self.verification_requested_by: str | None = None
        self.verification_requested_at: datetime | None = None
        self.resolution: str | None = None
        self.case_id: str | None = None
        self.resolved_by: str | None = None
        self.resolved_at: datetime | None = None
        self.resolve_note: str | None = None
        self.escalations: list[dict[str, Any]] = []
        self.last_escalated_at: datetime | None = None

    # -- queries ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def key(self) -> str | None:
        """``alert_key`` of this alert (None before it is raised)."""
        return alert_key(self.household_id, self.risk) if self.household_id and self.risk else None

    def snapshot(self) -> dict[str, Any]:
        """Everything the aggregate knows (for replay comparisons and projections)."""
        return {k: v for k, v in vars(self).items() if k not in ("pending", "version")}

    def due_at(self, limits: OverdueLimits = DEFAULT_LIMITS) -> tuple[datetime, str] | None:
        """When the open alert falls overdue, and by which limit (None when closed or not raised)."""
        if not self.is_open or self.raised_at is None or self.state_since is None:
            return None
        assert self.state is not None
        candidates = [(self.raised_at + limits.decision, "decision")]
        own = limits.for_state(self.state)
        if own is not None:
            candidates.append((self.state_since + own, self.state))
        due, limit = min(candidates, key=lambda c: c[0])
        if self.last_escalated_at is not None:
            due = max(due, self.last_escalated_at + limits.reescalate_after)
        return due, limit

    def overdue(self, now: datetime, limits: OverdueLimits = DEFAULT_LIMITS) -> Overdue | None:
        """The overdue finding for ``now`` (strictly after the due time), or None. Pure query."""
        now = _aware(now)
        due = self.due_at(limits)
        if due is None or now <= due[0]:
            return None
        assert self.state is not None and self.level is not None
        i = LEVELS.index(self.level)
        return Overdue(self.id, self.state, self.level, due[1], due[0], now - due[0],
                       LEVELS[i + 1] if i + 1 < len(LEVELS) else None)

    # -- guards -----------------------------------------------------------------------------

    def _require(self, command: str, now: datetime) -> None:
        if not self.exists:
            raise DomainError("alert_not_found", f"alert {self.id} does not exist", 404)
        if self.state == "resolved":
            raise _conflict("alert_closed", f"alert {self.id} is resolved ({self.resolution})",
                            current_state=self.state, resolution=self.resolution)
        if self.state not in TRANSITIONS[command]:
            raise _conflict("invalid_transition", f"cannot {command.replace('_', ' ')} an alert that is "
                            f"{self.state}", current_state=self.state, command=command,
                            allowed_from=sorted(TRANSITIONS[command]))
        assert self.last_change_at is not None
        if now < self.last_change_at:
            raise DomainError("invalid_time", f"{now.isoformat()} is before the alert's last change "
                              f"({self.last_change_at.isoformat()})", field="now")

    def _record(self, model: type[EventModel], **data: Any) -> None:
        event = model(alert_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    # -- commands ---------------------------------------------------------------------------

    def raise_(self, finding: Finding, household_id: str, village_code: str, now: datetime,
               requires_verification: bool | None = None, object_type: str | None = None,
               evidence_event_ids: list[str] | None = None) -> None:
        """Raise the alert for a rule's finding. ``requires_verification`` None: as the finding says
        (its rule's setting). ``object_type``: the suggested monitoring object type, if any."""
        now = _aware(now)
        if self.exists:
            raise _conflict("alert_exists", f"alert {self.id} was already raised", current_state=self.state)
        if not _UUID.match(self.id):
            raise DomainError("invalid_id", "the alert id must be a lower-case UUID", field="alert_id")
        if not isinstance(finding, Finding):
            raise DomainError("invalid_finding", "finding must be a rules.Finding", field="finding")
        if not finding.rule or not finding.risk or finding.severity not in SEVERITIES:
            raise DomainError("invalid_finding", "a finding needs a rule, a risk and a severity (low, medium, "
                              "high)", field="finding")
        if not isinstance(household_id, str) or not _UUID.match(household_id):
            raise DomainError("invalid_id", "household_id must be a lower-case UUID", field="household_id")
        if not isinstance(village_code, str) or not _VILLAGE.match(village_code):
            raise DomainError("invalid_village_code", "village_code must be 12 digits", field="village_code")
        if requires_verification is None:
            requires_verification = finding.requires_verification
        if not isinstance(requires_verification, bool):
            raise DomainError("invalid_value", "requires_verification must be true or false",
                              field="requires_verification")
        if object_type is not None and object_type not in OBJECT_TYPES:
            raise DomainError("invalid_object_type", f"object_type must be one of {', '.join(OBJECT_TYPES)}",
                              field="object_type")
        detail = (finding.detail or "").strip()
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL - 1] + "…"
        self._record(ev.ReturnRiskAlertRaised, household_id=household_id, village_code=village_code,
                     risk=finding.risk, rule_id=finding.rule, severity=finding.severity,
                     requires_verification=requires_verification, object_type=object_type,
                     detail=detail or None, raised_at=now,
                     evidence=json.loads(json.dumps(dict(finding.evidence), default=str)),
                     evidence_event_ids=list(evidence_event_ids) if evidence_event_ids else None)

    def acknowledge(self, by: str, now: datetime, note: str | None = None) -> None:
        """An operator takes the raised alert in hand."""
        now = _aware(now)
        self._require("acknowledge", now)
        self._record(ev.AlertAcknowledged, acknowledged_by=_actor(by, "acknowledged_by"),
                     note=_note(note, "note"), acknowledged_at=now)

    def request_verification(self, by: str, now: datetime) -> None:
        """Ask for an on-site verification (the workflow opens a return_risk case)."""
        now = _aware(now)
        self._require("request_verification", now)
        self._record(ev.AlertVerificationRequested, household_id=self.household_id, village_code=self.village_code,
                     risk=self.risk, object_type=self.object_type, requested_by=_actor(by, "requested_by"),
                     requested_at=now)

    def resolve(self, resolution: str, by: str, now: datetime, case_id: str | None = None,
                note: str | None = None) -> None:
        """Close the alert: ``not_confirmed`` from any open state, ``risk_eliminated`` after verification."""
        now = _aware(now)
        self._require("resolve", now)
        if resolution not in RESOLUTIONS:
            raise DomainError("invalid_resolution", f"resolution must be one of {', '.join(RESOLUTIONS)}",
                              field="resolution")
        if self.state not in RESOLVABLE_FROM[resolution]:
            raise _conflict("invalid_transition", f"an alert that is {self.state} cannot be resolved as "
                            f"{resolution}: request a verification first", current_state=self.state,
                            command="resolve", resolution=resolution,
                            allowed_from=sorted(RESOLVABLE_FROM[resolution]))
        case = None if case_id is None else _actor(case_id, "case_id")
        self._record(ev.AlertResolved, resolution=resolution, case_id=case, resolved_by=_actor(by, "resolved_by"),
                     note=_note(note, "note"), resolved_at=now)

    def escalate(self, now: datetime, to_level: str | None = None,
                 limits: OverdueLimits = DEFAULT_LIMITS) -> str:
        """Pass the overdue alert to a higher level (default: the next one); returns the new level."""
        now = _aware(now)
        self._require("escalate", now)
        if to_level is not None and to_level not in ESCALATION_LEVELS:
            raise DomainError("invalid_level", f"to_level must be one of {', '.join(ESCALATION_LEVELS)}",
                              field="to_level")
        late = self.overdue(now, limits)
        if late is None:
            due = self.due_at(limits)
            raise _conflict("not_overdue", f"alert {self.id} is not overdue"
                            + (f" before {due[0].isoformat()}" if due else ""),
                            due_at=due[0].isoformat() if due else None, current_state=self.state)
        target = to_level or late.next_level
        if target is None:
            raise _conflict("cannot_escalate", f"alert {self.id} is already at {self.level} level",
                            level=self.level)
        assert self.level is not None
        if LEVELS.index(target) <= LEVELS.index(self.level):
            raise _conflict("invalid_escalation", f"alert {self.id} is at {self.level} level: escalate to a higher "
                            f"level than that, not {target}", level=self.level, to_level=target)
        self._record(ev.AlertEscalated, from_state=self.state, to_level=target, overdue_since=late.due_at,
                     escalated_at=now)
        return target

    # -- event handlers ---------------------------------------------------------------------

    def when_ReturnRiskAlertRaised(self, d: dict[str, Any]) -> None:
        self.household_id = d["household_id"]
        self.village_code = d["village_code"]
        self.risk = d["risk"]
        self.rule_id = d["rule_id"]
        self.severity = d["severity"]
        self.requires_verification = bool(d["requires_verification"])
        self.object_type = d.get("object_type")
        self.detail = d.get("detail")
        self.raised_at = self.state_since = self.last_change_at = _at(d["raised_at"])
        self.state = "verification_requested" if self.requires_verification else "raised"
        self.level = INITIAL_LEVEL

    def when_AlertAcknowledged(self, d: dict[str, Any]) -> None:
        self.state = "acknowledged"
        self.acknowledged_by = d["acknowledged_by"]
        self.acknowledge_note = d.get("note")
        self.acknowledged_at = self.state_since = self.last_change_at = _at(d["acknowledged_at"])

    def when_AlertVerificationRequested(self, d: dict[str, Any]) -> None:
        self.state = "verification_requested"
        self.verification_requested_by = d["requested_by"]
        self.verification_requested_at = self.state_since = self.last_change_at = _at(d["requested_at"])

    def when_AlertResolved(self, d: dict[str, Any]) -> None:
        self.state = "resolved"
        self.resolution = d["resolution"]
        self.case_id = d.get("case_id")
        self.resolved_by = d["resolved_by"]
        self.resolve_note = d.get("note")
        self.resolved_at = self.state_since = self.last_change_at = _at(d["resolved_at"])

    def when_AlertEscalated(self, d: dict[str, Any]) -> None:
        self.escalations.append(dict(d))
        self.level = d["to_level"]
        self.last_escalated_at = self.last_change_at = _at(d["escalated_at"])
