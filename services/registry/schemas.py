"""Request and response bodies of the registry's HTTP API (also served by the gateway)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema, field_validator

from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.problems import Problem as BaseProblem

from . import codes

# An amount in yuan: up to 10 integer digits and 2 decimals, never negative: a decimal string
# (the canonical form, as in events) or a JSON number with at most two decimals. The number
# form does not use multipleOf 0.01: binary floating point makes validators refuse 19.99.
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": r"^[0-9]{1,10}(?:\.[0-9]{1,2})?$"},
              {"type": "number", "minimum": 0, "maximum": 9999999999.99}],
    "description": "Amount in yuan with at most two decimals, e.g. \"1250.50\" (a string is exact)."})]

ID_NUMBER_PATTERN = r"^[0-9]{17}[0-9Xx]$"


def _enum(list_name: str) -> Any:
    """A Literal of a code list's codes, so the OpenAPI document lists the allowed values."""
    return Literal[tuple(codes.codes(list_name))]  # type: ignore[valid-type]


Attribute = _enum("household_attribute")
Standard = _enum("identification_standard")
Relation = _enum("relation_to_head")
Sex = _enum("sex")
JoinReason = _enum("member_join_reason")
RemovalReason = _enum("member_removal_reason")
Health = _enum("health_condition")
Education = _enum("education_level")
Stage = _enum("schooling_stage")
Skill = _enum("labour_skill")
Employment = _enum("employment")
Insurance = _enum("insurance_kind")
Cause = _enum("poverty_cause")
Condition = _enum("living_condition_item")
MeasureKind = _enum("assistance_measure_kind")
MonitoringType = _enum("monitoring_object_type")
StatusEffect = Literal["identified", "lifted_out", "returned_to_poverty", "wrongly_identified_removed",
                       "natural_decrease", "monitoring_designated", "risk_eliminated"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberFacts(_In):
    health: list[Health] | None = Field(default=None, min_length=1, max_length=4)
    education: Education | None = None
    schooling_stage: Stage | None = None
    labour_skill: Skill | None = None
    employment: Employment | None = None
    employment_months: int | None = Field(default=None, ge=0, le=12)
    insurance: list[Insurance] | None = Field(default=None, max_length=8)


class NewMember(_In):
    name: str = Field(min_length=1, max_length=50)
    id_number: str = Field(pattern=ID_NUMBER_PATTERN, description="18-digit resident ID number (GB 11643).")
    relation: Relation = Field(description="'head' or a relation-to-head code (GB/T 4761).")
    birth_date: date | None = Field(default=None, description="Must match the ID number when given.")
    sex: Sex | None = None
    phone: str | None = Field(default=None, pattern=r"^(\+?86)?1[3-9][0-9]{9}$|^0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?$")
    ethnicity: str | None = Field(default=None, max_length=20)
    facts: MemberFacts | None = None


class RegisterHousehold(_In):
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN, examples=["620102001001"])
    address: str | None = Field(default=None, max_length=200)
    attribute: Attribute = "general"
    identification_standard: Standard = "national"
    registered_on: date | None = None
    members: list[NewMember] = Field(min_length=1, max_length=30)


class AddMember(_In):
    member: NewMember
    reason: JoinReason = Field(description="birth, marriage_in, moved_in or other.")
    joined_on: date | None = None


class RemoveMember(_In):
    reason: RemovalReason
    removed_on: date
    note: str | None = Field(default=None, max_length=500)


class ChangeHead(_In):
    member_id: str = Field(max_length=36)
    changed_on: date | None = None


class IncomeAssessment(_In):
    wage: Money = Decimal(0)
    business: Money = Decimal(0)
    property: Money = Decimal(0)
    transfer: Money = Decimal(0)
    business_expenses: Money = Decimal(0)


class LivingConditions(_In):
    assessed_on: date
    conditions: dict[Condition, bool] = Field(min_length=1, max_length=30)


class PovertyCauses(_In):
    primary: Cause
    others: list[Cause] = Field(default_factory=list, max_length=10)


class AssignCadre(_In):
    cadre_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    unit: str = Field(min_length=1, max_length=200)
    assigned_on: date


class ReleaseCadre(_In):
    released_on: date
    reason: str | None = Field(default=None, max_length=500)


class Measure(_In):
    kind: MeasureKind
    description: str = Field(min_length=1, max_length=1000)


class AssistancePlan(_In):
    measures: list[Measure] = Field(min_length=1, max_length=30)


