"""Registry query API over the household ledger (read model, eventually consistent).

* ``GET /households/{id}``: the household ledger. Members are masked. With
  ``?personal=true`` the vault's names, ID numbers and phones are joined in, but
  only for a caller allowed ``household:read_personal`` (the gateway records the
  read in the access log). A household outside the caller's jurisdiction is a 403.
* ``GET /households``: search within the caller's jurisdiction; summary rows never
  contain personal data.
* ``GET /villages/{code}/statistics``, ``GET /regions/{code}/statistics``: SQL
  aggregates over the ledger tables.

The ledger follows the event store through Kafka, so a change is visible here
shortly after the command that made it: compare ``version`` (also the ``ETag``)
with the version a command returned. Only a household the ledger does not have
yet (just registered) is folded from the event store on the spot, with the same
``fold``; the response then says ``X-TPA-Read-Model: event-store``.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import HOUSEHOLD, REGION_CODE_PATTERN, VILLAGE_CODE_PATTERN
from eventkit.principal import allowed
from eventkit.runtime import current_principal, jurisdiction_prefix_of, problem, require_covers, runtime_of

from . import codes, identity, regions
from .ledger import POOR_STATUSES, LedgerError, fold
from .schemas import Attribute, Cause, MonitoringType, Problem

router = APIRouter(tags=["ledger"])

Status = Literal[tuple(codes.codes("household_status"))]  # type: ignore[valid-type]


# -- response models -----------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PersonalData(_Out):
    """From the vault; only with ``personal=true`` and the gateway's authorisation header."""

    name: str | None
    id_number: str | None
    phone: str | None
    erased: bool = Field(description="The person's data was erased from the vault.")


class Joined(_Out):
    reason: str | None
    on: date | None


class Removed(_Out):
    reason: str
    on: date | None
    note: str | None


class LedgerMember(_Out):
    member_id: str
    relation: str = Field(description="Relation to the head when the member joined ('head' for the first head).")
    sex: str
    birth_year: int
    ethnicity: str | None
    name_masked: str | None = Field(description="Masked name; null once the personal data is erased.")
    id_masked: str | None = Field(description="Masked ID number; null once the personal data is erased.")
    facts: dict[str, Any] = Field(description="Health, education, schooling, skills, work, insurance codes.")
    active: bool
    joined: Joined
    removed: Removed | None
    personal_data_erased: bool
    erased_on: date | None
    personal: PersonalData | None = None


class StatusChange(_Out):
    from_: str | None = Field(alias="from")
    to: str
    effective_on: date | None
    basis: str | None = Field(description="registration, decision or vital_event.")
    case_id: str | None
    decision_event_id: str | None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class HeadChange(_Out):
    from_: str | None = Field(alias="from")
    to: str
    changed_on: date | None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Monitoring(_Out):
    object_type: str
    since: date | None
    case_id: str | None


class MonitoringChange(_Out):
    change: Literal["designated", "risk_eliminated"]
    object_type: str | None
    effective_on: date | None
    case_id: str | None


class Income(_Out):
    year: int
    wage: str
    business: str
    property: str
    transfer: str
    business_expenses: str
    resident_members: int
    net_income: str
    per_capita_net_income: str


class ConditionItem(_Out):
    secured: bool
    assessed_on: date


class Conditions(_Out):
    assessed_on: date = Field(description="Date of the latest assessment.")
    items: dict[str, ConditionItem] = Field(description="Latest assessment of each item (the basic needs and guarantees, and more).")


class Causes(_Out):
    primary: str
    others: list[str]


class CadreAssignment(_Out):
    cadre_id: str
    unit: str
    assigned_on: date | None


class PastCadreAssignment(CadreAssignment):
    released_on: date | None
    reason: str | None


class Cadres(_Out):
    current: list[CadreAssignment]
    history: list[PastCadreAssignment]


class PlanMeasure(_Out):
    kind: str | None
    description: str | None


class Plan(_Out):
    measures: list[PlanMeasure]


class Coordinates(_Out):
    latitude: float
    longitude: float


class HouseholdLedgerView(_Out):
    """The household ledger: the household's current state and its history."""

    household_id: str
    version: int = Field(description="Stream version the ledger reflects (the household's ETag).")
    village_code: str
    county_code: str
    township_code: str
    registered_on: date | None
    address: str | None
    attribute: str | None
    identification_standard: str | None
    status: str
    head_member_id: str | None
    head_history: list[HeadChange]
    member_count: int = Field(description="Active members.")
    unlisted_members: int = Field(description="Members counted at registration but not listed (old records).")
    members: list[LedgerMember]
    status_history: list[StatusChange]
    monitoring: Monitoring | None
    monitoring_history: list[MonitoringChange]
    incomes: dict[str, Income] = Field(description="Latest income assessment by year.")
    conditions: Conditions | None
    causes: Causes | None
    cadres: Cadres
    plans: dict[str, Plan] = Field(description="Assistance plan by year.")
    coordinates: Coordinates | None


