"""The peer: the same bulk registration written with the ``eventsourcing`` library
(https://pypi.org/project/eventsourcing/), as its documentation sets up an application on
PostgreSQL: an ``Application`` subclass, ``PERSISTENCE_MODULE=eventsourcing.postgres`` and the
``POSTGRES_*`` variables, one ``Aggregate`` per household whose methods are decorated with
``@event``, and ``app.save(...)`` after each command.

The peer receives the events TPA's import recorded for each household (registration, one
``MemberAdded`` per member, causes, income, cadre, coordinates: the same payloads), already
parsed and validated: it does no file parsing, no validation, no personal-data vault and no
duplicate-person check. That favours the peer; the comparison says so."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class Household(Aggregate):
    @staticmethod
    def create_id(household_id: str, data: dict[str, Any]) -> uuid.UUID:  # the household's own id
        return uuid.UUID(household_id)

    @event("Registered")
    def __init__(self, household_id: str, data: dict[str, Any]) -> None:
        self.household_id = household_id
        self.data = data
        self.members: list[dict[str, Any]] = []
        self.facts: dict[str, dict[str, Any]] = {}

    @event("MemberAdded")
    def add_member(self, data: dict[str, Any]) -> None:
        self.members.append(data)

    @event("FactRecorded")
    def record_fact(self, kind: str, data: dict[str, Any]) -> None:
        self.facts[kind] = data


class Registrations(Application):
    def build(self, household_id: str, events: list[list[Any]]) -> Household:
        (first_type, first_data), rest = events[0], events[1:]
        if first_type != "HouseholdRegistered":
            raise ValueError(f"household {household_id} starts with {first_type}")
        household = Household(household_id=household_id, data=first_data)
        for event_type, data in rest:
            if event_type == "MemberAdded":
                household.add_member(data=data)
            else:
                household.record_fact(kind=event_type, data=data)
        return household


def make_app(pg: dict[str, Any]) -> Registrations:
    return Registrations(env={
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": pg["dbname"], "POSTGRES_HOST": pg["host"], "POSTGRES_PORT": str(pg["port"]),
        "POSTGRES_USER": pg["user"], "POSTGRES_PASSWORD": pg.get("password") or "trust",
    })


def register_all(app: Registrations, households: list[dict[str, Any]], mode: str, batch: int) -> int:
    """Register every household; the number of events recorded."""
    events = 0
    if mode == "each":
        for h in households:
            app.save(app.build(h["id"], h["events"]))
            events += len(h["events"])
    elif mode == "batch":
        for start in range(0, len(households), batch):
            chunk = households[start:start + batch]
            app.save(*(app.build(h["id"], h["events"]) for h in chunk))
            events += sum(len(h["events"]) for h in chunk)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return events


def count_events(pg: dict[str, Any]) -> int:
    import psycopg

    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["dbname"]) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_name LIKE '%\\_events'").fetchall()]
        return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)
