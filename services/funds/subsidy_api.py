"""Subsidy records from other departments: ``POST /subsidy-records`` (quarterly import).

``POST /subsidy-records?quarter=2025-Q1&department=civil_affairs[&skip_unmatched=true]``
with the file as the raw body (``text/csv`` or an XLSX workbook) or in the
multipart field ``file``. The file format and the departments' policies are in
``services/funds/subsidies.py``.

Who
---
A department's system (a client with the scope ``inbound:subsidies``) or a county
office (a user with ``county_office``, which holds ``funds:pay``: it may import a
file a department handed over). The gateway checks the action; this service
checks it again, and that a client holding a department's own scope
(``comparison:education`` ...) records only for that department (403
``department_mismatch``). The *payer* of a file is the department together with
the importer's jurisdiction: a county's civil affairs bureau and its county office
are one payer, another county's bureau another (their payment systems and
references are separate).

What is checked, all or nothing
-------------------------------
1. The file on its own (``subsidies.parse_subsidy_file``): any problem gives a 422
   ``file_rejected`` listing every row, column, code and message; nothing is written.
2. The same file (SHA-256) from the same payer again: 409 ``already_imported``
   naming the earlier import.
3. Each row's person, among the households the funds service knows from the
   registry's events (``fd_household_events``), **within the importer's
   jurisdiction**: a row whose person is not found there (unknown, or in another
   county: answered alike, so nothing is learnt about other counties) is
   ``person_not_found``. By default that refuses the file (422, every such row
   listed); with ``skip_unmatched=true`` the other rows are recorded and these are
   reported as ``skipped``. A person who has died or left the household is found
   (the membership in force on the payment date, else the one they left last): the
   payment is recorded and the anomaly rules report it.
4. References, per payer: a reference already recorded with the same content is
   reported as ``already_recorded`` and not recorded again (re-sending a corrected
   file is safe); with other content it is a 422 ``reference_conflict``.

Then, in the same transaction: the import and its references
(``fd_subsidy_imports``, ``fd_subsidy_records``), one ``DepartmentPaymentRecorded``
per row on a disbursement stream whose id is derived from payer and reference
(uuid5: the event store itself refuses a second stream for one reference), the
mirror the anomaly rules read, and the anomalies they find (``Funds.record_department_payments``).
201 with the report: rows recorded (row number and disbursement id), already
recorded, skipped, the number of anomalies. The report names no household or member
(a department learns nothing about the register from it beyond which of its rows
matched) and no ID number.

The model: why a disbursement
-----------------------------
A department payment is a payment to a household or member under a policy, for a
period: exactly what the ledger's payments by household and village, the public
disclosure and the anomaly rules (deceased or departed member, removed household,
duplicate periods across the platform and every department, above the catalogue
standard) already read. So it is a disbursement (``basis`` policy) that starts paid,
draws on no allocation (the department's money never was on one) and posts on the
ledger's department accounts (``paid:department:<dept>:<year>`` /
``department:<dept>:<year>``, see ``services/funds/ledger.py``): allocation totals are
unchanged, household funds and disclosures include it. It cannot be approved, paid,
reconciled or reversed on the platform. Eligibility is not enforced: the record is a
fact of what the department paid, and a questionable one is what the anomaly rules
are for. It takes no duplicate-payment key either (``fd_payment_keys``): two
departments paying one entitlement is a finding, not a refusal.

ID numbers
----------
Never stored, logged or put in an event. A row naming its person by ID number is
matched by the keyed hash the registry puts in ``MemberAdded.id_hmac``, which the
funds service computes with the registry's key (``TPA_REGISTRY_ID_HMAC_KEY``). One
secret per purpose: the funds service's own ``TPA_FUNDS_ID_HMAC_KEY`` keys account
numbers and is not reused; for ID numbers there is one key, the registry's, and the
funds service reads it only when the deployment gives it (``services/funds/app.py``).
Holding it widens where ID numbers could be recovered from the hashes (ADR 0007), so
a deployment may leave it out: ID-number rows then get a 503
``id_matching_unavailable`` and departments name people by ``household_id`` and
``member_id`` instead.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from contracts.funds import DEPARTMENT_PATTERN, QUARTER_PATTERN
from eventkit.errors import ConcurrencyError, DomainError
from eventkit.events import Metadata
from eventkit.principal import DEPARTMENT_SCOPES, Principal
from eventkit.runtime import current_principal, problem, runtime_of
from eventkit.telemetry import correlation_id
from eventkit.uploads import UploadError, read_upload

from . import subsidies
from .api import ERRORS, funds_of
from .commands import Funds
from .domain import Disbursement, HouseholdFacts, china_date, fmt, fold_household_facts
from .policies import parse_period

router = APIRouter(tags=["subsidies"])

SUBSIDY_NAMESPACE = uuid.UUID("3a7e1c52-9d0b-5f64-8e21-4b6c0d9f7a35")
CONFLICT_RETRIES = 3
FACTS_BATCH = 1000


def disbursement_id_for(department: str, payer_jurisdiction: str, reference: str) -> str:
    """The stream id of a department's payment: one per payer and reference."""
    return str(uuid.uuid5(SUBSIDY_NAMESPACE, f"{department}|{payer_jurisdiction}|{reference}"))


