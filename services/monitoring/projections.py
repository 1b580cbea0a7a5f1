"""Monitoring's read models, fed from other services' topics."""

from __future__ import annotations

from typing import Any

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit.projection import Message


class UnknownHousehold(Exception):
    """A member event for a household whose registration this read model has not seen."""


class VillageHouseholds:
    """Households and people (active members) per village.

    People follow the member events: MemberAdded +1, MemberRemoved -1. A
    registration that names its head (``head_member_id``) is followed by one
    MemberAdded per member, so it adds no people itself; an older registration
    without a head (the walking skeleton's) has no member events and counts its
    ``member_count``.
    """

    name = "village-households"
    topics = (HOUSEHOLD_TOPIC,)
    strict = False

    async def apply(self, conn: Any, message: Message) -> None:
        data = message.data
        if message.event_type == "HouseholdRegistered":
            village = data["village_code"]
            people = 0 if data.get("head_member_id") else int(data["member_count"])
            await conn.execute(
                "INSERT INTO household_villages (household_id, village_code) VALUES ($1, $2)"
                " ON CONFLICT (household_id) DO NOTHING", message.stream_id, village)
            await conn.execute(
                "INSERT INTO village_households (village_code, households, people) VALUES ($1, 1, $2)"
                " ON CONFLICT (village_code) DO UPDATE SET households = village_households.households + 1,"
                " people = village_households.people + EXCLUDED.people, updated_at = now()",
                village, people)
        elif message.event_type in ("MemberAdded", "MemberRemoved"):
            delta = 1 if message.event_type == "MemberAdded" else -1
            village = await conn.fetchval(
                "SELECT village_code FROM household_villages WHERE household_id = $1", message.stream_id)
            if village is None:
                raise UnknownHousehold(f"{message.event_type} for household {message.stream_id}, "
                                       "whose registration was not applied")
            await conn.execute(
                "UPDATE village_households SET people = people + $2, updated_at = now() WHERE village_code = $1",
                village, delta)

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE village_households, household_villages")
