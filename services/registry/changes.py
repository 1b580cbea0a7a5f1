"""The household commands a change request may carry, shared with the direct commands.

A cadre's change to household data counts only once a ``data_change`` review case
approves it. The registry keeps the proposed values in ``change_requests`` (they
may be sensitive) and records ``ChangeRequested``, which names only the fields.
When the case concludes, the stored change runs through the same function as the
direct command (``run``), so both are validated and recorded identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from .domain import Household
from .schemas import (AssistancePlan, Coordinates, IncomeAssessment, LivingConditions, MemberFacts, PovertyCauses,
                      RemoveMember, facts)


def update_member(household: Household, member_id: str, body: MemberFacts) -> None:
    household.update_member(member_id, facts(body))


def assess_income(household: Household, year: int, body: IncomeAssessment) -> None:
    household.assess_income(year, body.model_dump())


def assess_conditions(household: Household, _: None, body: LivingConditions) -> None:
    household.assess_conditions(body.assessed_on, body.conditions)


def record_causes(household: Household, _: None, body: PovertyCauses) -> None:
    household.record_causes(body.primary, body.others)


def set_coordinates(household: Household, _: None, body: Coordinates) -> None:
    household.set_coordinates(body.latitude, body.longitude)


def remove_member(household: Household, member_id: str, body: RemoveMember) -> None:
    household.remove_member(member_id, body.reason, body.removed_on, body.note)


def record_plan(household: Household, year: int, body: AssistancePlan) -> None:
    household.record_plan(year, [m.model_dump() for m in body.measures])


@dataclass(frozen=True)
class Kind:
    body: type[BaseModel]
    target: type | None  # str (member id), int (year) or None (no target)
    command: Callable[[Household, Any, Any], None]


KINDS: dict[str, Kind] = {
    "member_update": Kind(MemberFacts, str, update_member),
    "income": Kind(IncomeAssessment, int, assess_income),
    "conditions": Kind(LivingConditions, None, assess_conditions),
    "causes": Kind(PovertyCauses, None, record_causes),
    "coordinates": Kind(Coordinates, None, set_coordinates),
    "plan": Kind(AssistancePlan, int, record_plan),
    # a death reported by civil registration (or a move) removes a member once reviewed
    "member_removal": Kind(RemoveMember, str, remove_member),
}


def stored(body: BaseModel) -> dict[str, Any]:
    """The changes as stored in ``change_requests.changes`` (JSON; unset optional fields left out)."""
    return body.model_dump(mode="json", exclude_none=True)


def fields_of(kind: str, changes: dict[str, Any]) -> list[str]:
    """Names of the fields a change sets, in the command body's order."""
    return [name for name in KINDS[kind].body.model_fields if name in changes]


def run(household: Household, kind: str, target: str | None, changes: dict[str, Any]) -> None:
    """Run a stored change as its household command (raises DomainError, or pydantic's
    ValidationError if the stored values no longer validate, e.g. a code was withdrawn)."""
    spec = KINDS[kind]
    body = spec.body.model_validate(changes)
    spec.command(household, spec.target(target) if spec.target is not None else None, body)
