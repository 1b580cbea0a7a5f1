"""Data exchanges with other departments and the national system (the registry's side).

* ``POST /comparisons``: bulk comparison of up to 100 000 ID numbers in one request; per ID,
  whether the person is in the register within the caller's jurisdiction and the facts the
  purpose allows (``comparison``). ``POST /comparison-jobs``: the same for an uploaded file
  (up to a million IDs), processed in the background in batches; ``GET /comparison-jobs/{id}``
  reports progress, ``/results`` the answers by row. ID numbers are hashed with the registry's
  key as soon as they are read: jobs keep hashes and masked forms only.
* ``POST /status-checks``: one person, for a hospital or school desk.
* ``GET /cards/{household_id}/{token}``: the household card's public, masked view (the QR
  code's link); ``GET /households/{id}/card``: the card's link and QR code (signed-in).
* ``POST /reconciliations/national``: compare the national system's extract with the register.
* ``POST /inbound/deaths``: civil registration's death records become member-removal change
  requests, each reviewed by a ``data_change`` case before the member is removed.

Responses that disclose people carry ``_disclosed`` (household and member ids): the gateway
records them in the access log and removes the field before answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import date, datetime, timezone
from typing import Any, Literal, Mapping

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from eventkit.errors import DomainError
from eventkit.events import Metadata
from eventkit.principal import Principal, allowed, jurisdiction_prefix
from eventkit.runtime import current_principal, domain_problem, problem, require_covers, runtime_of
from eventkit.telemetry import correlation_id
from eventkit.uploads import Upload, UploadError, read_upload

from . import cards, comparison, deaths, identity, national
from .commands import Registry
from .queries import household_village

log = logging.getLogger("tpa.registry.exchanges")
router = APIRouter(tags=["exchanges"])

_LOOKUP = """
SELECT m.id_hmac::text AS id_hmac, m.household_id::text AS household_id, m.member_id::text AS member_id,
       h.village_code::text AS village_code, h.status, m.active, m.schooling_stage, h.attribute,
       h.monitoring_object_type, h.doc->>'minimum_living_tier' AS minimum_living_tier
