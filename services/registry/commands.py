"""Registry application layer: commands that touch the vault, the regions and the store.

Each function runs inside the caller's transaction (``conn``), so the vault rows,
the one-person-one-household index and the events commit together or not at all.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Sequence

import asyncpg
import pydantic

from eventkit.aggregate import Repository
from eventkit.events import Metadata, RecordedEvent
from eventkit.sqlrows import unnest_columns
from eventkit.store import NO_STREAM, EventStore, StreamAppend

from . import changes, identity, regions
from .domain import DomainError, Household, Village

log = logging.getLogger("tpa.registry")


@dataclass(frozen=True)
class MemberInput:
    name: str
    id_number: str
    relation: str
    birth_date: date | None = None
    sex: str | None = None
    phone: str | None = None
    ethnicity: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass
class Registry:
    """What the registry's commands need: its store and the ID-number hashing key."""

    store: EventStore
    hmac_key: bytes

    @property
    def households(self) -> Repository[Household]:
        return Repository(self.store, Household)

    @property
    def villages(self) -> Repository[Village]:
        return Repository(self.store, Village)

    # -- persons ----------------------------------------------------------------------

    def person(self, m: MemberInput, index: int | None = None) -> dict[str, Any]:
        """Validate a person's identifying data; return the non-personal member fields."""
        where = f"members[{index}]." if index is not None else ""
        name = (m.name or "").strip()
        if not 1 <= len(name) <= 50:
            raise DomainError("invalid_name", "name must be 1 to 50 characters", field=f"{where}name")
        try:
            rid = identity.validate_id_number(m.id_number, m.birth_date)
        except identity.IdNumberError as exc:
            raise DomainError(exc.code, str(exc), field=f"{where}id_number") from exc
        if m.sex is not None and m.sex != rid.sex:
            raise DomainError("id_sex_mismatch", f"sex {m.sex} does not match the ID number ({rid.sex})",
                              field=f"{where}sex")
        if m.phone:
            try:
                identity.validate_phone(m.phone)
            except identity.IdNumberError as exc:
                raise DomainError(exc.code, str(exc), field=f"{where}phone") from exc
        return {
            "member_id": str(uuid.uuid4()),
            "relation": m.relation,
            "sex": rid.sex,
            "birth_date": rid.birth_date,
            "ethnicity": m.ethnicity,
            "id_hmac": identity.id_hmac(self.hmac_key, rid.number),
            "id_masked": identity.mask_id_number(rid.number),
            "name_masked": identity.mask_name(name),
            "profile": dict(m.profile or {}),
            "_vault": (rid.number, name, m.phone or None),
        }

    async def _holder(self, conn: Any, id_hmac: str) -> str | None:
        return await conn.fetchval("SELECT household_id::text FROM active_persons WHERE id_hmac = $1", id_hmac)

    async def _enrol(self, conn: Any, household_id: str, members: list[dict[str, Any]]) -> None:
        """Write vault rows and claim each person for this household (one active household each)."""
        for m in members:
            holder = await self._holder(conn, m["id_hmac"])
            if holder is not None:
                raise DomainError("duplicate_person", f"{m['id_masked']} already belongs to household {holder}",
                                  409, household_id=holder, id_masked=m["id_masked"])
        try:
            async with conn.transaction():
                await conn.execute(_CLAIM_INSERT, *unnest_columns(_claim_rows(household_id, members)))
        except asyncpg.UniqueViolationError:
            # A concurrent registration claimed one of the persons first (we waited for it).
            for m in members:
                holder = await self._holder(conn, m["id_hmac"])
                if holder is not None and holder != household_id:
                    raise DomainError("duplicate_person", f"{m['id_masked']} already belongs to household {holder}",
                                      409, household_id=holder, id_masked=m["id_masked"]) from None
            raise
        await conn.execute(_VAULT_INSERT, *unnest_columns(_vault_rows(household_id, members)))

    # -- commands ---------------------------------------------------------------------

    async def register_household(
        self, conn: Any, *, village_code: str, address: str | None, attribute: str,
        identification_standard: str, registered_on: date | None, members: list[MemberInput],
        meta: Metadata, status: str = "applicant", household_id: str | None = None,
    ) -> tuple[Household, list[RecordedEvent]]:
        await _require_village(conn, village_code)
        household, persons = self.new_household(
            village_code=village_code, address=address, attribute=attribute,
            identification_standard=identification_standard, registered_on=registered_on, members=members,
            status=status, household_id=household_id)
        await self._enrol(conn, household.id, persons)
        recorded = await self.households.save(household, meta, conn=conn)
        return household, recorded

    def new_household(
        self, *, village_code: str, address: str | None, attribute: str, identification_standard: str,
        registered_on: date | None, members: list[MemberInput], status: str = "applicant",
        household_id: str | None = None,
    ) -> tuple[Household, list[dict[str, Any]]]:
        """Validate the persons and raise the registration's events (no I/O): the household, with
        them pending, and its persons (with their vault data) for ``register_households``."""
        persons = [self.person(m, i) for i, m in enumerate(members)]
        household = Household(household_id or str(uuid.uuid4()))
        household.register(village_code=village_code, address=address, attribute=attribute,
                           identification_standard=identification_standard, registered_on=registered_on,
                           status=status, members=[_public(p) for p in persons])
        return household, persons

    async def register_households(self, conn: Any, registrations: Sequence[tuple[Household, list[dict[str, Any]]]],
                                  meta: Metadata, *, villages: set[str] | None = None) -> None:
        """Write new households (from ``new_household``, with any further pending events) in bulk: one
        statement for the one-person-one-household index, one for the vault and one append for all
        the events (one stream per household, which must not exist yet).

        Unlike ``register_household`` it does not look each person up first: a person active in
        another household (or listed twice) violates ``active_persons``' key and a household already
        registered fails the store's version check. The caller rolls the whole batch back then and
        registers the households one by one to learn which failed and why. ``villages``: codes a
        caller found before (e.g. an import's earlier batches), not looked up again; found ones are added.
        """
        if not registrations:
            return
        known = villages if villages is not None else set()
        for code in sorted({h.village_code for h, _ in registrations} - known):
            await _require_village(conn, code)
            known.add(code)
        await conn.execute(_CLAIM_INSERT, *unnest_columns(
            row for h, persons in registrations for row in _claim_rows(h.id, persons)))
        await conn.execute(_VAULT_INSERT, *unnest_columns(
            row for h, persons in registrations for row in _vault_rows(h.id, persons)))
        # The events are not read back: an import does not need them (and saves their transfer).
        await self.store.append_streams(
            [StreamAppend(h.id, h.stream_type, NO_STREAM, h.pending) for h, _ in registrations], meta, conn=conn,
            returning=False)
        for h, _ in registrations:
            h.version, h.pending = len(h.pending), []

    async def load(self, conn: Any, household_id: str, expected_version: int | None) -> Household:
        household = await self.households.load(household_id, conn=conn)
        if not household.exists:
            raise DomainError("household_not_found", f"household {household_id} is not registered", 404)
        if expected_version is not None and expected_version != household.version:
            raise DomainError("version_mismatch",
                              f"household {household_id} is at version {household.version}, not {expected_version}",
                              412, version=household.version)
        return household

    async def add_member(self, conn: Any, household: Household, m: MemberInput, reason: str,
                         joined_on: date | None, meta: Metadata) -> tuple[str, list[RecordedEvent]]:
        person = self.person(m)
        household.add_member(**_public(person), reason=reason, joined_on=joined_on)
        await self._enrol(conn, household.id, [person])
        return person["member_id"], await self.households.save(household, meta, conn=conn)

    async def remove_member(self, conn: Any, household: Household, member_id: str, reason: str,
                            removed_on: date, note: str | None, meta: Metadata) -> list[RecordedEvent]:
        household.remove_member(member_id, reason, removed_on, note)
        # The person may now join another household.
        await conn.execute("DELETE FROM active_persons WHERE member_id = $1", uuid.UUID(member_id))
        return await self.households.save(household, meta, conn=conn)

    async def erase_personal_data(self, conn: Any, household: Household, member_id: str,
                                  meta: Metadata) -> list[RecordedEvent]:
        household.erase_personal_data(member_id, date.today())
        await conn.execute(
            "UPDATE person_vault SET id_number = NULL, name = NULL, phone = NULL, erased_at = now()"
            " WHERE member_id = $1", uuid.UUID(member_id))
        return await self.households.save(household, meta, conn=conn)

    async def apply_decision(self, conn: Any, *, household_id: str, decision_event_id: str, case_id: str,
                             status_effect: str, effective_on: date, monitoring_object_type: str | None,
                             meta: Metadata) -> list[RecordedEvent]:
        """Idempotent: a decision already applied (same event id) appends nothing."""
        claimed = await conn.fetchval(
            "INSERT INTO applied_decisions (decision_event_id, household_id) VALUES ($1, $2)"
            " ON CONFLICT (decision_event_id) DO NOTHING RETURNING 1", decision_event_id, uuid.UUID(household_id))
        if claimed is None:
            return []
        household = await self.load(conn, household_id, None)
        if not household.apply_decision(decision_event_id=decision_event_id, case_id=case_id,
                                        status_effect=status_effect, effective_on=effective_on,
                                        monitoring_object_type=monitoring_object_type):
            return []
        recorded = await self.households.save(household, meta, conn=conn)
        if household.status in ("wrongly_identified_removed", "natural_decrease"):
            await conn.execute("DELETE FROM active_persons WHERE household_id = $1", uuid.UUID(household_id))
        return recorded

    # -- change requests --------------------------------------------------------------

    async def request_change(self, conn: Any, household: Household, *, kind: str, target: str | None,
                             proposed: dict[str, Any], reason: str, requested_by: str,
                             meta: Metadata) -> tuple[str, list[RecordedEvent]]:
        """Store a proposed change and record ChangeRequested (names only, no values).

        The change is first run against a copy of the household, so it is refused now,
        with the direct command's problem, if it does not fit the household as it is.
        """
        if not requested_by.strip():
            raise DomainError("unauthenticated", "a change request needs the requesting cadre's identity", 401)
        trial = copy.deepcopy(household)
        changes.run(trial, kind, target, proposed)
        if not trial.pending:
            raise DomainError("no_changes", "the change would not change the household's data", field="changes")
        change_request_id = str(uuid.uuid4())
        requested_at = datetime.now(timezone.utc)
        base_version = household.version
        household.request_change(change_request_id=change_request_id, kind=kind, target=target,
                                 fields=changes.fields_of(kind, proposed), reason=reason,
                                 requested_by=requested_by, requested_at=requested_at)
        recorded = await self.households.save(household, meta, conn=conn)
        await conn.execute(
            "INSERT INTO change_requests (id, household_id, kind, target, changes, reason, requested_by,"
            " requested_at, base_version) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)",
            uuid.UUID(change_request_id), uuid.UUID(household.id), kind, target,
            json.dumps(proposed, ensure_ascii=False), reason, requested_by, requested_at, base_version)
        return change_request_id, recorded

    async def conclude_change(self, conn: Any, *, household_id: str, change_request_id: str, case_id: str,
                              outcome: str, decision_event_id: str, meta: Metadata) -> list[RecordedEvent]:
        """Apply or close a pending change request as its data_change case decided.

        Idempotent: a request that is no longer pending appends nothing. An approved change
        the household no longer accepts (member removed, household closed, ...) is closed as
        not_applicable with the refusal's message instead of failing.
        """
        try:
            request_id = uuid.UUID(change_request_id)
        except ValueError:
            request_id = None
        row = None if request_id is None else await conn.fetchrow(
            "SELECT household_id::text AS household_id, kind, target, changes, status FROM change_requests"
            " WHERE id = $1 FOR UPDATE", request_id)
        if row is None:  # perhaps a request of a newer registry: leave it alone
            log.warning("data_change case %s concluded for unknown change request %r; ignored",
                        case_id, change_request_id)
            return []
        if row["household_id"] != household_id.strip().lower():  # a workflow bug: dead-letter it for a look
            raise DomainError("change_request_mismatch", f"change request {change_request_id} belongs to household "
                              f"{row['household_id']}, not {household_id}", 409)
        if row["status"] != "pending":
            return []
        if outcome not in ("approved", "rejected"):
            raise DomainError("invalid_outcome", f"unknown outcome {outcome!r} of case {case_id}", field="outcome")
        household = await self.load(conn, row["household_id"], None)
        change_request_id = str(request_id)
        status, closed_reason = "applied", None
        if outcome == "approved":
            trial = copy.deepcopy(household)
            try:
                stored = row["changes"]
                changes.run(trial, row["kind"], row["target"],
                            json.loads(stored) if isinstance(stored, str) else stored)
            except (DomainError, pydantic.ValidationError) as exc:
                status, closed_reason = "not_applicable", _refusal(exc)
            else:
                trial.change_applied(change_request_id, case_id=case_id, decision_event_id=decision_event_id)
                household = trial
        else:
            status = "rejected"
        if status != "applied":
            household.close_change(change_request_id, case_id=case_id, outcome=status, reason=closed_reason,
                                   decision_event_id=decision_event_id)
        recorded = await self.households.save(household, meta, conn=conn)
        await conn.execute(
            "UPDATE change_requests SET status = $2, case_id = $3, decision_event_id = $4, decided_at = now(),"
            " closed_reason = $5 WHERE id = $1", request_id, status, case_id, decision_event_id, closed_reason)
        return recorded

    async def personal_data(self, conn: Any, household_id: str) -> dict[str, dict[str, Any]]:
        rows = await conn.fetch(
            "SELECT member_id::text, id_number, name, phone, erased_at FROM person_vault WHERE household_id = $1",
            uuid.UUID(household_id))
        return {r["member_id"]: dict(r) for r in rows}


