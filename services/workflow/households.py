"""Process managers of the workflow service, fed from other services' topics.

``RegistryHouseholds`` (topic ``tpa.registry.household.v1``) keeps the local
projection of households and members the cases need (village, register status,
active members and their masked names) and opens a ``data_change`` case for
every ``ChangeRequested``. ``MonitoringAlerts`` (topic ``tpa.monitoring.alert.v1``)
opens a ``return_risk`` verification case for an alert raised with
``requires_verification`` or for an ``AlertVerificationRequested``, at most one open
case per household and risk.

Both run inside the projection runner's transaction, so a case they open
commits with the runner's tracking: redelivery is a no-op. Case ids are derived
from the trigger (``derived_case_id``), so a replay after a rebuild finds the
case it opened the first time instead of opening another. An alert for a
household this service has not seen yet waits in ``wf_pending_alerts`` until the
household's registration arrives (the two topics are not ordered together).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from contracts.monitoring import ALERT_TOPIC, AlertVerificationRequested, ReturnRiskAlertRaised
from contracts.registry import HOUSEHOLD_TOPIC, CHANGE_KINDS, ChangeRequested
from eventkit.errors import DomainError
from eventkit.events import Metadata
from eventkit.projection import Message

from .commands import Workflow, derived_case_id

log = logging.getLogger("tpa.workflow.households")

# Monitoring object type of a household that needs verification, by register status.
_OBJECT_TYPE_BY_STATUS = {"lifted_out": "unstable_lifted_out", "applicant": "marginal"}


def _meta(message: Message, actor: str) -> Metadata:
    return Metadata(actor=actor, causation_id=message.event_id,
                    correlation_id=message.metadata.get("correlation_id"))


class _Bound:
    def __init__(self, workflow: Workflow | None = None) -> None:
        self.workflow = workflow  # bound at start by the composition root

    @property
    def wf(self) -> Workflow:
        assert self.workflow is not None, f"{type(self).__name__} is not bound to a workflow"
        return self.workflow


async def open_for_alert(wf: Workflow, conn: Any, message: Message,
                         alert: ReturnRiskAlertRaised | AlertVerificationRequested) -> str | None:
    """Open the verification case an alert asks for; returns its id, or None when none is opened."""
    case_id = derived_case_id(f"alert:{alert.alert_id}")
    if await wf.case_exists(conn, case_id):
        return case_id
    facts = await wf.household(conn, alert.household_id)
    object_type = alert.object_type or _OBJECT_TYPE_BY_STATUS.get(facts.status if facts else "", "sudden_hardship")
    if isinstance(alert, ReturnRiskAlertRaised):
        reason = f"alert {alert.alert_id}: rule {alert.rule_id}" + (f" ({alert.detail})" if alert.detail else "")
    else:
        reason = f"alert {alert.alert_id}: verification requested by {alert.requested_by}"
    try:
        await wf.open_case(conn, case_id=case_id, case_type="return_risk", household_id=alert.household_id,
                           opened_by="system:monitoring", reason=reason, subject=alert.risk,
                           monitoring_object_type=object_type, meta=_meta(message, "system:monitoring"))
    except DomainError as exc:
        if exc.code in ("case_already_open", "household_status"):
            # One open verification per household and risk; closed households need none.
            log.info("alert %s opens no case: %s", alert.alert_id, exc)
            return None
        raise
    return case_id


class RegistryHouseholds(_Bound):
    name = "registry-households"
    topics = (HOUSEHOLD_TOPIC,)
    strict = True

    async def apply(self, conn: Any, message: Message) -> None:
        d, hid, kind = message.data, message.stream_id, message.event_type
        if kind == "HouseholdRegistered":
            await conn.execute(
                "INSERT INTO wf_households (household_id, village_code, status, head_member_id)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (household_id) DO NOTHING",
                hid, d["village_code"], d.get("status") or "applicant", d.get("head_member_id"))
            await self._release_alerts(conn, hid)
        elif kind == "MemberAdded":
            await conn.execute(
                "INSERT INTO wf_members (member_id, household_id, relation, name_masked) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (member_id) DO UPDATE SET household_id = $2, relation = $3, name_masked = $4,"
                " active = true", d["member_id"], hid, d.get("relation"), d.get("name_masked"))
        elif kind == "MemberRemoved":
            await conn.execute("UPDATE wf_members SET active = false WHERE member_id = $1", d["member_id"])
        elif kind == "MemberPersonalDataErased":
            await conn.execute("UPDATE wf_members SET name_masked = NULL WHERE member_id = $1", d["member_id"])
        elif kind == "HeadChanged":
            await self._update(conn, hid, "head_member_id = $2", d["head_member_id"])
        elif kind == "HouseholdStatusChanged":
            await self._update(conn, hid, "status = $2", d["to_status"])
        elif kind == "MonitoringDesignated":
            await self._update(conn, hid, "monitoring = $2", d["object_type"])
        elif kind == "MonitoringRiskEliminated":
            await self._update(conn, hid, "monitoring = $2", None)
        elif kind == ChangeRequested.event_type:
            # Only what opening the case needs: a kind added to the contract later (the enum grows)
            # is still a data change to review, not a reason to stop the stream.
            await self._open_data_change(conn, message, ChangeRequested.model_validate(
                {**d, "kind": d["kind"] if d.get("kind") in CHANGE_KINDS else CHANGE_KINDS[0]}))

    async def _update(self, conn: Any, household_id: str, assignment: str, value: Any) -> None:
        status = await conn.execute(f"UPDATE wf_households SET {assignment}, updated_at = now()"
                                    " WHERE household_id = $1", household_id, value)
        if status.endswith(" 0"):
            raise LookupError(f"household {household_id} is not registered here (its registration was not applied)")

    async def _open_data_change(self, conn: Any, message: Message, request: ChangeRequested) -> None:
        case_id = derived_case_id(f"change:{request.change_request_id}")
        if await self.wf.case_exists(conn, case_id):
            return
        await self.wf.open_case(
            conn, case_id=case_id, case_type="data_change", household_id=request.household_id,
            opened_by=request.requested_by, reason=request.reason, subject=request.change_request_id,
            meta=_meta(message, request.requested_by))

    async def _release_alerts(self, conn: Any, household_id: str) -> None:
        rows = await conn.fetch("DELETE FROM wf_pending_alerts WHERE household_id = $1 RETURNING envelope",
                                household_id)
        for row in rows:
            env = row["envelope"]
            message = Message.from_envelope(json.loads(env) if isinstance(env, str) else env)
            await open_for_alert(self.wf, conn, message, ReturnRiskAlertRaised.model_validate(message.data))

    async def reset(self, conn: Any) -> None:
        # Cases opened by change requests stay: replaying finds them by their derived ids.
        await conn.execute("TRUNCATE wf_households, wf_members")


class MonitoringAlerts(_Bound):
    name = "monitoring-alerts"
    topics = (ALERT_TOPIC,)
    strict = True

    async def apply(self, conn: Any, message: Message) -> None:
        alert: ReturnRiskAlertRaised | AlertVerificationRequested
        if message.event_type == ReturnRiskAlertRaised.event_type:
            alert = ReturnRiskAlertRaised.model_validate(message.data)
            if not alert.requires_verification:
                return
        elif message.event_type == AlertVerificationRequested.event_type:
            alert = AlertVerificationRequested.model_validate(message.data)
        else:
            return
        if await self.wf.household(conn, alert.household_id) is None:
            await conn.execute(
                "INSERT INTO wf_pending_alerts (alert_id, household_id, envelope) VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (alert_id) DO NOTHING",
                alert.alert_id, alert.household_id, json.dumps(message.to_envelope()))
            return
        await open_for_alert(self.wf, conn, message, alert)

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE wf_pending_alerts")
