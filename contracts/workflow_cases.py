"""Events of the workflow ``case`` aggregate: opening, step decisions, public
notices, objections, comparison results, escalation, resolution and overdue steps.

All are recorded on the case stream (stream type ``case``, topic
``tpa.workflow.case.v1``) next to ``CaseConcluded`` (``contracts.workflow``),
which ends every case.

Personal data: no event carries names, ID numbers or phone numbers. Reviewers
and cadres are referred to by gateway user ids; household members by member
ids. An objection may be filed with a name; only its masked form (first and last
character kept, e.g. ``Z*Q``) is recorded and the plain name is dropped by the
domain. Free-text fields (reason, comment, finding, detail, content,
what_was_done) are shown on notice boards and timelines: clients must not put ID
numbers, phone numbers, bank accounts or health details in them.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.base import EventModel
from contracts.workflow import CASE, CASE_TOPIC, CaseConcluded

DECISIONS = ("approve", "reject", "return")
COMPARISON_SOURCES = ("vehicles", "business_registry", "payroll", "property")


class _CaseEvent(EventModel):
    topic: ClassVar[str] = CASE_TOPIC
    stream_type: ClassVar[str] = CASE
    schema_version: ClassVar[int] = 1

    case_id: str = Field(min_length=1, description="Case id; equals the stream id.")


class CaseOpened(_CaseEvent):
    """A review case was opened; its first step is current from ``opened_at``."""

    event_type: ClassVar[str] = "CaseOpened"

    case_type: str = Field(description="identification, exit, return_risk, data_change, assistance_need, ...")
    case_type_version: int = Field(ge=1, description="Version of the case type definition the case follows.")
    household_id: str = Field(min_length=1)
    village_code: str = Field(pattern=r"^[0-9]{12}$", description="12-digit village code of the household.")
    opened_by: str = Field(min_length=1, description="User id of whoever opened the case (or 'system:monitoring').")
    reason: str = Field(min_length=1)
    subject: str | None = Field(default=None, description=(
        "What the case is about within its type: risk code (return_risk), change request id (data_change), "
        "need kind (assistance_need)."))
    monitoring_object_type: str | None = Field(default=None, description="For cases designating a monitoring object.")
    household_status: str | None = Field(default=None, description=(
        "The household's register status when the case was opened (decides the effect of approval)."))
    first_step: str
    opened_at: datetime


class StepDecided(_CaseEvent):
    """A reviewer decided the current step. ``next_step`` is the step now current
    (absent when the decision ended the case: approval of the last step, or a rejection)."""

    event_type: ClassVar[str] = "StepDecided"

    step_id: str
    decision: Literal["approve", "reject", "return"]
    return_to: str | None = Field(default=None, description="Target step of a return.")
    comment: str | None = Field(default=None, description="Reason of a return or rejection; optional comment otherwise.")
    override_reason: str | None = Field(default=None, description="Why unresolved comparison hits were overridden.")
    reviewer_id: str = Field(min_length=1)
    reviewer_role: str
    reviewer_level: str
    next_step: str | None = None
    decided_at: datetime


class NoticePosted(_CaseEvent):
    """A public notice step became current: objections may be filed until ``ends_at``."""

    event_type: ClassVar[str] = "NoticePosted"

    notice_id: str = Field(description="Unique within the case: '<step_id>#<n>'.")
    step_id: str
    starts_at: datetime
    ends_at: datetime


class ObjectionFiled(_CaseEvent):
    event_type: ClassVar[str] = "ObjectionFiled"

    objection_id: str = Field(description="Unique within the case: 'objection-<n>'.")
    notice_id: str
    step_id: str
    content: str = Field(min_length=1)
    filer_name_masked: str | None = Field(default=None, description="Masked name of the filer, if one was given.")
    filed_at: datetime


class ObjectionResolved(_CaseEvent):
    """An objection was looked into. An upheld objection blocks approving its notice step."""

    event_type: ClassVar[str] = "ObjectionResolved"

    objection_id: str
    finding: str = Field(min_length=1)
    upheld: bool
    reviewer_id: str = Field(min_length=1)
    reviewer_role: str
    resolved_at: datetime


class ComparisonRecorded(_CaseEvent):
    """One member's result against one department's data; a later result for the
    same member and source replaces the earlier one."""

    event_type: ClassVar[str] = "ComparisonRecorded"

    step_id: str
    member_id: str = Field(min_length=1)
    source: Literal["vehicles", "business_registry", "payroll", "property"]
    hit: bool = Field(description="True when the member matches an exclusion rule in that source.")
    detail: str | None = None
    recorded_by: str = Field(min_length=1, description="User id (county office) or department client id.")
    recorded_at: datetime


class CaseEscalated(_CaseEvent):
    """An escalation step was passed up to the next level with a reason."""

    event_type: ClassVar[str] = "CaseEscalated"

    from_step: str
    to_step: str
    from_level: str
    to_level: str
    reason: str = Field(min_length=1)
    reviewer_id: str = Field(min_length=1)
    reviewer_role: str
    escalated_at: datetime


class CaseResolved(_CaseEvent):
    """An escalation case (assistance need) was answered at ``step_id``; CaseConcluded follows."""

    event_type: ClassVar[str] = "CaseResolved"

    step_id: str
    level: str
    what_was_done: str = Field(min_length=1)
    reviewer_id: str = Field(min_length=1)
    reviewer_role: str
    resolved_at: datetime


class StepOverdue(_CaseEvent):
    """The current step passed its time limit without a decision (published once per entry into the step)."""

    event_type: ClassVar[str] = "StepOverdue"

    step_id: str
    level: str
    role: str
    entered_at: datetime
    due_at: datetime
    detected_at: datetime


CASE_EVENTS: tuple[type[EventModel], ...] = (
    CaseOpened, StepDecided, NoticePosted, ObjectionFiled, ObjectionResolved, ComparisonRecorded,
    CaseEscalated, CaseResolved, StepOverdue, CaseConcluded,
)
