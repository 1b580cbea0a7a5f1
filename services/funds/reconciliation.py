"""Reconciliation of a payment channel's statement against the paid disbursements.

``POST /statements?channel=one_card`` with the statement as ``text/csv`` (UTF-8,
header row ``reference,account_masked,amount,date,status``; status ``paid``,
``failed`` or ``returned``). The whole file is checked first: any unreadable
line gives a 422 with the line number, column and reason for each, and nothing is
written. Then, in one transaction, each line is matched by channel and reference
to a disbursement: a line that agrees (paid, same amount and date, same masked
account when both have one) reconciles it (``DisbursementReconciled``); every
other line becomes a reconciliation exception (``unmatched``, ``amount_mismatch``,
``date_mismatch``, ``account_mismatch``, ``status_mismatch``,
``already_reconciled``, ``duplicate_line``) for an operator to clear. The same
file (by SHA-256) cannot be imported twice.

Jurisdiction: a statement names no region, so it belongs to its importer. Only a
county office imports (the gateway's ``funds:pay``, checked again here); the
statement records the importer and its jurisdiction, and is readable within the
jurisdictions covering it (403 ``outside_jurisdiction`` otherwise). A line whose
reference names a payment to a household outside the importer's jurisdiction is
not reconciled: it becomes an ``outside_jurisdiction`` exception that names neither
the payment nor its amount, date or account.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from contracts import funds as ev
from eventkit.errors import DomainError
from eventkit.events import Metadata
from eventkit.runtime import current_principal, problem, require_covers, runtime_of
from eventkit.telemetry import correlation_id

from .api import ERRORS, funds_of
from .commands import region12
from .domain import Disbursement, fmt

router = APIRouter(tags=["reconciliation"])
COLUMNS = ("reference", "account_masked", "amount", "date", "status")
STATUSES = ("paid", "failed", "returned")
MAX_BYTES = 10 * 2**20


@dataclass(frozen=True)
class Line:
    line_no: int
    reference: str
    account_masked: str | None
    amount: Decimal
    paid_on: date
    status: str


def parse_statement(data: bytes) -> tuple[list[Line], list[dict[str, Any]]]:
    """The statement's lines, or the errors (line, column, reason) that make it unreadable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [{"line": None, "column": None, "reason": "the file is not UTF-8 text"}]
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        return [], [{"line": None, "column": None, "reason": f"not a CSV file: {exc}"}]
    reader = iter(rows)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        return [], [{"line": 1, "column": c, "reason": "missing column"} for c in missing]
    at = {c: header.index(c) for c in COLUMNS}
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in at.items()}
        found = []
        if not cells["reference"] or "\x00" in cells["reference"]:
            found.append(("reference", "required"))
        try:
            amount = Decimal(cells["amount"])
            if amount <= 0 or amount != amount.quantize(Decimal("0.01")):
                raise InvalidOperation
        except InvalidOperation:
            found.append(("amount", f"{cells['amount']!r} is not a positive amount with at most 2 decimals"))
            amount = Decimal(0)
        try:
            paid_on = date.fromisoformat(cells["date"])
        except ValueError:
            found.append(("date", f"{cells['date']!r} is not a date (YYYY-MM-DD)"))
            paid_on = date.min
        if cells["status"].lower() not in STATUSES:
            found.append(("status", f"{cells['status']!r} is not one of {', '.join(STATUSES)}"))
        errors += [{"line": line_no, "column": c, "reason": r} for c, r in found]
        if not found:
            lines.append(Line(line_no, cells["reference"], cells["account_masked"] or None, amount, paid_on,
                              cells["status"].lower()))
    if not lines and not errors:
        errors.append({"line": None, "column": None, "reason": "the statement has no lines"})
    return lines, errors


def _exception(line: Line, kind: str, detail: str, disbursement_id: str | None = None) -> dict[str, Any]:
    return {"line": line.line_no, "reference": line.reference, "kind": kind, "detail": detail,
            "disbursement_id": disbursement_id}


@router.post("/statements", status_code=201, responses={**ERRORS, 201: {"description": "The reconciliation report"}},
             summary="Import a payment channel's statement (CSV) and reconcile it",
             openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {
                 "type": "string", "description": "reference,account_masked,amount,date,status"}}}}})
