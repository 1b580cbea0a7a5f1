"""Monitoring's read models, fed from other services' topics."""

from __future__ import annotations

from typing import Any

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit.projection import Message


class VillageHouseholds:
    """Households and people per village (the walking skeleton's read model)."""

    name = "village-households"
    topics = (HOUSEHOLD_TOPIC,)
    strict = False

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type == "HouseholdRegistered":
            data = message.data
            await conn.execute(
                "INSERT INTO village_households (village_code, households, people) VALUES ($1, 1, $2)"
                " ON CONFLICT (village_code) DO UPDATE SET households = village_households.households + 1,"
                " people = village_households.people + EXCLUDED.people, updated_at = now()",
                data["village_code"], int(data["member_count"]))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE village_households")