# -- who may import, and for which department ----------------------------------------------

def _authorise(who: Principal, department: str) -> None:
    """A department's system (``inbound:subsidies``) or a county office; then the department must be
    known, and be the client's own when its scopes name one."""
    if who.type == "client" and "inbound:subsidies" not in who.scopes:
        raise DomainError("forbidden", f"{who.subject} may not send subsidy records (needs the scope "
                          "inbound:subsidies)", 403, action="inbound:subsidies")
    if who.type != "client" and "county_office" not in who.roles:
        raise DomainError("forbidden", f"{who.subject} may not import subsidy records (a county office or a "
                          "department's system with inbound:subsidies may)", 403, action="funds:pay")
    subsidies.check_department(department)
    own = {DEPARTMENT_SCOPES[s] for s in who.scopes if s in DEPARTMENT_SCOPES}
    if own and department not in own:
        raise DomainError("department_mismatch", f"{who.subject} is a system of the {', '.join(sorted(own))} "
                          f"department, not {department}", 403, department=department)


# -- matching rows to the register ----------------------------------------------------------

@dataclass(frozen=True)
class _Match:
    row: subsidies.SubsidyRow
    facts: HouseholdFacts
    member_id: str | None


async def _facts_of(conn: Any, household_ids: set[str]) -> dict[str, HouseholdFacts]:
    out: dict[str, HouseholdFacts] = {}
    ids = sorted(household_ids)
    for i in range(0, len(ids), FACTS_BATCH):
        events: dict[str, list[tuple[str, Any]]] = {}
        for r in await conn.fetch("SELECT household_id, event_type, data FROM fd_household_events"
                                  " WHERE household_id = ANY($1::text[]) ORDER BY household_id, version",
                                  ids[i:i + FACTS_BATCH]):
            data = json.loads(r["data"]) if isinstance(r["data"], str) else r["data"]  # jsonb, without a codec
            events.setdefault(r["household_id"], []).append((r["event_type"], data))
        for household_id, items in events.items():
            try:
                out[household_id] = fold_household_facts(items)
            except ValueError:  # its registration has not reached the funds service yet
                continue
    return out


def _choose(candidates: list[tuple[HouseholdFacts, str]], paid_on: date) -> tuple[HouseholdFacts, str] | None:
    """The membership a payment on ``paid_on`` was for: the one in force then, else the one the person left
    last before it (died, moved out: the anomaly rules judge the payment), else the first."""
    if not candidates:
        return None
    active = [c for c in candidates if c[0].members[c[1]].active_on(paid_on)]
    if active:
        return min(active, key=lambda c: c[0].household_id)
    left = [c for c in candidates if c[0].members[c[1]].removed_on is not None
            and c[0].members[c[1]].removed_on <= paid_on]  # type: ignore[operator]
    if left:
        return max(left, key=lambda c: (c[0].members[c[1]].removed_on, c[0].household_id))
    return min(candidates, key=lambda c: c[0].household_id)


