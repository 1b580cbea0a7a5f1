"""Funds application layer: loads aggregates, runs the domain's commands, saves.

Every function runs inside the caller's transaction (``conn``). A command that
touches several aggregates (a project approval reserves on each allocation of
its funding; a payment spends on the allocation and records on the project)
appends all their events in one ``append_streams`` call with optimistic
concurrency on each stream: two concurrent payments on one allocation cannot
both see the same balance, so an allocation is never overdrawn. The loser gets
``ConcurrencyError``; the API retries the whole command a few times.

Eligibility reads the funds service's own projection of the registry's household
events (``fd_household_events``, folded into ``HouseholdFacts``). Duplicate
payments are stopped by the primary key of ``fd_payment_keys``, written in the
same transaction as the request. ``fd_disbursements`` mirrors each disbursement
for the anomaly rules and the reconciliation.

Jurisdiction: every command names its caller (``principal``; ``None`` only for the
service itself, e.g. the anomaly rules) and is refused with 403
``outside_jurisdiction``, before anything else is checked, unless the caller's
jurisdiction covers the region of the record it is about:

- an allocation: its ``region_code`` (a province, city or county budget line);
  only a jurisdiction covering it creates or adjusts it. Reading is wider
  (``may_read_allocation``): a budget line of a region containing the caller's
  jurisdiction is readable too, since the caller's projects and payments may draw
  on it; what they draw is checked by the domain (an allocation pays only within
  its region, ``outside_region``);
- a project: its ``region_code`` (village or township);
- a disbursement: the beneficiary household's village (from the household facts
  when requested, then as the disbursement records it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import date
from typing import Any, Sequence

from eventkit.aggregate import Aggregate, save_all
from eventkit.clock import Clock
from eventkit.errors import DomainError
from eventkit.events import Metadata, RecordedEvent
from eventkit.principal import Principal, covers
from eventkit.store import EventStore

from .anomalies import (
    AnomalyRecord, PaymentFacts, duplicate_periods, payment_anomalies, project_overspend, shared_accounts,
)
from .domain import Allocation, Disbursement, HouseholdFacts, Project, duplicate_payment, fold_household_facts
from .policies import Catalogue

LIVE_PAID = ("paid", "reconciled")
_KINDS: dict[type[Aggregate], str] = {Allocation: "allocation", Project: "project", Disbursement: "disbursement",
                                      AnomalyRecord: "anomaly"}


def region12(code: str) -> str:
    """The 12-digit form of a budget region (2, 4 or 6 digits) or a project region (9 or 12 digits)."""
    return code.ljust(12, "0")


def outside_jurisdiction(principal: Principal, what: str, region_code: str | None) -> DomainError:
    return DomainError("outside_jurisdiction", f"{what} is outside jurisdiction {principal.jurisdiction}", 403,
                       **({"region_code": region_code} if region_code is not None else {}))


def require_within(principal: Principal | None, region_code: str | None, what: str) -> None:
    """403 ``outside_jurisdiction`` unless ``principal``'s jurisdiction covers ``region_code`` (any region
    code: 2 to 12 digits). ``None``: the service itself, which may touch any record. A record with no
    region is covered by no one."""
    if principal is None:
        return
    if region_code is None or not principal.covers(region12(region_code)):
        raise outside_jurisdiction(principal, what, region_code)


def may_read_allocation(principal: Principal, region_code: str) -> bool:
    """An allocation is readable within its region's jurisdictions, and by the jurisdictions inside its
    region (a county office sees the provincial budget lines its projects may draw on)."""
    code = region12(region_code)
    return principal.covers(code) or covers(code, principal.jurisdiction)


def mask_account(account: str) -> str:
    """First 6 and last 4 digits kept (fewer for short numbers), the rest starred."""
    digits = "".join(ch for ch in account if ch.isdigit())
    if len(digits) < 8:
        raise DomainError("invalid_account", "an account number has at least 8 digits", field="account_number")
    keep_head = min(6, len(digits) - 8) if len(digits) < 14 else 6
    return digits[:keep_head] + "*" * (len(digits) - keep_head - 4) + digits[-4:]


@dataclass
class Funds:
    store: EventStore
    clock: Clock
    catalogue: Catalogue
    account_key: bytes | None = None  # keyed hash of payment accounts (shared-account anomaly)
    # The registry's ID-number hashing key, only where the deployment gives it (subsidy records named by
    # ID number are matched by MemberAdded.id_hmac; see services/funds/subsidy_api.py).
    id_number_key: bytes | None = None

    def id_number_hasher(self) -> Any:
        """The registry's keyed hash of a normalised ID number (None without the key)."""
        if not self.id_number_key:
            return None
        key = self.id_number_key
        return lambda number: hmac.new(key, number.encode("ascii"), hashlib.sha256).hexdigest()

    # -- loading and saving ----------------------------------------------------------

    async def load(self, conn: Any, cls: type, aggregate_id: str, expected_version: int | None = None,
                   must_exist: bool = True) -> Any:
        agg = cls(aggregate_id)
        kind = _KINDS[cls]
        events = await self.store.read_stream(aggregate_id, conn=conn)
        if events and events[0].stream_type != kind:  # the id names another kind of thing
            raise DomainError(f"{kind}_not_found", f"{aggregate_id} is not a {kind}", 404)
        for event in events:
            agg.replay(event)
        if must_exist and not agg.exists:
            raise DomainError(f"{kind}_not_found", f"{kind} {aggregate_id} does not exist", 404)
        self.expect(agg, expected_version)
        return agg

    @staticmethod
    def expect(agg: Aggregate, expected_version: int | None) -> None:
        """412 ``version_mismatch`` unless the aggregate is at ``expected_version`` (If-Match; None: any)."""
        if expected_version is not None and expected_version != agg.version:
            kind = _KINDS[type(agg)]
            raise DomainError("version_mismatch", f"{kind} {agg.id} is at version {agg.version}, not "
                              f"{expected_version}", 412, current_version=agg.version)

    async def load_within(self, conn: Any, cls: type, aggregate_id: str, expected_version: int | None,
                          principal: Principal | None) -> Any:
        """Load an existing allocation, project or disbursement the caller's jurisdiction covers (403
        otherwise, before the If-Match version is compared), at ``expected_version``."""
        agg = await self.load(conn, cls, aggregate_id)
        region = agg.village_code if isinstance(agg, Disbursement) else agg.region_code
        require_within(principal, region, f"{_KINDS[cls]} {aggregate_id}")
        self.expect(agg, expected_version)
        return agg

    async def save(self, conn: Any, aggregates: Sequence[Aggregate], meta: Metadata) -> list[RecordedEvent]:
        """Append the pending events of several aggregates atomically."""
        return await save_all(self.store, aggregates, meta, conn=conn)

    async def facts(self, conn: Any, household_id: str) -> HouseholdFacts:
        rows = await conn.fetch("SELECT event_type, data FROM fd_household_events WHERE household_id = $1"
                                " ORDER BY version", household_id)
        if not rows:
            raise DomainError("household_unknown", f"household {household_id} is not in the register (or the "
                              "registry's event has not reached the funds service yet)", 404, field="household_id")
        return fold_household_facts((r["event_type"], json.loads(r["data"]) if isinstance(r["data"], str)
                                     else r["data"]) for r in rows)

    def account_hash(self, account: str) -> str:
        if not self.account_key:
            raise DomainError("account_hashing_unavailable", "TPA_FUNDS_ID_HMAC_KEY is not set: payment accounts "
                              "cannot be recorded", 503)
        digits = "".join(ch for ch in account if ch.isdigit())
        return hmac.new(self.account_key, digits.encode(), hashlib.sha256).hexdigest()

    async def _mirror(self, conn: Any, d: Disbursement, account_masked: str | None = None) -> None:
        await conn.execute(
            "INSERT INTO fd_disbursements (disbursement_id, household_id, member_id, village_code, basis, policy_code,"
            " policy_group, policy_unit, cost_basis, project_id, period, amount, status, allocation_id, paid_on,"
            " channel, channel_reference, account_hash, account_masked, version) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) ON CONFLICT (disbursement_id) DO UPDATE"
            " SET status = $13, allocation_id = $14, paid_on = $15, channel = $16, channel_reference = $17,"
            " version = $20",
            d.id, d.household_id, d.member_id, d.village_code, d.basis, d.policy_code, d.policy_group, d.policy_unit,
            d.cost_basis, d.project_id, d.period, d.amount, d.status, d.allocation_id, d.paid_on, d.channel,
            d.channel_reference, d.account_hash, account_masked, d.version)
        if d.status in ("failed", "reversed"):  # the entitlement may be paid again
            await conn.execute("DELETE FROM fd_payment_keys WHERE disbursement_id = $1", d.id)

    # -- allocations and projects ------------------------------------------------------

    async def act(self, conn: Any, cls: type, aggregate_id: str, expected: int | None, meta: Metadata,
                  action: Any, *, principal: Principal | None,
                  allocations_of: Any = None) -> tuple[Any, list[RecordedEvent]]:
        """Load one aggregate in the caller's jurisdiction (and the allocations ``allocations_of(agg)``
        names: the domain checks that they pay within the project's region), run ``action``, save all."""
        agg = await self.load_within(conn, cls, aggregate_id, expected, principal)
        allocations: dict[str, Allocation] = {}
        for alloc_id in (allocations_of(agg) if allocations_of else []):
            allocations[alloc_id] = await self.load(conn, Allocation, alloc_id, must_exist=False)
        action(agg, allocations)
        return agg, await self.save(conn, [agg, *allocations.values()], meta)

    # -- disbursements ------------------------------------------------------------------

    async def request(self, conn: Any, disbursement_id: str, *, household_id: str, basis: str, period: str,
                      amount: Any, requested_by: str, meta: Metadata, principal: Principal | None,
                      member_id: str | None = None, policy_code: str | None = None, project_id: str | None = None,
                      cost_basis: Any = None, account_number: str | None = None
                      ) -> tuple[Disbursement, list[RecordedEvent]]:
        facts = await self.facts(conn, household_id)
        require_within(principal, facts.village_code, f"household {household_id}")
        project = await self.load(conn, Project, project_id) if project_id else None
        masked = hashed = None
        if account_number:
            masked, hashed = mask_account(account_number), self.account_hash(account_number)
        d = Disbursement(disbursement_id)
        d.request(household_id=household_id, basis=basis, period=period, amount=amount, requested_by=requested_by,
                  now=self.clock.now(), facts=facts, member_id=member_id, policy_code=policy_code, project=project,
                  cost_basis=cost_basis, account_masked=masked, account_hash=hashed, catalogue=self.catalogue)
        key = d.payment_key
        if key is not None:
            holder = await conn.fetchval(
                "INSERT INTO fd_payment_keys (beneficiary_kind, beneficiary_id, policy_group, period, disbursement_id)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (beneficiary_kind, beneficiary_id, policy_group, period)"
                " DO NOTHING RETURNING disbursement_id", *key, d.id)
            if holder is None:
                existing = await conn.fetchval(
                    "SELECT disbursement_id FROM fd_payment_keys WHERE beneficiary_kind = $1 AND beneficiary_id = $2"
                    " AND policy_group = $3 AND period = $4", *key)
                raise duplicate_payment(key, existing)
        recorded = await self.save(conn, [d], meta)
        await self._mirror(conn, d, masked)
        return d, recorded

    async def _project_and_allocation(self, conn: Any, d: Disbursement, allocation_id: str | None
                                      ) -> tuple[Project | None, Allocation]:
        project = await self.load(conn, Project, d.project_id) if d.project_id else None
        if allocation_id is None and project is not None:  # the first funding line with room enough
            for line, unspent in project.unspent_by_allocation().items():
                if unspent >= d.amount:
                    allocation_id = line
                    break
            else:
                raise DomainError("over_budget", f"no funding line of project {project.id} has "
                                  f"{d.amount} left", 409, rule="project_budget")
        if allocation_id is None:
            raise DomainError("missing_field", "allocation_id is required for a policy payment", field="allocation_id")
        return project, await self.load(conn, Allocation, allocation_id)

    async def approve(self, conn: Any, disbursement_id: str, expected: int | None, *, approved_by: str,
                      meta: Metadata, principal: Principal | None,
                      allocation_id: str | None = None) -> tuple[Disbursement, list[RecordedEvent]]:
        d = await self.load_within(conn, Disbursement, disbursement_id, expected, principal)
        d.require_platform("approve")
        facts = await self.facts(conn, d.household_id)
        project, allocation = await self._project_and_allocation(conn, d, allocation_id)
        d.approve(approved_by=approved_by, now=self.clock.now(), facts=facts, allocation=allocation, project=project,
                  catalogue=self.catalogue)
        recorded = await self.save(conn, [d, allocation, *([project] if project else [])], meta)
        await self._mirror(conn, d)
        return d, recorded

    async def pay(self, conn: Any, disbursement_id: str, expected: int | None, *, channel: str,
                  channel_reference: str, paid_on: date, meta: Metadata,
                  principal: Principal | None) -> tuple[Disbursement, list[RecordedEvent]]:
        d = await self.load_within(conn, Disbursement, disbursement_id, expected, principal)
        d.require_platform("pay")
        project = await self.load(conn, Project, d.project_id) if d.project_id else None
        allocation = await self.load(conn, Allocation, d.allocation_id) if d.allocation_id else None
        if allocation is None:
            raise DomainError("invalid_transition", f"disbursement {d.id} is {d.status}: approve it first", 409,
                              current_status=d.status)
        d.pay(channel=channel, channel_reference=channel_reference, paid_on=paid_on, now=self.clock.now(),
              allocation=allocation, project=project, catalogue=self.catalogue)
        await self._mirror(conn, d)
        records = await self.findings(conn, d, project)
        recorded = await self.save(conn, [d, allocation, *([project] if project else []), *records], meta)
        return d, recorded

    async def fail_or_reverse(self, conn: Any, disbursement_id: str, expected: int | None, *, reverse: bool,
                              reason: str, meta: Metadata,
                              principal: Principal | None) -> tuple[Disbursement, list[RecordedEvent]]:
        d = await self.load_within(conn, Disbursement, disbursement_id, expected, principal)
        d.require_platform("reverse" if reverse else "fail")
        project = await self.load(conn, Project, d.project_id) if d.project_id else None
        allocation = await self.load(conn, Allocation, d.allocation_id) if d.allocation_id else None
        if reverse:
            if allocation is None:
                raise DomainError("invalid_transition", f"disbursement {d.id} was never paid", 409,
                                  current_status=d.status)
            d.reverse(reason=reason, now=self.clock.now(), allocation=allocation, project=project)
        else:
            d.fail(reason=reason, now=self.clock.now(), allocation=allocation, project=project)
        recorded = await self.save(conn, [x for x in (d, allocation, project) if x is not None], meta)
        await self._mirror(conn, d)
        return d, recorded

    async def record_department_payments(self, conn: Any, payments: Sequence[tuple[Disbursement, HouseholdFacts]],
                                         meta: Metadata) -> tuple[list[RecordedEvent], int]:
        """Save department payments (``Disbursement.record_department_payment`` done, in the caller's
        transaction), mirror them for the anomaly rules and run the rules they touch, once per household:
        the payment rules on each new payment, the duplicate rule over all the household's live payments
        (the platform's and every department's). Department payments take no ``fd_payment_keys`` row: they
        are facts, and a second payment of an entitlement is what the duplicate rule reports. Returns the
        events and the number of anomalies recorded."""
        recorded = await self.save(conn, [d for d, _ in payments], meta)
        by_household: dict[str, tuple[HouseholdFacts, list[Disbursement]]] = {}
        for d, facts in payments:
            await self._mirror(conn, d)
            by_household.setdefault(facts.household_id, (facts, []))[1].append(d)
        found: list = []
        for household_id, (facts, items) in by_household.items():
            for d in items:
                found += payment_anomalies(PaymentFacts.of(d), facts, self.catalogue)
            found += duplicate_periods(await self._payments(conn, "household_id", household_id))
        records = await self._records(conn, found)
        recorded += await self.save(conn, records, meta)
        return recorded, len(records)

    # -- anomalies ----------------------------------------------------------------------

    async def _payments(self, conn: Any, where: str, value: Any) -> list[PaymentFacts]:
        rows = await conn.fetch(
            "SELECT disbursement_id, household_id, village_code, basis, period, amount, paid_on, member_id,"
            " policy_code, policy_group, policy_unit, project_id, cost_basis, account_hash FROM fd_disbursements"
            f" WHERE {where} = $1 AND status = ANY($2::text[])", value, list(LIVE_PAID))
        return [PaymentFacts(**dict(r)) for r in rows]

    async def findings(self, conn: Any, d: Disbursement, project: Project | None,
                       facts: HouseholdFacts | None = None) -> list[AnomalyRecord]:
        """Run the anomaly rules that a (now live) payment touches; return the new anomaly streams."""
        payment = PaymentFacts.of(d)
        facts = facts or await self.facts(conn, payment.household_id)
        found = payment_anomalies(payment, facts, self.catalogue)
        found += duplicate_periods(await self._payments(conn, "household_id", payment.household_id))
        if project is not None and project.approved_budget is not None:
            found += project_overspend(project.id, project.approved_budget,
                                       await self._payments(conn, "project_id", project.id))
        if payment.account_hash:
            found += shared_accounts(await self._payments(conn, "account_hash", payment.account_hash))
        return await self._records(conn, found)

    async def _records(self, conn: Any, found: list) -> list[AnomalyRecord]:
        records: dict[str, AnomalyRecord] = {}
        now = self.clock.now()
        for anomaly in found:
            if anomaly.anomaly_id in records:
                continue
            record = await self.load(conn, AnomalyRecord, anomaly.anomaly_id, must_exist=False)
            if record.detect(anomaly, now):
                records[anomaly.anomaly_id] = record
        return list(records.values())

    async def recheck_household(self, conn: Any, household_id: str, meta: Metadata) -> list[RecordedEvent]:
        """The household's facts changed (a death or removal recorded late): check its live payments again."""
        payments = await self._payments(conn, "household_id", household_id)
        if not payments:
            return []
        facts = await self.facts(conn, household_id)
        found = [a for p in payments for a in payment_anomalies(p, facts, self.catalogue)]
        return await self.save(conn, await self._records(conn, found), meta)

