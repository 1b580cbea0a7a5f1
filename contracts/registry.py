"""Events published by the registry service (households)."""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import Field

from contracts.base import EventModel, topic_name

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# ASCII digits only: "\d" would also admit non-ASCII digits in Python/pydantic.
VILLAGE_CODE_PATTERN = r"^[0-9]{12}$"

HOUSEHOLD = "household"
HOUSEHOLD_TOPIC = topic_name("registry", HOUSEHOLD)


class HouseholdRegistered(EventModel):
    """A household was entered in the registry. Carries no personal data."""

    event_type: ClassVar[str] = "HouseholdRegistered"
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = HOUSEHOLD_TOPIC
    stream_type: ClassVar[str] = HOUSEHOLD

    household_id: str = Field(
        pattern=UUID_PATTERN,
        json_schema_extra={"format": "uuid"},
        description="Household id (lower-case UUID); equals the stream id.",
    )
    village_code: str = Field(
        pattern=VILLAGE_CODE_PATTERN,
        description="12-digit village-level administrative division code (GB/T 2260 style).",
    )
    member_count: int = Field(ge=1, description="Number of household members.")
    registered_on: date | None = Field(default=None, description="Date of registration, if known.")