async def import_statement(request: Request, channel: str = Query(pattern=f"^({'|'.join(ev.PAYMENT_CHANNELS)})$")):
    who = current_principal(request, "importing a statement")
    if "county_office" not in who.roles:
        raise DomainError("forbidden", "only a county office imports payment-channel statements", 403,
                          action="funds:pay")
    actor = who.id
    funds = funds_of(request)
    data = await request.body()
    if len(data) > MAX_BYTES:
        return problem(413, "file_too_large", f"the statement is larger than {MAX_BYTES // 2**20} MB")
    lines, errors = parse_statement(data)
    if errors:
        return problem(422, "invalid_statement", "The statement has errors; nothing was reconciled",
                       f"{len(errors)} error(s)", errors=errors)
    digest = hashlib.sha256(data).hexdigest()
    statement_id = str(uuid.uuid4())
    meta = Metadata(actor=actor, correlation_id=correlation_id.get())
    exceptions: list[dict[str, Any]] = []
    reconciled: list[str] = []
    async with runtime_of(request).pool.acquire() as conn:
        async with conn.transaction():
            known = await conn.fetchrow("SELECT statement_id, importer_jurisdiction FROM fd_statements"
                                        " WHERE file_sha256 = $1", digest)
            if known is not None:
                theirs = known["importer_jurisdiction"]
                if theirs is not None and who.covers(theirs):
                    raise DomainError("statement_already_imported", "this file was imported as statement "
                                      f"{known['statement_id']}", 409, statement_id=known["statement_id"])
                raise DomainError("statement_already_imported", "this file was already imported (by another "
                                  "jurisdiction)", 409)
            seen: set[str] = set()
            touched: list[Disbursement] = []
            for line in lines:
                if line.reference in seen:
                    exceptions.append(_exception(line, "duplicate_line", "the reference appears twice in the file"))
                    continue
                seen.add(line.reference)
                row = await conn.fetchrow(
                    "SELECT disbursement_id, village_code, status, amount, paid_on, account_masked FROM"
                    " fd_disbursements WHERE channel = $1 AND channel_reference = $2", channel, line.reference)
                if row is None:
                    exceptions.append(_exception(line, "unmatched", "no payment with this reference"))
                    continue
                if not who.covers(region12(row["village_code"])):
                    exceptions.append(_exception(line, "outside_jurisdiction", "the payment with this reference "
                                                 f"is outside jurisdiction {who.jurisdiction}"))
                    continue
                did = row["disbursement_id"]
                problems = []
                if row["status"] == "reconciled":
                    problems.append(("already_reconciled", "the payment is already reconciled"))
                elif line.status != "paid" or row["status"] != "paid":
                    problems.append(("status_mismatch", f"the channel says {line.status}, the payment is "
                                     f"{row['status']}"))
                if line.amount != row["amount"]:
                    problems.append(("amount_mismatch", f"the channel paid {fmt(line.amount)}, the payment is "
                                     f"{fmt(row['amount'])}"))
                if row["paid_on"] is not None and line.paid_on != row["paid_on"]:
                    problems.append(("date_mismatch", f"the channel paid on {line.paid_on}, recorded "
                                     f"{row['paid_on']}"))
                if line.account_masked and row["account_masked"] and line.account_masked != row["account_masked"]:
                    problems.append(("account_mismatch", f"the channel paid {line.account_masked}, the payment "
                                     f"names {row['account_masked']}"))
                if problems:
                    exceptions += [_exception(line, kind, detail, did) for kind, detail in problems]
                    continue
                d = await funds.load(conn, Disbursement, did)
                d.reconcile(statement_id=statement_id, statement_line=str(line.line_no), now=funds.clock.now())
                touched.append(d)
                reconciled.append(did)
            await conn.execute(
                "INSERT INTO fd_statements (statement_id, channel, file_sha256, lines, matched, exceptions,"
                " imported_by, importer_jurisdiction) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", statement_id, channel,
                digest, len(lines), len(reconciled), len(exceptions), actor, who.jurisdiction)
            for i, e in enumerate(exceptions):
                await conn.execute(
                    "INSERT INTO fd_reconciliation_exceptions (statement_id, line_no, reference, kind, detail,"
                    " disbursement_id) VALUES ($1, $2, $3, $4, $5, $6)",
                    statement_id, i + 1, e["reference"], e["kind"], f"line {e['line']}: {e['detail']}",
                    e["disbursement_id"])
            await funds.save(conn, touched, meta)
            for d in touched:
                await conn.execute("UPDATE fd_disbursements SET status = $2, version = $3 WHERE disbursement_id = $1",
                                   d.id, d.status, d.version)
    body = {"statement_id": statement_id, "channel": channel, "lines": len(lines), "reconciled": reconciled,
            "exceptions": exceptions, "importer_jurisdiction": who.jurisdiction}
    return JSONResponse(body, status_code=201, headers={"Location": f"/statements/{statement_id}"})


@router.get("/statements/{statement_id}", responses=ERRORS, summary="An imported statement and its exceptions")
async def get_statement(statement_id: uuid.UUID, request: Request):
    pool = runtime_of(request).pool
    row = await pool.fetchrow("SELECT statement_id, channel, imported_at, lines, matched, exceptions, imported_by,"
                              " importer_jurisdiction FROM fd_statements WHERE statement_id = $1", str(statement_id))
    if row is None:
        raise DomainError("statement_not_found", f"statement {statement_id} does not exist", 404)
    # Imported before importers were recorded: no jurisdiction, readable at province level only.
    require_covers(request, row["importer_jurisdiction"], f"statement {statement_id}")
    exceptions = await pool.fetch("SELECT line_no, reference, kind, detail, disbursement_id FROM"
                                  " fd_reconciliation_exceptions WHERE statement_id = $1 ORDER BY line_no",
                                  str(statement_id))
    out = dict(row)
    out["imported_at"] = out["imported_at"].isoformat()
    out["exception_list"] = [dict(e) for e in exceptions]
    return out