class HouseholdSummary(_Out):
    household_id: str
    village_code: str
    status: str
    attribute: str | None
    identification_standard: str | None
    primary_cause: str | None
    causes: list[str]
    monitoring_object_type: str | None
    member_count: int
    registered_on: date | None
    version: int


class HouseholdPage(BaseModel):
    items: list[HouseholdSummary]
    next: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


class StatusCount(BaseModel):
    status: str
    households: int
    people: int


class Share(BaseModel):
    code: str | None = Field(description="Cause or attribute code; null when not recorded.")
    households: int
    share: float = Field(description="Fraction of the households counted (0..1, 4 decimals).")


class VillageProfileView(BaseModel):
    effective_on: date
    rural_population: int
    registered_population: int
    poor_village: bool
    indicators: dict[str, Any]


class Statistics(BaseModel):
    code: str = Field(description="The village or region code asked for.")
    level: str
    households: int
    people: int = Field(description="Active members of the households in scope.")
    by_status: list[StatusCount]
    poor_people: int = Field(description="Active members of households that are identified or returned to poverty.")
    rural_population: int | None = Field(description="Sum of the latest village profiles' rural population.")
    poverty_incidence: float | None = Field(description="poor_people / rural_population (0..1, 6 decimals).")
    poverty_incidence_unknown_reason: str | None
    villages_with_profile: int
    villages_without_profile: int = Field(description="Villages with households in scope but no profile.")
    causes: list[Share] = Field(description="Primary poverty causes of the households that have one recorded.")
    attributes: list[Share] = Field(description="Household attributes of all households in scope.")
    profile: VillageProfileView | None = Field(default=None, description="The village's latest profile "
                                                                         "(village statistics only).")


ERRORS = {404: {"model": Problem}, 422: {"model": Problem}}


# -- helpers -------------------------------------------------------------------------

def _pool(request: Request) -> Any:
    return runtime_of(request).pool


def _json(raw: Any) -> Any:
    return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


def _scope(code: str) -> tuple[str, str, str, str]:
    """(normalised code, level, lowest village code, highest village code) of a region code.

    Accepts 2 (province), 4 (city), 6 (county), 9 (township) and 12 digits; raises RegionError.
    """
    padded = code + "0" * (12 - len(code)) if len(code) in (2, 4, 9) else code
    normal = regions.normalise(padded)
    prefix = regions.code_prefix(normal)
    return normal, regions.level_of(normal), prefix.ljust(12, "0"), prefix.ljust(12, "9")


# -- household ledger ----------------------------------------------------------------

@router.get("/households/{household_id}", response_model=HouseholdLedgerView, response_model_exclude_unset=True,
            responses={**ERRORS, 403: {"model": Problem}}, summary="The household ledger")
async def household_ledger(
    request: Request,
    household_id: uuid.UUID,
    personal: bool = Query(False, description="Add names, ID numbers and phones from the vault "
                                              "(needs the action household:read_personal)."),
):
    principal = current_principal(request)
    if personal and not allowed(principal, "household:read_personal"):
        return problem(403, "personal_data_not_allowed",
                       "Reading personal data needs the action household:read_personal", field="personal")
    pool = _pool(request)
    raw = await pool.fetchval("SELECT doc FROM ledger_households WHERE household_id = $1", household_id)
    source = "ledger"
    doc = _json(raw) if raw is not None else None
    if doc is None:
        # Registered a moment ago and not projected yet: read the creator's write from the store.
        rows = await pool.fetch(
            "SELECT event_type, version, data FROM events WHERE stream_id = $1 AND stream_type = $2"
            " ORDER BY version", str(household_id), HOUSEHOLD)
        try:
            doc = fold(dict(r) for r in rows)
        except LedgerError:
            doc = None
        source = "event-store"
    if doc is None:
        return problem(404, "household_not_found", f"household {household_id} is not registered",
                       household_id=str(household_id))
    if not principal.covers(doc["village_code"]):
        return problem(403, "outside_jurisdiction", "Forbidden",
                       f"household {household_id} is outside jurisdiction {principal.jurisdiction}")
    headers = {"ETag": f'"{doc["version"]}"', "X-TPA-Read-Model": source}
    if personal:
        rows = await pool.fetch(
            "SELECT member_id::text AS member_id, id_number, name, phone, erased_at FROM person_vault"
            " WHERE household_id = $1", household_id)
        vault = {r["member_id"]: r for r in rows}
        for m in doc["members"]:
            r = vault.get(m["member_id"])
            erased = r is None or r["erased_at"] is not None
            m["personal"] = {"name": None if erased else r["name"], "id_number": None if erased else r["id_number"],
                             "phone": None if erased else r["phone"], "erased": erased}
        headers["Cache-Control"] = "no-store"
    view = HouseholdLedgerView.model_validate(doc)
    return JSONResponse(view.model_dump(mode="json", exclude_unset=True, by_alias=True), headers=headers)


