"""Applies the workflow service's decisions to the register.

A consumer of ``tpa.workflow.case.v1`` run by the projection runner: each
``CaseConcluded`` with a status effect becomes a status (or monitoring) event on
the household, appended in the same transaction as the runner's tracking, with
the decision's event id as causation id. Redelivered or replayed decisions are
no-ops (``applied_decisions``); a decision the household's state refuses goes to
the dead-letter topic with the reason.

A concluded ``data_change`` case (``subject`` = the change request id) applies
or closes its pending change request the same way (``Registry.conclude_change``):
a request no longer pending is skipped, and an approved change the household no
longer accepts is closed as not applicable rather than dead-lettered.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from contracts.workflow import CASE_TOPIC, CaseConcluded
from eventkit.events import Metadata
from eventkit.projection import Message

from .commands import Registry

log = logging.getLogger("tpa.registry.decisions")

DATA_CHANGE = "data_change"


class WorkflowDecisions:
    name = "workflow-decisions"
    topics = (CASE_TOPIC,)
    strict = False

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry  # bound at start by the composition root

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type != CaseConcluded.event_type:
            return
        decision = CaseConcluded.model_validate(message.data)
        assert self.registry is not None, "WorkflowDecisions is not bound to a registry"
        meta = Metadata(actor=f"workflow:{decision.case_type}", causation_id=message.event_id,
                        correlation_id=message.metadata.get("correlation_id"))
        if decision.case_type == DATA_CHANGE:
            if not decision.subject:
                log.warning("data_change case %s concluded without a change request id; ignored", decision.case_id)
                return
            await self.registry.conclude_change(
                conn, household_id=decision.household_id, change_request_id=decision.subject,
                case_id=decision.case_id, outcome=decision.outcome, decision_event_id=message.event_id, meta=meta)
            return
        if decision.outcome != "approved" or not decision.status_effect:
            return
        await self.registry.apply_decision(
            conn, household_id=decision.household_id, decision_event_id=message.event_id,
            case_id=decision.case_id, status_effect=decision.status_effect,
            effective_on=decision.effective_on or date.today(),
            monitoring_object_type=decision.monitoring_object_type, meta=meta)

    async def reset(self, conn: Any) -> None:
        """Nothing to clear: decisions already applied stay applied (and are skipped on replay)."""
