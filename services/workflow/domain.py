"""The Case aggregate: a review procedure followed step by step. Pure domain code.

A case follows its case type (``definitions.CaseType``): one step is current at
a time; the reviewer whose role, level and jurisdiction match decides it
(approve, reject, or return to an earlier step with a reason). Public notice
steps are posted when they become current and cannot be approved before their
period ends or while an objection is unresolved or upheld; comparison steps need
recorded results and cannot be approved over an unresolved hit without an
override reason; escalation steps (assistance needs) are passed up a level or
resolved. Approving the last step, a rejection or a resolution ends the case
with ``CaseConcluded``.

Commands take ``now`` (timezone-aware; from a ``clock.Clock`` in the
application layer) and raise ``DomainError`` (403 wrong reviewer, 404 unknown
objection, 409 state conflict, 422 invalid input) or record events. Event
handlers (``when_*``) use only event data, so replay never needs the case type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Mapping

from contracts import workflow_cases as ev
from contracts.base import EventModel
from contracts.masking import mask_name
from contracts.workflow import CASE, CaseConcluded
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

from .definitions import CaseType, Step, load_case_types

CHINA_TZ = timezone(timedelta(hours=8))  # no daylight saving time; dates of effect are China dates
MONITORING_OBJECT_TYPES = frozenset({"unstable_lifted_out", "marginal", "sudden_hardship"})
_VILLAGE = re.compile(r"^[0-9]{12}$")
_REGION = re.compile(r"^(?:[0-9]{6}|[0-9]{12})$")
_GROUPS = ((0, 2), (2, 4), (4, 6), (6, 9), (9, 12))
MAX_TEXT = 2000


def _conflict(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(code, message, 409, **details)


def _forbidden(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(code, message, 403, **details)


@lru_cache(maxsize=1)
def default_case_types() -> Mapping[str, CaseType]:
    """The case types shipped in ``casetypes/`` (loaded on first use, then cached)."""
    return load_case_types()


def jurisdiction_prefix(code: str) -> str:
    """The prefix a region code shares with all its descendants: '62' for a
    province, '6201' for a city, '620102' for a county, '620102001' for a
    township, the whole code for a village. 6-digit codes are read as counties or above."""
    if not isinstance(code, str) or not _REGION.match(code):
        raise DomainError("invalid_jurisdiction", f"jurisdiction {code!r} is not a 6- or 12-digit region code",
                          field="jurisdiction")
    code = code.ljust(12, "0")
    end = 0
    for a, b in _GROUPS:
        if code[a:b].strip("0"):
            end = b
    if end == 0:
        raise DomainError("invalid_jurisdiction", f"jurisdiction {code!r} is all zeros", field="jurisdiction")
    return code[:end]


@dataclass(frozen=True)
class Reviewer:
    """Who decides: a gateway user id, role, level and jurisdiction (region code). ``roles`` are
    all the roles the user holds; ``role`` is the one acted in (the step's, when held)."""

    id: str
    role: str
    level: str
    jurisdiction: str
    roles: tuple[str, ...] = ()

    def covers(self, village_code: str) -> bool:
        return village_code.startswith(jurisdiction_prefix(self.jurisdiction))

    def holds(self, role: str) -> bool:
        return role == self.role or role in self.roles

    def acting_as(self, role: str) -> "Reviewer":
        """The same reviewer acting in ``role`` (one it holds; otherwise unchanged)."""
        return replace(self, role=role) if self.holds(role) and role != self.role else self


@dataclass
class Notice:
    notice_id: str
    step_id: str
    starts_at: datetime
    ends_at: datetime


@dataclass
class Objection:
    objection_id: str
    notice_id: str
    step_id: str
    content: str
    filer_name_masked: str | None
    filed_at: datetime
    resolved: bool = False
    upheld: bool | None = None
    finding: str | None = None


@dataclass
class Comparison:
    member_id: str
    source: str
    hit: bool
    detail: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class OverdueStep:
    case_id: str
    step_id: str
    role: str
    level: str
    entered_at: datetime
    due_at: datetime
    overdue_by: timedelta


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _required_text(value: Any, field_name: str, code: str = "missing_field") -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError(code, f"{field_name} is required", field=field_name)
    text = value.strip()
    if len(text) > MAX_TEXT:
        raise DomainError("too_long", f"{field_name} is longer than {MAX_TEXT} characters", field=field_name)
    return text


def _optional_text(value: Any, field_name: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _required_text(value, field_name)


class Case(Aggregate):
    stream_type = CASE

    def __init__(self, aggregate_id: str, case_types: Mapping[str, CaseType] | None = None) -> None:
        super().__init__(aggregate_id)
        self._case_types = case_types
        self.case_type: str | None = None
        self.case_type_version: int | None = None
        self.household_id: str | None = None
        self.village_code: str | None = None
        self.opened_by: str | None = None
        self.opened_at: datetime | None = None
        self.reason: str | None = None
        self.subject: str | None = None
        self.monitoring_object_type: str | None = None
        self.household_status: str | None = None
        self.current_step: str | None = None
        self.step_entered_at: datetime | None = None
        self.closed = False
        self.outcome: str | None = None
        self.status_effect: str | None = None
        self.notice: Notice | None = None          # the notice of the current step, if it is a notice
        self.notice_count = 0
        self.objections: dict[str, Objection] = {}
        self.comparisons: dict[tuple[str, str], Comparison] = {}
        self.decisions: list[dict[str, Any]] = []
        self.escalations: list[dict[str, Any]] = []
        self.resolution: str | None = None
        self.overdue_flagged: set[tuple[str, str]] = set()  # (step_id, entered_at iso)

    # -- definition -------------------------------------------------------------------

    @property
    def definition(self) -> CaseType:
        types = self._case_types if self._case_types is not None else default_case_types()
        if self.case_type not in types:
            raise DomainError("unknown_case_type", f"case type {self.case_type!r} is not defined", 422,
                              field="case_type")
        return types[self.case_type]

    def _step(self) -> Step:
        assert self.current_step is not None
        return self.definition.step(self.current_step)

    # -- queries ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the aggregate knows (for replay comparisons and projections)."""
        keys = [k for k in vars(self) if k not in ("_case_types", "pending", "version", "id")]
        return {k: getattr(self, k) for k in keys}

    def open_objections(self) -> list[Objection]:
        if self.notice is None:
            return []
        return [o for o in self.objections.values() if o.notice_id == self.notice.notice_id and not o.resolved]

    def unresolved_hits(self) -> list[Comparison]:
        return [c for c in self.comparisons.values() if c.hit]

    def overdue_steps(self, now: datetime) -> list[OverdueStep]:
        """The current step if it has a time limit that has passed (pure query)."""
        now = _aware(now)
        if not self.exists or self.closed or self.current_step is None or self.step_entered_at is None:
            return []
        step = self._step()
        if step.time_limit_days is None:
            return []
        due = self.step_entered_at + timedelta(days=step.time_limit_days)
        if now <= due:
            return []
        return [OverdueStep(self.id, step.id, step.role, step.level, self.step_entered_at, due, now - due)]

    # -- guards -----------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self.exists:
            raise DomainError("case_not_found", f"case {self.id} does not exist", 404)
        if self.closed:
            raise _conflict("case_closed", f"case {self.id} is closed ({self.outcome})", outcome=self.outcome)

    def _require_reviewer(self, reviewer: Reviewer, step: Step) -> Reviewer:
        """The reviewer acting in the step's role, or a refusal."""
        if not isinstance(reviewer, Reviewer) or not reviewer.id:
            raise DomainError("missing_field", "reviewer is required", field="reviewer")
        if not reviewer.holds(step.role):
            raise _forbidden("wrong_role", f"step {step.id} is decided by role {step.role}, not {reviewer.role}",
                             step_id=step.id, required_role=step.role)
        if reviewer.level != step.level:
            raise _forbidden("wrong_level", f"step {step.id} is decided at {step.level} level, not {reviewer.level}",
                             step_id=step.id, required_level=step.level)
        assert self.village_code is not None
        if not reviewer.covers(self.village_code):
            raise _forbidden("outside_jurisdiction",
                             f"jurisdiction {reviewer.jurisdiction} does not cover village {self.village_code}",
                             village_code=self.village_code)
        return reviewer.acting_as(step.role)

    def _require_step(self, step_id: str) -> Step:
        definition = self.definition
        if not definition.has_step(step_id):
            raise DomainError("unknown_step", f"case type {definition.id} has no step {step_id!r}", field="step_id")
        assert self.current_step is not None
        if step_id != self.current_step:
            if definition.index(step_id) < definition.index(self.current_step):
                raise _conflict("already_decided", f"step {step_id} was already decided; the current step is "
                                f"{self.current_step}", current_step=self.current_step)
            raise _conflict("wrong_step", f"step {step_id} is not current; the current step is {self.current_step}",
                            current_step=self.current_step)
        return definition.step(step_id)

    # -- helpers ----------------------------------------------------------------------

    def _record(self, model: type[EventModel], **data: Any) -> None:
        event = model(case_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def _enter(self, step: Step, now: datetime) -> None:
        """Effects of a step becoming current (posting a notice)."""
        if step.kind == "notice":
            assert step.min_days is not None
            self._record(ev.NoticePosted, notice_id=f"{step.id}#{self.notice_count + 1}", step_id=step.id,
                         starts_at=now, ends_at=now + timedelta(days=step.min_days))

    def _conclude(self, outcome: str, now: datetime) -> None:
        effect = self.definition.effect_for(self.household_status) if outcome == "approved" else None
        self._record(CaseConcluded, case_type=self.case_type, household_id=self.household_id, outcome=outcome,
                     status_effect=effect,
                     monitoring_object_type=self.monitoring_object_type if effect == "monitoring_designated" else None,
                     effective_on=now.astimezone(CHINA_TZ).date(), subject=self.subject)

    # -- commands ---------------------------------------------------------------------

    def open(self, *, case_type: str, household_id: str, village_code: str, opened_by: str, reason: str,
             now: datetime, subject: str | None = None, monitoring_object_type: str | None = None,
             household_status: str | None = None) -> None:
        """Open a case; its first step becomes current (a notice first step is posted at once).

        ``household_status`` is the household's register status, when known: the case
        type may refuse it (``opens_for``) and it decides the effect of approval."""
        now = _aware(now)
        if self.exists:
            raise _conflict("case_exists", f"case {self.id} already exists")
        types = self._case_types if self._case_types is not None else default_case_types()
        if case_type not in types:
            raise DomainError("unknown_case_type", f"unknown case type {case_type!r}; expected one of "
                              f"{', '.join(sorted(types))}", field="case_type")
        definition = types[case_type]
        if household_status is not None and not definition.may_open_for(household_status):
            allowed = [st for st, _ in definition.opens_for or ()]
            raise _conflict("household_status", f"a {case_type} case cannot be opened for a household that is "
                            f"{household_status}" + (f"; it needs one of {', '.join(allowed)}" if allowed else ""),
                            household_status=household_status, allowed=allowed)
        household_id = _required_text(household_id, "household_id")
        if not isinstance(village_code, str) or not _VILLAGE.match(village_code):
            raise DomainError("invalid_village_code", "village_code must be 12 digits", field="village_code")
        opened_by = _required_text(opened_by, "opened_by")
        reason = _required_text(reason, "reason")
        if definition.effect_for(household_status) == "monitoring_designated":
            if monitoring_object_type not in MONITORING_OBJECT_TYPES:
                raise DomainError("invalid_monitoring_object_type", "monitoring_object_type must be one of "
                                  f"{', '.join(sorted(MONITORING_OBJECT_TYPES))}", field="monitoring_object_type")
        elif monitoring_object_type is not None:
            raise DomainError("unexpected_field", f"a {case_type} case has no monitoring_object_type",
                              field="monitoring_object_type")
        first = definition.first_step
        self._record(ev.CaseOpened, case_type=case_type, case_type_version=definition.version,
                     household_id=household_id, village_code=village_code, opened_by=opened_by, reason=reason,
                     subject=_optional_text(subject, "subject"), monitoring_object_type=monitoring_object_type,
                     household_status=household_status, first_step=first.id, opened_at=now)
        self._enter(first, now)

    def decide(self, *, step_id: str, decision: str, reviewer: Reviewer, now: datetime,
               comment: str | None = None, return_to: str | None = None,
               override_reason: str | None = None) -> None:
        """Decide the current step: approve, reject (with a reason) or return to an earlier step (with a reason)."""
        now = _aware(now)
        self._require_open()
        step = self._require_step(step_id)
        if step.kind == "escalation":
            raise _conflict("escalation_step", f"step {step.id} is an escalation step: escalate or resolve it")
        reviewer = self._require_reviewer(reviewer, step)
        if decision not in ev.DECISIONS:
            raise DomainError("invalid_decision", f"decision must be one of {', '.join(ev.DECISIONS)}",
                              field="decision")
        comment = _optional_text(comment, "comment")
        override_reason = _optional_text(override_reason, "override_reason")
        definition = self.definition
        if decision in ("reject", "return") and comment is None:
            raise DomainError("reason_required", f"a {decision} needs a reason (comment)", field="comment")
        if decision == "return":
            targets = definition.return_targets(step.id)
            if return_to not in targets:
                raise DomainError("invalid_return_target",
                                  f"step {step.id} can return to {', '.join(targets) or 'no step'}, not {return_to!r}",
                                  field="return_to", allowed=list(targets))
        elif return_to is not None:
            raise DomainError("unexpected_field", "return_to is only for a return", field="return_to")
        if override_reason is not None and not (step.kind == "comparison" and decision == "approve"):
            raise DomainError("unexpected_field", "override_reason is only for approving a comparison step",
                              field="override_reason")
        if decision == "approve":
            if step.kind == "notice":
                assert self.notice is not None
                if now < self.notice.ends_at:
                    raise _conflict("notice_period_running", f"the notice of step {step.id} runs until "
                                    f"{self.notice.ends_at.isoformat()}", ends_at=self.notice.ends_at.isoformat())
                pending = self.open_objections()
                if pending:
                    raise _conflict("objection_unresolved", f"{len(pending)} objection(s) to step {step.id} "
                                    "are unresolved", objection_ids=[o.objection_id for o in pending])
                upheld = [o for o in self.objections.values()
                          if o.notice_id == self.notice.notice_id and o.upheld]
                if upheld:
                    raise _conflict("objection_upheld", f"an objection to step {step.id} was upheld: reject or "
                                    "return the case", objection_ids=[o.objection_id for o in upheld])
            if step.kind == "comparison":
                if not self.comparisons:
                    raise _conflict("comparison_missing", f"no comparison results are recorded for step {step.id}")
                hits = self.unresolved_hits()
                if hits and override_reason is None:
                    raise _conflict("comparison_hit", f"{len(hits)} comparison hit(s): approve with an "
                                    "override_reason, or reject", hits=[{"member_id": c.member_id,
                                                                         "source": c.source} for c in hits])
                if not hits and override_reason is not None:
                    raise DomainError("unexpected_field", "there is no comparison hit to override",
                                      field="override_reason")
        if decision == "approve":
            following = definition.next_step(step.id)
        elif decision == "return":
            following = definition.step(return_to)  # type: ignore[arg-type]
        else:
            following = None
        self._record(ev.StepDecided, step_id=step.id, decision=decision, return_to=return_to, comment=comment,
                     override_reason=override_reason, reviewer_id=reviewer.id, reviewer_role=reviewer.role,
                     reviewer_level=reviewer.level, next_step=following.id if following else None, decided_at=now)
        if following is not None:
            self._enter(following, now)
        else:
            self._conclude("approved" if decision == "approve" else "rejected", now)

    def file_objection(self, *, content: str, now: datetime, name: str | None = None) -> str:
        """Anyone may object while a notice runs. The name is optional; only its masked form is kept.
        Returns the objection id."""
        now = _aware(now)
        self._require_open()
        if self.notice is None or not (self.notice.starts_at <= now < self.notice.ends_at):
            raise _conflict("no_open_notice", f"case {self.id} has no public notice running")
        content = _required_text(content, "content")
        masked = mask_name(name) if isinstance(name, str) and name.strip() else None
        objection_id = f"objection-{len(self.objections) + 1}"
        self._record(ev.ObjectionFiled, objection_id=objection_id, notice_id=self.notice.notice_id,
                     step_id=self.notice.step_id, content=content, filer_name_masked=masked, filed_at=now)
        return objection_id

    def resolve_objection(self, *, objection_id: str, finding: str, upheld: bool, reviewer: Reviewer,
                          now: datetime) -> None:
        """Record the finding on an objection; the reviewer is the one who decides its notice step."""
        now = _aware(now)
        self._require_open()
        objection = self.objections.get(objection_id)
        if objection is None:
            raise DomainError("objection_not_found", f"case {self.id} has no objection {objection_id!r}", 404)
        if objection.resolved:
            raise _conflict("objection_already_resolved", f"objection {objection_id} is already resolved")
        reviewer = self._require_reviewer(reviewer, self.definition.step(objection.step_id))
        if not isinstance(upheld, bool):
            raise DomainError("invalid_value", "upheld must be true or false", field="upheld")
        self._record(ev.ObjectionResolved, objection_id=objection_id, finding=_required_text(finding, "finding"),
                     upheld=upheld, reviewer_id=reviewer.id, reviewer_role=reviewer.role, resolved_at=now)

    def record_comparison(self, *, member_id: str, source: str, hit: bool, recorded_by: str, now: datetime,
                          detail: str | None = None) -> None:
        """One member's result against one department's data, while a comparison step is current.
        A later result for the same member and source replaces the earlier one."""
        now = _aware(now)
        self._require_open()
        step = self._step()
        if step.kind != "comparison":
            raise _conflict("no_comparison_step", f"the current step {step.id} is not a data comparison",
                            current_step=step.id)
        if source not in ev.COMPARISON_SOURCES:
            raise DomainError("invalid_source", f"source must be one of {', '.join(ev.COMPARISON_SOURCES)}",
                              field="source")
        if not isinstance(hit, bool):
            raise DomainError("invalid_value", "hit must be true or false", field="hit")
        self._record(ev.ComparisonRecorded, step_id=step.id, member_id=_required_text(member_id, "member_id"),
                     source=source, hit=hit, detail=_optional_text(detail, "detail"),
                     recorded_by=_required_text(recorded_by, "recorded_by"), recorded_at=now)

    def escalate(self, *, reason: str, reviewer: Reviewer, now: datetime) -> str:
        """Pass the current escalation step up to the next level with a reason; returns the new step id."""
        now = _aware(now)
        self._require_open()
        step = self._step()
        if step.kind != "escalation":
            raise _conflict("not_escalation", f"step {step.id} is not an escalation step")
        reviewer = self._require_reviewer(reviewer, step)
        reason = _required_text(reason, "reason", "reason_required")
        following = self.definition.next_step(step.id)
        if following is None:
            raise _conflict("cannot_escalate", f"step {step.id} is the highest level: resolve it")
        self._record(ev.CaseEscalated, from_step=step.id, to_step=following.id, from_level=step.level,
                     to_level=following.level, reason=reason, reviewer_id=reviewer.id, reviewer_role=reviewer.role,
                     escalated_at=now)
        return following.id

    def resolve(self, *, what_was_done: str, reviewer: Reviewer, now: datetime) -> None:
        """Answer the current escalation step with what was done; the case ends (outcome approved)."""
        now = _aware(now)
        self._require_open()
        step = self._step()
        if step.kind != "escalation":
            raise _conflict("not_escalation", f"step {step.id} is not an escalation step")
        reviewer = self._require_reviewer(reviewer, step)
        self._record(ev.CaseResolved, step_id=step.id, level=step.level,
                     what_was_done=_required_text(what_was_done, "what_was_done"), reviewer_id=reviewer.id,
                     reviewer_role=reviewer.role, resolved_at=now)
        self._conclude("approved", now)

    def flag_overdue(self, now: datetime) -> bool:
        """Record StepOverdue for the current step if it is overdue and not yet flagged; True if recorded."""
        now = _aware(now)
        for item in self.overdue_steps(now):
            if (item.step_id, item.entered_at.isoformat()) in self.overdue_flagged:
                return False
            self._record(ev.StepOverdue, step_id=item.step_id, level=item.level, role=item.role,
                         entered_at=item.entered_at, due_at=item.due_at, detected_at=now)
            return True
        return False

    # -- event handlers ---------------------------------------------------------------

    def when_CaseOpened(self, d: dict[str, Any]) -> None:
        self.case_type = d["case_type"]
        self.case_type_version = d["case_type_version"]
        self.household_id = d["household_id"]
        self.village_code = d["village_code"]
        self.opened_by = d["opened_by"]
        self.opened_at = _at(d["opened_at"])
        self.reason = d["reason"]
        self.subject = d.get("subject")
        self.monitoring_object_type = d.get("monitoring_object_type")
        self.household_status = d.get("household_status")
        self.current_step = d["first_step"]
        self.step_entered_at = self.opened_at

    def when_StepDecided(self, d: dict[str, Any]) -> None:
        self.decisions.append(dict(d))
        self.current_step = d.get("next_step")
        self.step_entered_at = _at(d["decided_at"]) if self.current_step else None
        self.notice = None

    def when_NoticePosted(self, d: dict[str, Any]) -> None:
        self.notice_count += 1
        self.notice = Notice(d["notice_id"], d["step_id"], _at(d["starts_at"]), _at(d["ends_at"]))

    def when_ObjectionFiled(self, d: dict[str, Any]) -> None:
        self.objections[d["objection_id"]] = Objection(
            d["objection_id"], d["notice_id"], d["step_id"], d["content"], d.get("filer_name_masked"),
            _at(d["filed_at"]))

    def when_ObjectionResolved(self, d: dict[str, Any]) -> None:
        o = self.objections[d["objection_id"]]
        o.resolved, o.upheld, o.finding = True, d["upheld"], d["finding"]

    def when_ComparisonRecorded(self, d: dict[str, Any]) -> None:
        self.comparisons[(d["member_id"], d["source"])] = Comparison(
            d["member_id"], d["source"], d["hit"], d.get("detail"), _at(d["recorded_at"]))

    def when_CaseEscalated(self, d: dict[str, Any]) -> None:
        self.escalations.append(dict(d))
        self.current_step = d["to_step"]
        self.step_entered_at = _at(d["escalated_at"])

    def when_CaseResolved(self, d: dict[str, Any]) -> None:
        self.resolution = d["what_was_done"]

    def when_StepOverdue(self, d: dict[str, Any]) -> None:
        self.overdue_flagged.add((d["step_id"], _at(d["entered_at"]).isoformat()))

    def when_CaseConcluded(self, d: dict[str, Any]) -> None:
        self.closed = True
        self.outcome = d["outcome"]
        self.status_effect = d.get("status_effect")
        self.current_step = None
        self.step_entered_at = None
        self.notice = None
