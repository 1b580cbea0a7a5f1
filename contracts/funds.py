"""Events published by the funds service: allocations, projects, disbursements, anomalies.

Money is a decimal string in yuan with exactly two decimals (``"1250.00"``);
only ``AllocationAdjusted.amount_delta`` may be negative. Every payment traces to
its source: a disbursement names the policy (code and version) or the project it
is paid under, and the allocation it draws on; the allocation records the
reservation and the spending with the disbursement id.

How money moves on an allocation (``available = amount - reserved - spent``):

- ``FundsReserved`` holds money for a project (at approval, one per funding line)
  or for a policy disbursement (at its approval);
- ``FundsSpent`` turns part of a reservation into payment (a disbursement was paid);
- ``SpendingReversed`` puts a reversed payment back into its reservation;
- ``ReservationReleased`` returns what is left of a reservation to ``available``.

Periods (``DisbursementRequested.period``): ``YYYY`` a calendar year,
``YYYY-S1`` / ``YYYY-S2`` the first / second half of a calendar year (semester),
``YYYY-MM`` a month. A one-off entitlement (relocation, house renovation) is
requested with the year it belongs to (``YYYY``) and can be paid once ever.

Payments made by other departments' own systems (student aid, minimum-living
allowance, medical assistance, ...) are sent quarterly and recorded as
``DepartmentPaymentRecorded`` on a disbursement stream of their own: paid from the
start, drawing on no allocation, so that a household's funds, the village
disclosure and the anomaly rules see everything the household received.

Personal data: no event carries names, ID numbers or account numbers. Bank and
card accounts appear only masked (``account_masked``) and as a keyed hash
(``account_hash``, HMAC-SHA256 hex) for matching.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import EventModel, topic_name
from contracts.registry import HMAC_PATTERN, UUID_PATTERN, VILLAGE_CODE_PATTERN

MONEY_PATTERN = r"^[0-9]+\.[0-9]{2}$"
SIGNED_MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2}$"
# A masked account or card number: at most the first 6 and the last 4 digits shown.
ACCOUNT_MASKED_PATTERN = r"^[0-9]{0,6}\*{4,}[0-9]{0,4}$"
PERIOD_PATTERN = r"^[0-9]{4}(?:-(?:0[1-9]|1[0-2])|-S[12])?$"
QUARTER_PATTERN = r"^[0-9]{4}-Q[1-4]$"
# A paying department's code (subsidy records), e.g. civil_affairs.
DEPARTMENT_PATTERN = r"^[a-z][a-z_]{1,31}$"
# Province (2 digits), city (4) or county (6): an allocation's budget region.
BUDGET_REGION_PATTERN = r"^[1-9][0-9](?:[0-9]{2}|[0-9]{4})?$"
# Township (9 digits, or 12 with a 000 village part) or village (12): where a project is.
PROJECT_REGION_PATTERN = r"^[1-9][0-9]{8}(?:[0-9]{3})?$"

ALLOCATION = "allocation"
ALLOCATION_TOPIC = topic_name("funds", ALLOCATION)
PROJECT = "project"
PROJECT_TOPIC = topic_name("funds", PROJECT)
DISBURSEMENT = "disbursement"
DISBURSEMENT_TOPIC = topic_name("funds", DISBURSEMENT)
ANOMALY = "anomaly"
ANOMALY_TOPIC = topic_name("funds", ANOMALY)

FUND_SOURCES = ("central", "provincial", "city", "county", "social_donation")
PROJECT_KINDS = ("industry", "infrastructure", "housing", "relocation", "education", "employment", "health",
                 "other")
PAYMENT_CHANNELS = ("one_card", "student_aid_card", "bank_transfer")
ANOMALY_RULES = ("paid_to_deceased", "paid_to_departed_member", "paid_to_removed_household", "duplicate_period",
                 "amount_above_standard", "project_overspend", "shared_account")

RefType = Literal["project", "disbursement"]


def _money(description: str = "Yuan, decimal string with 2 decimals.") -> object:
    return Field(pattern=MONEY_PATTERN, description=description)


def _uuid(description: str) -> object:
    return Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"}, description=description)


# --- allocation ------------------------------------------------------------------------


class _AllocationEvent(EventModel):
    topic: ClassVar[str] = ALLOCATION_TOPIC
    stream_type: ClassVar[str] = ALLOCATION
    schema_version: ClassVar[int] = 1

    allocation_id: str = _uuid("Allocation id (lower-case UUID); equals the stream id.")


class AllocationCreated(_AllocationEvent):
    """A budget line was opened: money of one source, year and purpose for a region."""

    event_type: ClassVar[str] = "AllocationCreated"

    source: Literal["central", "provincial", "city", "county", "social_donation"]
    year: int = Field(ge=2000, le=2100, description="Budget year.")
    purpose: str = Field(min_length=1, description="What the money is for, as the budget document says.")
    region_code: str = Field(pattern=BUDGET_REGION_PATTERN, description=(
        "Region the money is for: province (2 digits), city (4) or county (6)."))
    amount: str = _money("Initial amount, yuan.")
    created_by: str = Field(min_length=1, description="User id.")
    created_at: datetime


class AllocationAdjusted(_AllocationEvent):
    """The amount changed (supplementary budget, cut, transfer); never an edit of the original."""

    event_type: ClassVar[str] = "AllocationAdjusted"

    amount_delta: str = Field(pattern=SIGNED_MONEY_PATTERN, description="Signed change, yuan.")
    new_amount: str = _money("Amount after the adjustment.")
    reason: str = Field(min_length=1)
    adjusted_by: str = Field(min_length=1)
    adjusted_at: datetime


class FundsReserved(_AllocationEvent):
    """Money was set aside for an approved project (one funding line) or a policy disbursement."""

    event_type: ClassVar[str] = "FundsReserved"

    ref_type: RefType
    ref_id: str = _uuid("Project or disbursement id.")
    amount: str = _money()
    reserved_at: datetime


class ReservationReleased(_AllocationEvent):
    """What was left of a reservation went back to the allocation's available money."""

    event_type: ClassVar[str] = "ReservationReleased"

    ref_type: RefType
    ref_id: str = _uuid("Project or disbursement id.")
    amount: str = _money()
    reason: str = Field(min_length=1)
    released_at: datetime