async def _match(conn: Any, rows: list[subsidies.SubsidyRow], who: Principal
                 ) -> tuple[list[_Match], list[dict[str, Any]]]:
    """Each row's household (and member, for a policy paid per person) within ``who``'s jurisdiction;
    the rows not found there as ``person_not_found`` errors."""
    hmacs = sorted({r.id_hmac for r in rows if r.id_hmac})
    member_ids = sorted({r.member_id for r in rows if r.member_id})
    by_hmac: dict[str, list[tuple[str, str]]] = {}
    by_member: dict[str, set[str]] = {}
    if hmacs:
        for r in await conn.fetch("SELECT household_id, data->>'member_id' AS member_id, data->>'id_hmac' AS h"
                                  " FROM fd_household_events WHERE event_type = 'MemberAdded'"
                                  " AND data->>'id_hmac' = ANY($1::text[])", hmacs):
            by_hmac.setdefault(r["h"], []).append((r["household_id"], r["member_id"]))
    if member_ids:
        for r in await conn.fetch("SELECT household_id, data->>'member_id' AS member_id FROM fd_household_events"
                                  " WHERE event_type = 'MemberAdded' AND data->>'member_id' = ANY($1::text[])",
                                  member_ids):
            by_member.setdefault(r["member_id"], set()).add(r["household_id"])
    wanted = {h for pairs in by_hmac.values() for h, _ in pairs} | {h for hs in by_member.values() for h in hs}
    wanted |= {r.household_id for r in rows if r.household_id}
    facts = {h: f for h, f in (await _facts_of(conn, wanted)).items() if who.covers(f.village_code)}

    matches: list[_Match] = []
    errors: list[dict[str, Any]] = []
    for row in rows:
        found: tuple[HouseholdFacts, str | None] | None = None
        if row.id_hmac:
            found = _choose([(facts[h], m) for h, m in by_hmac.get(row.id_hmac, [])
                             if h in facts and m in facts[h].members], row.paid_on)
        elif row.member_id:
            found = _choose([(facts[h], row.member_id) for h in sorted(by_member.get(row.member_id, ()))
                             if h in facts and row.member_id in facts[h].members
                             and row.household_id in (None, h)], row.paid_on)
        elif row.household_id in facts:
            found = (facts[row.household_id], None)
        if found is None:
            who_ = f"ID number {row.id_masked}" if row.id_masked else "the person"
            errors.append({"row": row.row, "column": row.person_column, "code": "person_not_found",
                           "message": f"{who_} is not in a household of the register in jurisdiction "
                                      f"{who.jurisdiction} (or the registry's data has not reached the funds "
                                      "service yet)"})
            continue
        household, member_id = found
        matches.append(_Match(row, household, member_id if row.terms.paid_to == "member" else None))
    return matches, errors


def _standard(terms: subsidies.Terms, period: str) -> tuple[Decimal | None, int | None]:
    """The catalogue standard of a fixed policy for the period (none for a department policy, a
    reimbursement, or when no version is in force)."""
    if terms.policy is None or terms.policy.kind != "fixed":
        return None, None
    try:
        standard = terms.policy.standard_for(parse_period(period))
    except DomainError:
        return None, None
    return standard.amount, standard.version


# -- the import ----------------------------------------------------------------------------

_FILE_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}},
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                    "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}}


@router.post("/subsidy-records", status_code=201, summary="Import a quarter's subsidy records from a department",
             responses={**ERRORS, 201: {"description": "The import report"}, 503: {"description": (
                 "ID numbers cannot be matched here: name people by household_id and member_id")}},
             openapi_extra=_FILE_BODY)
async def import_subsidy_records(
    request: Request,
    quarter: str = Query(pattern=QUARTER_PATTERN, description="The quarter the payments were made in, e.g. 2025-Q1."),
    department: str = Query(pattern=DEPARTMENT_PATTERN, description=(
        f"The paying department: {', '.join(subsidies.DEPARTMENTS)}.")),
    skip_unmatched: bool = Query(False, description=(
        "Record the rows whose person is found and report the others (default: refuse the whole file).")),
) -> Response:
    who = current_principal(request, "importing subsidy records")
    _authorise(who, department)
    funds = funds_of(request)
    today = china_date(funds.clock.now())
    q = subsidies.parse_quarter(quarter)
    if q.start > today:
        raise DomainError("quarter_not_started", f"quarter {quarter} has not started", field="quarter")
    try:
        upload = await read_upload(request, subsidies.MAX_FILE_BYTES)
    except UploadError as exc:
        return problem(exc.status, exc.code, str(exc))
    if not upload.data:
        return problem(422, "empty_file", "the uploaded file is empty")
    batch = await asyncio.to_thread(subsidies.parse_subsidy_file, upload.data, upload.hint, quarter=q,
                                    department=department, catalogue=funds.catalogue, today=today,
                                    hasher=funds.id_number_hasher())
    if batch.errors:
        return _rejected(batch.errors, batch.rows)
    for attempt in range(CONFLICT_RETRIES):
        try:
            return await _record(request, funds, who, batch, department, q, skip_unmatched)
        except ConcurrencyError:  # an anomaly stream another command recorded at the same time
            if attempt == CONFLICT_RETRIES - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _rejected(errors: list[dict[str, Any]], rows: int, hint: str = "correct the rows listed") -> Response:
    return problem(422, "file_rejected", "The file has errors: nothing was recorded",
                   f"{len(errors)} error(s) in {rows} row(s); {hint}", errors=errors[:1000],
                   error_count=len(errors))


