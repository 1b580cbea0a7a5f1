"""Dashboards: the figures behind the operator console, by any region level.

The projection ``dashboard`` follows the registry (households, village profiles),
funds (allocations, disbursements) and workflow (cases) topics into one row per
household, village, allocation, payment and review case (``migrations/0003``).
``GET /dashboards/{region}`` answers with SQL aggregates over the rows whose
village code starts with the region's prefix: nothing scans events.

Figures: households and people by status; poverty incidence per village (poor
people, i.e. members of identified and returned-to-poverty households, over the
village profile's rural population) against the exit threshold; primary causes;
funds paid by source and by policy (net of reversals); open review cases and
overdue steps by case type; attendance (paired households visited in the current
quarter, flagged check-ins, published non-compliance findings) and return-risk
alerts by rule and state, from the monitoring service's own tables.

The gateway checks the region in the path against the caller's jurisdiction; the service
checks it again (defence in depth): 403 ``outside_jurisdiction`` for a region the caller's
jurisdiction does not cover (a county office sees its county and the townships and villages
in it, not its city).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any, Iterable, Sequence

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from contracts.funds import ALLOCATION_TOPIC, DISBURSEMENT_TOPIC
from contracts.registry import HOUSEHOLD_TOPIC, REGION_CODE_PATTERN, VILLAGE_TOPIC
from contracts.workflow import CASE_TOPIC
from eventkit.projection import Message
from eventkit.runtime import Problem, require_covers, runtime_of
from eventkit.sqlrows import unnest_columns


POOR_STATUSES = ("identified", "returned_to_poverty")
DEFAULT_EXIT_THRESHOLD = Decimal("0.03")  # poverty incidence below 3 % (2 % in some provinces; domain.md 4)
_PAID = ("paid", "reconciled")


class DashboardError(Exception):
    """An event the dashboard rows cannot take (the stream is held)."""


_HOUSEHOLD_COLUMNS = ("household_id", "village_code", "status", "people", "primary_cause", "monitoring")


def _household_change(kind: str, d: dict[str, Any]) -> tuple[str, Any] | None:
    """The column a household event changes and its new value (for ``people``: the change), or None."""
    changes: dict[str, tuple[str, Any]] = {
        "MemberAdded": ("people", 1),
        "MemberRemoved": ("people", -1),
        "HouseholdStatusChanged": ("status", d.get("to_status")),
        "PovertyCausesRecorded": ("primary_cause", d.get("primary")),
        "MonitoringDesignated": ("monitoring", d.get("object_type")),
        "MonitoringRiskEliminated": ("monitoring", None),
    }
    return changes.get(kind)


def _registered_household(hid: str, d: dict[str, Any]) -> dict[str, Any]:
    return {"household_id": hid, "village_code": d["village_code"], "status": d.get("status") or "applicant",
            "people": 0 if d.get("head_member_id") else int(d.get("member_count") or 0), "primary_cause": None,
            "monitoring": None}


def _not_registered(kind: str, hid: str) -> DashboardError:
    return DashboardError(f"{kind} for household {hid}, whose registration was not applied")


def _village_row(code: str, d: dict[str, Any]) -> tuple[str, int, bool, str]:
    return code, int(d["rural_population"]), bool(d["poor_village"]), str(d["effective_on"])


_UPSERT_VILLAGES = (
    "INSERT INTO dash_villages (village_code, rural_population, poor_village, effective_on)"
    " SELECT c, r, p, e::date FROM unnest($1::text[], $2::int[], $3::bool[], $4::text[]) AS t(c, r, p, e) ORDER BY c"
    " ON CONFLICT (village_code) DO UPDATE SET rural_population = EXCLUDED.rural_population,"
    " poor_village = EXCLUDED.poor_village, effective_on = EXCLUDED.effective_on"
    " WHERE dash_villages.effective_on <= EXCLUDED.effective_on")

_UPSERT_HOUSEHOLDS = (
    "INSERT INTO dash_households (household_id, village_code, status, people, primary_cause, monitoring)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[]) ORDER BY 1"
    " ON CONFLICT (household_id) DO UPDATE SET village_code = EXCLUDED.village_code, status = EXCLUDED.status,"
    " people = EXCLUDED.people, primary_cause = EXCLUDED.primary_cause, monitoring = EXCLUDED.monitoring")


class Dashboard:
    """Projection ``dashboard``.

    ``apply_batch`` has the effect of ``apply`` on each message in turn: the households of the
    batch are read (and locked) at once, changed in memory and written back in one statement; each
    village's winning profile is written once; allocation, disbursement and case events are
    applied one by one (their tables are independent of the households' and villages').
    """

    name = "dashboard"
    topics = (HOUSEHOLD_TOPIC, VILLAGE_TOPIC, ALLOCATION_TOPIC, DISBURSEMENT_TOPIC, CASE_TOPIC)
    strict = True

    async def apply(self, conn: Any, message: Message) -> None:
        handler = getattr(self, f"_{message.stream_type}", None)
        if handler is not None:
            await handler(conn, message.event_type, message.stream_id, message.data)

    async def apply_batch(self, conn: Any, messages: Sequence[Message]) -> None:
        households = [m for m in messages if m.stream_type == "household"]
        if households:
            await self._households(conn, households)
        villages = _latest_profiles(m for m in messages if m.stream_type == "village")
        if villages:
            await conn.execute(_UPSERT_VILLAGES, *unnest_columns(villages))
        for m in messages:
            if m.stream_type not in ("household", "village"):
                await self.apply(conn, m)

    async def _household(self, conn: Any, kind: str, hid: str, d: dict[str, Any]) -> None:
        if kind == "HouseholdRegistered":
            row = _registered_household(hid, d)
            await conn.execute(
                "INSERT INTO dash_households (household_id, village_code, status, people) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (household_id) DO NOTHING", hid, row["village_code"], row["status"], row["people"])
            return
        change = _household_change(kind, d)
        if change is None:
            return
        column, value = change
        assignment = "people = people + $2" if column == "people" else f"{column} = $2"
        status = await conn.execute(f"UPDATE dash_households SET {assignment} WHERE household_id = $1", hid, value)
        if status.endswith(" 0"):
            raise _not_registered(kind, hid)

    async def _households(self, conn: Any, messages: Sequence[Message]) -> None:
        ids = sorted({m.stream_id for m in messages})
        found = await conn.fetch(f"SELECT {', '.join(_HOUSEHOLD_COLUMNS)} FROM dash_households"
                                 " WHERE household_id = ANY($1::text[]) ORDER BY household_id FOR UPDATE", ids)
        rows: dict[str, dict[str, Any]] = {r["household_id"]: dict(r) for r in found}
        changed: set[str] = set()
        for m in messages:
            row = rows.get(m.stream_id)
            if m.event_type == "HouseholdRegistered":
                if row is None:  # a registration of a known household changes nothing
                    rows[m.stream_id] = _registered_household(m.stream_id, m.data)
                    changed.add(m.stream_id)
                continue
            change = _household_change(m.event_type, m.data)
            if change is None:
                continue
            if row is None:
                raise _not_registered(m.event_type, m.stream_id)
            column, value = change
            row[column] = row[column] + value if column == "people" else value
            changed.add(m.stream_id)
        if changed:
            await conn.execute(_UPSERT_HOUSEHOLDS, *unnest_columns(
                [[rows[h][c] for c in _HOUSEHOLD_COLUMNS] for h in sorted(changed)]))

    async def _village(self, conn: Any, kind: str, code: str, d: dict[str, Any]) -> None:
        if kind == "VillageProfileUpdated":
            await conn.execute(_UPSERT_VILLAGES, *unnest_columns([_village_row(code, d)]))

    async def _allocation(self, conn: Any, kind: str, aid: str, d: dict[str, Any]) -> None:
        if kind == "AllocationCreated":
            await conn.execute("INSERT INTO dash_allocations (allocation_id, source, year) VALUES ($1, $2, $3)"
                               " ON CONFLICT (allocation_id) DO NOTHING", aid, d["source"], int(d["year"]))

    async def _disbursement(self, conn: Any, kind: str, did: str, d: dict[str, Any]) -> None:
        if kind == "DisbursementRequested":
            await conn.execute(
                "INSERT INTO dash_payments (disbursement_id, household_id, village_code, policy_code, project_id,"
                " amount, status) VALUES ($1, $2, $3, $4, $5, $6::numeric, 'requested')"
                " ON CONFLICT (disbursement_id) DO NOTHING", did, d["household_id"], d["village_code"],
                d.get("policy_code"), d.get("project_id"), d["amount"])
            return
        changes = {
            "DisbursementApproved": ("status = 'approved', allocation_id = $2", (d.get("allocation_id"),)),
            "DisbursementPaid": ("status = 'paid', paid_on = $2::text::date", (str(d.get("paid_on")),)),
            "DisbursementReconciled": ("status = 'reconciled'", ()),
            "DisbursementFailed": ("status = 'failed'", ()),
            "DisbursementReversed": ("status = 'reversed'", ()),
        }
        if kind in changes:
            assignment, args = changes[kind]
            status = await conn.execute(f"UPDATE dash_payments SET {assignment} WHERE disbursement_id = $1",
                                        did, *args)
            if status.endswith(" 0"):
                raise DashboardError(f"{kind} for disbursement {did}, whose request was not applied")

    async def _case(self, conn: Any, kind: str, cid: str, d: dict[str, Any]) -> None:
        if kind == "CaseOpened":
            await conn.execute(
                "INSERT INTO dash_cases (case_id, case_type, village_code, current_step) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (case_id) DO NOTHING", cid, d["case_type"], d["village_code"], d["first_step"])
        elif kind in ("StepDecided", "CaseEscalated"):
            step = d.get("next_step") if kind == "StepDecided" else d.get("to_step")
            await conn.execute("UPDATE dash_cases SET current_step = $2, overdue = false WHERE case_id = $1",
                               cid, step)
        elif kind == "StepOverdue":
            await conn.execute("UPDATE dash_cases SET overdue = true WHERE case_id = $1 AND current_step = $2",
                               cid, d["step_id"])
        elif kind == "CaseConcluded":
            await conn.execute("UPDATE dash_cases SET open = false, overdue = false, current_step = NULL"
                               " WHERE case_id = $1", cid)

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE dash_households, dash_villages, dash_allocations, dash_payments, dash_cases")


def _latest_profiles(messages: Iterable[Message]) -> list[tuple[str, int, bool, str]]:
    """Of several profiles of a village, in order, the one upserting them one by one would leave
    (a profile is replaced by one effective on the same day or later); that one upserted against
    the stored profile then has the same outcome."""
    latest: dict[str, tuple[str, int, bool, str]] = {}
    for m in messages:
        if m.event_type != "VillageProfileUpdated":
            continue
        row = _village_row(m.stream_id, m.data)
        kept = latest.get(row[0])
        if kept is None or date.fromisoformat(row[3]) >= date.fromisoformat(kept[3]):
            latest[row[0]] = row
    return [latest[code] for code in sorted(latest)]


# -- query -----------------------------------------------------------------------------------

router = APIRouter(tags=["dashboards"])


class VillageIncidence(BaseModel):
    village_code: str
    poor_people: int
    rural_population: int | None = Field(description="From the latest village profile; null without one.")
    incidence: float | None = Field(description="poor_people / rural_population.")
    below_exit_threshold: bool | None


class RegionDashboard(BaseModel):
    region: str
    households_by_status: dict[str, int]
    people_by_status: dict[str, int]
    monitoring_objects: dict[str, int]
    primary_causes: dict[str, int]
    exit_threshold: float
    villages: list[VillageIncidence]
    funds_paid_by_source: dict[str, str] = Field(description="Net paid, yuan, by fund source.")
    funds_paid_by_policy: dict[str, str] = Field(description="Net paid, yuan, by policy (or 'project').")
    open_cases_by_type: dict[str, int]
    overdue_steps_by_type: dict[str, int]
    attendance: dict[str, int] = Field(description=(
        "paired_households, visited_this_quarter, checkins_outside_geofence, checkins_impossible_travel, "
        "noncompliance_findings."))
    alerts_by_rule: dict[str, dict[str, int]] = Field(description="rule -> state -> alerts.")


def _prefix(region: str) -> str:
    code = region.ljust(12, "0")
    end = 0
    for a, b in ((0, 2), (2, 4), (4, 6), (6, 9), (9, 12)):
        if code[a:b].strip("0"):
            end = b
    return code[:end]


@router.get("/dashboards/{region}", response_model=RegionDashboard,
            responses={code: {"model": Problem} for code in (401, 403, 422)},
            summary="Households, incidence, causes, funds and review cases of a region (any level)")
async def region_dashboard(request: Request, region: str = Path(pattern=REGION_CODE_PATTERN),
                           exit_threshold: float = Query(float(DEFAULT_EXIT_THRESHOLD), gt=0, lt=1, description=(
                               "Poverty incidence below which a village may exit (0.03 or 0.02).")),
                           limit: int = Query(500, ge=1, le=5000, description="Most villages listed.")):
    require_covers(request, region.ljust(12, "0"), f"region {region}")
    like = _prefix(region) + "%"
    pool = runtime_of(request).pool
    async with pool.acquire() as conn:
        by_status = await conn.fetch("SELECT status, count(*) AS n, sum(people) AS p FROM dash_households"
                                     " WHERE village_code LIKE $1 GROUP BY status", like)
        monitoring = await conn.fetch("SELECT monitoring, count(*) AS n FROM dash_households WHERE village_code"
                                      " LIKE $1 AND monitoring IS NOT NULL GROUP BY monitoring", like)
        causes = await conn.fetch("SELECT primary_cause, count(*) AS n FROM dash_households WHERE village_code"
                                  " LIKE $1 AND primary_cause IS NOT NULL AND status = ANY($2::text[])"
                                  " GROUP BY primary_cause", like, list(POOR_STATUSES))
        villages = await conn.fetch(
            "SELECT v.village_code, coalesce(h.poor, 0) AS poor, p.rural_population FROM"
            " (SELECT village_code FROM dash_households WHERE village_code LIKE $1"
            "  UNION SELECT village_code FROM dash_villages WHERE village_code LIKE $1) v"
            " LEFT JOIN (SELECT village_code, sum(people) AS poor FROM dash_households"
            "            WHERE village_code LIKE $1 AND status = ANY($2::text[]) GROUP BY village_code) h"
            "   ON h.village_code = v.village_code"
            " LEFT JOIN dash_villages p ON p.village_code = v.village_code ORDER BY v.village_code LIMIT $3",
            like, list(POOR_STATUSES), limit)
        by_source = await conn.fetch(
            "SELECT coalesce(a.source, 'unknown') AS k, sum(p.amount) AS total FROM dash_payments p"
            " LEFT JOIN dash_allocations a ON a.allocation_id = p.allocation_id"
            " WHERE p.village_code LIKE $1 AND p.status = ANY($2::text[]) GROUP BY 1", like, list(_PAID))
        by_policy = await conn.fetch(
            "SELECT coalesce(policy_code, 'project') AS k, sum(amount) AS total FROM dash_payments"
            " WHERE village_code LIKE $1 AND status = ANY($2::text[]) GROUP BY 1", like, list(_PAID))
        cases = await conn.fetch("SELECT case_type, count(*) AS n, count(*) FILTER (WHERE overdue) AS overdue"
                                 " FROM dash_cases WHERE open AND village_code LIKE $1 GROUP BY case_type", like)
        quarter_start = _quarter_start(runtime_of(request).state["clock"].now())
        attendance = await conn.fetchrow(
            "SELECT (SELECT count(DISTINCT household_id) FROM mon_pairings WHERE village_code LIKE $1"
            "        AND released_on IS NULL) AS paired,"
            " (SELECT count(DISTINCT a.household_id) FROM mon_attendance a JOIN mon_pairings p"
            "        ON p.household_id = a.household_id AND p.cadre_id = a.cadre_id AND p.released_on IS NULL"
            "        WHERE a.kind = 'visit' AND a.day >= $2 AND p.village_code LIKE $1) AS visited,"
            " (SELECT count(*) FROM mon_attendance WHERE kind = 'visit' AND outside_geofence"
            "        AND village_code LIKE $1) AS outside,"
            " (SELECT count(*) FROM mon_attendance WHERE kind = 'visit' AND impossible_travel"
            "        AND village_code LIKE $1) AS travel,"
            " (SELECT count(*) FROM events WHERE stream_type = 'compliance' AND data->>'village_code' LIKE $1)"
            "        AS findings", like, quarter_start)
        alert_rows = await conn.fetch("SELECT rule, state, count(*) AS n FROM mon_alerts WHERE village_code LIKE $1"
                                      " GROUP BY rule, state", like)
    rows = []
    for v in villages:
        rural = v["rural_population"]
        incidence = (int(v["poor"]) / rural) if rural else None
        rows.append({"village_code": v["village_code"], "poor_people": int(v["poor"]), "rural_population": rural,
                     "incidence": incidence,
                     "below_exit_threshold": None if incidence is None else incidence < exit_threshold})
    money = lambda rs: {r["k"]: f"{Decimal(r['total']):.2f}" for r in rs}  # noqa: E731
    return {
        "region": region, "exit_threshold": exit_threshold,
        "households_by_status": {r["status"]: r["n"] for r in by_status},
        "people_by_status": {r["status"]: int(r["p"] or 0) for r in by_status},
        "monitoring_objects": {r["monitoring"]: r["n"] for r in monitoring},
        "primary_causes": {r["primary_cause"]: r["n"] for r in causes},
        "villages": rows, "funds_paid_by_source": money(by_source), "funds_paid_by_policy": money(by_policy),
        "open_cases_by_type": {r["case_type"]: r["n"] for r in cases},
        "overdue_steps_by_type": {r["case_type"]: r["overdue"] for r in cases if r["overdue"]},
        "attendance": {"paired_households": attendance["paired"], "visited_this_quarter": attendance["visited"],
                       "checkins_outside_geofence": attendance["outside"],
                       "checkins_impossible_travel": attendance["travel"],
                       "noncompliance_findings": attendance["findings"]},
        "alerts_by_rule": _nested(alert_rows),
    }


def _nested(rows: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["rule"], {})[r["state"]] = r["n"]
    return out


def _quarter_start(now: Any) -> Any:
    from .attendance import china_date

    day = china_date(now)
    return day.replace(month=3 * ((day.month - 1) // 3) + 1, day=1)
