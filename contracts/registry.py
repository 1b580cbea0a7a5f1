"""Events published by the registry service: households and village profiles.

No event carries personal data: names, ID numbers and phone numbers stay in the
registry's vault. Events carry member ids, a keyed HMAC of the ID number (for
matching by authorised systems) and masked forms. Code-valued fields hold codes
from the registry's code lists (``GET /code-lists``), not labels.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import EventModel, topic_name

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# ASCII digits only: "\d" would also admit non-ASCII digits in Python/pydantic.
VILLAGE_CODE_PATTERN = r"^[0-9]{12}$"
# A province (2 digits), city (4), county (6), township (9) or village (12) code. Province
# codes start 1-8, so a code of zeros names no region.
REGION_CODE_PATTERN = r"^[1-9][0-9](?:[0-9]{2}|[0-9]{4}|[0-9]{7}|[0-9]{10})?$"
HMAC_PATTERN = r"^[0-9a-f]{64}$"

HOUSEHOLD = "household"
HOUSEHOLD_TOPIC = topic_name("registry", HOUSEHOLD)
VILLAGE = "village"
VILLAGE_TOPIC = topic_name("registry", VILLAGE)


def _uuid(description: str):
    return Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"}, description=description)


class _HouseholdEvent(EventModel):
    topic: ClassVar[str] = HOUSEHOLD_TOPIC
    stream_type: ClassVar[str] = HOUSEHOLD

    household_id: str = _uuid("Household id (lower-case UUID); equals the stream id.")


class HouseholdRegistered(_HouseholdEvent):
    """A household was entered in the register. Its members follow as MemberAdded events."""

    event_type: ClassVar[str] = "HouseholdRegistered"
    schema_version: ClassVar[int] = 1

    village_code: str = Field(
        pattern=VILLAGE_CODE_PATTERN,
        description="12-digit village-level administrative division code (GB/T 2260 style).",
    )
    member_count: int = Field(ge=1, description="Number of members registered with the household.")
    registered_on: date | None = Field(default=None, description="Date of registration, if known.")
    address: str | None = Field(default=None, description="Address within the village (group, house number).")
    attribute: str | None = Field(default=None, description="Household attribute code (general, minimum_living, extreme_poverty).")
    identification_standard: str | None = Field(default=None, description="national or provincial.")
    head_member_id: str | None = Field(default=None, description="Member id of the household head.")
    status: str | None = Field(default=None, description="Initial status code (applicant unless imported as identified).")


class MemberProfile(BaseModel):
    """Non-identifying facts about a member; every field is optional in updates."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    health: list[str] | None = Field(default=None, description="Health codes (healthy, chronic_illness, serious_illness, disabled).")
    education: str | None = Field(default=None, description="Education level code.")
    schooling_stage: str | None = Field(default=None, description="Current schooling stage code (not_in_school, primary, ...).")
    labour_skill: str | None = Field(default=None, description="Labour skill code.")
    employment: str | None = Field(default=None, description="Employment code (none, local, migrant).")
    employment_months: int | None = Field(default=None, ge=0, le=12, description="Months employed per year.")
    insurance: list[str] | None = Field(default=None, description="Insurance enrolment codes.")


class MemberAdded(_HouseholdEvent):
    """A person joined the household (at registration, birth, marriage, moving in)."""

    event_type: ClassVar[str] = "MemberAdded"
    schema_version: ClassVar[int] = 1

    member_id: str = _uuid("Member id (lower-case UUID), stable for life.")
    relation: str = Field(description="Relation to head code (GB/T 4761 style); 'head' for the head.")
    sex: str = Field(description="male or female.")
    birth_year: int = Field(ge=1900, le=2100, description=(
        "Year of birth only: the full date together with the masked ID number would reveal the ID number."))
    ethnicity: str | None = None
    id_hmac: str = Field(pattern=HMAC_PATTERN, description="Keyed HMAC-SHA256 of the resident ID number.")
    id_masked: str = Field(description="Masked ID number, e.g. 6201**********1234.")
    name_masked: str = Field(description="Masked name: first and last character kept, e.g. Z*Q for a three-character name.")
    reason: str = Field(description="Join reason code (initial, birth, marriage_in, moved_in, other).")
    joined_on: date | None = None
    profile: MemberProfile = Field(default_factory=MemberProfile)