async def household_village(pool: Any, household_id: Any) -> str | None:
    """The village of a household (ledger, or its registration in the store), None if unknown."""
    village = await pool.fetchval("SELECT village_code FROM ledger_households WHERE household_id = $1",
                                  household_id)
    if village is None:
        village = await pool.fetchval(
            "SELECT data->>'village_code' FROM events WHERE stream_id = $1 AND stream_type = $2 AND version = 1",
            str(household_id), HOUSEHOLD)
    return village


# -- search --------------------------------------------------------------------------

_SUMMARY = ("household_id::text AS household_id, village_code, status, attribute, identification_standard,"
            " primary_cause, causes, monitoring_object_type, member_count, registered_on, version")


@router.get("/households", response_model=HouseholdPage, responses=ERRORS,
            summary="Search households (summary rows without personal data)")
async def search_households(
    request: Request,
    village_code: str | None = Query(None, pattern=VILLAGE_CODE_PATTERN, description="Exact village code."),
    region: str | None = Query(None, pattern=REGION_CODE_PATTERN,
                               description="Region code or prefix: 6 digits county, 9 township, 12 village "
                                           "(2 province and 4 city also work)."),
    status: Status | None = Query(None, description="Status code."),
    attribute: Attribute | None = Query(None, description="Household attribute code."),
    cause: Cause | None = Query(None, description="Poverty cause code, primary or other."),
    primary_cause: Cause | None = Query(None, description="Primary poverty cause code."),
    monitoring_object_type: MonitoringType | None = Query(None, description="Monitoring object type code."),
    id_number: str | None = Query(None, max_length=18,
                                  description="Resident ID number of an active member (exact). Prefer "
                                              "sending it through the gateway: URLs are logged."),
    limit: int = Query(50, ge=1, le=500),
    after: uuid.UUID | None = Query(None, description="Keyset cursor: the `next` of the previous page."),
    offset: int | None = Query(None, ge=0, le=100_000, description="Alternative to `after`."),
):
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if after is not None and offset is not None:
        return problem(422, "invalid_paging", "give either after or offset, not both", field="after")
    # Only the caller's jurisdiction is searched (a filter outside it finds nothing).
    where.append(f"village_code LIKE {arg(jurisdiction_prefix_of(request))} || '%'")
    if village_code is not None:
        where.append(f"village_code = {arg(village_code)}")
    if region is not None:
        try:
            _, _, low, high = _scope(region)
        except regions.RegionError as exc:
            return problem(422, "invalid_region", str(exc), field="region")
        where.append(f"village_code BETWEEN {arg(low)} AND {arg(high)}")
    if status is not None:
        where.append(f"status = {arg(status)}")
    if attribute is not None:
        where.append(f"attribute = {arg(attribute)}")
    if cause is not None:
        where.append(f"causes @> ARRAY[{arg(cause)}]::text[]")
    if primary_cause is not None:
        where.append(f"primary_cause = {arg(primary_cause)}")
    if monitoring_object_type is not None:
        where.append(f"monitoring_object_type = {arg(monitoring_object_type)}")
    if id_number is not None:
        try:
            rid = identity.validate_id_number(id_number)
        except identity.IdNumberError as exc:  # the message never repeats the number
            return problem(422, exc.code, str(exc), field="id_number")
        key = runtime_of(request).state["registry"].hmac_key
        where.append("household_id IN (SELECT household_id FROM ledger_members"
                     f" WHERE id_hmac = {arg(identity.id_hmac(key, rid.number))} AND active)")
    if after is not None:
        where.append(f"household_id > {arg(after)}")
    sql = f"SELECT {_SUMMARY} FROM ledger_households"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY household_id LIMIT {arg(limit + 1)}"
    if offset:
        sql += f" OFFSET {arg(offset)}"
    rows = await _pool(request).fetch(sql, *args)
    items = [HouseholdSummary.model_validate(dict(r)) for r in rows[:limit]]
    return HouseholdPage(items=items, next=items[-1].household_id if len(rows) > limit else None)