class FundsSpent(_AllocationEvent):
    """A disbursement was paid: part of the reservation ``(ref_type, ref_id)`` became spending."""

    event_type: ClassVar[str] = "FundsSpent"

    ref_type: RefType
    ref_id: str = _uuid("Project or disbursement id the reservation is for.")
    disbursement_id: str = _uuid("The disbursement that was paid.")
    amount: str = _money()
    spent_on: date


class SpendingReversed(_AllocationEvent):
    """A paid disbursement was reversed: its amount went back into the reservation it was spent from
    (a ``ReservationReleased`` follows when that reservation is no longer needed)."""

    event_type: ClassVar[str] = "SpendingReversed"

    ref_type: RefType
    ref_id: str = _uuid("Project or disbursement id the reservation is for.")
    disbursement_id: str = _uuid("The reversed disbursement.")
    amount: str = _money()
    reason: str = Field(min_length=1)
    reversed_at: datetime


# --- project ---------------------------------------------------------------------------


class FundingLine(BaseModel):
    """Part of a project's approved budget drawn from one allocation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    allocation_id: str = _uuid("Allocation id.")
    amount: str = _money()


class _ProjectEvent(EventModel):
    topic: ClassVar[str] = PROJECT_TOPIC
    stream_type: ClassVar[str] = PROJECT
    schema_version: ClassVar[int] = 1

    project_id: str = _uuid("Project id (lower-case UUID); equals the stream id.")


class ProjectDeclared(_ProjectEvent):
    """A village or township declared a project with its budget and covered households."""

    event_type: ClassVar[str] = "ProjectDeclared"

    name: str = Field(min_length=1)
    kind: Literal["industry", "infrastructure", "housing", "relocation", "education", "employment", "health",
                  "other"]
    region_code: str = Field(pattern=PROJECT_REGION_PATTERN, description=(
        "Village (12 digits) or township (9 digits, or 12 ending in 000) that declared the project."))
    budget: str = _money("Declared budget, yuan.")
    plan_year: int = Field(ge=2000, le=2100)
    beneficiary_household_ids: list[str] = Field(min_length=1, description="Covered households (ids).")
    declared_by: str = Field(min_length=1)
    declared_at: datetime


class ProjectReviewed(_ProjectEvent):
    event_type: ClassVar[str] = "ProjectReviewed"

    reviewer: str = Field(min_length=1, description="User id.")
    comment: str | None = None
    reviewed_at: datetime


class ProjectApproved(_ProjectEvent):
    """The project was approved; ``funding`` sums to ``approved_budget`` and is reserved on the allocations."""

    event_type: ClassVar[str] = "ProjectApproved"

    approved_budget: str = _money()
    funding: list[FundingLine] = Field(min_length=1)
    approved_by: str = Field(min_length=1)
    approved_at: datetime


class ProjectRejected(_ProjectEvent):
    event_type: ClassVar[str] = "ProjectRejected"

    reason: str = Field(min_length=1)
    rejected_by: str = Field(min_length=1)
    rejected_at: datetime


class ProjectStarted(_ProjectEvent):
    event_type: ClassVar[str] = "ProjectStarted"

    started_on: date
    started_by: str = Field(min_length=1)


class MilestoneRecorded(_ProjectEvent):
    event_type: ClassVar[str] = "MilestoneRecorded"

    name: str = Field(min_length=1)
    reached_on: date
    note: str | None = None
    recorded_by: str = Field(min_length=1)


class ProjectCompleted(_ProjectEvent):
    event_type: ClassVar[str] = "ProjectCompleted"

    completed_on: date
    completed_by: str = Field(min_length=1)


class ProjectAccepted(_ProjectEvent):
    """The finished project passed acceptance; ``released`` is the unspent money per allocation,
    released from the reservations."""

    event_type: ClassVar[str] = "ProjectAccepted"

    accepted_by: str = Field(min_length=1)
    accepted_at: datetime
    released: list[FundingLine] = Field(default_factory=list)


class ProjectCancelled(_ProjectEvent):
    """The project was stopped; ``released`` is the unspent money per allocation, released."""

    event_type: ClassVar[str] = "ProjectCancelled"

    reason: str = Field(min_length=1)
    cancelled_by: str = Field(min_length=1)
    cancelled_at: datetime
    released: list[FundingLine] = Field(default_factory=list)


class ProjectPaymentCommitted(_ProjectEvent):
    """A disbursement under the project was approved against one funding line."""

    event_type: ClassVar[str] = "ProjectPaymentCommitted"

    disbursement_id: str = _uuid("Disbursement id.")
    allocation_id: str = _uuid("Funding line (allocation) the payment draws on.")
    amount: str = _money()
    committed_at: datetime


class ProjectPaymentRecorded(_ProjectEvent):
    """A committed disbursement under the project was paid."""

    event_type: ClassVar[str] = "ProjectPaymentRecorded"

    disbursement_id: str = _uuid("Disbursement id.")
    allocation_id: str = _uuid("Funding line (allocation) the payment drew on.")
    amount: str = _money()
    paid_on: date


class ProjectPaymentReleased(_ProjectEvent):
    """A committed disbursement failed, or a paid one was reversed: it no longer counts."""

    event_type: ClassVar[str] = "ProjectPaymentReleased"

    disbursement_id: str = _uuid("Disbursement id.")
    allocation_id: str = _uuid("Funding line (allocation).")
    amount: str = _money()
    was_paid: bool = Field(description="True for a reversed payment, false for a commitment that failed.")
    reason: str = Field(min_length=1)
    released_at: datetime


# --- disbursement ----------------------------------------------------------------------


class _DisbursementEvent(EventModel):
    topic: ClassVar[str] = DISBURSEMENT_TOPIC
    stream_type: ClassVar[str] = DISBURSEMENT
    schema_version: ClassVar[int] = 1

    disbursement_id: str = _uuid("Disbursement id (lower-case UUID); equals the stream id.")


class DisbursementRequested(_DisbursementEvent):
    """A payment to a household (or one member) was requested under a policy or a project."""

    event_type: ClassVar[str] = "DisbursementRequested"

    household_id: str = _uuid("Household id.")
    member_id: str | None = Field(default=None, pattern=UUID_PATTERN, description=(
        "Member id, for entitlements paid per person."))
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN, description="The household's village.")
    basis: Literal["policy", "project"]
    policy_code: str | None = Field(default=None, description="Policy of the entitlement (basis policy).")
    policy_version: int | None = Field(default=None, ge=1, description=(
        "Version of the policy standard in force for the period (basis policy)."))
    policy_group: str | None = Field(default=None, description=(
        "Entitlement group of the policy (basis policy): one payment per beneficiary, group and period."))
    policy_unit: Literal["per_year", "per_month", "once"] | None = Field(default=None, description=(
        "What the policy standard is per (basis policy); a 'once' entitlement is paid once ever."))
    project_id: str | None = Field(default=None, pattern=UUID_PATTERN, description="Project (basis project).")
    period: str = Field(pattern=PERIOD_PATTERN, description="YYYY, YYYY-S1, YYYY-S2 or YYYY-MM.")
    amount: str = _money()
    standard_amount: str | None = Field(default=None, pattern=MONEY_PATTERN, description=(
        "The policy standard for this payment (basis policy); amount never exceeds it."))
    cost_basis: str | None = Field(default=None, pattern=MONEY_PATTERN, description=(
        "Self-paid cost a banded (reimbursement) standard is computed from."))
    account_masked: str | None = Field(default=None, pattern=ACCOUNT_MASKED_PATTERN, description=(
        "Masked account or card number, e.g. 6217****1234."))
    account_hash: str | None = Field(default=None, pattern=HMAC_PATTERN, description=(
        "Keyed HMAC-SHA256 of the account or card number."))
    requested_by: str = Field(min_length=1)
    requested_at: datetime


class DisbursementApproved(_DisbursementEvent):
    """Approved: the money is reserved on ``allocation_id`` (policy) or committed on the project."""

    event_type: ClassVar[str] = "DisbursementApproved"

    approved_by: str = Field(min_length=1)
    allocation_id: str = _uuid("Allocation the payment draws on.")
    approved_at: datetime


class DisbursementPaid(_DisbursementEvent):
    """The payment channel paid; ``channel_reference`` is its transaction reference."""

    event_type: ClassVar[str] = "DisbursementPaid"

    channel: Literal["one_card", "student_aid_card", "bank_transfer"]
    channel_reference: str = Field(min_length=1)
    paid_on: date
    recorded_at: datetime


class DisbursementReconciled(_DisbursementEvent):
    """The payment was matched to a line of the channel's statement."""

    event_type: ClassVar[str] = "DisbursementReconciled"

    statement_id: str = Field(min_length=1)
    statement_line: str = Field(min_length=1)
    reconciled_at: datetime


