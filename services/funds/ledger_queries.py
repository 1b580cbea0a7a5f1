"""Query API over the funds ledger (read model, eventually consistent).

* ``GET /allocations/{id}/balance``: amount, reserved, spent and available of an
  allocation as its events state them, next to the balances of its accounts
  (``consistent`` says they agree).
* ``GET /projects/{id}/budget``: approved budget, committed, paid and remaining of a
  project, with its funding lines and what is still reserved on each.
* ``GET /households/{id}/funds``: what a household received, by policy (or project)
  and year, net of reversals.
* ``GET /villages/{code}/disclosure``: the village's public disclosure (open operation): its
  projects and its payments by policy and year with household counts. No household
  or member ids, no accounts: nothing personal.
* ``GET /ledger/totals``: allocated, reserved, spent and available by fund source and
  budget year, and whether the ledger balances.

Jurisdiction (see ``services/funds/commands.py``): an allocation's balance is readable
within its region's jurisdictions and by those inside its region; a project's budget
within the jurisdictions covering its region; a household's funds within those
covering its village (as its payments record it: a household's village does not
change; a household with no payment in the ledger has nothing to show). Each is
a 403 ``outside_jurisdiction`` otherwise. The ledger totals are those of the budget
lines (allocations) whose region lies within the caller's jurisdiction, computed from
their own postings, the counter-postings on the source accounts included: allocated,
debits and credits are theirs, and ``balanced`` checks that part of the ledger. Money
of a higher-level line (a provincial allocation paying a county's project) counts in
the totals of that line's jurisdiction, not the county's. The village disclosure is
public (no caller needed).

Paid amounts are read from the postings on the ``paid:<allocation>`` accounts (see
``services/funds/ledger.py`` for the chart of accounts) and attributed to household,
village, policy and year through the disbursement read model. The year of a payment
is the year of the period it is for. A payment whose disbursement's own events have
not been applied yet counts in the allocation and ledger totals but cannot be
attributed (to a household or village) until they are.

Money is a decimal string with two decimals, as in the events.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.funds import FUND_SOURCES
from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.errors import DomainError
from eventkit.problems import Problem
from eventkit.runtime import current_principal, domain_problem, jurisdiction_prefix_of, problem, runtime_of

from .commands import may_read_allocation, outside_jurisdiction, require_within
from .ledger import ZERO, available_account, paid_account, reserved_account
from .policies import default_catalogue

router = APIRouter(tags=["ledger"])

ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem},
                                           404: {"model": Problem}, 422: {"model": Problem}}
Money = str
Source = Literal[FUND_SOURCES]  # type: ignore[valid-type]


def _fmt(value: Decimal | None) -> Money | None:
    return None if value is None else f"{value:.2f}"


def _money(value: Decimal | None) -> Money:
    return f"{(value if value is not None else ZERO):.2f}"


def _pool(request: Request) -> Any:
    return runtime_of(request).pool


# -- response models -----------------------------------------------------------------------

_MONEY = {"pattern": r"^-?[0-9]+\.[0-9]{2}$", "examples": ["1250.00"]}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountBalances(_Out):
    """Balances (debit minus credit) of the allocation's accounts in the ledger."""

    available: Money = Field(json_schema_extra=_MONEY, description="allocation:<id>:available")
    reserved: Money = Field(json_schema_extra=_MONEY, description="allocation:<id>:reserved")
    paid: Money = Field(json_schema_extra=_MONEY, description="paid:<id>")


class AllocationBalance(_Out):
    allocation_id: str
    source: str
    year: int
    purpose: str
    region_code: str
    amount: Money = Field(json_schema_extra=_MONEY, description="Current amount (after adjustments).")
    reserved: Money = Field(json_schema_extra=_MONEY)
    spent: Money = Field(json_schema_extra=_MONEY)
    available: Money = Field(json_schema_extra=_MONEY, description="amount - reserved - spent")
    accounts: AccountBalances
    consistent: bool = Field(description="reserved, spent and available equal the account balances, and the "
                                         "accounts add up to the amount.")
    version: int = Field(description="Allocation stream version the row reflects.")