class SearchRequest(BaseModel):
    """Search filters sent in a body, so that an ID number never appears in a URL (URLs are logged)."""

    model_config = ConfigDict(extra="forbid")

    village_code: str | None = Field(None, pattern=VILLAGE_CODE_PATTERN)
    region: str | None = Field(None, pattern=REGION_CODE_PATTERN)
    status: Status | None = None
    attribute: Attribute | None = None
    cause: Cause | None = None
    primary_cause: Cause | None = None
    monitoring_object_type: MonitoringType | None = None
    id_number: str | None = Field(None, max_length=18)
    limit: int = Field(50, ge=1, le=500)
    after: uuid.UUID | None = None
    offset: int | None = Field(None, ge=0, le=100_000)


@router.post("/households/search", response_model=HouseholdPage, responses=ERRORS,
             summary="Search households; filters in the body (use this for ID-number searches)")
async def search_households_by_body(body: SearchRequest, request: Request):
    return await search_households(request, **body.model_dump())


# -- statistics ----------------------------------------------------------------------

def _shares(rows: list[Any], key: str) -> list[Share]:
    total = sum(r["households"] for r in rows)
    return [Share(code=r[key], households=r["households"],
                  share=round(r["households"] / total, 4) if total else 0.0) for r in rows]


async def _statistics(request: Request, code: str, level: str, low: str, high: str) -> Statistics:
    require_covers(request, code, f"region {code}")
    async with _pool(request).acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            status_rows = await conn.fetch(
                "SELECT status, count(*)::int AS households, coalesce(sum(member_count), 0)::int AS people"
                " FROM ledger_households WHERE village_code BETWEEN $1 AND $2 GROUP BY status ORDER BY status",
                low, high)
            cause_rows = await conn.fetch(
                "SELECT primary_cause, count(*)::int AS households FROM ledger_households"
                " WHERE village_code BETWEEN $1 AND $2 AND primary_cause IS NOT NULL"
                " GROUP BY primary_cause ORDER BY households DESC, primary_cause", low, high)
            attribute_rows = await conn.fetch(
                "SELECT attribute, count(*)::int AS households FROM ledger_households"
                " WHERE village_code BETWEEN $1 AND $2 GROUP BY attribute"
                " ORDER BY households DESC, attribute NULLS LAST", low, high)
            population = await conn.fetchrow(
                "SELECT count(*)::int AS villages, coalesce(sum(rural_population), 0)::bigint AS rural"
                " FROM ledger_villages WHERE village_code BETWEEN $1 AND $2", low, high)
            missing = await conn.fetchval(
                "SELECT count(DISTINCT h.village_code)::int FROM ledger_households h"
                " WHERE h.village_code BETWEEN $1 AND $2"
                " AND NOT EXISTS (SELECT 1 FROM ledger_villages v WHERE v.village_code = h.village_code)",
                low, high)
            profile = None
            if level == "village":
                row = await conn.fetchrow(
                    "SELECT effective_on, rural_population, registered_population, poor_village, indicators"
                    " FROM ledger_villages WHERE village_code = $1", code)
                if row is not None:
                    profile = VillageProfileView(**{**dict(row), "indicators": _json(row["indicators"])})
    poor = sum(r["people"] for r in status_rows if r["status"] in POOR_STATUSES)
    rural: int | None = int(population["rural"]) if population["villages"] else None
    incidence: float | None = None
    reason: str | None = None
    if population["villages"] == 0:
        reason = "no village profile recorded in scope: rural population unknown"
        rural = None
    elif missing:
        reason = f"{missing} village(s) with households have no village profile: rural population incomplete"
    elif not rural:
        reason = "rural population is 0"
    else:
        incidence = round(poor / rural, 6)
    return Statistics(
        code=code, level=level,
        households=sum(r["households"] for r in status_rows), people=sum(r["people"] for r in status_rows),
        by_status=[StatusCount(**dict(r)) for r in status_rows], poor_people=poor,
        rural_population=rural, poverty_incidence=incidence, poverty_incidence_unknown_reason=reason,
        villages_with_profile=population["villages"], villages_without_profile=missing,
        causes=_shares(cause_rows, "primary_cause"), attributes=_shares(attribute_rows, "attribute"),
        profile=profile)


@router.get("/villages/{village_code}/statistics", response_model=Statistics, responses=ERRORS,
            summary="Households, people, poverty incidence, causes and attributes of a village")
async def village_statistics(request: Request, village_code: str = Path(pattern=VILLAGE_CODE_PATTERN)):
    return await _statistics(request, village_code, "village", village_code, village_code)


@router.get("/regions/{code}/statistics", response_model=Statistics, responses=ERRORS,
            summary="Households, people, poverty incidence, causes and attributes of a county or township")
async def region_statistics(request: Request, code: str = Path(
        pattern=REGION_CODE_PATTERN, description="6 digits county, 9 township (2 province, 4 city, 12 any level).")):
    try:
        _, level, low, high = _scope(code)
    except regions.RegionError as exc:
        return problem(422, "invalid_region", str(exc), field="code")
    return await _statistics(request, code, level, low, high)