def _refusal(exc: Exception) -> str:
    """Why a stored change no longer applies, for ChangeRequestClosed.reason."""
    if isinstance(exc, DomainError):
        return f"{exc.code}: {exc}"
    first = exc.errors()[0] if isinstance(exc, pydantic.ValidationError) and exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"validation_error: {where}: {first.get('msg', exc)}"


def _public(person: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in person.items() if not k.startswith("_")}


async def _require_village(conn: Any, village_code: str) -> None:
    try:
        await regions.require_village(conn, village_code)
    except regions.RegionError as exc:
        raise DomainError("unknown_village", str(exc), field="village_code") from exc


# Persons' rows, inserted from one array per column (any number of rows in one statement).
_CLAIM_INSERT = ("INSERT INTO active_persons (id_hmac, household_id, member_id)"
                 " SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[])")
_VAULT_INSERT = ("INSERT INTO person_vault (member_id, household_id, id_hmac, id_number, name, phone)"
                 " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])")


def _claim_rows(household_id: str, persons: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``active_persons`` rows (id_hmac, household_id, member_id) of a household's persons."""
    return [(p["id_hmac"], household_id, p["member_id"]) for p in persons]


def _vault_rows(household_id: str, persons: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``person_vault`` rows (member_id, household_id, id_hmac, id_number, name, phone)."""
    return [(p["member_id"], household_id, p["id_hmac"], *p["_vault"]) for p in persons]

