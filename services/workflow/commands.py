"""Workflow application layer: loads cases, runs the domain's commands, saves.

Every function runs inside the caller's transaction (``conn``): the case's
events, the one-open-case index (``wf_open_cases``) and an idempotency record
commit together or not at all. What a case needs to know about its household
(village, register status, members) comes from the local projection of the
registry's topic (``households.py``), never from the registry's database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from contracts.workflow import derived_case_id  # noqa: F401 (re-exported for the process managers)
from eventkit.errors import ConcurrencyError, DomainError
from eventkit.events import Metadata, RecordedEvent
from eventkit.aggregate import save_all
from eventkit.store import EventStore

from eventkit.clock import Clock
from .definitions import CaseType
from .domain import Case, Reviewer

# Who may record comparison results: the county office, or another department's
# client (vehicles, business registry, payroll, property), within its jurisdiction.
COMPARISON_ROLES = ("county_office", "department")
MAX_BATCH = 500

Authorise = Callable[[str | None], None]
"""A check of the caller against a record's village code: returns, or raises ``DomainError``
(403 ``outside_jurisdiction``). Commands of the process managers pass none."""


@dataclass(frozen=True)
class HouseholdFacts:
    household_id: str
    village_code: str
    status: str
    monitoring: str | None


@dataclass
class BatchItemError:
    case_id: str
    status: int
    code: str
    detail: str


class BatchRefused(Exception):
    """A batch decision with at least one case that cannot be decided: nothing was written."""

    def __init__(self, errors: list[BatchItemError], total: int) -> None:
        super().__init__(f"{len(errors)} of {total} cases cannot be decided")
        self.errors = errors
        self.total = total


@dataclass
class Workflow:
    store: EventStore
    clock: Clock
    case_types: Mapping[str, CaseType]

    # -- loading and saving ----------------------------------------------------------

    def new_case(self, case_id: str) -> Case:
        return Case(case_id, self.case_types)

    async def load(self, conn: Any, case_id: str, expected_version: int | None = None,
                   authorise: Authorise | None = None) -> Case:
        """The case folded from its events; 404 if there is none. ``authorise`` is given the case's
        village before anything else about the case is checked (its version, its step), so that a
        caller outside the case's jurisdiction learns nothing but the refusal."""
        case = self.new_case(case_id)
        for event in await self.store.read_stream(case_id, conn=conn):
            case.replay(event)
        if not case.exists:
            raise DomainError("case_not_found", f"case {case_id} does not exist", 404)
        if authorise is not None:
            authorise(case.village_code)
        if expected_version is not None and expected_version != case.version:
            raise DomainError("version_mismatch", f"case {case_id} is at version {case.version}, not "
                              f"{expected_version}", 412, current_version=case.version)
        return case

    async def _release(self, conn: Any, cases: Sequence[Case]) -> None:
        closed = [c.id for c in cases if c.closed and c.pending]
        if closed:
            await conn.execute("DELETE FROM wf_open_cases WHERE case_id = ANY($1::text[])", closed)

    async def save(self, conn: Any, case: Case, meta: Metadata) -> list[RecordedEvent]:
        return await self.save_all(conn, [case], meta)

    async def save_all(self, conn: Any, cases: Sequence[Case], meta: Metadata) -> list[RecordedEvent]:
        """Append the pending events of several cases atomically (optimistic concurrency per case)."""
        await self._release(conn, cases)
        return await save_all(self.store, cases, meta, conn=conn)

    # -- households (local projection) ----------------------------------------------

    async def household(self, conn: Any, household_id: str) -> HouseholdFacts | None:
        row = await conn.fetchrow("SELECT household_id, village_code, status, monitoring FROM wf_households"
                                  " WHERE household_id = $1", household_id)
        return HouseholdFacts(**dict(row)) if row else None

    async def active_members(self, conn: Any, household_id: str) -> set[str]:
        rows = await conn.fetch("SELECT member_id FROM wf_members WHERE household_id = $1 AND active",
                                household_id)
        return {r["member_id"] for r in rows}

    # -- commands --------------------------------------------------------------------

    async def open_case(self, conn: Any, *, case_id: str, case_type: str, household_id: str, opened_by: str,
                        reason: str, meta: Metadata, subject: str | None = None,
                        monitoring_object_type: str | None = None,
                        authorise: Authorise | None = None) -> tuple[Case, list[RecordedEvent]]:
        """Open a case for a household the registry has published; at most one open case per
        (type, household, subject). ``authorise`` is given the household's village (the opener's
        jurisdiction must cover it)."""
        facts = await self.household(conn, household_id)
        if facts is None:
            raise DomainError("household_unknown", f"household {household_id} is not in the register (or the "
                              "registry's event has not reached the workflow service yet)", 404,
                              field="household_id")
        if authorise is not None:
            authorise(facts.village_code)
        case = self.new_case(case_id)
        case.open(case_type=case_type, household_id=household_id, village_code=facts.village_code,
                  opened_by=opened_by, reason=reason, now=self.clock.now(), subject=subject,
                  monitoring_object_type=monitoring_object_type, household_status=facts.status)
        holder = await conn.fetchval(
            "INSERT INTO wf_open_cases (case_type, household_id, subject, case_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (case_type, household_id, subject) DO NOTHING RETURNING case_id",
            case_type, household_id, subject or "", case_id)
        if holder is None:
            existing = await conn.fetchval(
                "SELECT case_id FROM wf_open_cases WHERE case_type = $1 AND household_id = $2 AND subject = $3",
                case_type, household_id, subject or "")
            raise DomainError("case_already_open", f"household {household_id} already has an open {case_type} "
                              f"case" + (f" for {subject}" if subject else ""), 409, open_case_id=existing)
        return case, await self.save(conn, case, meta)

    async def case_exists(self, conn: Any, case_id: str) -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM events WHERE stream_id = $1 LIMIT 1", case_id))

    async def record_comparisons(self, conn: Any, case_id: str, expected_version: int | None,
                                 recorder: Reviewer, results: Sequence[Mapping[str, Any]],
                                 meta: Metadata, authorise: Authorise | None = None) -> Case:
        case = await self.load(conn, case_id, expected_version, authorise)
        recorder = next((recorder.acting_as(r) for r in COMPARISON_ROLES if recorder.holds(r)), recorder)
        if recorder.role not in COMPARISON_ROLES:
            raise DomainError("wrong_role", f"comparison results are recorded by {' or '.join(COMPARISON_ROLES)}, "
                              f"not {recorder.role}", 403)
        assert case.village_code is not None
        if not recorder.covers(case.village_code):
            raise DomainError("outside_jurisdiction", f"jurisdiction {recorder.jurisdiction} does not cover "
                              f"village {case.village_code}", 403, village_code=case.village_code)
        members = await self.active_members(conn, case.household_id or "")
        now = self.clock.now()
        for i, r in enumerate(results):
            if r["member_id"] not in members:
                raise DomainError("unknown_member", f"{r['member_id']} is not a member of household "
                                  f"{case.household_id}", 422, field=f"results[{i}].member_id")
            case.record_comparison(member_id=r["member_id"], source=r["source"], hit=r["hit"],
                                   detail=r.get("detail"), recorded_by=recorder.id, now=now)
        await self.save(conn, case, meta)
        return case

    async def decide_batch(self, conn: Any, *, village_code: str, case_ids: Sequence[str], step_id: str,
                           decision: str, reviewer: Reviewer, meta: Metadata, comment: str | None = None,
                           return_to: str | None = None) -> list[Case]:
        """Decide the same step of many cases of one village: all or nothing.

        Every case is checked; if any cannot be decided, ``BatchRefused`` lists each
        failure and nothing is written."""
        now = self.clock.now()
        cases: list[Case] = []
        errors: list[BatchItemError] = []
        for case_id in case_ids:
            try:
                case = await self.load(conn, case_id)
                if case.village_code != village_code:
                    raise DomainError("wrong_village", f"case {case_id} is in village {case.village_code}, "
                                      f"not {village_code}", 422)
                if not reviewer.covers(village_code):  # before the step tells anything about the case
                    raise DomainError("outside_jurisdiction", f"jurisdiction {reviewer.jurisdiction} does not "
                                      f"cover village {village_code}", 403, village_code=village_code)
                case.decide(step_id=step_id, decision=decision, reviewer=reviewer, now=now, comment=comment,
                            return_to=return_to)
                cases.append(case)
            except DomainError as exc:
                errors.append(BatchItemError(case_id, exc.status, exc.code, str(exc)))
        if errors:
            raise BatchRefused(errors, len(case_ids))
        try:
            await self.save_all(conn, cases, meta)
        except ConcurrencyError as exc:  # a case changed between loading and saving
            raise BatchRefused([BatchItemError(exc.stream_id, 409, "concurrency_conflict", str(exc))],
                               len(case_ids)) from exc
        return cases

    async def flag_overdue(self, pool: Any, limit: int = 500) -> int:
        """Publish ``StepOverdue`` for open cases whose current step passed its time limit
        (once per entry into the step). Returns how many were flagged."""
        now = self.clock.now()
        rows = await pool.fetch("SELECT case_id FROM wf_cases WHERE status = 'open' AND due_at < $1"
                                " AND NOT overdue_flagged ORDER BY due_at LIMIT $2", now, limit)
        flagged = 0
        for r in rows:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    try:
                        case = await self.load(conn, r["case_id"])
                    except DomainError:
                        continue
                    if case.flag_overdue(now):
                        try:
                            await self.save(conn, case, Metadata(actor="system:overdue"))
                            flagged += 1
                        except ConcurrencyError:
                            continue  # decided meanwhile: the next scan sees the new step
        return flagged