FROM ledger_members m JOIN ledger_households h USING (household_id)
WHERE m.id_hmac = ANY($1::bpchar[])"""


def _registry(request: Request) -> Registry:
    return runtime_of(request).state["registry"]


async def lookup(conn: Any, hmacs: list[str]) -> dict[str, list[comparison.Match]]:
    """Ledger rows of the given keyed hashes, by hash (in batches, one indexed query each)."""
    rows: list[tuple[str, comparison.Match]] = []
    for batch in comparison.chunks(hmacs, comparison.LOOKUP_BATCH_SIZE):
        for r in await conn.fetch(_LOOKUP, list(batch)):
            rows.append((r["id_hmac"], comparison.Match(
                r["household_id"], r["member_id"], r["village_code"], r["status"], r["active"], r["schooling_stage"],
                r["attribute"], r["monitoring_object_type"], r["minimum_living_tier"])))
    return comparison.group_matches(rows)


def _purpose_allowed(principal: Principal, purpose: str) -> None:
    scope = comparison.scope_for_purpose(purpose)
    if not allowed(principal, scope):
        raise DomainError("purpose_not_allowed", f"{principal.subject} may not compare for {purpose} "
                          f"(needs {scope})", 403, purpose=purpose)


def _disclosed(answer: comparison.Answer, purpose: str) -> dict[str, Any]:
    return {"purpose": purpose, "households": answer.disclosed_household_ids,
            "members": answer.disclosed_member_ids}


# -- bulk comparison ------------------------------------------------------------------------------

Purpose = Literal["education", "health_insurance", "civil_affairs"]


class ComparisonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Purpose = Field(description="Why the department compares: it decides which facts come back.")
    id_numbers: list[str] = Field(min_length=1, max_length=comparison.MAX_IDS_PER_REQUEST, description=(
        "Resident ID numbers (18 characters); invalid ones are answered one by one with their error."))


@router.post("/comparisons", summary="Compare up to 100 000 ID numbers with the register",
             responses={403: {"description": "The caller's scopes do not allow this purpose"}})
async def compare(request: Request, body: ComparisonRequest) -> Response:
    try:
        principal = current_principal(request, "a comparison")
        _purpose_allowed(principal, body.purpose)
        key = _registry(request).hmac_key
        prepared = await asyncio.to_thread(comparison.prepare_ids, body.id_numbers, key,
                                           today=_today())
        async with runtime_of(request).pool.acquire() as conn:
            matches = await lookup(conn, prepared.distinct_hmacs)
        answer = comparison.answer(prepared, matches, body.purpose, covers=principal.covers)
    except DomainError as exc:
        return domain_problem(exc)
    return _json({"purpose": body.purpose, "summary": answer.summary(), "results": answer.results,
                  "_disclosed": _disclosed(answer, f"comparison:{body.purpose}")})


async def _uploaded(request: Request, limit: int) -> Upload:
    """The uploaded file (``eventkit.uploads``: UploadError for a body it refuses); an empty one is
    refused (``empty_file``)."""
    upload = await read_upload(request, limit)
    if not upload.data:
        raise DomainError("empty_file", "the uploaded file is empty")
    return upload


def _rows_rejected(code: str, title: str, errors: list[dict[str, Any]]) -> Response:
    """422 for a file with row-numbered errors, listing them (the first 1000)."""
    return problem(422, code, title, f"{len(errors)} error(s); correct the rows listed", errors=errors[:1000])


def _json(body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(data, status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})


def _today() -> date:
    return datetime.now(timezone.utc).date()


class StatusCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_number: str = Field(min_length=1, max_length=18, description="The person's resident ID number.")
    purpose: Purpose | None = Field(default=None, description=(
        "With a purpose, the facts it allows; without, register status only (scope status:read)."))


@router.post("/status-checks", summary="Is this person in the register, with what status (one person)")
async def status_check(request: Request, body: StatusCheck) -> Response:
    try:
        principal = current_principal(request, "a status check")
        if body.purpose is not None:
            _purpose_allowed(principal, body.purpose)
        elif not allowed(principal, "status:read"):
            raise DomainError("purpose_not_allowed", f"{principal.subject} may not check statuses (needs "
                              "status:read, or a comparison purpose)", 403)
        prepared = comparison.prepare_ids([body.id_number], _registry(request).hmac_key, today=_today())
        async with runtime_of(request).pool.acquire() as conn:
            matches = await lookup(conn, prepared.distinct_hmacs)
        answer = comparison.answer(prepared, matches, body.purpose or "education", covers=principal.covers)
    except DomainError as exc:
        return domain_problem(exc)
    result = dict(answer.results[0])
    result.pop("index", None)
    if body.purpose is None:
        result = {k: v for k, v in result.items() if k in ("id_masked", "in_register", "household_status", "error")}
    if "error" in result:
        return problem(422, result["error"], "Invalid request", "the ID number is not valid", field="id_number")
    return _json({**result, "purpose": body.purpose,
                  "_disclosed": _disclosed(answer, f"status check:{body.purpose or 'status'}")})


# -- comparison jobs ------------------------------------------------------------------------------

@router.post("/comparison-jobs", status_code=202, summary="Compare an uploaded file of ID numbers (asynchronous)",
             responses={202: {"description": "Accepted: poll the job (Location) for progress"}})
async def create_job(request: Request, purpose: Purpose = Query(description="The comparison's purpose.")) -> Response:
    try:
        principal = current_principal(request, "a comparison")
        _purpose_allowed(principal, purpose)
        upload = await _uploaded(request, comparison.MAX_FILE_BYTES)
        parsed = await asyncio.to_thread(comparison.parse_id_file, upload.data, upload.hint)
        del upload
        prepared = await asyncio.to_thread(comparison.prepare_ids, parsed.values, _registry(request).hmac_key,
                                           today=_today(), limit=comparison.MAX_IDS_PER_FILE)
    except UploadError as exc:
        return problem(exc.status, exc.code, str(exc))
    except DomainError as exc:
        return domain_problem(exc)
    job_id = uuid.uuid4()
    rows = [(job_id, i, row, prepared.hmacs[i], prepared.masked[i], prepared.errors.get(i))
            for i, row in enumerate(parsed.row_numbers)]
    async with runtime_of(request).pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO comparison_jobs (job_id, owner, purpose, jurisdiction, status, total, invalid)
               VALUES ($1, $2, $3, $4, 'queued', $5, $6)""",
            job_id, principal.subject, purpose, principal.jurisdiction, len(rows), prepared.invalid_count)
        await conn.copy_records_to_table("comparison_job_items", records=rows,
                                         columns=["job_id", "idx", "row_no", "id_hmac", "id_masked", "error"])
    runtime_of(request).state["jobs_wakeup"].set()
    return _json(await _job_view(runtime_of(request).pool, job_id), 202,
                 {"Location": f"/comparison-jobs/{job_id}"})