class DisbursementFailed(_DisbursementEvent):
    """The request was refused, or the payment attempt failed; nothing was paid."""

    event_type: ClassVar[str] = "DisbursementFailed"

    reason: str = Field(min_length=1)
    failed_at: datetime


class DisbursementReversed(_DisbursementEvent):
    """A paid amount was returned or recovered."""

    event_type: ClassVar[str] = "DisbursementReversed"

    reason: str = Field(min_length=1)
    reversed_at: datetime


class DepartmentPaymentRecorded(_DisbursementEvent):
    """Another department's own system paid a household (or one member) under a policy, and said so in
    its quarterly subsidy records (``POST /subsidy-records``). The payment did not draw on any
    allocation of the platform: the disbursement starts (and stays) ``paid``, it is never approved,
    paid, reconciled or reversed on the platform. Its id is derived from ``department``,
    ``payer_jurisdiction`` and ``department_reference`` (uuid5), so the same payment is recorded once."""

    event_type: ClassVar[str] = "DepartmentPaymentRecorded"

    household_id: str = _uuid("Household id.")
    member_id: str | None = Field(default=None, pattern=UUID_PATTERN, description=(
        "Member id, for entitlements paid per person."))
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN, description="The household's village.")
    policy_code: str = Field(min_length=1, description=(
        "Policy of the catalogue (GET /policies) or department policy (services/funds/subsidies.py)."))
    policy_version: int | None = Field(default=None, ge=1, description=(
        "Version of the catalogue standard in force for the period; null for a department policy or when "
        "none is in force."))
    policy_group: str | None = Field(default=None, description=(
        "Entitlement group (one payment per beneficiary, group and period); null for assistance paid per case."))
    policy_unit: Literal["per_year", "per_month", "once"] | None = Field(default=None, description=(
        "What the policy is paid per; null for assistance paid per case."))
    period: str = Field(pattern=PERIOD_PATTERN, description="YYYY, YYYY-S1, YYYY-S2 or YYYY-MM.")
    amount: str = _money("What the department paid.")
    standard_amount: str | None = Field(default=None, pattern=MONEY_PATTERN, description=(
        "The catalogue standard for the period, when there is one (the anomaly rules compare)."))
    channel: Literal["one_card", "student_aid_card", "bank_transfer"]
    paid_on: date
    department: str = Field(pattern=DEPARTMENT_PATTERN, description=(
        "The paying department (education, civil_affairs, health_insurance, ...)."))
    payer_jurisdiction: str = Field(pattern=r"^[1-9][0-9]{11}$", description=(
        "12-digit code of the jurisdiction of the department system (or county office) that sent the record: "
        "with the department, the namespace of its references."))
    department_reference: str = Field(min_length=1, max_length=64, description=(
        "The department's own payment id, unique per department and jurisdiction."))
    quarter: str = Field(pattern=QUARTER_PATTERN, description="The quarter of the import, e.g. 2025-Q1.")
    import_id: str = _uuid("The import (file) the record came in.")
    recorded_by: str = Field(min_length=1, description="Client system or user id that sent the file.")
    recorded_at: datetime