class MemberUpdated(_HouseholdEvent):
    event_type: ClassVar[str] = "MemberUpdated"
    schema_version: ClassVar[int] = 1

    member_id: str = _uuid("Member id.")
    changes: MemberProfile = Field(description="Only the fields that changed are set.")


class MemberRemoved(_HouseholdEvent):
    event_type: ClassVar[str] = "MemberRemoved"
    schema_version: ClassVar[int] = 1

    member_id: str = _uuid("Member id.")
    reason: str = Field(description="Removal reason code (death, marriage_out, moved_out, imprisoned, settled_abroad, other).")
    removed_on: date
    note: str | None = None


class HeadChanged(_HouseholdEvent):
    event_type: ClassVar[str] = "HeadChanged"
    schema_version: ClassVar[int] = 1

    head_member_id: str = _uuid("The new head.")
    previous_head_member_id: str | None = None
    changed_on: date | None = None


class IncomeAssessed(_HouseholdEvent):
    """Income of one year; the per-capita net income is computed by the registry."""

    event_type: ClassVar[str] = "IncomeAssessed"
    schema_version: ClassVar[int] = 1

    year: int = Field(ge=2000, le=2100)
    wage: str = Field(description="Decimal yuan, as a string.")
    business: str
    property: str
    transfer: str
    business_expenses: str
    resident_members: int = Field(ge=1)
    net_income: str = Field(description="wage + business + property + transfer - business_expenses.")
    per_capita_net_income: str = Field(description="net_income / resident_members, 2 decimals.")


class LivingConditionsAssessed(_HouseholdEvent):
    """Basic needs and guarantees (food, clothing, water, schooling, medical care, housing) and related conditions: item code -> secured (true) or not (false)."""

    event_type: ClassVar[str] = "LivingConditionsAssessed"
    schema_version: ClassVar[int] = 1

    assessed_on: date
    conditions: dict[str, bool]


class PovertyCausesRecorded(_HouseholdEvent):
    event_type: ClassVar[str] = "PovertyCausesRecorded"
    schema_version: ClassVar[int] = 1

    primary: str = Field(description="Primary poverty cause code.")
    others: list[str] = Field(default_factory=list, description="Other cause codes.")


class CadreAssigned(_HouseholdEvent):
    event_type: ClassVar[str] = "CadreAssigned"
    schema_version: ClassVar[int] = 1

    cadre_id: str = Field(min_length=1, description="Id of the assistance cadre (a gateway user id).")
    unit: str = Field(min_length=1, description="Assisting unit.")
    assigned_on: date


class CadreReleased(_HouseholdEvent):
    event_type: ClassVar[str] = "CadreReleased"
    schema_version: ClassVar[int] = 1

    cadre_id: str = Field(min_length=1)
    released_on: date
    reason: str | None = None