async def _job_view(pool: Any, job_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(
        """SELECT j.*, (SELECT count(*) FROM comparison_job_items i WHERE i.job_id = j.job_id AND i.result IS NULL)
                  AS todo
           FROM comparison_jobs j WHERE j.job_id = $1""", job_id)
    total = row["total"] or 0
    processed = total - row["todo"]
    status = "running" if row["status"] == "queued" and processed > 0 else row["status"]
    return {"job_id": str(job_id), "purpose": row["purpose"], "status": status, "total": total,
            "processed": processed, "progress": round(processed / total, 4) if total else 1.0,
            "matched": row["matched"], "invalid": row["invalid"], "created_at": row["created_at"].isoformat(),
            "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None, "error": row["error"]}


async def _own_job(request: Request, job_id: uuid.UUID) -> Any:
    principal = current_principal(request, "a comparison job")
    row = await runtime_of(request).pool.fetchrow("SELECT owner, status, purpose, jurisdiction FROM comparison_jobs"
                                                  " WHERE job_id = $1", job_id)
    if row is None or row["owner"] != principal.subject:  # another caller's job is as good as unknown
        raise DomainError("job_not_found", f"comparison job {job_id} is not known", 404)
    return row


@router.get("/comparison-jobs/{job_id}", summary="A comparison job's progress")
async def get_job(request: Request, job_id: uuid.UUID) -> Response:
    try:
        await _own_job(request, job_id)
    except DomainError as exc:
        return domain_problem(exc)
    return _json(await _job_view(runtime_of(request).pool, job_id))


@router.get("/comparison-jobs/{job_id}/results", summary="A finished job's answers, by row of the file")
async def job_results(request: Request, job_id: uuid.UUID, offset: int = Query(0, ge=0, le=1_000_000),
                      limit: int | None = Query(None, ge=1, le=comparison.MAX_IDS_PER_FILE, description=(
                          "Rows per page (JSON: 10 000 by default; CSV: the whole file by default).")),
                      format: Literal["json", "csv"] = Query("json")) -> Response:
    limit = limit or (comparison.MAX_IDS_PER_FILE if format == "csv" else 10_000)
    try:
        job = await _own_job(request, job_id)
        if job["status"] != "done":
            raise DomainError("job_not_finished", f"comparison job {job_id} is {job['status']}", 409)
    except DomainError as exc:
        return domain_problem(exc)
    rows = await runtime_of(request).pool.fetch(
        "SELECT idx, row_no, id_masked, error, result FROM comparison_job_items WHERE job_id = $1 "
        "ORDER BY idx OFFSET $2 LIMIT $3", job_id, offset, limit)
    results, households, members = [], set(), set()
    for r in rows:
        item = json.loads(r["result"]) if r["result"] else {}
        households.update(item.pop("_households", []))
        members.update(item.pop("_members", []))
        entry = {"row": r["row_no"], "id_masked": r["id_masked"], **item}
        if r["error"]:
            entry["error"] = r["error"]
        results.append(entry)
    disclosed = {"purpose": f"comparison:{job['purpose']}", "households": sorted(households),
                 "members": sorted(members)}
    if format == "csv":
        data = comparison.results_csv(results, job["purpose"])
        return Response(data, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="comparison-{job_id}.csv"', "Cache-Control": "no-store",
            "X-TPA-Disclosed": json.dumps(disclosed, separators=(",", ":"))})
    return _json({"job_id": str(job_id), "purpose": job["purpose"], "offset": offset, "results": results,
                  "next_offset": offset + len(rows) if len(rows) == limit else None, "_disclosed": disclosed})


async def run_jobs(runtime: Any, batch: int = 5_000) -> None:
    """The background worker: takes queued or interrupted jobs (SKIP LOCKED, so replicas share the
    work) and answers their items batch by batch, each batch in its own transaction (progress is
    visible at once and a restart resumes where it stopped)."""
    wakeup: asyncio.Event = runtime.state["jobs_wakeup"]
    while True:
        try:
            worked = await _run_one(runtime.pool, batch)
            await _forget_old_jobs(runtime.pool)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the job is retried (and failed after 3 tries)
            log.exception("comparison job worker failed")
            worked = False
        if not worked:
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), 2.0)
            except asyncio.TimeoutError:
                pass


JOB_RETENTION_DAYS = 7
MAX_JOB_ATTEMPTS = 3