class Coordinates(_In):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class StatusDecision(_In):
    """A review decision's effect (normally arrives as a workflow CaseConcluded event)."""

    decision_event_id: str = Field(min_length=1, max_length=64)
    case_id: str = Field(min_length=1, max_length=64)
    status_effect: StatusEffect
    effective_on: date
    monitoring_object_type: MonitoringType | None = None


class VillageProfile(_In):
    effective_on: date
    rural_population: int = Field(ge=0, le=1_000_000)
    registered_population: int = Field(ge=0, le=1_000_000)
    poor_village: bool
    hardened_road: bool | None = None
    leading_industry: str | None = Field(default=None, max_length=200)
    service_centre: bool | None = None
    safe_water: bool | None = None
    broadband: bool | None = None
    collective_income: Money | None = None
    resident_work_team: bool | None = None


# -- change requests (reviewed by a data_change case before they count) --------------

ChangeKind = Literal["member_update", "income", "conditions", "causes", "coordinates", "plan", "member_removal"]
ChangeStatus = Literal["pending", "applied", "rejected", "not_applicable"]


class _ChangeRequest(_In):
    reason: str = Field(min_length=1, max_length=1000, description="Why the change is asked for.")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason must not be blank")
        return value


class MemberUpdateRequest(_ChangeRequest):
    """The body of PATCH /households/{id}/members/{target}."""

    kind: Literal["member_update"]
    target: uuid.UUID = Field(description="Member id.")
    changes: MemberFacts


class IncomeRequest(_ChangeRequest):
    """The body of PUT /households/{id}/incomes/{target}."""

    kind: Literal["income"]
    target: int = Field(ge=2000, le=2100, description="Year of the assessment.")
    changes: IncomeAssessment


class ConditionsRequest(_ChangeRequest):
    """The body of PUT /households/{id}/conditions."""

    kind: Literal["conditions"]
    target: None = None
    changes: LivingConditions


class CausesRequest(_ChangeRequest):
    """The body of PUT /households/{id}/causes."""

    kind: Literal["causes"]
    target: None = None
    changes: PovertyCauses


class CoordinatesRequest(_ChangeRequest):
    """The body of PUT /households/{id}/coordinates."""

    kind: Literal["coordinates"]
    target: None = None
    changes: Coordinates


class PlanRequest(_ChangeRequest):
    """The body of PUT /households/{id}/plans/{target}."""

    kind: Literal["plan"]
    target: int = Field(ge=2000, le=2100, description="Year of the plan.")
    changes: AssistancePlan


class MemberRemovalRequest(_ChangeRequest):
    """The body of POST /households/{id}/members/{target}/removal."""

    kind: Literal["member_removal"]
    target: uuid.UUID = Field(description="Member id.")
    changes: RemoveMember


class ChangeRequestBody(RootModel[Annotated[
        MemberUpdateRequest | IncomeRequest | ConditionsRequest | CausesRequest | CoordinatesRequest | PlanRequest
        | MemberRemovalRequest,
        Field(discriminator="kind")]]):
    """A proposed change: ``changes`` is the body of the household command named by ``kind``
    (``target`` is its member id or year), validated exactly like that command."""


class CommandAccepted(BaseModel):
    household_id: str
    version: int
    events: list[str]
    member_id: str | None = None


class ChangeRequestAccepted(CommandAccepted):
    change_request_id: str


class ChangeRequestSummary(BaseModel):
    change_request_id: str
    household_id: str
    kind: ChangeKind
    target: str | None = Field(description="Member id (member_update, member_removal) or year (income, plan).")
    fields: list[str] = Field(description="Names of the fields the change sets.")
    reason: str
    requested_by: str
    requested_at: datetime
    base_version: int = Field(description="Household version the change was validated against.")
    status: ChangeStatus
    case_id: str | None = Field(description="The data_change case that concluded it.")
    decision_event_id: str | None
    decided_at: datetime | None
    closed_reason: str | None = Field(description="Why an approved change could not be applied (not_applicable).")


class ChangeRequestView(ChangeRequestSummary):
    changes: dict[str, Any] = Field(description="The proposed values: the body of the household command.")


class ChangeRequestList(BaseModel):
    items: list[ChangeRequestSummary] = Field(description="Newest first.")


class Problem(BaseProblem):
    household_id: str | None = None


def facts(f: MemberFacts | None) -> dict[str, Any]:
    return f.model_dump(exclude_none=True) if f is not None else {}
