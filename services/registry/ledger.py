"""The household ledger: the registry's read model of households and villages.

One document per household holds its whole current state, built by folding the
household's events in stream order. ``fold`` (and its step ``evolve``) is pure:
the projection applies exactly the same step to each event as it arrives, so
the stored document always equals a replay of the event store up to the same
version. Searchable facts are copied into columns of ``ledger_households`` and
``ledger_members``; the latest village profile of each village is kept in
``ledger_villages`` (tables in ``migrations/0003_ledger.sql``).

The document never holds names, ID numbers or phone numbers: members carry the
masked forms from the events (blanked once the member's personal data is
erased) and the keyed hash ``id_hmac``, which the query API never returns.

The projection is strict: an event the fold cannot apply (for example a member
event for an unknown member) holds the household's stream instead of being
skipped. Unknown event types change nothing but the document's version, so an
older ledger keeps following a newer registry.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import date
from typing import Any, Callable, Iterable, Mapping

from contracts.registry import HOUSEHOLD, HOUSEHOLD_TOPIC, VILLAGE, VILLAGE_TOPIC
from eventkit.projection import Message

POOR_STATUSES: tuple[str, ...] = ("identified", "returned_to_poverty")

_VILLAGE_FIELDS = ("village_code", "effective_on", "rural_population", "registered_population", "poor_village")


class LedgerError(Exception):
    """An event that does not fit the household's ledger (the stream is held)."""


# -- the pure fold -----------------------------------------------------------------

def _member(doc: dict[str, Any], member_id: str) -> dict[str, Any]:
    for m in doc["members"]:
        if m["member_id"] == member_id:
            return m
    raise LedgerError(f"household {doc['household_id']} has no member {member_id}")


def _count(doc: dict[str, Any]) -> None:
    doc["member_count"] = doc["unlisted_members"] + sum(1 for m in doc["members"] if m["active"])


def _registered(doc: dict[str, Any] | None, d: Mapping[str, Any]) -> dict[str, Any]:
    if doc is not None:
        raise LedgerError(f"household {doc['household_id']} is already registered")
    village = d["village_code"]
    status = d.get("status") or "applicant"
    head = d.get("head_member_id")
    return {
        "household_id": d["household_id"],
        "village_code": village,
        "county_code": village[:6],
        "township_code": village[:9],
        "registered_on": d.get("registered_on"),
        "address": d.get("address"),
        "attribute": d.get("attribute"),
        "identification_standard": d.get("identification_standard"),
        "status": status,
        "head_member_id": head,
        "head_history": [],
        # Registrations before members were recorded (the walking skeleton) carry only a
        # count; since then the head is named and every member follows as MemberAdded.
        "unlisted_members": 0 if head else int(d.get("member_count") or 0),
        "member_count": 0 if head else int(d.get("member_count") or 0),
        "members": [],
        "status_history": [{"from": None, "to": status, "effective_on": d.get("registered_on"),
                            "basis": "registration", "case_id": None, "decision_event_id": None}],
        "monitoring": None,
        "monitoring_history": [],
        "incomes": {},
        "conditions": None,
        "causes": None,
        "cadres": {"current": [], "history": []},
        "plans": {},
        "coordinates": None,
        "version": 0,
    }