async def _forget_old_jobs(pool: Any) -> None:
    """Jobs (hashes and answers) are kept a week after they end."""
    await pool.execute("DELETE FROM comparison_jobs WHERE finished_at < now() - make_interval(days => $1)",
                       JOB_RETENTION_DAYS)


async def _count_failure(pool: Any, job_id: uuid.UUID, exc: Exception) -> None:
    """Count a failed attempt of a job; the third fails it for good (its error says what failed)."""
    try:
        await pool.execute(
            """UPDATE comparison_jobs SET attempts = attempts + 1,
                   status = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE status END,
                   error = CASE WHEN attempts + 1 >= $2 THEN $3 ELSE error END,
                   finished_at = CASE WHEN attempts + 1 >= $2 THEN now() ELSE finished_at END
               WHERE job_id = $1""", job_id, MAX_JOB_ATTEMPTS, type(exc).__name__)
    except Exception:  # noqa: BLE001 - the database may be away; the next round tries again
        log.warning("could not count a comparison job failure", exc_info=True)


async def _run_one(pool: Any, batch: int) -> bool:
    """Answer one pending job. Its row stays locked (FOR UPDATE, in a transaction kept open) while a
    second connection answers the items batch by batch, so that other workers skip it; if this
    process dies the lock goes with it and another worker resumes with the unanswered items. A
    failure is counted on the job (after the lock's transaction has ended) and raised."""
    job_id = None
    try:
        async with pool.acquire() as lock_conn, lock_conn.transaction():
            job = await lock_conn.fetchrow(
                """SELECT job_id, purpose, jurisdiction FROM comparison_jobs WHERE status IN ('queued', 'running')
                   ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED""")
            if job is None:
                return False
            job_id = job["job_id"]
            prefix = jurisdiction_prefix(job["jurisdiction"])
            async with pool.acquire() as conn:
                while True:
                    async with conn.transaction():
                        items = await conn.fetch(
                            "SELECT idx, id_hmac::text AS id_hmac, id_masked, error FROM comparison_job_items"
                            " WHERE job_id = $1 AND result IS NULL ORDER BY idx LIMIT $2", job_id, batch)
                        if not items:
                            break
                        results = await _answer_items(conn, items, job["purpose"], prefix)
                        await conn.execute(
                            """UPDATE comparison_job_items i SET result = r.result::jsonb
                               FROM unnest($2::int[], $3::text[]) AS r(idx, result)
                               WHERE i.job_id = $1 AND i.idx = r.idx""",
                            job_id, [i["idx"] for i in items], [json.dumps(r, ensure_ascii=False) for r in results])
            await lock_conn.execute(
                """UPDATE comparison_jobs SET status = 'done', processed = total, finished_at = now(),
                     matched = (SELECT count(*) FROM comparison_job_items
                                WHERE job_id = $1 AND (result->>'in_register')::boolean)
                   WHERE job_id = $1""", job_id)
        return True
    except Exception as exc:
        if job_id is not None:
            await _count_failure(pool, job_id, exc)
        raise


async def _answer_items(conn: Any, items: list[Any], purpose: str, prefix: str) -> list[dict[str, Any]]:
    hmacs = tuple(i["id_hmac"] for i in items)
    errors = {n: i["error"] for n, i in enumerate(items) if i["error"]}
    distinct = list(dict.fromkeys(h for h in hmacs if h))
    prepared = comparison.Prepared(hmacs, tuple(i["id_masked"] for i in items), errors, distinct)
    matches = await lookup(conn, distinct)
    def covers(code: str) -> bool:
        return code.startswith(prefix)

    answer = comparison.answer(prepared, matches, purpose, covers=covers)
    out = []
    for n, result in enumerate(answer.results):
        item = {k: v for k, v in result.items() if k not in ("index", "id_masked", "error")}
        picked = comparison.pick(matches.get(hmacs[n] or ""), covers) if result.get("in_register") else None
        if picked is not None:  # who was disclosed, for the access log of the results' readers
            item["_households"], item["_members"] = [picked.household_id], [picked.member_id]
        out.append(item)
    return out


# -- household cards ------------------------------------------------------------------------------

def card_key(registry: Registry) -> bytes:
    """The key of card tokens, derived from the registry's hashing key (one secret to keep; a new
    hashing key also reissues every card)."""
    import hashlib
    import hmac as _hmac

    return _hmac.new(registry.hmac_key, b"tpa-household-card-v1", hashlib.sha256).digest()