class FundingLineView(_Out):
    allocation_id: str
    amount: Money = Field(json_schema_extra=_MONEY, description="Approved on this allocation.")
    reserved: Money = Field(json_schema_extra=_MONEY, description="Still held for the project on the allocation.")
    released: Money = Field(json_schema_extra=_MONEY, description="Returned at acceptance or cancellation.")


class ProjectBudget(_Out):
    project_id: str
    name: str
    kind: str
    region_code: str
    plan_year: int
    status: str
    budget: Money = Field(json_schema_extra=_MONEY, description="Declared budget.")
    approved_budget: Money | None = Field(json_schema_extra=_MONEY, description="Null until approved.")
    committed: Money = Field(json_schema_extra=_MONEY, description="Approved payments not paid yet.")
    paid: Money = Field(json_schema_extra=_MONEY, description="Paid, net of reversals (project stream).")
    remaining: Money | None = Field(json_schema_extra=_MONEY,
                                    description="approved_budget - committed - paid; null until approved.")
    ledger_paid: Money = Field(json_schema_extra=_MONEY, description=(
        "Paid according to the ledger's postings (allocation stream); equals `paid` once both streams are "
        "projected."))
    beneficiary_households: int
    funding: list[FundingLineView]
    version: int


class FundsRow(_Out):
    basis: Literal["policy", "project"]
    policy_code: str | None
    project_id: str | None
    year: int = Field(description="Year of the period the payments are for.")
    paid: Money = Field(json_schema_extra=_MONEY, description="Paid minus reversed.")
    reversed: Money = Field(json_schema_extra=_MONEY, description="Paid and then reversed.")
    payments: int = Field(description="Disbursements paid and not reversed.")


class HouseholdFunds(_Out):
    household_id: str
    year: int | None = Field(description="The year asked for; null for all years.")
    rows: list[FundsRow]
    total: Money = Field(json_schema_extra=_MONEY)


class DisclosedProject(_Out):
    project_id: str
    name: str
    kind: str
    plan_year: int
    status: str
    approved_budget: Money | None = Field(json_schema_extra=_MONEY)
    paid: Money = Field(json_schema_extra=_MONEY)
    beneficiary_households: int


class DisclosedPayments(_Out):
    basis: Literal["policy", "project"]
    policy_code: str | None
    policy_name: str | None = Field(description="Name of the policy in the catalogue (Chinese where it has one).")
    project_id: str | None
    year: int
    paid: Money = Field(json_schema_extra=_MONEY, description="Paid minus reversed.")
    payments: int
    households: int = Field(description="Households that received a payment (not reversed).")


class VillageDisclosure(_Out):
    """The public disclosure of a village (open operation): no personal data."""

    village_code: str
    year: int | None
    projects: list[DisclosedProject]
    payments: list[DisclosedPayments]
    total_paid: Money = Field(json_schema_extra=_MONEY)


class SourceYearTotals(_Out):
    source: str
    year: int
    allocated: Money = Field(json_schema_extra=_MONEY, description=(
        "Credits minus debits of the jurisdiction's allocations on source:<source>:<year>."))
    reserved: Money = Field(json_schema_extra=_MONEY)
    spent: Money = Field(json_schema_extra=_MONEY)
    available: Money = Field(json_schema_extra=_MONEY)
    balanced: bool = Field(description="allocated = reserved + spent + available")


class LedgerTotals(_Out):
    rows: list[SourceYearTotals]
    allocated: Money = Field(json_schema_extra=_MONEY)
    reserved: Money = Field(json_schema_extra=_MONEY)
    spent: Money = Field(json_schema_extra=_MONEY)
    available: Money = Field(json_schema_extra=_MONEY)
    debits: Money = Field(json_schema_extra=_MONEY, description=(
        "All debits posted for the jurisdiction's allocations (every year and source; their source-account "
        "lines included)."))
    credits: Money = Field(json_schema_extra=_MONEY, description="All credits posted for them, likewise.")
    balanced: bool = Field(description="The jurisdiction's part of the ledger balances: debits = credits, and for "
                                       "every source and year allocated = reserved + spent + available.")


