"""Household aggregate (walking skeleton: registration). Pure domain code, no I/O."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from contracts.registry import HOUSEHOLD, HouseholdRegistered
from eventkit.aggregate import Aggregate

_VILLAGE = re.compile(r"^[0-9]{12}$")


class DomainError(Exception):
    """A command that the rules refuse (HTTP 409/422 with `code`)."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Household(Aggregate):
    stream_type = HOUSEHOLD

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.village_code: str | None = None
        self.member_count = 0

    def register(self, village_code: str, member_count: int, registered_on: date | None) -> None:
        if self.exists:
            raise DomainError("already_registered", f"household {self.id} is already registered", 409)
        if not _VILLAGE.match(village_code):
            raise DomainError("invalid_village_code", "village_code must be 12 digits")
        if member_count < 1:
            raise DomainError("invalid_member_count", "a household has at least one member")
        event = HouseholdRegistered(
            household_id=self.id, village_code=village_code, member_count=member_count,
            registered_on=registered_on)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def when_HouseholdRegistered(self, data: dict[str, Any]) -> None:
        self.village_code = data["village_code"]
        self.member_count = data["member_count"]