async def _ledger_doc(pool: Any, household_id: uuid.UUID) -> dict[str, Any] | None:
    raw = await pool.fetchval("SELECT doc FROM ledger_households WHERE household_id = $1", household_id)
    return json.loads(raw) if isinstance(raw, str) else raw


@router.get("/cards/{household_id}/{token}", summary="A household card's public view (masked; the QR code's link)",
            response_class=Response, responses={200: {"content": {"text/html": {}, "application/json": {}}},
                                                404: {"description": "No such card"}})
async def public_card(request: Request, household_id: uuid.UUID, token: str) -> Response:
    registry = _registry(request)
    if len(token) > 64 or not cards.verify_card_token(card_key(registry), str(household_id), token):
        return problem(404, "card_not_found", "Not found", "no household card has this link")
    doc = await _ledger_doc(runtime_of(request).pool, household_id)
    if doc is None:
        return problem(404, "card_not_found", "Not found", "no household card has this link")
    card = cards.public_card(doc, today=_today())
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
    if "application/json" in request.headers.get("accept", "") and "text/html" not in request.headers.get("accept", ""):
        return JSONResponse(card, headers=headers)
    url = cards.card_url(runtime_of(request).settings.public_base_url, str(household_id), token)
    return HTMLResponse(cards.render_card_html(card, url), headers=headers)


@router.get("/households/{household_id}/card", summary="The household card's link and QR code (signed-in)",
            responses={200: {"content": {"application/json": {}, "image/svg+xml": {}, "image/png": {}}}})
async def card_link(request: Request, household_id: uuid.UUID,
                    format: Literal["json", "svg", "png"] = Query("json")) -> Response:
    pool = runtime_of(request).pool
    village = await household_village(pool, household_id)
    if village is None:
        return problem(404, "household_not_found", "Not found", f"household {household_id} is not registered")
    try:
        require_covers(request, village, f"household {household_id}")
    except DomainError as exc:
        return domain_problem(exc)
    registry = _registry(request)
    token = cards.card_token(card_key(registry), str(household_id))
    url = cards.card_url(runtime_of(request).settings.public_base_url, str(household_id), token)
    if format == "svg":
        return Response(cards.qr_svg(url), media_type="image/svg+xml")
    if format == "png":
        return Response(cards.qr_png(url), media_type="image/png")
    return JSONResponse({"household_id": str(household_id), "url": url, "qr_svg": cards.qr_svg(url)})


# -- reconciliation with the national system --------------------------------------------------------

@router.post("/reconciliations/national", summary="Compare the national system's extract with the register",
             responses={200: {"content": {"application/json": {}, "text/csv": {}}},
                        422: {"description": "The file has errors (row-numbered): nothing was compared"}})