# -- allocations -----------------------------------------------------------------------------

@router.get("/allocations/{allocation_id}/balance", response_model=AllocationBalance, responses=ERRORS,
            summary="Balance of an allocation, checked against its ledger accounts")
async def allocation_balance(request: Request, allocation_id: uuid.UUID):
    pool = _pool(request)
    row = await pool.fetchrow(
        "SELECT allocation_id::text AS allocation_id, source, year, purpose, region_code, amount, reserved, spent,"
        " available, version FROM ledger_allocations WHERE allocation_id = $1", allocation_id)
    if row is None:
        return problem(404, "allocation_not_found", f"allocation {allocation_id} is not in the ledger",
                       allocation_id=str(allocation_id))
    try:
        who = current_principal(request)
        if not may_read_allocation(who, row["region_code"]):
            raise outside_jurisdiction(who, f"allocation {allocation_id}", row["region_code"])
    except DomainError as exc:
        return domain_problem(exc)
    key = str(allocation_id)
    names = {available_account(key): "available", reserved_account(key): "reserved", paid_account(key): "paid"}
    balances = {name: ZERO for name in names.values()}
    for r in await pool.fetch("SELECT account, balance FROM ledger_balances WHERE account = ANY($1::text[])",
                              list(names)):
        balances[names[r["account"]]] = r["balance"]
    consistent = (balances["available"] == row["available"] and balances["reserved"] == row["reserved"]
                  and balances["paid"] == row["spent"] and sum(balances.values(), ZERO) == row["amount"])
    return AllocationBalance(
        allocation_id=row["allocation_id"], source=row["source"], year=row["year"], purpose=row["purpose"],
        region_code=row["region_code"], amount=_money(row["amount"]), reserved=_money(row["reserved"]),
        spent=_money(row["spent"]), available=_money(row["available"]),
        accounts=AccountBalances(**{k: _money(v) for k, v in balances.items()}), consistent=consistent,
        version=row["version"])


# -- projects --------------------------------------------------------------------------------

@router.get("/projects/{project_id}/budget", response_model=ProjectBudget, responses=ERRORS,
            summary="Approved budget, committed, paid and remaining of a project")
async def project_budget(request: Request, project_id: uuid.UUID):
    pool = _pool(request)
    row = await pool.fetchrow(
        "SELECT project_id::text AS project_id, name, kind, region_code, plan_year, status, budget, approved_budget,"
        " committed, paid, beneficiaries, version,"
        " (SELECT coalesce(sum(p.debit - p.credit), 0) FROM ledger_postings p"
        "   WHERE p.project_id = lp.project_id AND p.account LIKE 'paid:%') AS ledger_paid"
        " FROM ledger_projects lp WHERE project_id = $1", project_id)
    if row is None:
        return problem(404, "project_not_found", f"project {project_id} is not in the ledger",
                       project_id=str(project_id))
    try:
        require_within(current_principal(request), row["region_code"], f"project {project_id}")
    except DomainError as exc:
        return domain_problem(exc)
    lines = await pool.fetch(
        "SELECT f.allocation_id::text AS allocation_id, f.amount, f.released, coalesce(r.reserved, 0) AS reserved"
        " FROM ledger_project_funding f LEFT JOIN ledger_reservations r ON r.allocation_id = f.allocation_id"
        "  AND r.ref_type = 'project' AND r.ref_id = f.project_id"
        " WHERE f.project_id = $1 ORDER BY f.allocation_id", project_id)
    approved = row["approved_budget"]
    remaining = None if approved is None else approved - row["committed"] - row["paid"]
    return ProjectBudget(
        project_id=row["project_id"], name=row["name"], kind=row["kind"], region_code=row["region_code"],
        plan_year=row["plan_year"], status=row["status"], budget=_money(row["budget"]),
        approved_budget=_fmt(approved), committed=_money(row["committed"]), paid=_money(row["paid"]),
        remaining=_fmt(remaining), ledger_paid=_money(row["ledger_paid"]),
        beneficiary_households=row["beneficiaries"],
        funding=[FundingLineView(allocation_id=r["allocation_id"], amount=_money(r["amount"]),
                                 reserved=_money(r["reserved"]), released=_money(r["released"])) for r in lines],
        version=row["version"])