# --- anomaly ---------------------------------------------------------------------------


class AnomalyDetected(EventModel):
    """An anomaly rule fired; ``evidence`` names the facts it fired on."""

    event_type: ClassVar[str] = "AnomalyDetected"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = ANOMALY_TOPIC
    stream_type: ClassVar[str] = ANOMALY

    anomaly_id: str = _uuid("Anomaly id; equals the stream id. Derived from rule, subject and evidence key, "
                            "so the same finding is recorded once.")
    rule: Literal["paid_to_deceased", "paid_to_departed_member", "paid_to_removed_household", "duplicate_period",
                  "amount_above_standard", "project_overspend", "shared_account"]
    severity: Literal["low", "medium", "high"]
    subject_type: Literal["disbursement", "project", "account"]
    subject_id: str = Field(min_length=1, description="Disbursement id, project id or account hash.")
    household_id: str | None = Field(default=None, pattern=UUID_PATTERN)
    village_code: str | None = Field(default=None, pattern=VILLAGE_CODE_PATTERN)
    evidence: dict[str, str | int | bool | list[str] | None]
    detected_at: datetime


ALLOCATION_EVENTS: tuple[type[EventModel], ...] = (
    AllocationCreated, AllocationAdjusted, FundsReserved, ReservationReleased, FundsSpent, SpendingReversed,
)
PROJECT_EVENTS: tuple[type[EventModel], ...] = (
    ProjectDeclared, ProjectReviewed, ProjectApproved, ProjectRejected, ProjectStarted, MilestoneRecorded,
    ProjectCompleted, ProjectAccepted, ProjectCancelled, ProjectPaymentCommitted, ProjectPaymentRecorded,
    ProjectPaymentReleased,
)
DISBURSEMENT_EVENTS: tuple[type[EventModel], ...] = (
    DisbursementRequested, DisbursementApproved, DisbursementPaid, DisbursementReconciled, DisbursementFailed,
    DisbursementReversed, DepartmentPaymentRecorded,
)
ANOMALY_EVENTS: tuple[type[EventModel], ...] = (AnomalyDetected,)