def _member_added(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    if any(m["member_id"] == d["member_id"] for m in doc["members"]):
        raise LedgerError(f"member {d['member_id']} was already added")
    doc["members"].append({
        "member_id": d["member_id"],
        "relation": d["relation"],
        "sex": d["sex"],
        "birth_year": d["birth_year"],
        "ethnicity": d.get("ethnicity"),
        "name_masked": d.get("name_masked"),
        "id_masked": d.get("id_masked"),
        "id_hmac": d.get("id_hmac"),
        "facts": {k: v for k, v in (d.get("profile") or {}).items() if v is not None},
        "active": True,
        "joined": {"reason": d.get("reason"), "on": d.get("joined_on")},
        "removed": None,
        "personal_data_erased": False,
        "erased_on": None,
    })
    if d["relation"] == "head":
        doc["head_member_id"] = d["member_id"]
    _count(doc)


def _member_updated(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    m = _member(doc, d["member_id"])
    m["facts"].update({k: v for k, v in (d.get("changes") or {}).items() if v is not None})


def _member_removed(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    m = _member(doc, d["member_id"])
    m["active"] = False
    m["removed"] = {"reason": d["reason"], "on": d.get("removed_on"), "note": d.get("note")}
    _count(doc)


def _head_changed(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    _member(doc, d["head_member_id"])
    doc["head_history"].append({"from": doc["head_member_id"], "to": d["head_member_id"],
                                "changed_on": d.get("changed_on")})
    doc["head_member_id"] = d["head_member_id"]


def _income(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["incomes"][str(d["year"])] = {k: d.get(k) for k in (
        "year", "wage", "business", "property", "transfer", "business_expenses", "resident_members",
        "net_income", "per_capita_net_income")}


def _conditions(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    # An assessment may cover some items only: keep the latest known value of each item.
    current = doc["conditions"] or {"assessed_on": None, "items": {}}
    for item, secured in (d.get("conditions") or {}).items():
        current["items"][item] = {"secured": secured, "assessed_on": d["assessed_on"]}
    current["assessed_on"] = d["assessed_on"]
    doc["conditions"] = current


def _causes(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["causes"] = {"primary": d["primary"], "others": list(d.get("others") or [])}


def _cadre_assigned(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["cadres"]["current"].append({"cadre_id": d["cadre_id"], "unit": d["unit"],
                                     "assigned_on": d.get("assigned_on")})


def _cadre_released(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    current = doc["cadres"]["current"]
    found = [c for c in current if c["cadre_id"] == d["cadre_id"]]
    if not found:
        raise LedgerError(f"cadre {d['cadre_id']} is not assigned to household {doc['household_id']}")
    doc["cadres"]["current"] = [c for c in current if c["cadre_id"] != d["cadre_id"]]
    doc["cadres"]["history"].append({**found[0], "released_on": d.get("released_on"),
                                     "reason": d.get("reason")})


def _plan(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["plans"][str(d["year"])] = {
        "measures": [{"kind": m.get("kind"), "description": m.get("description")} for m in d.get("measures") or []]}


def _coordinates(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["coordinates"] = {"latitude": d["latitude"], "longitude": d["longitude"]}


def _status_changed(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["status_history"].append({"from": d.get("from_status"), "to": d["to_status"],
                                  "effective_on": d.get("effective_on"), "basis": d.get("basis"),
                                  "case_id": d.get("case_id"), "decision_event_id": d.get("decision_event_id")})
    doc["status"] = d["to_status"]


def _monitoring_designated(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    doc["monitoring"] = {"object_type": d["object_type"], "since": d.get("effective_on"),
                         "case_id": d.get("case_id")}
    doc["monitoring_history"].append({"change": "designated", "object_type": d["object_type"],
                                      "effective_on": d.get("effective_on"), "case_id": d.get("case_id")})


def _risk_eliminated(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    previous = (doc["monitoring"] or {}).get("object_type")
    doc["monitoring"] = None
    doc["monitoring_history"].append({"change": "risk_eliminated", "object_type": previous,
                                      "effective_on": d.get("effective_on"), "case_id": d.get("case_id")})


def _erased(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    # The vault entry is gone; the read model drops the masked forms and the hash too.
    m = _member(doc, d["member_id"])
    m.update(personal_data_erased=True, erased_on=d.get("erased_on"), name_masked=None, id_masked=None,
             id_hmac=None)


def _no_facts(doc: dict[str, Any], d: Mapping[str, Any]) -> None:
    # Change requests change no household facts: an approved change arrives as its own
    # events before ChangeRequestApplied. The requests (with the proposed values) are
    # served from the change_requests table, not from the ledger.
    pass


_STEPS: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], None]] = {
    "MemberAdded": _member_added,
    "MemberUpdated": _member_updated,
    "MemberRemoved": _member_removed,
    "HeadChanged": _head_changed,
    "IncomeAssessed": _income,
    "LivingConditionsAssessed": _conditions,
    "PovertyCausesRecorded": _causes,
    "CadreAssigned": _cadre_assigned,
    "CadreReleased": _cadre_released,
    "AssistancePlanRecorded": _plan,
    "CoordinatesSet": _coordinates,
    "HouseholdStatusChanged": _status_changed,
    "MonitoringDesignated": _monitoring_designated,
    "MonitoringRiskEliminated": _risk_eliminated,
    "MemberPersonalDataErased": _erased,
    "ChangeRequested": _no_facts,
    "ChangeRequestApplied": _no_facts,
    "ChangeRequestClosed": _no_facts,
}
HOUSEHOLD_EVENT_TYPES: frozenset[str] = frozenset({"HouseholdRegistered", *_STEPS})


def _data(event: Mapping[str, Any]) -> dict[str, Any]:
    data = event["data"]
    return json.loads(data) if isinstance(data, (str, bytes)) else dict(data)


def evolve(doc: dict[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The document after one more event (``doc`` is not modified).

    ``event`` is an envelope or an event-store row: a mapping with ``event_type``,
    ``data`` (a dict or its JSON text) and, normally, ``version`` (the stream
    version; without it the document's version is counted up). Events before the
    registration of an unknown type leave ``None``.
    """
    event_type = event["event_type"]
    data = _data(event)
    if event_type == "HouseholdRegistered":
        new = _registered(doc, data)
    elif doc is None:
        if event_type in _STEPS:
            raise LedgerError(f"{event_type} before the household was registered")
        return None
    else:
        new = copy.deepcopy(doc)
        step = _STEPS.get(event_type)
        if step is not None:  # unknown (newer) event types only advance the version
            step(new, data)
    version = event.get("version")
    new["version"] = int(version) if version is not None else new["version"] + 1
    return new


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ledger document of a household from its events in stream order (``None`` if none)."""
    doc: dict[str, Any] | None = None
    for event in events:
        doc = evolve(doc, event)
    return doc


def all_causes(doc: Mapping[str, Any]) -> list[str]:
    causes = doc.get("causes")
    if not causes:
        return []
    return [causes["primary"], *[c for c in causes.get("others") or [] if c != causes["primary"]]]


# -- the projection ------------------------------------------------------------------

_UPSERT_HOUSEHOLD = """
INSERT INTO ledger_households (household_id, village_code, status, attribute, identification_standard,
    address, head_member_id, primary_cause, causes, monitoring_object_type, member_count, version,
    registered_on, updated_at, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now(), $14::jsonb)
ON CONFLICT (household_id) DO UPDATE SET
    village_code = EXCLUDED.village_code, status = EXCLUDED.status, attribute = EXCLUDED.attribute,
    identification_standard = EXCLUDED.identification_standard, address = EXCLUDED.address,
    head_member_id = EXCLUDED.head_member_id, primary_cause = EXCLUDED.primary_cause,
    causes = EXCLUDED.causes, monitoring_object_type = EXCLUDED.monitoring_object_type,
    member_count = EXCLUDED.member_count, version = EXCLUDED.version,
    registered_on = EXCLUDED.registered_on, updated_at = now(), doc = EXCLUDED.doc
"""

_UPSERT_MEMBER = """
INSERT INTO ledger_members (member_id, household_id, id_hmac, active, relation, sex, birth_year,
    schooling_stage, health)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (member_id) DO UPDATE SET
    household_id = EXCLUDED.household_id, id_hmac = EXCLUDED.id_hmac, active = EXCLUDED.active,
    relation = EXCLUDED.relation, sex = EXCLUDED.sex, birth_year = EXCLUDED.birth_year,
    schooling_stage = EXCLUDED.schooling_stage, health = EXCLUDED.health
"""

_UPSERT_VILLAGE = """
INSERT INTO ledger_villages (village_code, effective_on, rural_population, registered_population,
    poor_village, indicators, updated_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, now())
ON CONFLICT (village_code) DO UPDATE SET
    effective_on = EXCLUDED.effective_on, rural_population = EXCLUDED.rural_population,
    registered_population = EXCLUDED.registered_population, poor_village = EXCLUDED.poor_village,
    indicators = EXCLUDED.indicators, updated_at = now()
WHERE EXCLUDED.effective_on >= ledger_villages.effective_on
"""


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


class HouseholdLedger:
    """Projection ``household-ledger``: households (their ledgers), their members and village profiles."""

    name = "household-ledger"
    topics = (HOUSEHOLD_TOPIC, VILLAGE_TOPIC)
    strict = True  # a household's ledger never skips an event

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type == "VillageProfileUpdated" and message.stream_type == VILLAGE:
            await self._village(conn, message.data)
        elif message.stream_type == HOUSEHOLD:
            await self._household(conn, message)
        # anything else: another stream type on these topics, ignored

    async def _household(self, conn: Any, message: Message) -> None:
        household_id = uuid.UUID(message.stream_id)
        raw = await conn.fetchval(
            "SELECT doc FROM ledger_households WHERE household_id = $1 FOR UPDATE", household_id)
        doc = json.loads(raw) if raw is not None else None
        new = evolve(doc, {"event_type": message.event_type, "data": message.data, "version": message.version})
        if new is None:
            return
        await conn.execute(
            _UPSERT_HOUSEHOLD, household_id, new["village_code"], new["status"], new["attribute"],
            new["identification_standard"], new["address"], _uuid_or_none(new["head_member_id"]),
            (new["causes"] or {}).get("primary"), all_causes(new),
            (new["monitoring"] or {}).get("object_type"), new["member_count"], new["version"],
            _date(new["registered_on"]), json.dumps(new, ensure_ascii=False))
        member_id = message.data.get("member_id") if message.event_type in _STEPS else None
        if member_id:
            m = _member(new, member_id)
            await conn.execute(
                _UPSERT_MEMBER, uuid.UUID(member_id), household_id, m["id_hmac"], m["active"], m["relation"],
                m["sex"], m["birth_year"], m["facts"].get("schooling_stage"), m["facts"].get("health") or [])

    async def _village(self, conn: Any, d: Mapping[str, Any]) -> None:
        indicators = {k: v for k, v in d.items() if k not in _VILLAGE_FIELDS}
        await conn.execute(
            _UPSERT_VILLAGE, d["village_code"], _date(d["effective_on"]), int(d["rural_population"]),
            int(d["registered_population"]), bool(d["poor_village"]), json.dumps(indicators, ensure_ascii=False))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE ledger_households, ledger_members, ledger_villages")
