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
from typing import Any, Callable, Iterable, Mapping, Sequence

from contracts.registry import HOUSEHOLD, HOUSEHOLD_TOPIC, VILLAGE, VILLAGE_TOPIC
from eventkit.projection import Message
from eventkit.sqlrows import unnest_columns

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
    return _advance(copy.deepcopy(doc), event)


def _advance(doc: dict[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any] | None:
    """``evolve`` in place: ``doc`` itself becomes the new document (its caller owns it). The steps
    never modify what they take from the event's data, so the event stays as it was."""
    event_type = event["event_type"]
    data = _data(event)
    if event_type == "HouseholdRegistered":
        new = _registered(doc, data)
    elif doc is None:
        if event_type in _STEPS:
            raise LedgerError(f"{event_type} before the household was registered")
        return None
    else:
        new = doc
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

# The upserts take one array per column (rows in the order to lock them): ``apply`` writes one row,
# ``apply_batch`` all of its batch. A text[] column comes as its JSON text (unnest flattens arrays
# of arrays).
_UPSERT_HOUSEHOLDS = """
INSERT INTO ledger_households (household_id, village_code, status, attribute, identification_standard,
    address, head_member_id, primary_cause, causes, monitoring_object_type, member_count, version,
    registered_on, updated_at, doc)
SELECT h, v, s, a, i, ad, hm, pc, ARRAY(SELECT jsonb_array_elements_text(c::jsonb)), mo, mc, ve, ro, now(), d::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::text[],
            $9::text[], $10::text[], $11::int[], $12::int[], $13::date[], $14::text[])
    AS t(h, v, s, a, i, ad, hm, pc, c, mo, mc, ve, ro, d)
ORDER BY h
ON CONFLICT (household_id) DO UPDATE SET
    village_code = EXCLUDED.village_code, status = EXCLUDED.status, attribute = EXCLUDED.attribute,
    identification_standard = EXCLUDED.identification_standard, address = EXCLUDED.address,
    head_member_id = EXCLUDED.head_member_id, primary_cause = EXCLUDED.primary_cause,
    causes = EXCLUDED.causes, monitoring_object_type = EXCLUDED.monitoring_object_type,
    member_count = EXCLUDED.member_count, version = EXCLUDED.version,
    registered_on = EXCLUDED.registered_on, updated_at = now(), doc = EXCLUDED.doc
"""

_UPSERT_MEMBERS = """
INSERT INTO ledger_members (member_id, household_id, id_hmac, active, relation, sex, birth_year,
    schooling_stage, health)
SELECT m, h, i, a, r, s, b, ss, ARRAY(SELECT jsonb_array_elements_text(he::jsonb))
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::int[], $8::text[],
            $9::text[]) AS t(m, h, i, a, r, s, b, ss, he)
ORDER BY m
ON CONFLICT (member_id) DO UPDATE SET
    household_id = EXCLUDED.household_id, id_hmac = EXCLUDED.id_hmac, active = EXCLUDED.active,
    relation = EXCLUDED.relation, sex = EXCLUDED.sex, birth_year = EXCLUDED.birth_year,
    schooling_stage = EXCLUDED.schooling_stage, health = EXCLUDED.health
"""

_UPSERT_VILLAGES = """
INSERT INTO ledger_villages (village_code, effective_on, rural_population, registered_population,
    poor_village, indicators, updated_at)
SELECT v, e, r, rp, p, i::jsonb, now()
FROM unnest($1::text[], $2::date[], $3::int[], $4::int[], $5::bool[], $6::text[]) AS t(v, e, r, rp, p, i)
ORDER BY v
ON CONFLICT (village_code) DO UPDATE SET
    effective_on = EXCLUDED.effective_on, rural_population = EXCLUDED.rural_population,
    registered_population = EXCLUDED.registered_population, poor_village = EXCLUDED.poor_village,
    indicators = EXCLUDED.indicators, updated_at = now()
WHERE EXCLUDED.effective_on >= ledger_villages.effective_on
"""


async def _upsert(conn: Any, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """One of the upserts above for rows (tuples in the order of its columns), if any."""
    if rows:
        await conn.execute(statement, *unnest_columns(rows))


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _event(message: Message) -> dict[str, Any]:
    return {"event_type": message.event_type, "data": message.data, "version": message.version}


def _touched_member(message: Message) -> str | None:
    """The member whose row a household event rewrites (None: no member row changes)."""
    return message.data.get("member_id") if message.event_type in _STEPS else None


def _household_row(household_id: uuid.UUID, doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """The row of ``_UPSERT_HOUSEHOLDS`` for a household's document."""
    return (household_id, doc["village_code"], doc["status"], doc["attribute"], doc["identification_standard"],
            doc["address"], _uuid_or_none(doc["head_member_id"]), (doc["causes"] or {}).get("primary"),
            json.dumps(all_causes(doc), ensure_ascii=False), (doc["monitoring"] or {}).get("object_type"),
            doc["member_count"], doc["version"], _date(doc["registered_on"]), json.dumps(doc, ensure_ascii=False))


def _member_row(household_id: uuid.UUID, doc: Mapping[str, Any], member_id: str) -> tuple[Any, ...]:
    """The row of ``_UPSERT_MEMBERS`` for a member of a household's document."""
    m = _member(doc, member_id)
    return (uuid.UUID(member_id), household_id, m["id_hmac"], m["active"], m["relation"], m["sex"],
            m["birth_year"], m["facts"].get("schooling_stage"),
            json.dumps(m["facts"].get("health") or [], ensure_ascii=False))


def _village_row(d: Mapping[str, Any]) -> tuple[Any, ...]:
    """The row of ``_UPSERT_VILLAGES`` for a VillageProfileUpdated."""
    indicators = {k: v for k, v in d.items() if k not in _VILLAGE_FIELDS}
    return (d["village_code"], _date(d["effective_on"]), int(d["rural_population"]), int(d["registered_population"]),
            bool(d["poor_village"]), json.dumps(indicators, ensure_ascii=False))


class HouseholdLedger:
    """Projection ``household-ledger``: households (their ledgers), their members and village profiles.

    ``apply_batch`` has the effect of ``apply`` on each message in turn in a few statements: it
    locks the documents of the batch's households at once, folds every event in memory and writes
    each changed household, each touched member and each village's winning profile once.
    """

    name = "household-ledger"
    topics = (HOUSEHOLD_TOPIC, VILLAGE_TOPIC)
    strict = True  # a household's ledger never skips an event

    async def apply(self, conn: Any, message: Message) -> None:
        if _is_village_profile(message):
            await _upsert(conn, _UPSERT_VILLAGES, [_village_row(message.data)])
        elif message.stream_type == HOUSEHOLD:
            await self._household(conn, message)
        # anything else: another stream type on these topics, ignored

    async def apply_batch(self, conn: Any, messages: Sequence[Message]) -> None:
        households = [m for m in messages if m.stream_type == HOUSEHOLD]
        if households:
            await self._households(conn, households)
        await _upsert(conn, _UPSERT_VILLAGES, _latest_profiles(m.data for m in messages if _is_village_profile(m)))

    async def _household(self, conn: Any, message: Message) -> None:
        household_id = uuid.UUID(message.stream_id)
        raw = await conn.fetchval(
            "SELECT doc FROM ledger_households WHERE household_id = $1 FOR UPDATE", household_id)
        doc = json.loads(raw) if raw is not None else None
        new = evolve(doc, _event(message))
        if new is None:
            return
        await _upsert(conn, _UPSERT_HOUSEHOLDS, [_household_row(household_id, new)])
        member_id = _touched_member(message)
        if member_id:
            await _upsert(conn, _UPSERT_MEMBERS, [_member_row(household_id, new, member_id)])

    async def _households(self, conn: Any, messages: Sequence[Message]) -> None:
        ids = sorted({uuid.UUID(m.stream_id) for m in messages})  # one lock order for every consumer
        rows = await conn.fetch("SELECT household_id, doc FROM ledger_households WHERE household_id = ANY($1::uuid[])"
                                " ORDER BY household_id FOR UPDATE", ids)
        docs: dict[uuid.UUID, dict[str, Any] | None] = {r["household_id"]: json.loads(r["doc"]) for r in rows}
        changed: set[uuid.UUID] = set()
        members: dict[str, uuid.UUID] = {}  # member -> the household that last rewrote its row
        for message in messages:
            household_id = uuid.UUID(message.stream_id)
            new = _advance(docs.get(household_id), _event(message))  # the documents are ours: no copies
            if new is None:
                continue
            docs[household_id] = new
            changed.add(household_id)
            member_id = _touched_member(message)
            if member_id:
                _member(new, member_id)  # raises as apply would for a member the household lacks
                members[member_id] = household_id
        await _upsert(conn, _UPSERT_HOUSEHOLDS, [_household_row(h, docs[h]) for h in sorted(changed)])
        # A member's row depends only on its household's events that name the member: the final
        # document holds what apply wrote at the last of them.
        await _upsert(conn, _UPSERT_MEMBERS, [_member_row(h, docs[h], m) for m, h in sorted(members.items())])

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE ledger_households, ledger_members, ledger_villages")


def _is_village_profile(message: Message) -> bool:
    return message.event_type == "VillageProfileUpdated" and message.stream_type == VILLAGE


def _latest_profiles(profiles: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """Of several profiles of a village, in order, the one upserting them one by one would leave
    (``_UPSERT_VILLAGES`` keeps a profile unless the next one is effective on the same day or later);
    that one upserted against the stored profile then has the same outcome."""
    latest: dict[str, tuple[Any, ...]] = {}
    for d in profiles:
        row = _village_row(d)
        kept = latest.get(row[0])
        if kept is None or row[1] >= kept[1]:
            latest[row[0]] = row
    return [latest[code] for code in sorted(latest)]
