"""The funds service's projection of the registry's households (topic ``tpa.registry.household.v1``).

Eligibility needs a household's dated statuses, its members with their joining and
removal dates, and their schooling stages: ``fd_household_events`` keeps the
registry events that carry these, per household in stream order, and
``domain.fold_household_facts`` folds them. When a fact arrives that can make an
earlier payment wrong (a death or a removal recorded after the payment, a status
change with an earlier effective date), the household's live payments are checked
again and any new anomaly is recorded in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit.events import Metadata
from eventkit.projection import Message

from .commands import Funds

FACT_EVENTS = frozenset({
    "HouseholdRegistered", "MemberAdded", "MemberUpdated", "MemberRemoved", "HouseholdStatusChanged",
    "MonitoringDesignated", "MonitoringRiskEliminated",
})
RECHECK_EVENTS = frozenset({"MemberRemoved", "HouseholdStatusChanged"})


class RegistryHouseholds:
    name = "household-facts"
    topics = (HOUSEHOLD_TOPIC,)
    strict = True

    def __init__(self, funds: Funds | None = None) -> None:
        self.funds = funds  # bound at start by the composition root

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type not in FACT_EVENTS:
            return
        await conn.execute(
            "INSERT INTO fd_household_events (household_id, version, event_type, data) VALUES ($1, $2, $3, $4::jsonb)"
            " ON CONFLICT (household_id, version) DO NOTHING",
            message.stream_id, message.version, message.event_type, json.dumps(message.data, ensure_ascii=False))
        if message.event_type in RECHECK_EVENTS:
            assert self.funds is not None, "RegistryHouseholds is not bound to the funds service"
            await self.funds.recheck_household(conn, message.stream_id, Metadata(
                actor="system:anomaly-rules", causation_id=message.event_id,
                correlation_id=message.metadata.get("correlation_id")))

    async def reset(self, conn: Any) -> None:
        # Anomalies already recorded stay; a replay finds them by their derived ids.
        await conn.execute("TRUNCATE fd_household_events")
