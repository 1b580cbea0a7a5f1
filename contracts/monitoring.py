"""Events published by the monitoring service that other services act on.

``ReturnRiskAlertRaised``: a return-to-poverty risk rule fired for a household.
When ``requires_verification`` is set, the workflow service opens a
``return_risk`` verification case for it (one open case per household and risk).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.base import EventModel, topic_name
from contracts.registry import UUID_PATTERN, VILLAGE_CODE_PATTERN

ALERT = "alert"
ALERT_TOPIC = topic_name("monitoring", ALERT)


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


ALERT_EVENTS: tuple[type[EventModel], ...] = (ReturnRiskAlertRaised,)
