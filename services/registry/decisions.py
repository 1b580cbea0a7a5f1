"""Applies the workflow service's decisions to the register.

A consumer of ``tpa.workflow.case.v1`` run by the projection runner: each
``CaseConcluded`` with a status effect becomes a status (or monitoring) event on
the household, appended in the same transaction as the runner's tracking, with
the decision's event id as causation id. Redelivered or replayed decisions are
no-ops (``applied_decisions``); a decision the household's state refuses goes to
the dead-letter topic with the reason.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from contracts.workflow import CASE_TOPIC, CaseConcluded
from eventkit.events import Metadata
from eventkit.projection import Message

from .commands import Registry


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
        if decision.outcome != "approved" or not decision.status_effect:
            return
        assert self.registry is not None, "WorkflowDecisions is not bound to a registry"
        await self.registry.apply_decision(
            conn, household_id=decision.household_id, decision_event_id=message.event_id,
            case_id=decision.case_id, status_effect=decision.status_effect,
            effective_on=decision.effective_on or date.today(),
            monitoring_object_type=decision.monitoring_object_type,
            meta=Metadata(actor=f"workflow:{decision.case_type}", causation_id=message.event_id,
                          correlation_id=message.metadata.get("correlation_id")))

    async def reset(self, conn: Any) -> None:
        """Nothing to clear: decisions already applied stay applied (and are skipped on replay)."""
