"""Monitoring's read models, fed from other services' topics."""

from __future__ import annotations

from typing import Any, Sequence

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit.projection import Message
from eventkit.sqlrows import unnest_columns


class UnknownHousehold(Exception):
    """A member event for a household whose registration this read model has not seen."""


_PEOPLE_DELTA = {"MemberAdded": 1, "MemberRemoved": -1}

_ADD_TO_VILLAGES = (
    "INSERT INTO village_households (village_code, households, people)"
    " SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) ORDER BY 1"
    " ON CONFLICT (village_code) DO UPDATE SET households = village_households.households + EXCLUDED.households,"
    " people = village_households.people + EXCLUDED.people, updated_at = now()")


def _registered(data: dict[str, Any]) -> tuple[str, int]:
    """The village of a registration and the people it adds itself."""
    return data["village_code"], 0 if data.get("head_member_id") else int(data["member_count"])


def _unknown(message: Message) -> UnknownHousehold:
    return UnknownHousehold(f"{message.event_type} for household {message.stream_id}, "
                            "whose registration was not applied")


class VillageHouseholds:
    """Households and people (active members) per village.

    People follow the member events: MemberAdded +1, MemberRemoved -1. A
    registration that names its head (``head_member_id``) is followed by one
    MemberAdded per member, so it adds no people itself; an older registration
    without a head (the walking skeleton's) has no member events and counts its
    ``member_count``.

    ``apply_batch`` has the effect of ``apply`` on each message in turn: it looks the batch's
    households up at once, sums the changes per village in memory and adds them in one statement.
    (One difference in a state the events never leave: a village row missing while its households'
    rows exist is created by a member event in a batch, where ``apply`` leaves it missing.)
    """

    name = "village-households"
    topics = (HOUSEHOLD_TOPIC,)
    strict = False

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type == "HouseholdRegistered":
            village, people = _registered(message.data)
            await conn.execute(
                "INSERT INTO household_villages (household_id, village_code) VALUES ($1, $2)"
                " ON CONFLICT (household_id) DO NOTHING", message.stream_id, village)
            await conn.execute(_ADD_TO_VILLAGES, *unnest_columns([(village, 1, people)]))
        elif message.event_type in _PEOPLE_DELTA:
            village = await conn.fetchval(
                "SELECT village_code FROM household_villages WHERE household_id = $1", message.stream_id)
            if village is None:
                raise _unknown(message)
            await conn.execute(
                "UPDATE village_households SET people = people + $2, updated_at = now() WHERE village_code = $1",
                village, _PEOPLE_DELTA[message.event_type])

    async def apply_batch(self, conn: Any, messages: Sequence[Message]) -> None:
        relevant = [m for m in messages if m.event_type == "HouseholdRegistered" or m.event_type in _PEOPLE_DELTA]
        if not relevant:
            return
        rows = await conn.fetch("SELECT household_id, village_code FROM household_villages"
                                " WHERE household_id = ANY($1::text[])", list({m.stream_id for m in relevant}))
        villages = {r["household_id"]: r["village_code"] for r in rows}
        new: dict[str, str] = {}
        totals: dict[str, list[int]] = {}  # village -> [households, people] to add
        for m in relevant:
            if m.event_type == "HouseholdRegistered":
                village, people = _registered(m.data)
                if m.stream_id not in villages:
                    villages[m.stream_id] = new[m.stream_id] = village
                households = 1
            else:
                village = villages.get(m.stream_id)
                if village is None:
                    raise _unknown(m)
                households, people = 0, _PEOPLE_DELTA[m.event_type]
            total = totals.setdefault(village, [0, 0])
            total[0] += households
            total[1] += people
        if new:
            await conn.execute("INSERT INTO household_villages (household_id, village_code)"
                               " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (household_id) DO NOTHING",
                               *unnest_columns(list(new.items())))
        await conn.execute(_ADD_TO_VILLAGES, *unnest_columns([(v, *t) for v, t in totals.items()]))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE village_households, household_villages")