class AssistanceMeasure(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: str = Field(description="Measure kind code.")
    description: str


class AssistancePlanRecorded(_HouseholdEvent):
    event_type: ClassVar[str] = "AssistancePlanRecorded"
    schema_version: ClassVar[int] = 1

    year: int = Field(ge=2000, le=2100)
    measures: list[AssistanceMeasure]


class CoordinatesSet(_HouseholdEvent):
    event_type: ClassVar[str] = "CoordinatesSet"
    schema_version: ClassVar[int] = 1

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class HouseholdStatusChanged(_HouseholdEvent):
    """Status changes only by a review decision or a vital event (causation in metadata)."""

    event_type: ClassVar[str] = "HouseholdStatusChanged"
    schema_version: ClassVar[int] = 1

    from_status: str
    to_status: str
    effective_on: date
    basis: str = Field(description="decision (a review case) or vital_event.")
    case_id: str | None = Field(default=None, description="Review case that decided it, if any.")
    decision_event_id: str | None = Field(default=None, description="Event id of the workflow decision.")


class MonitoringDesignated(_HouseholdEvent):
    event_type: ClassVar[str] = "MonitoringDesignated"
    schema_version: ClassVar[int] = 1

    object_type: str = Field(description="unstable_lifted_out, marginal or sudden_hardship.")
    effective_on: date
    case_id: str | None = None
    decision_event_id: str | None = None


class MonitoringRiskEliminated(_HouseholdEvent):
    event_type: ClassVar[str] = "MonitoringRiskEliminated"
    schema_version: ClassVar[int] = 1

    effective_on: date
    case_id: str | None = None
    decision_event_id: str | None = None


class MemberPersonalDataErased(_HouseholdEvent):
    """The member's vault entry (name, ID number, phone) was erased; history stays consistent."""

    event_type: ClassVar[str] = "MemberPersonalDataErased"
    schema_version: ClassVar[int] = 1

    member_id: str = _uuid("Member id.")
    erased_on: date


CHANGE_KINDS = ("member_update", "income", "conditions", "causes", "coordinates", "plan", "member_removal")


class ChangeRequested(_HouseholdEvent):
    """A cadre asked to change the household's data. The change counts only once a
    ``data_change`` review case approves it (the workflow service opens that case on
    this event, with ``subject`` = the change request id). The proposed values stay
    in the registry (``GET /households/{id}/change-requests/{change_request_id}``);
    the event names only what would change."""

    event_type: ClassVar[str] = "ChangeRequested"
    schema_version: ClassVar[int] = 1

    change_request_id: str = _uuid("Change request id (lower-case UUID).")
    kind: Literal["member_update", "income", "conditions", "causes", "coordinates", "plan", "member_removal"] = Field(
        description="Which household command the change is (member_removal added in 2026-11; consumers "
                    "should treat an unknown kind as a data change to review).")
    target: str | None = Field(default=None, description="Member id (member_update, member_removal) or year "
                               "(income, plan).")
    fields: list[str] = Field(description="Names of the fields the change sets (values are not in the event).")
    reason: str = Field(min_length=1, description="Why the cadre asks for the change.")
    requested_by: str = Field(min_length=1, description="User id of the cadre.")
    requested_at: datetime


class ChangeRequestApplied(_HouseholdEvent):
    """An approved change request was applied; the change's own events precede this one."""

    event_type: ClassVar[str] = "ChangeRequestApplied"
    schema_version: ClassVar[int] = 1

    change_request_id: str = _uuid("Change request id.")
    case_id: str = Field(min_length=1, description="The data_change case that approved it.")
    decision_event_id: str = Field(description="Event id of the workflow decision (CaseConcluded).")


class ChangeRequestClosed(_HouseholdEvent):
    """A change request ended without being applied: its case rejected it, or the
    approved change no longer fits the household (e.g. the member was removed)."""

    event_type: ClassVar[str] = "ChangeRequestClosed"
    schema_version: ClassVar[int] = 1

    change_request_id: str = _uuid("Change request id.")
    case_id: str = Field(min_length=1)
    outcome: Literal["rejected", "not_applicable"]
    reason: str | None = Field(default=None, description="Why an approved change could not be applied.")
    decision_event_id: str = Field(description="Event id of the workflow decision (CaseConcluded).")


class VillageProfileUpdated(EventModel):
    """Dated village data the exit criteria and poverty incidence need."""

    event_type: ClassVar[str] = "VillageProfileUpdated"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = VILLAGE_TOPIC
    stream_type: ClassVar[str] = VILLAGE

    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN)
    effective_on: date
    rural_population: int = Field(ge=0)
    registered_population: int = Field(ge=0)
    poor_village: bool
    hardened_road: bool | None = None
    leading_industry: str | None = None
    service_centre: bool | None = None
    safe_water: bool | None = None
    broadband: bool | None = None
    collective_income: str | None = Field(default=None, description="Village collective income, decimal yuan.")
    resident_work_team: bool | None = None


HOUSEHOLD_EVENTS: tuple[type[EventModel], ...] = (
    HouseholdRegistered, MemberAdded, MemberUpdated, MemberRemoved, HeadChanged, IncomeAssessed,
    LivingConditionsAssessed, PovertyCausesRecorded, CadreAssigned, CadreReleased, AssistancePlanRecorded,
    CoordinatesSet, HouseholdStatusChanged, MonitoringDesignated, MonitoringRiskEliminated,
    MemberPersonalDataErased, ChangeRequested, ChangeRequestApplied, ChangeRequestClosed,
)
VILLAGE_EVENTS: tuple[type[EventModel], ...] = (VillageProfileUpdated,)