async def reconcile_national(request: Request, year: int = Query(ge=2013, le=2100),
                             region: str | None = Query(None, pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$"),
                             format: Literal["json", "csv"] = Query("json")) -> Response:
    try:
        principal = current_principal(request, "a reconciliation")
        scope = region or principal.jurisdiction
        require_covers(request, scope, f"region {scope}")
        upload = await _uploaded(request, national.MAX_FILE_BYTES)
        key = _registry(request).hmac_key
        extract = await asyncio.to_thread(
            national.parse_extract, upload.data, upload.hint or "",
            lambda n: identity.id_hmac(key, n), name_hasher=lambda n: national.name_hmac(key, n), today=_today())
    except UploadError as exc:
        return problem(exc.status, exc.code, str(exc))
    except DomainError as exc:
        return domain_problem(exc)
    if extract.errors:
        return _rows_rejected("extract_rejected", "The extract has errors: nothing was compared", extract.errors)
    outside = sorted(v for v in extract.villages if not principal.covers(v))
    if outside:
        return problem(403, "outside_jurisdiction", "Forbidden",
                       f"the extract has villages outside jurisdiction {principal.jurisdiction}", villages=outside[:50])
    prefix = jurisdiction_prefix(scope)
    hashes = sorted({m.id_hmac for h in extract.households for m in h.members})
    pool = runtime_of(request).pool
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT h.doc FROM ledger_households h WHERE h.village_code LIKE $1 || '%'
               UNION
               SELECT h.doc FROM ledger_households h JOIN ledger_members m USING (household_id)
               WHERE m.id_hmac = ANY($2::bpchar[]) AND h.village_code LIKE $3 || '%'""",
            prefix, hashes, jurisdiction_prefix(principal.jurisdiction))
        docs = [json.loads(r["doc"]) if isinstance(r["doc"], str) else r["doc"] for r in rows]
        member_ids = [uuid.UUID(m["member_id"]) for d in docs for m in d.get("members", [])]
        names = {str(r["member_id"]): national.name_hmac(_registry(request).hmac_key, r["name"]) for r in
                 await conn.fetch("SELECT member_id, name FROM person_vault WHERE member_id = ANY($1)"
                                  " AND name IS NOT NULL AND erased_at IS NULL", member_ids)}
    households = [national.RegistryHousehold.from_ledger(d, year, names) for d in docs]
    report = national.reconcile(extract, households, year=year, region=scope)
    if format == "csv":
        return Response(national.report_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="national-reconciliation-{year}.csv"',
            "Cache-Control": "no-store"})
    return _json(report.to_json())


# -- inbound death records --------------------------------------------------------------------------

@router.post("/inbound/deaths", status_code=201, summary="Death records from civil registration",
             responses={201: {"description": "Member-removal change requests opened (reviewed before they apply)"},
                        409: {"description": "This file was already received"},
                        422: {"description": "The file has errors (row-numbered): nothing was recorded"}})
async def inbound_deaths(request: Request) -> Response:
    try:
        principal = current_principal(request, "death records")
        upload = await _uploaded(request, deaths.MAX_FILE_BYTES)
        registry = _registry(request)
        batch = await asyncio.to_thread(deaths.parse_death_records, upload.data, upload.hint or "",
                                        hasher=deaths.keyed_hasher(registry.hmac_key), today=_today())
    except UploadError as exc:
        return problem(exc.status, exc.code, str(exc))
    except DomainError as exc:
        return domain_problem(exc)
    if batch.errors:
        return _rows_rejected("file_rejected", "The file has errors: nothing was recorded", batch.errors)
    pool = runtime_of(request).pool
    prefix = jurisdiction_prefix(principal.jurisdiction)
    outcome: dict[str, list[dict[str, Any]]] = {"requested": [], "not_found": [], "already_removed": [],
                                                 "pending": [], "refused": []}
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO inbound_files (sha256, kind, received_by) VALUES ($1, 'deaths', $2) "
            "ON CONFLICT DO NOTHING RETURNING sha256", batch.sha256, principal.subject)
        if inserted is None:
            return problem(409, "already_received", "Conflict", "this file of death records was already received")
        found = {r["id_hmac"]: r for r in await conn.fetch(
            """SELECT m.id_hmac::text AS id_hmac, m.member_id::text AS member_id, m.household_id::text AS household_id,
                      m.active FROM ledger_members m JOIN ledger_households h USING (household_id)
               WHERE m.id_hmac = ANY($1::bpchar[]) AND h.village_code LIKE $2 || '%'
               ORDER BY m.active""", [r.id_hmac for r in batch.records], prefix)}
        for record in batch.records:
            row = found.get(record.id_hmac)
            ref = {"row": record.row, "id_masked": record.id_masked}
            if row is None:
                outcome["not_found"].append(ref)
                continue
            if not row["active"]:
                outcome["already_removed"].append({**ref, "household_id": row["household_id"]})
                continue
            pending = await conn.fetchval(
                "SELECT id FROM change_requests WHERE household_id = $1 AND kind = 'member_removal' AND target = $2"
                " AND status = 'pending'", uuid.UUID(row["household_id"]), row["member_id"])
            if pending is not None:
                outcome["pending"].append({**ref, "household_id": row["household_id"],
                                           "change_request_id": str(pending)})
                continue
            household = await registry.load(conn, row["household_id"], None)
            proposed = {"reason": "death", "removed_on": record.date_of_death.isoformat(),
                        "note": f"civil registration{' ' + record.certificate_ref if record.certificate_ref else ''}"}
            try:  # the change is tried on a copy first: a refusal writes nothing
                change_request_id, _ = await registry.request_change(
                    conn, household, kind="member_removal", target=row["member_id"], proposed=proposed,
                    reason="death record from civil registration", requested_by=principal.id,
                    meta=Metadata(actor=principal.id, correlation_id=correlation_id.get()))
            except DomainError as exc:  # e.g. the head of a household with other members
                outcome["refused"].append({**ref, "household_id": row["household_id"], "code": exc.code,
                                           "detail": str(exc)})
                continue
            outcome["requested"].append({**ref, "household_id": row["household_id"], "member_id": row["member_id"],
                                         "change_request_id": change_request_id})
    return _json({"received": len(batch.records), **{k: v for k, v in outcome.items()},
                  "summary": {k: len(v) for k, v in outcome.items()}}, 201)
