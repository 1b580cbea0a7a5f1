"""The workflow event other services act on: ``CaseConcluded``.

The other events of the case stream (opening, decisions, notices, objections,
comparisons, escalation, overdue steps) are in ``contracts.workflow_cases``.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import ClassVar

from pydantic import Field

from contracts.base import EventModel, topic_name

CASE = "case"
CASE_TOPIC = topic_name("workflow", CASE)
_CASE_NAMESPACE = uuid.UUID("0f5f3c1e-6d0b-4c47-9b8e-2a7c1f4e5d60")


def derived_case_id(origin: str) -> str:
    """The id of a case the workflow opens for a trigger: ``change:<change request id>`` or
    ``alert:<alert id>``. Reprocessing the trigger finds the same case, and other services can
    tell which case was opened for their request (uuid5 in a fixed namespace)."""
    return str(uuid.uuid5(_CASE_NAMESPACE, origin))


class CaseConcluded(EventModel):
    """A review case reached its final decision.

    ``status_effect`` is what the decision does to the household in the register
    (e.g. ``identified`` for an approved identification case, ``lifted_out`` for an
    approved exit); it is absent when the decision changes no status (rejected
    cases, data change requests).
    """

    event_type: ClassVar[str] = "CaseConcluded"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = CASE_TOPIC
    stream_type: ClassVar[str] = CASE

    case_id: str = Field(min_length=1)
    case_type: str = Field(description="identification, exit, return_risk, data_change, assistance_need, ...")
    household_id: str = Field(description="Household the case is about.")
    outcome: str = Field(description="approved or rejected.")
    status_effect: str | None = Field(
        default=None,
        description="Register effect: identified, lifted_out, returned_to_poverty, wrongly_identified_removed, "
        "monitoring_designated, risk_eliminated.",
    )
    monitoring_object_type: str | None = Field(default=None, description="For monitoring_designated.")
    effective_on: date
    subject: str | None = Field(default=None, description=(
        "What the case was about within its type, as opened: the change request id of a data_change case, "
        "the risk code of a return_risk case, the need kind of an assistance_need case."))