# -- payments by household and village ---------------------------------------------------------

# Net paid per disbursement (from the postings on the paid accounts), with its dimensions.
# {where} filters ledger_disbursements d; the year filter is the last parameter.
_PAYMENTS = """
WITH paid AS (
    SELECT d.disbursement_id, d.household_id, d.basis, d.policy_code, d.project_id, d.year,
           sum(p.debit) AS gross, sum(p.credit) AS reversed
    FROM ledger_disbursements d
    JOIN ledger_postings p ON p.disbursement_id = d.disbursement_id AND p.account LIKE 'paid:%'
    WHERE {where} AND ($2::int IS NULL OR d.year = $2)
    GROUP BY d.disbursement_id
)
SELECT basis, policy_code, project_id::text AS project_id, year,
       sum(gross - reversed) AS paid, sum(reversed) AS reversed,
       count(*) FILTER (WHERE gross > reversed) AS payments,
       count(DISTINCT household_id) FILTER (WHERE gross > reversed) AS households
FROM paid
GROUP BY basis, policy_code, project_id, year
ORDER BY year, basis, policy_code NULLS LAST, project_id NULLS LAST
"""


@router.get("/households/{household_id}/funds", response_model=HouseholdFunds, responses=ERRORS,
            summary="Funds a household received, by policy or project and year")
async def household_funds(
    request: Request,
    household_id: uuid.UUID,
    year: int | None = Query(None, ge=2000, le=2100, description="Only payments for periods of this year."),
):
    pool = _pool(request)
    villages = await pool.fetch("SELECT DISTINCT village_code FROM ledger_disbursements WHERE household_id = $1",
                                household_id)
    try:
        who = current_principal(request)
        for v in villages:
            require_within(who, v["village_code"], f"household {household_id}")
    except DomainError as exc:
        return domain_problem(exc)
    rows = await pool.fetch(_PAYMENTS.format(where="d.household_id = $1"), household_id, year)
    items = [FundsRow(basis=r["basis"], policy_code=r["policy_code"], project_id=r["project_id"], year=r["year"],
                      paid=_money(r["paid"]), reversed=_money(r["reversed"]), payments=r["payments"])
             for r in rows]
    return HouseholdFunds(household_id=str(household_id), year=year, rows=items,
                          total=_money(sum((r["paid"] for r in rows), ZERO)))


def _policy_name(code: str | None) -> str | None:
    policy = default_catalogue().get(code) if code is not None else None
    return None if policy is None else (policy.label_zh or policy.name)


@router.get("/villages/{village_code}/disclosure", response_model=VillageDisclosure, responses=ERRORS,
            summary="Public disclosure of a village's projects and payments (no personal data)")
async def village_disclosure(
    request: Request,
    village_code: str = Path(pattern=VILLAGE_CODE_PATTERN, description="12-digit village code."),
    year: int | None = Query(None, ge=2000, le=2100, description="Only projects planned for and payments for "
                                                                 "periods of this year."),
):
    pool = _pool(request)
    projects = await pool.fetch(
        "SELECT project_id::text AS project_id, name, kind, plan_year, status, approved_budget, paid, beneficiaries"
        " FROM ledger_projects WHERE region_code = $1 AND ($2::int IS NULL OR plan_year = $2)"
        " ORDER BY plan_year, name, project_id", village_code, year)
    payments = await pool.fetch(_PAYMENTS.format(where="d.village_code = $1"), village_code, year)
    return VillageDisclosure(
        village_code=village_code, year=year,
        projects=[DisclosedProject(project_id=r["project_id"], name=r["name"], kind=r["kind"],
                                   plan_year=r["plan_year"], status=r["status"],
                                   approved_budget=_fmt(r["approved_budget"]), paid=_money(r["paid"]),
                                   beneficiary_households=r["beneficiaries"]) for r in projects],
        payments=[DisclosedPayments(basis=r["basis"], policy_code=r["policy_code"],
                                    policy_name=_policy_name(r["policy_code"]), project_id=r["project_id"],
                                    year=r["year"], paid=_money(r["paid"]), payments=r["payments"],
                                    households=r["households"]) for r in payments],
        total_paid=_money(sum((r["paid"] for r in payments), ZERO)))


