"""Anomaly rules over payments: pure functions from facts to findings, and the anomaly stream.

Each rule returns a list of ``Anomaly`` (empty when nothing is wrong); each
finding names its evidence. Run them after a payment is recorded (``DisbursementPaid``)
and when the facts they read change (a death recorded late, a household removed
with an earlier effective date). Pass only live payments: paid or reconciled, not
reversed.

- ``paid_to_deceased`` (high): a member died before the payment date;
- ``paid_to_departed_member`` (medium): a member left the household (not by death) before the payment date;
- ``paid_to_removed_household`` (high): the household was removed (wrongly identified, natural decrease)
  on the payment date;
- ``duplicate_period`` (high): two payments to one beneficiary in one policy group cover overlapping
  periods ("2025" and "2025-03", tier 1 and tier 2 for one month), or a one-off entitlement was paid twice;
- ``amount_above_standard`` (high): the amount is above the catalogue's standard for the period (a policy
  with no standard in force counts as standard 0);
- ``project_overspend`` (high): a project's payments add up to more than its approved budget;
- ``shared_account`` (medium): one account (by its keyed hash) received payments for more than
  ``threshold`` (default 3) distinct households.

An anomaly's id is derived from its rule, subject and key (``uuid5``): record it
with ``AnomalyRecord.detect`` on a new stream, and the same finding is recorded once.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from contracts import funds as ev
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

from .domain import CLOSED_STATUSES, Disbursement, HouseholdFacts, _aware, fmt
from .policies import Catalogue, default_catalogue, parse_period

ANOMALY_NAMESPACE = uuid.UUID("6f1c2a9e-3b7d-5e40-9a1f-0c2d4e6f8a10")
DEFAULT_SHARED_ACCOUNT_THRESHOLD = 3


@dataclass(frozen=True)
class PaymentFacts:
    """One live payment, as the anomaly rules read it (from the disbursement's events)."""

    disbursement_id: str
    household_id: str
    village_code: str
    basis: str
    period: str
    amount: Decimal
    paid_on: date
    member_id: str | None = None
    policy_code: str | None = None
    policy_group: str | None = None
    policy_unit: str | None = None
    project_id: str | None = None
    cost_basis: Decimal | None = None
    account_hash: str | None = None

    @classmethod
    def of(cls, d: Disbursement) -> PaymentFacts:
        if d.status not in ("paid", "reconciled") or d.paid_on is None:
            raise ValueError(f"disbursement {d.id} is {d.status}, not paid")
        assert d.household_id and d.village_code and d.basis and d.period
        return cls(d.id, d.household_id, d.village_code, d.basis, d.period, d.amount, d.paid_on, d.member_id,
                   d.policy_code, d.policy_group, d.policy_unit, d.project_id, d.cost_basis, d.account_hash)

    def subject(self) -> dict[str, Any]:
        return {"disbursement_id": self.disbursement_id, "paid_on": self.paid_on.isoformat(),
                "amount": fmt(self.amount), "period": self.period, "policy_code": self.policy_code,
                "project_id": self.project_id}


@dataclass(frozen=True)
class Anomaly:
    rule: str
    severity: str
    subject_type: str  # disbursement | project | account
    subject_id: str
    evidence: Mapping[str, Any]
    household_id: str | None = None
    village_code: str | None = None
    key: str = ""      # what else tells this finding apart from others of the same rule and subject

    @property
    def anomaly_id(self) -> str:
        return str(uuid.uuid5(ANOMALY_NAMESPACE, f"{self.rule}|{self.subject_type}|{self.subject_id}|{self.key}"))

    def event_data(self, detected_at: datetime) -> dict[str, Any]:
        """The ``AnomalyDetected`` payload (validated)."""
        event = ev.AnomalyDetected(
            anomaly_id=self.anomaly_id, rule=self.rule, severity=self.severity, subject_type=self.subject_type,
            subject_id=self.subject_id, household_id=self.household_id, village_code=self.village_code,
            evidence=dict(self.evidence), detected_at=_aware(detected_at))
        return event.model_dump(mode="json")


def _on_payment(p: PaymentFacts, rule: str, severity: str, evidence: dict[str, Any], key: str = "") -> Anomaly:
    return Anomaly(rule, severity, "disbursement", p.disbursement_id, {**p.subject(), **evidence},
                   p.household_id, p.village_code, key)


def member_anomalies(p: PaymentFacts, facts: HouseholdFacts) -> list[Anomaly]:
    """Paid for a member who had died, or left the household, before the payment date."""
    if p.member_id is None:
        return []
    m = facts.members.get(p.member_id)
    if m is None or m.removed_on is None or not m.removed_on < p.paid_on:
        return []
    if m.deceased:
        return [_on_payment(p, "paid_to_deceased", "high", {"member_id": m.member_id,
                                                              "died_on": m.removed_on.isoformat()})]
    return [_on_payment(p, "paid_to_departed_member", "medium", {
        "member_id": m.member_id, "removed_on": m.removed_on.isoformat(), "removal_reason": m.removal_reason})]


def removed_household(p: PaymentFacts, facts: HouseholdFacts) -> list[Anomaly]:
    """Paid to a household that was removed from the register on the payment date."""
    status = facts.status_on(p.paid_on)
    if status not in CLOSED_STATUSES:
        return []
    since = facts.status_since(p.paid_on)
    return [_on_payment(p, "paid_to_removed_household", "high", {
        "household_status": status, "status_since": since.isoformat() if since else None})]


def above_standard(p: PaymentFacts, catalogue: Catalogue | None = None) -> list[Anomaly]:
    """The amount is above the catalogue's standard for the payment's period (policy payments)."""
    if p.basis != "policy" or p.policy_code is None:
        return []
    catalogue = catalogue or default_catalogue()
    if p.policy_code not in catalogue:
        return []
    policy = catalogue[p.policy_code]
    try:
        period = parse_period(p.period)
        standard = policy.standard_for(period, p.cost_basis)
    except DomainError as exc:
        if exc.code != "policy_not_in_force":
            return []  # no computable standard (malformed period, reimbursement without its cost)
        return [_on_payment(p, "amount_above_standard", "high", {
            "standard_amount": "0.00", "policy_version": None, "reference_date": exc.details["reference_date"],
            "excess": fmt(p.amount)})]
    if p.amount <= standard.amount:
        return []
    return [_on_payment(p, "amount_above_standard", "high", {
        "standard_amount": fmt(standard.amount), "policy_version": standard.version,
        "reference_date": standard.reference_date.isoformat(), "excess": fmt(p.amount - standard.amount)})]


def payment_anomalies(p: PaymentFacts, facts: HouseholdFacts, catalogue: Catalogue | None = None) -> list[Anomaly]:
    """The rules that read one payment and its household: deceased or departed member, removed
    household, amount above standard."""
    if facts.household_id != p.household_id:
        raise ValueError(f"facts of household {facts.household_id} passed for payment to {p.household_id}")
    return member_anomalies(p, facts) + removed_household(p, facts) + above_standard(p, catalogue)


def duplicate_periods(payments: Iterable[PaymentFacts]) -> list[Anomaly]:
    """Two live payments to one beneficiary (member, or household for household policies) in one policy group
    whose periods overlap, or two payments of a one-off entitlement. The later payment is the subject."""
    groups: dict[tuple[str, str], list[PaymentFacts]] = defaultdict(list)
    for p in payments:
        if p.basis == "policy" and p.policy_group:
            groups[(p.member_id or p.household_id, p.policy_group)].append(p)
    found: list[Anomaly] = []
    for (beneficiary, group), items in groups.items():
        items.sort(key=lambda p: (p.paid_on, p.disbursement_id))
        for i, later in enumerate(items):
            for earlier in items[:i]:
                once = "once" in (later.policy_unit, earlier.policy_unit)
                if not once and not parse_period(later.period).overlaps(parse_period(earlier.period)):
                    continue
                found.append(_on_payment(later, "duplicate_period", "high", {
                    "beneficiary_id": beneficiary, "policy_group": group,
                    "earlier_disbursement_id": earlier.disbursement_id, "earlier_period": earlier.period,
                    "earlier_policy_code": earlier.policy_code, "earlier_paid_on": earlier.paid_on.isoformat(),
                    "earlier_amount": fmt(earlier.amount), "once": once}, key=earlier.disbursement_id))
    return found


def project_overspend(project_id: str, approved_budget: Decimal, payments: Iterable[PaymentFacts]) -> list[Anomaly]:
    """The live payments under a project add up to more than its approved budget."""
    mine = sorted((p for p in payments if p.project_id == project_id), key=lambda p: p.disbursement_id)
    paid = sum((p.amount for p in mine), Decimal(0))
    if paid <= approved_budget:
        return []
    return [Anomaly("project_overspend", "high", "project", project_id, {
        "project_id": project_id, "approved_budget": fmt(approved_budget), "paid_total": fmt(paid),
        "excess": fmt(paid - approved_budget), "payment_count": len(mine),
        "disbursement_ids": [p.disbursement_id for p in mine]}, key=fmt(paid))]


def shared_accounts(payments: Iterable[PaymentFacts],
                    threshold: int = DEFAULT_SHARED_ACCOUNT_THRESHOLD) -> list[Anomaly]:
    """One account (by its keyed hash) received payments for more than ``threshold`` distinct households."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    by_account: dict[str, list[PaymentFacts]] = defaultdict(list)
    for p in payments:
        if p.account_hash:
            by_account[p.account_hash].append(p)
    found: list[Anomaly] = []
    for account, items in sorted(by_account.items()):
        households = sorted({p.household_id for p in items})
        if len(households) <= threshold:
            continue
        found.append(Anomaly("shared_account", "medium", "account", account, {
            "account_hash": account, "household_count": len(households), "threshold": threshold,
            "household_ids": households, "village_codes": sorted({p.village_code for p in items}),
            "disbursement_ids": sorted(p.disbursement_id for p in items)}, key=str(len(households))))
    return found


class AnomalyRecord(Aggregate):
    """The stream of one finding (stream id: ``Anomaly.anomaly_id``)."""

    stream_type = ev.ANOMALY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.rule: str | None = None
        self.subject: tuple[str, str] | None = None
        self.evidence: dict[str, Any] = {}
        self.detected_at: datetime | None = None

    def detect(self, anomaly: Anomaly, now: datetime) -> bool:
        """Record ``AnomalyDetected``; False (nothing recorded) when this finding is already recorded."""
        if anomaly.anomaly_id != self.id:
            raise ValueError(f"anomaly {anomaly.anomaly_id} recorded on stream {self.id}")
        if self.exists:
            return False
        self.record("AnomalyDetected", anomaly.event_data(now), ev.AnomalyDetected.schema_version)
        return True

    def when_AnomalyDetected(self, d: dict[str, Any]) -> None:
        self.rule = d["rule"]
        self.subject = (d["subject_type"], d["subject_id"])
        self.evidence = dict(d["evidence"])
        self.detected_at = datetime.fromisoformat(d["detected_at"]) if isinstance(d["detected_at"], str) \
            else d["detected_at"]