async def _record(request: Request, funds: Funds, who: Principal, batch: subsidies.SubsidyBatch, department: str,
                  q: subsidies.Quarter, skip_unmatched: bool) -> Response:
    payer = who.jurisdiction
    meta = Metadata(actor=who.id, correlation_id=correlation_id.get())
    async with runtime_of(request).pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"subsidies|{department}|{payer}")
        earlier = await conn.fetchval("SELECT import_id FROM fd_subsidy_imports WHERE department = $1"
                                      " AND payer_jurisdiction = $2 AND file_sha256 = $3", department, payer,
                                      batch.sha256)
        if earlier is not None:
            return problem(409, "already_imported", "Conflict", f"this file was already imported as {earlier}; "
                           "to add rows, send a file of them (rows already recorded are recognised by their "
                           "reference)", import_id=earlier)
        matches, unmatched = await _match(conn, batch.records, who)
        known = {r["reference"]: r for r in await conn.fetch(
            "SELECT reference, disbursement_id, fingerprint, import_id FROM fd_subsidy_records"
            " WHERE department = $1 AND payer_jurisdiction = $2 AND reference = ANY($3::text[])",
            department, payer, [m.row.reference for m in matches])}
        errors: list[dict[str, Any]] = [] if skip_unmatched else list(unmatched)
        fresh: list[tuple[_Match, str]] = []
        already: list[dict[str, Any]] = []
        for m in matches:
            fp = subsidies.fingerprint(m.facts.household_id, m.member_id, m.row)
            earlier_record = known.get(m.row.reference)
            if earlier_record is None:
                fresh.append((m, fp))
            elif earlier_record["fingerprint"] == fp:
                already.append({"row": m.row.row, "disbursement_id": earlier_record["disbursement_id"],
                                "import_id": earlier_record["import_id"]})
            else:
                errors.append({"row": m.row.row, "column": "reference", "code": "reference_conflict",
                               "message": f"reference {m.row.reference!r} was recorded (import "
                                          f"{earlier_record['import_id']}) for another payment: a department's "
                                          "reference names one payment"})
        if errors:
            errors.sort(key=lambda e: (e["row"], e["column"] or ""))
            only_unmatched = all(e["code"] == "person_not_found" for e in errors)
            return _rejected(errors, batch.rows, "import with skip_unmatched=true to record the other rows"
                             if only_unmatched else "correct the rows listed")

        import_id = str(uuid.uuid4())
        now = funds.clock.now()
        payments: list[tuple[Disbursement, HouseholdFacts]] = []
        recorded: list[dict[str, Any]] = []
        for m, _ in fresh:
            row = m.row
            d = Disbursement(disbursement_id_for(department, payer, row.reference))
            standard, version = _standard(row.terms, row.period)
            d.record_department_payment(
                facts=m.facts, member_id=m.member_id, policy_code=row.policy_code, policy_group=row.terms.group,
                policy_unit=row.terms.unit, period=row.period, amount=row.amount, paid_on=row.paid_on,
                channel=row.channel, department=department, payer_jurisdiction=payer, reference=row.reference,
                quarter=q.text, import_id=import_id, recorded_by=who.id, now=now, policy_version=version,
                standard_amount=standard)
            payments.append((d, m.facts))
            recorded.append({"row": row.row, "disbursement_id": d.id})
        skipped = unmatched if skip_unmatched else []
        total = sum((m.row.amount for m, _ in fresh), Decimal(0))
        report = {"recorded": [r["row"] for r in recorded], "already_recorded": [a["row"] for a in already],
                  "skipped": [{"row": s["row"], "code": s["code"]} for s in skipped]}
        await conn.execute(
            "INSERT INTO fd_subsidy_imports (import_id, department, payer_jurisdiction, quarter, file_sha256, format,"
            " rows, recorded, already_recorded, skipped, total_amount, imported_by, report) VALUES ($1, $2, $3, $4,"
            " $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)", import_id, department, payer, q.text, batch.sha256,
            batch.format, batch.rows, len(recorded), len(already), len(skipped), total, who.subject,
            json.dumps(report))
        await conn.executemany(
            "INSERT INTO fd_subsidy_records (department, payer_jurisdiction, reference, disbursement_id, import_id,"
            " row_no, fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(department, payer, m.row.reference, d.id, import_id, m.row.row, fp)
             for (m, fp), (d, _) in zip(fresh, payments)])
        _, anomalies = await funds.record_department_payments(conn, payments, meta) if payments else ([], 0)
    return JSONResponse({
        "import_id": import_id, "department": department, "quarter": q.text, "payer_jurisdiction": payer,
        "format": batch.format, "rows": batch.rows, "recorded": recorded, "already_recorded": already,
        "skipped": skipped, "total_amount": fmt(total), "anomalies_detected": anomalies,
        "counts": {"recorded": len(recorded), "already_recorded": len(already), "skipped": len(skipped)}},
        status_code=201)
