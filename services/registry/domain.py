"""The Household and Village aggregates. Pure domain code: no I/O, no frameworks.

Every command checks the aggregate's current state and raises `DomainError`
(HTTP 409 for a state conflict, 422 for invalid input) or records events.
Personal data never reaches this module: the application layer keeps names, ID
numbers and phones in the vault and passes in the HMAC and masked forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from contracts import registry as ev
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

from . import codes

_VILLAGE = re.compile(r"^[0-9]{12}$")

# Status changes allowed: target -> the statuses it may come from.
TRANSITIONS: dict[str, frozenset[str]] = {
    "identified": frozenset({"applicant"}),
    "lifted_out": frozenset({"identified", "returned_to_poverty"}),
    "returned_to_poverty": frozenset({"lifted_out"}),
    "wrongly_identified_removed": frozenset({"identified", "returned_to_poverty", "lifted_out", "applicant"}),
    "natural_decrease": frozenset({"applicant", "identified", "lifted_out", "returned_to_poverty"}),
}
CLOSED = frozenset({"wrongly_identified_removed", "natural_decrease"})


def _conflict(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(code, message, 409, **details)


def _code(list_name: str, value: str | None, *, field_name: str, optional: bool = False) -> str | None:
    if value is None:
        if optional:
            return None
        raise DomainError("missing_field", f"{field_name} is required", field=field_name)
    try:
        return codes.validate(list_name, value)
    except codes.CodeError as exc:
        raise DomainError("invalid_code", f"{field_name}: {exc}", field=field_name) from exc


def money(value: Any, field_name: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise DomainError("invalid_amount", f"{field_name} is not a number", field=field_name) from exc
    if not amount.is_finite() or amount < 0:
        raise DomainError("invalid_amount", f"{field_name} must be a non-negative amount", field=field_name)
    if amount != amount.quantize(Decimal("0.01")):
        raise DomainError("invalid_amount", f"{field_name} has more than 2 decimals", field=field_name)
    return amount.quantize(Decimal("0.01"))


_PROFILE_LISTS = {"education": "education_level", "schooling_stage": "schooling_stage",
                  "labour_skill": "labour_skill", "employment": "employment"}


@dataclass
class Member:
    member_id: str
    relation: str
    sex: str
    birth_year: int
    id_hmac: str
    active: bool = True
    profile: dict[str, Any] = field(default_factory=dict)
    removed_reason: str | None = None
    erased: bool = False


def validate_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """Validate member facts against the code lists; return only the fields given."""
    out: dict[str, Any] = {}
    for key, value in profile.items():
        if value is None:
            continue
        if key == "health":
            try:
                out[key] = codes.validate_many("health_condition", value)
            except codes.CodeError as exc:
                raise DomainError("invalid_code", f"health: {exc}", field="health") from exc
        elif key == "insurance":
            try:
                out[key] = codes.validate_many("insurance_kind", value)
            except codes.CodeError as exc:
                raise DomainError("invalid_code", f"insurance: {exc}", field="insurance") from exc
        elif key in _PROFILE_LISTS:
            out[key] = _code(_PROFILE_LISTS[key], value, field_name=key)
        elif key == "employment_months":
            if not isinstance(value, int) or not 0 <= value <= 12:
                raise DomainError("invalid_value", "employment_months must be 0 to 12", field=key)
            out[key] = value
        else:
            raise DomainError("unknown_field", f"unknown member field {key!r}", field=key)
    return out


class Household(Aggregate):
    stream_type = ev.HOUSEHOLD

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.village_code: str | None = None
        self.status: str | None = None
        self.attribute: str | None = None
        self.head_member_id: str | None = None
        self.members: dict[str, Member] = {}
        self.incomes: dict[int, dict[str, Any]] = {}
        self.cadres: dict[str, str] = {}
        self.monitoring: str | None = None
        self.decisions: set[str] = set()
        self.coordinates: tuple[float, float] | None = None
        self.pending_changes: set[str] = set()  # change requests awaiting their review case

    # -- queries ----------------------------------------------------------------------

    @property
    def active_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.active]

    def member(self, member_id: str) -> Member:
        m = self.members.get(member_id)
        if m is None:
            raise DomainError("member_not_found", f"household {self.id} has no member {member_id}", 404)
        return m

    def _require_open(self) -> None:
        if not self.exists:
            raise DomainError("household_not_found", f"household {self.id} is not registered", 404)
        if self.status in CLOSED:
            raise _conflict("household_closed", f"household {self.id} is {self.status}: it accepts no changes",
                            current_status=self.status)

    def _record(self, model: type[ev.EventModel], **data: Any) -> None:
        event = model(household_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json", exclude_none=False), event.schema_version)

    # -- commands ---------------------------------------------------------------------

    def register(self, *, village_code: str, address: str | None, attribute: str, identification_standard: str,
                 registered_on: date | None, status: str = "applicant",
                 members: list[dict[str, Any]]) -> None:
        """Register with its members; the first member with relation 'head' is the head."""
        if self.exists:
            raise _conflict("already_registered", f"household {self.id} is already registered")
        if not _VILLAGE.match(village_code or ""):
            raise DomainError("invalid_village_code", "village_code must be 12 digits", field="village_code")
        attribute = _code("household_attribute", attribute, field_name="attribute")
        standard = _code("identification_standard", identification_standard, field_name="identification_standard")
        if status not in ("applicant", "identified"):
            raise DomainError("invalid_status", "a household is registered as applicant (or identified on import)",
                              field="status")
        if not members:
            raise DomainError("no_members", "a household has at least one member", field="members")
        heads = [m for m in members if m.get("relation") == "head"]
        if len(heads) != 1:
            raise DomainError("one_head", "exactly one member must have relation 'head'", field="members")
        hmacs = [m["id_hmac"] for m in members]
        if len(set(hmacs)) != len(hmacs):
            raise DomainError("duplicate_member", "the same person is listed twice", field="members")
        self._record(ev.HouseholdRegistered, village_code=village_code, member_count=len(members),
                     registered_on=registered_on, address=address, attribute=attribute,
                     identification_standard=standard, head_member_id=heads[0]["member_id"], status=status)
        for m in members:
            self.add_member(**m, reason="initial", joined_on=registered_on)

    def add_member(self, *, member_id: str, relation: str, sex: str, birth_date: date, id_hmac: str,
                   id_masked: str, name_masked: str, reason: str, joined_on: date | None,
                   ethnicity: str | None = None, profile: dict[str, Any] | None = None) -> None:
        self._require_open()
        if relation == "head":
            if self.head_member_id is not None and self.head_member_id != member_id:
                raise _conflict("head_exists", "the household already has a head; use change head")
        else:
            _code("relation_to_head", relation, field_name="relation")
        _code("sex", sex, field_name="sex")
        _code("member_join_reason", reason, field_name="reason")
        if birth_date > date.today():
            raise DomainError("invalid_birth_date", "birth_date is in the future", field="birth_date")
        if member_id in self.members:
            raise _conflict("member_exists", f"member {member_id} already belongs to the household")
        if any(m.active and m.id_hmac == id_hmac for m in self.members.values()):
            raise _conflict("duplicate_member", "this person is already a member of the household")
        self._record(ev.MemberAdded, member_id=member_id, relation=relation, sex=sex, birth_year=birth_date.year,
                     ethnicity=ethnicity, id_hmac=id_hmac, id_masked=id_masked, name_masked=name_masked,
                     reason=reason, joined_on=joined_on,
                     profile=ev.MemberProfile(**validate_profile(profile or {})))

    def update_member(self, member_id: str, changes: dict[str, Any]) -> None:
        self._require_open()
        m = self.member(member_id)
        if not m.active:
            raise _conflict("member_removed", f"member {member_id} was removed ({m.removed_reason})")
        valid = validate_profile(changes)
        real = {k: v for k, v in valid.items() if m.profile.get(k) != v}
        if not valid:
            raise DomainError("no_changes", "nothing to update")
        if real:
            self._record(ev.MemberUpdated, member_id=member_id, changes=ev.MemberProfile(**real))

    def remove_member(self, member_id: str, reason: str, removed_on: date, note: str | None) -> None:
        self._require_open()
        m = self.member(member_id)
        if not m.active:
            raise _conflict("member_removed", f"member {member_id} was already removed ({m.removed_reason})")
        _code("member_removal_reason", reason, field_name="reason")
        if removed_on > date.today():
            raise DomainError("invalid_date", "removed_on is in the future", field="removed_on")
        remaining = [x for x in self.active_members if x.member_id != member_id]
        if member_id == self.head_member_id and remaining:
            raise _conflict("head_removal", "change the head before removing the current head")
        self._record(ev.MemberRemoved, member_id=member_id, reason=reason, removed_on=removed_on, note=note)
        if not remaining:  # a vital event empties the household: natural decrease
            self._record(ev.HouseholdStatusChanged, from_status=self.status, to_status="natural_decrease",
                         effective_on=removed_on, basis="vital_event")

    def change_head(self, member_id: str, changed_on: date | None) -> None:
        self._require_open()
        m = self.member(member_id)
        if not m.active:
            raise _conflict("member_removed", f"member {member_id} was removed")
        if member_id == self.head_member_id:
            raise _conflict("already_head", f"member {member_id} is already the head")
        self._record(ev.HeadChanged, head_member_id=member_id, previous_head_member_id=self.head_member_id,
                     changed_on=changed_on)

    def assess_income(self, year: int, amounts: dict[str, Any]) -> Decimal:
        self._require_open()
        if not 2000 <= year <= date.today().year:
            raise DomainError("invalid_year", f"year must be 2000 to {date.today().year}", field="year")
        parts = {k: money(amounts.get(k, 0), k) for k in ("wage", "business", "property", "transfer",
                                                           "business_expenses")}
        residents = len(self.active_members)
        if residents == 0:
            raise _conflict("no_resident_members", "the household has no resident member to divide the income by")
        net = parts["wage"] + parts["business"] + parts["property"] + parts["transfer"] - parts["business_expenses"]
        per_capita = (net / residents).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        self._record(ev.IncomeAssessed, year=year, **{k: str(v) for k, v in parts.items()},
                     resident_members=residents, net_income=str(net), per_capita_net_income=str(per_capita))
        return per_capita

    def assess_conditions(self, assessed_on: date, conditions: dict[str, bool]) -> None:
        self._require_open()
        if not conditions:
            raise DomainError("no_conditions", "at least one condition is required", field="conditions")
        for item, secured in conditions.items():
            _code("living_condition_item", item, field_name="conditions")
            if not isinstance(secured, bool):
                raise DomainError("invalid_value", f"conditions.{item} must be true or false", field="conditions")
        self._record(ev.LivingConditionsAssessed, assessed_on=assessed_on, conditions=conditions)

    def record_causes(self, primary: str, others: list[str]) -> None:
        self._require_open()
        primary = _code("poverty_cause", primary, field_name="primary")
        cleaned: list[str] = []
        for c in others:
            c = _code("poverty_cause", c, field_name="others")
            if c != primary and c not in cleaned:
                cleaned.append(c)
        self._record(ev.PovertyCausesRecorded, primary=primary, others=cleaned)

    def assign_cadre(self, cadre_id: str, unit: str, assigned_on: date) -> None:
        self._require_open()
        if cadre_id in self.cadres:
            raise _conflict("cadre_assigned", f"cadre {cadre_id} is already assigned")
        if not unit.strip():
            raise DomainError("invalid_value", "unit is required", field="unit")
        self._record(ev.CadreAssigned, cadre_id=cadre_id, unit=unit.strip(), assigned_on=assigned_on)

    def release_cadre(self, cadre_id: str, released_on: date, reason: str | None) -> None:
        self._require_open()
        if cadre_id not in self.cadres:
            raise _conflict("cadre_not_assigned", f"cadre {cadre_id} is not assigned to the household")
        self._record(ev.CadreReleased, cadre_id=cadre_id, released_on=released_on, reason=reason)

    def record_plan(self, year: int, measures: list[dict[str, str]]) -> None:
        self._require_open()
        if not 2000 <= year <= date.today().year + 1:
            raise DomainError("invalid_year", f"year must be 2000 to {date.today().year + 1}", field="year")
        if not measures:
            raise DomainError("no_measures", "a plan has at least one measure", field="measures")
        cleaned = []
        for m in measures:
            kind = _code("assistance_measure_kind", m.get("kind"), field_name="measures.kind")
            text = (m.get("description") or "").strip()
            if not text:
                raise DomainError("invalid_value", "each measure needs a description", field="measures")
            cleaned.append(ev.AssistanceMeasure(kind=kind, description=text))
        self._record(ev.AssistancePlanRecorded, year=year, measures=cleaned)

    def set_coordinates(self, latitude: float, longitude: float) -> None:
        self._require_open()
        # Mainland China and neighbours: catch swapped or zeroed coordinates early.
        if not (3.0 <= latitude <= 54.0 and 73.0 <= longitude <= 136.0):
            raise DomainError("invalid_coordinates", "coordinates are outside China (latitude 3-54, longitude 73-136)",
                              field="latitude")
        self._record(ev.CoordinatesSet, latitude=latitude, longitude=longitude)

    def apply_decision(self, *, decision_event_id: str, case_id: str, status_effect: str,
                       effective_on: date, monitoring_object_type: str | None = None) -> bool:
        """Apply a review decision's effect; False when this decision was applied already."""
        if decision_event_id in self.decisions:
            return False
        self._require_open()
        if status_effect == "monitoring_designated":
            if self.monitoring is not None:
                raise _conflict("already_monitoring", "the household is already a monitoring object")
            object_type = _code("monitoring_object_type", monitoring_object_type, field_name="monitoring_object_type")
            self._record(ev.MonitoringDesignated, object_type=object_type, effective_on=effective_on,
                         case_id=case_id, decision_event_id=decision_event_id)
            return True
        if status_effect == "risk_eliminated":
            if self.monitoring is None:
                raise _conflict("not_monitoring", "the household is not a monitoring object")
            self._record(ev.MonitoringRiskEliminated, effective_on=effective_on, case_id=case_id,
                         decision_event_id=decision_event_id)
            return True
        allowed = TRANSITIONS.get(status_effect)
        if allowed is None:
            raise DomainError("invalid_status_effect", f"unknown status effect {status_effect!r}",
                              field="status_effect")
        if self.status not in allowed:
            raise _conflict("invalid_transition", f"a household that is {self.status} cannot become {status_effect}",
                            current_status=self.status, target=status_effect)
        self._record(ev.HouseholdStatusChanged, from_status=self.status, to_status=status_effect,
                     effective_on=effective_on, basis="decision", case_id=case_id,
                     decision_event_id=decision_event_id)
        return True

    def request_change(self, *, change_request_id: str, kind: str, target: str | None, fields: list[str],
                       reason: str, requested_by: str, requested_at: datetime) -> None:
        """Record a proposed change (validated by the caller against this household); it counts
        only once its data_change case approves it."""
        self._require_open()
        if change_request_id in self.pending_changes:
            raise _conflict("change_request_exists", f"change request {change_request_id} is already pending")
        self._record(ev.ChangeRequested, change_request_id=change_request_id, kind=kind, target=target,
                     fields=fields, reason=reason, requested_by=requested_by, requested_at=requested_at)

    def _pending_change(self, change_request_id: str) -> None:
        if change_request_id not in self.pending_changes:
            raise _conflict("change_request_not_pending", f"change request {change_request_id} is not pending")

    def change_applied(self, change_request_id: str, *, case_id: str, decision_event_id: str) -> None:
        """Mark a pending change request applied; the change's own events are recorded before."""
        self._pending_change(change_request_id)
        self._record(ev.ChangeRequestApplied, change_request_id=change_request_id, case_id=case_id,
                     decision_event_id=decision_event_id)

    def close_change(self, change_request_id: str, *, case_id: str, outcome: str, reason: str | None,
                     decision_event_id: str) -> None:
        """End a pending change request unapplied (allowed on a closed household too)."""
        self._pending_change(change_request_id)
        self._record(ev.ChangeRequestClosed, change_request_id=change_request_id, case_id=case_id,
                     outcome=outcome, reason=reason, decision_event_id=decision_event_id)

    def erase_personal_data(self, member_id: str, erased_on: date) -> None:
        if not self.exists:
            raise DomainError("household_not_found", f"household {self.id} is not registered", 404)
        m = self.member(member_id)
        if m.erased:
            raise _conflict("already_erased", f"member {member_id}'s personal data is already erased")
        self._record(ev.MemberPersonalDataErased, member_id=member_id, erased_on=erased_on)

    # -- evolution (replay) -----------------------------------------------------------

    def when_HouseholdRegistered(self, d: dict[str, Any]) -> None:
        self.village_code = d["village_code"]
        self.attribute = d.get("attribute")
        self.status = d.get("status") or "applicant"
        self.head_member_id = d.get("head_member_id")

    def when_MemberAdded(self, d: dict[str, Any]) -> None:
        self.members[d["member_id"]] = Member(
            d["member_id"], d["relation"], d["sex"], d["birth_year"], d["id_hmac"],
            profile={k: v for k, v in (d.get("profile") or {}).items() if v is not None})
        if d["relation"] == "head":
            self.head_member_id = d["member_id"]

    def when_MemberUpdated(self, d: dict[str, Any]) -> None:
        self.members[d["member_id"]].profile.update({k: v for k, v in d["changes"].items() if v is not None})

    def when_MemberRemoved(self, d: dict[str, Any]) -> None:
        m = self.members[d["member_id"]]
        m.active = False
        m.removed_reason = d["reason"]

    def when_HeadChanged(self, d: dict[str, Any]) -> None:
        self.head_member_id = d["head_member_id"]

    def when_IncomeAssessed(self, d: dict[str, Any]) -> None:
        self.incomes[d["year"]] = d

    def when_LivingConditionsAssessed(self, d: dict[str, Any]) -> None:
        pass

    def when_PovertyCausesRecorded(self, d: dict[str, Any]) -> None:
        pass

    def when_CadreAssigned(self, d: dict[str, Any]) -> None:
        self.cadres[d["cadre_id"]] = d["unit"]

    def when_CadreReleased(self, d: dict[str, Any]) -> None:
        self.cadres.pop(d["cadre_id"], None)

    def when_AssistancePlanRecorded(self, d: dict[str, Any]) -> None:
        pass

    def when_CoordinatesSet(self, d: dict[str, Any]) -> None:
        self.coordinates = (d["latitude"], d["longitude"])

    def when_HouseholdStatusChanged(self, d: dict[str, Any]) -> None:
        self.status = d["to_status"]
        if d.get("decision_event_id"):
            self.decisions.add(d["decision_event_id"])

    def when_MonitoringDesignated(self, d: dict[str, Any]) -> None:
        self.monitoring = d["object_type"]
        if d.get("decision_event_id"):
            self.decisions.add(d["decision_event_id"])

    def when_MonitoringRiskEliminated(self, d: dict[str, Any]) -> None:
        self.monitoring = None
        if d.get("decision_event_id"):
            self.decisions.add(d["decision_event_id"])

    def when_MemberPersonalDataErased(self, d: dict[str, Any]) -> None:
        self.members[d["member_id"]].erased = True

    def when_ChangeRequested(self, d: dict[str, Any]) -> None:
        self.pending_changes.add(d["change_request_id"])

    def when_ChangeRequestApplied(self, d: dict[str, Any]) -> None:
        self.pending_changes.discard(d["change_request_id"])

    def when_ChangeRequestClosed(self, d: dict[str, Any]) -> None:
        self.pending_changes.discard(d["change_request_id"])


class Village(Aggregate):
    """Dated village profile (stream id = village code)."""

    stream_type = ev.VILLAGE

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.last_effective_on: date | None = None

    def update_profile(self, *, effective_on: date, rural_population: int, registered_population: int,
                       poor_village: bool, **indicators: Any) -> None:
        if rural_population < 0 or registered_population < 0:
            raise DomainError("invalid_value", "populations cannot be negative")
        if registered_population > rural_population:
            raise DomainError("invalid_value", "registered population cannot exceed the rural population",
                              field="registered_population")
        if self.last_effective_on is not None and effective_on < self.last_effective_on:
            raise _conflict("stale_profile", f"a profile effective {self.last_effective_on} is already recorded")
        if indicators.get("collective_income") is not None:
            indicators["collective_income"] = str(money(indicators["collective_income"], "collective_income"))
        event = ev.VillageProfileUpdated(village_code=self.id, effective_on=effective_on,
                                         rural_population=rural_population,
                                         registered_population=registered_population,
                                         poor_village=poor_village, **indicators)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def when_VillageProfileUpdated(self, d: dict[str, Any]) -> None:
        self.last_effective_on = date.fromisoformat(d["effective_on"])