# -- ledger totals -----------------------------------------------------------------------------

# By source and year, over the allocations whose region lies within the jurisdiction ($1: its code
# prefix): allocated from their lines on the source accounts (each line names its allocation),
# reserved, spent and available from their own accounts; debits and credits of both.
_TOTALS = """
WITH mine AS (
    SELECT allocation_id, source, year FROM ledger_allocations WHERE rpad(region_code, 12, '0') LIKE $1::text || '%'
), funded AS (
    SELECT p.allocation_id, sum(p.credit - p.debit) AS allocated, sum(p.debit) AS debits, sum(p.credit) AS credits
    FROM ledger_postings p JOIN mine m ON m.allocation_id = p.allocation_id
    WHERE p.account LIKE 'source:%'
    GROUP BY p.allocation_id
), held AS (
    SELECT b.allocation_id,
           sum(b.balance) FILTER (WHERE b.kind = 'reserved') AS reserved,
           sum(b.balance) FILTER (WHERE b.kind = 'paid') AS spent,
           sum(b.balance) FILTER (WHERE b.kind = 'available') AS available,
           sum(b.debits) AS debits, sum(b.credits) AS credits
    FROM ledger_balances b JOIN mine m ON m.allocation_id = b.allocation_id
    GROUP BY b.allocation_id
)
SELECT m.source, m.year,
       coalesce(sum(f.allocated), 0) AS allocated, coalesce(sum(h.reserved), 0) AS reserved,
       coalesce(sum(h.spent), 0) AS spent, coalesce(sum(h.available), 0) AS available,
       coalesce(sum(f.debits), 0) + coalesce(sum(h.debits), 0) AS debits,
       coalesce(sum(f.credits), 0) + coalesce(sum(h.credits), 0) AS credits
FROM mine m
LEFT JOIN funded f ON f.allocation_id = m.allocation_id
LEFT JOIN held h ON h.allocation_id = m.allocation_id
GROUP BY m.source, m.year
ORDER BY m.year, m.source
"""


@router.get("/ledger/totals", response_model=LedgerTotals, responses=ERRORS,
            summary="Allocated, reserved, spent and available by fund source and year, over the budget lines "
                    "of the caller's jurisdiction")
async def ledger_totals(
    request: Request,
    year: int | None = Query(None, ge=2000, le=2100, description="Budget year."),
    source: Source | None = Query(None, description="Fund source."),
):
    try:
        prefix = jurisdiction_prefix_of(request)
    except DomainError as exc:
        return domain_problem(exc)
    # One statement (one snapshot), every source and year of the jurisdiction's budget lines: the
    # whole-ledger figures are over all of them, the rows then filtered by year and source.
    every = await _pool(request).fetch(_TOTALS, prefix)
    rows = [r for r in every if (year is None or r["year"] == year) and (source is None or r["source"] == source)]
    debits = sum((r["debits"] for r in every), ZERO)
    credits = sum((r["credits"] for r in every), ZERO)
    items = [SourceYearTotals(
        source=r["source"], year=r["year"], allocated=_money(r["allocated"]), reserved=_money(r["reserved"]),
        spent=_money(r["spent"]), available=_money(r["available"]),
        balanced=r["allocated"] == r["reserved"] + r["spent"] + r["available"]) for r in rows]

    def total(column: str) -> Money:
        return _money(sum((r[column] for r in rows), ZERO))

    return LedgerTotals(
        rows=items, allocated=total("allocated"), reserved=total("reserved"), spent=total("spent"),
        available=total("available"), debits=_money(debits), credits=_money(credits),
        balanced=debits == credits and all(r["allocated"] == r["reserved"] + r["spent"] + r["available"]
                                           for r in every))
