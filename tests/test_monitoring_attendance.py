"""Monitoring domain core: cadre attendance from offline batches (dedupe, order, geofence,
impossible travel, visits, contacts, team days, time window) and quarterly duty compliance.
No infrastructure."""

from __future__ import annotations

import json
import math
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from contracts import monitoring as ev
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError
from eventkit.events import RecordedEvent
from services.monitoring.attendance import (
    EARTH_RADIUS_M,
    AttendanceSettings,
    BatchResult,
    CadreAttendance,
    china_date,
    haversine_m,
)
from services.monitoring.compliance import (
    FINDING_NAMESPACE,
    DutySettings,
    finding_id,
    month_bounds,
    months_of,
    quarter_bounds,
    quarter_of,
    quarterly_findings,
)

CADRE = "cadre-7"
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)  # 20:00 on 2025-03-10 in China
CN = timezone(timedelta(hours=8))
VILLAGE = "620102001001"
OTHER_VILLAGE = "620102001002"
HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
OTHER_HOUSEHOLD = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"
NO_COORDS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
HOME = (36.0611, 103.8343)        # Lanzhou area
OTHER_HOME = (36.5000, 104.2000)  # about 58 km away
LOCATIONS: dict[str, tuple[float, float] | None] = {HOUSEHOLD: HOME, OTHER_HOUSEHOLD: OTHER_HOME, NO_COORDS: None}
VILLAGES: dict[str, str | None] = {HOUSEHOLD: VILLAGE, OTHER_HOUSEHOLD: OTHER_VILLAGE, NO_COORDS: VILLAGE}


# --- helpers ------------------------------------------------------------------------------------


def at(hour: int, minute: int = 0, second: int = 0, day: int = 10) -> str:
    """Device time in China, as the app sends it."""
    return datetime(2025, 3, day, hour, minute, second, tzinfo=CN).isoformat()


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return point[0] + math.degrees(metres / EARTH_RADIUS_M), point[1]


def check_in(cid: str, when: str, *, visit: str = "v1", household: str = HOUSEHOLD,
             where: tuple[float, float] = HOME, accuracy: float | None = 15.0, **extra: Any) -> dict[str, Any]:
    return {"client_event_id": cid, "kind": "check_in", "occurred_at": when, "latitude": where[0],
            "longitude": where[1], "accuracy_m": accuracy, "visit_id": visit, "household_id": household, **extra}


def check_out(cid: str, when: str, *, visit: str = "v1", household: str = HOUSEHOLD,
              where: tuple[float, float] = HOME, **extra: Any) -> dict[str, Any]:
    return {"client_event_id": cid, "kind": "check_out", "occurred_at": when, "latitude": where[0],
            "longitude": where[1], "accuracy_m": 10, "visit_id": visit, "household_id": household, **extra}


def visit_log(cid: str, when: str, *, visit: str = "v1", household: str = HOUSEHOLD, **extra: Any) -> dict[str, Any]:
    return {"client_event_id": cid, "kind": "visit_log", "occurred_at": when, "visit_id": visit,
            "household_id": household, "notes": "Talked about the greenhouse loan.", "needs": ["loan"], **extra}


def contact(cid: str, when: str, *, household: str = HOUSEHOLD, channel: str = "call", **extra: Any) -> dict[str, Any]:
    return {"client_event_id": cid, "kind": "contact", "occurred_at": when, "household_id": household,
            "channel": channel, **extra}


def team_day(cid: str, when: str, *, village: str = VILLAGE, where: tuple[float, float] = HOME,
             **extra: Any) -> dict[str, Any]:
    return {"client_event_id": cid, "kind": "team_day", "occurred_at": when, "latitude": where[0],
            "longitude": where[1], "village_code": village, **extra}


def ingest(agg: CadreAttendance, items: list[Any], *, now: datetime = NOW,
           settings: AttendanceSettings | None = None, **kw: Any) -> BatchResult:
    kw.setdefault("household_locations", LOCATIONS)
    kw.setdefault("household_villages", VILLAGES)
    return agg.ingest(items, now=now, settings=settings, **kw)


def statuses(result: BatchResult) -> list[str]:
    return [i.status for i in result.items]


def codes(result: BatchResult) -> list[str | None]:
    return [i.code for i in result.items]


def events(agg: Aggregate) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, dict(e.data)) for e in agg.pending]


def types_of(agg: Aggregate) -> list[str]:
    return [e.event_type for e in agg.pending]


def replayed(agg: CadreAttendance) -> CadreAttendance:
    fresh = CadreAttendance(agg.id)
    for version, e in enumerate(agg.pending, start=1):
        fresh.replay(RecordedEvent(version, e.event_id, agg.id, agg.stream_type, version, e.event_type,
                                   e.schema_version, json.loads(json.dumps(dict(e.data))), {}, None, NOW))
    return fresh


def last(agg: CadreAttendance) -> dict[str, Any]:
    return dict(agg.pending[-1].data)


def one(result: BatchResult):
    assert len(result.items) == 1
    return result.items[0]


def cadre() -> CadreAttendance:
    return CadreAttendance(CADRE)


# --- geometry and time ---------------------------------------------------------------------------


class TestHaversine:
    def test_same_point_is_zero(self):
        assert haversine_m(*HOME, *HOME) == 0.0

    def test_one_degree_of_latitude(self):
        assert haversine_m(0, 0, 1, 0) == pytest.approx(2 * math.pi * EARTH_RADIUS_M / 360, rel=1e-12)
        assert haversine_m(0, 0, 1, 0) == pytest.approx(111_195.08, abs=0.01)

    def test_small_distances_are_precise(self):
        assert haversine_m(*HOME, *north_of(HOME, 1.0)) == pytest.approx(1.0, abs=1e-6)
        assert haversine_m(*HOME, *north_of(HOME, 500.0)) == pytest.approx(500.0, abs=1e-6)
        assert haversine_m(36.0, 103.0, 36.0, 103.00001) == pytest.approx(0.9, abs=0.01)  # shorter at 36 degrees

    def test_antimeridian_is_short(self):
        d = haversine_m(0.0, 179.9995, 0.0, -179.9995)
        assert d == pytest.approx(111.195, abs=0.01)
        assert haversine_m(10.0, -180.0, 10.0, 180.0) == pytest.approx(0.0, abs=1e-6)

    def test_symmetric_and_antipodes(self):
        assert haversine_m(*HOME, *OTHER_HOME) == pytest.approx(haversine_m(*OTHER_HOME, *HOME))
        assert haversine_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M)
        assert haversine_m(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)

    def test_china_date(self):
        assert china_date(datetime(2025, 3, 9, 16, 0, tzinfo=timezone.utc)) == date(2025, 3, 10)
        assert china_date(datetime(2025, 3, 9, 15, 59, tzinfo=timezone.utc)) == date(2025, 3, 9)
        with pytest.raises(ValueError):
            china_date(datetime(2025, 3, 9))


class TestSettings:
    def test_defaults(self):
        s = AttendanceSettings()
        assert (s.geofence_m, s.max_speed_kmh, s.min_speed_interval_s) == (500, 120, 60)
        assert (s.max_clock_skew, s.max_backdate_days) == (timedelta(minutes=10), 30)

    def test_allowance_is_accuracy_capped(self):
        s = AttendanceSettings(max_accuracy_allowance_m=300)
        assert (s.allowance(None), s.allowance(40), s.allowance(5000)) == (0.0, 40, 300)

    @pytest.mark.parametrize("kw", [{"geofence_m": -1}, {"geofence_m": float("nan")}, {"max_speed_kmh": 0},
                                    {"min_speed_interval_s": 0}, {"max_clock_skew": timedelta(minutes=-1)},
                                    {"max_backdate_days": 0}, {"max_batch_items": True}, {"geofence_m": "500"}])
    def test_invalid(self, kw):
        with pytest.raises(ValueError):
            AttendanceSettings(**kw)


# --- ingesting batches -------------------------------------------------------------------------------


class TestRecording:
    def test_check_in_event(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9, 30), photo_ref="media/abc.jpg")])
        item = one(result)
        assert (item.status, item.event_type, item.index, item.client_event_id) == (
            "accepted", "VisitCheckedIn", 0, "e1")
        d = last(agg)
        ev.VisitCheckedIn.model_validate(d)
        assert d["cadre_id"] == CADRE
        assert d["occurred_at"] == "2025-03-10T09:30:00+08:00"   # device time kept with its offset
        assert datetime.fromisoformat(d["received_at"]) == NOW
        assert (d["visit_id"], d["household_id"], d["village_code"], d["photo_ref"]) == (
            "v1", HOUSEHOLD, VILLAGE, "media/abc.jpg")
        assert (d["distance_m"], d["outside_geofence"], d["geofence_m"]) == (0.0, False, 500.0)
        assert (d["speed_kmh"], d["impossible_travel"]) == (None, False)
        assert agg.open_visits["v1"].household_id == HOUSEHOLD
        assert agg.last_check_in.client_event_id == "e1"

    def test_full_visit_contact_and_team_day(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), visit_log("e2", at(9, 20), needs=["loan", "repair", "loan"]),
                              check_out("e3", at(9, 45, 30)), contact("e4", at(14), duration_s=120, note="follow-up"),
                              team_day("e5", at(8), day="2025-03-10")])
        assert statuses(result) == ["accepted"] * 5
        assert types_of(agg) == ["TeamDayRecorded", "VisitCheckedIn", "VisitLogged", "VisitCheckedOut",
                                 "ContactLogged"]
        by_type = dict(events(agg))
        for event_type, model in (("VisitLogged", ev.VisitLogged), ("VisitCheckedOut", ev.VisitCheckedOut),
                                  ("ContactLogged", ev.ContactLogged), ("TeamDayRecorded", ev.TeamDayRecorded)):
            model.model_validate(by_type[event_type])
        assert by_type["VisitLogged"]["needs"] == ["loan", "repair"]
        assert by_type["VisitCheckedOut"]["minutes_at_household"] == 45.5
        assert result.items[2].details == {"minutes_at_household": 45.5}
        assert (by_type["ContactLogged"]["channel"], by_type["ContactLogged"]["duration_s"]) == ("call", 120)
        assert by_type["TeamDayRecorded"]["day"] == "2025-03-10"
        assert agg.open_visits == {}
        done = agg.visits_done
        assert [(v.visit_id, v.minutes_at_household, v.logs) for v in done] == [("v1", 45.5, 1)]
        assert (agg.contacts, agg.visit_logs, agg.team_days) == (1, 1, {date(2025, 3, 10): VILLAGE})

    def test_replay_rebuilds_the_same_state(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9)), visit_log("e2", at(9, 20)), check_out("e3", at(10)),
                     check_in("e4", at(11), visit="v2", household=OTHER_HOUSEHOLD, where=OTHER_HOME),
                     contact("e5", at(14)), team_day("e6", at(8))])
        fresh = replayed(agg)
        for name in ("client_event_ids", "visits", "check_ins", "team_days", "contacts", "visit_logs"):
            assert getattr(fresh, name) == getattr(agg, name), name
        assert fresh.version == 6

    def test_result_json(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), check_in("e1", at(9)), {"kind": "contact"}])
        doc = result.to_json()
        assert (doc["accepted"], doc["duplicates"], doc["rejected"]) == (1, 1, 1)
        assert [i["status"] for i in doc["items"]] == ["accepted", "duplicate", "rejected"]
        assert doc["items"][2] == {"index": 2, "client_event_id": None, "status": "rejected", "kind": None,
                                   "code": "missing_field", "reason": doc["items"][2]["reason"],
                                   "field": "client_event_id"}
        json.dumps(doc)

    def test_result_json_of_a_flagged_check_in(self):
        doc = ingest(cadre(), [check_in("e1", at(9), where=north_of(HOME, 900), accuracy=None)]).to_json()
        assert doc["items"][0]["flags"] == ["outside_geofence"]
        assert doc["items"][0]["details"] == {"distance_m": 900.0, "geofence_m": 500.0}

    def test_empty_batch(self):
        agg = cadre()
        assert ingest(agg, []).items == ()
        assert agg.pending == []


class TestDuplicates:
    def test_resent_batch_is_harmless(self):
        agg = cadre()
        batch = [check_in("e1", at(9)), visit_log("e2", at(9, 10)), check_out("e3", at(9, 40)),
                 contact("e4", at(15)), team_day("e5", at(8))]
        assert statuses(ingest(agg, batch)) == ["accepted"] * 5
        recorded = len(agg.pending)
        again = ingest(agg, batch, now=NOW + timedelta(minutes=5))
        assert statuses(again) == ["duplicate"] * 5
        assert set(codes(again)) == {"already_recorded"}
        assert len(agg.pending) == recorded

    def test_resent_batch_after_replay(self):
        agg = cadre()
        batch = [check_in("e1", at(9)), check_out("e2", at(9, 40))]
        ingest(agg, batch)
        fresh = replayed(agg)
        assert statuses(ingest(fresh, batch)) == ["duplicate", "duplicate"]
        assert fresh.pending == []

    def test_duplicate_within_a_batch(self):
        agg = cadre()
        result = ingest(agg, [contact("e1", at(9)), contact("e1", at(9)), contact("e2", at(10))])
        assert statuses(result) == ["accepted", "duplicate", "accepted"]
        assert "twice in this batch" in result.items[1].reason
        assert types_of(agg) == ["ContactLogged", "ContactLogged"]

    def test_duplicate_is_checked_before_the_time_window(self):
        agg = cadre()
        ingest(agg, [contact("e1", at(9))])
        later = NOW + timedelta(days=40)
        result = ingest(agg, [contact("e1", at(9))], now=later)
        assert one(result).status == "duplicate"
        assert one(ingest(agg, [contact("e2", at(9))], now=later)).code == "too_old"

    def test_rejected_item_does_not_use_up_its_id(self):
        agg = cadre()
        first = ingest(agg, [check_out("e2", at(9, 40))])   # its check-in is in a later batch
        assert (one(first).status, one(first).code) == ("rejected", "visit_not_open")
        second = ingest(agg, [check_in("e1", at(9)), check_out("e2", at(9, 40))])
        assert statuses(second) == ["accepted", "accepted"]

    def test_second_team_day_of_a_day_is_a_duplicate(self):
        agg = cadre()
        result = ingest(agg, [team_day("t1", at(8)), team_day("t2", at(17), village=OTHER_VILLAGE),
                              team_day("t3", at(8, day=9))])
        assert statuses(result) == ["accepted", "duplicate", "accepted"]
        assert result.items[1].code == "team_day_already_recorded"
        assert "2025-03-10" in result.items[1].reason
        again = ingest(agg, [team_day("t4", at(18))])
        assert (one(again).status, one(again).code) == ("duplicate", "team_day_already_recorded")
        assert types_of(agg) == ["TeamDayRecorded", "TeamDayRecorded"]
        assert agg.team_days == {date(2025, 3, 10): VILLAGE, date(2025, 3, 9): VILLAGE}


class TestOrder:
    def test_unordered_batch_is_processed_in_device_time(self):
        agg = cadre()
        result = ingest(agg, [check_out("e3", at(9, 40)), visit_log("e2", at(9, 10)), check_in("e1", at(9))])
        assert statuses(result) == ["accepted"] * 3
        assert [i.index for i in result.items] == [0, 1, 2]   # answered in the batch's order
        assert types_of(agg) == ["VisitCheckedIn", "VisitLogged", "VisitCheckedOut"]

    def test_offsets_are_compared_as_instants(self):
        agg = cadre()
        # 02:00Z is 10:00 in China: after the 09:00 (+08:00) check-in
        result = ingest(agg, [check_out("e2", "2025-03-10T02:00:00+00:00"), check_in("e1", at(9))])
        assert statuses(result) == ["accepted", "accepted"]
        assert last(agg)["minutes_at_household"] == 60.0
        assert last(agg)["occurred_at"] == "2025-03-10T02:00:00Z"

    def test_same_second_check_in_goes_first(self):
        agg = cadre()
        result = ingest(agg, [check_out("a-out", at(9)), check_in("b-in", at(9))])
        assert statuses(result) == ["accepted", "accepted"]
        assert last(agg)["minutes_at_household"] == 0.0

    def test_ties_by_client_event_id(self):
        agg = cadre()
        ingest(agg, [contact("c2", at(9)), contact("c1", at(9)), contact("c3", at(9))])
        assert [e.data["client_event_id"] for e in agg.pending] == ["c1", "c2", "c3"]

    def test_late_older_batch_is_compared_with_its_neighbour(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(8)), check_in("e3", at(12), visit="v3")])
        # sent later, happened in between: 58 km from 08:00 in one hour is fine, but not in ten minutes
        far = ingest(agg, [check_in("e2", at(8, 10), visit="v2", household=OTHER_HOUSEHOLD, where=OTHER_HOME)])
        assert one(far).flags == ("impossible_travel",)
        assert one(far).details["previous_check_in"] == "e1"
        assert [p.client_event_id for p in agg.check_ins] == ["e1", "e2", "e3"]
        assert agg.last_check_in.client_event_id == "e3"


class TestGeofence:
    def test_inside_and_outside(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9), where=north_of(HOME, 300), accuracy=None),
                              check_in("e2", at(11), visit="v2", where=north_of(HOME, 700), accuracy=None)])
        assert [i.flags for i in result.items] == [(), ("outside_geofence",)]
        d1, d2 = (e.data for e in agg.pending)
        assert (d1["distance_m"], d1["outside_geofence"]) == (300.0, False)
        assert (d2["distance_m"], d2["outside_geofence"], d2["geofence_m"]) == (700.0, True, 500.0)
        assert result.items[1].details["distance_m"] == 700.0

    def test_exactly_on_the_boundary_is_inside(self):
        where = north_of(HOME, 500)
        distance = round(haversine_m(*HOME, *where), 1)
        assert distance == 500.0
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), where=where, accuracy=None)])
        assert last(agg)["outside_geofence"] is False
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), where=north_of(HOME, 500.2), accuracy=None)])
        assert (last(agg)["distance_m"], last(agg)["outside_geofence"]) == (500.2, True)

    def test_accuracy_allowance(self):
        where = north_of(HOME, 560)
        cases = [(None, True), (0, True), (59, True), (60, False), (200, False)]
        for accuracy, outside in cases:
            agg = cadre()
            ingest(agg, [check_in("e1", at(9), where=where, accuracy=accuracy)])
            assert last(agg)["outside_geofence"] is outside, accuracy

    def test_coarse_fix_cannot_stretch_the_fence(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), where=north_of(HOME, 3000), accuracy=5000)])
        assert last(agg)["outside_geofence"] is True   # allowance capped at 1000 m
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), where=north_of(HOME, 1400), accuracy=5000)])
        assert last(agg)["outside_geofence"] is False

    def test_settings_apply(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), where=north_of(HOME, 150), accuracy=10)],
               settings=AttendanceSettings(geofence_m=100))
        assert (last(agg)["geofence_m"], last(agg)["outside_geofence"]) == (100.0, True)

    def test_unknown_coordinates(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9), household=NO_COORDS, where=OTHER_HOME)])
        assert one(result).status == "accepted"
        d = last(agg)
        assert (d["distance_m"], d["geofence_m"], d["outside_geofence"]) == (None, None, False)
        assert d["village_code"] == VILLAGE

    def test_household_known_by_one_mapping_only(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9))], household_locations={}, household_villages={HOUSEHOLD: None})
        assert one(result).status == "accepted"
        assert (last(agg)["distance_m"], last(agg)["village_code"]) == (None, None)
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9))], household_locations={HOUSEHOLD: HOME}, household_villages={})
        assert (one(result).status, last(agg)["distance_m"]) == ("accepted", 0.0)

    def test_across_the_antimeridian(self):
        h = "11111111-2222-4333-8444-555555555555"
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), household=h, where=(-16.5, -179.999), accuracy=None)],
               household_locations={h: (-16.5, 179.999)}, household_villages={h: None})
        expected = math.radians(0.002) * EARTH_RADIUS_M * math.cos(math.radians(16.5))   # about 213.2 m
        assert last(agg)["distance_m"] == pytest.approx(expected, abs=0.05)
        assert last(agg)["outside_geofence"] is False


class TestImpossibleTravel:
    def test_far_in_little_time_is_flagged(self):
        agg = cadre()
        distance_km = haversine_m(*HOME, *OTHER_HOME) / 1000
        result = ingest(agg, [check_in("e1", at(9), accuracy=None),
                              check_in("e2", at(9, 20), visit="v2", household=OTHER_HOUSEHOLD, where=OTHER_HOME,
                                       accuracy=None)])
        assert result.items[1].flags == ("impossible_travel",)
        d = last(agg)
        assert d["impossible_travel"] is True
        assert d["speed_kmh"] == pytest.approx(round(distance_km * 3, 1))
        assert d["outside_geofence"] is False   # at the right household, just too fast

    def test_plausible_drive_is_not(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9)),
                     check_in("e2", at(10, 30), visit="v2", household=OTHER_HOUSEHOLD, where=OTHER_HOME)])
        d = last(agg)
        assert 0 < d["speed_kmh"] < 120 and d["impossible_travel"] is False

    def test_first_check_in_has_no_speed(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9))])
        assert (last(agg)["speed_kmh"], last(agg)["impossible_travel"]) == (None, False)

    def test_gps_jitter_between_close_fixes_is_no_travel(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9, 0, 0), accuracy=20),
                     check_in("e2", at(9, 0, 5), visit="v2", where=north_of(HOME, 35), accuracy=20)])
        assert (last(agg)["speed_kmh"], last(agg)["impossible_travel"]) == (0.0, False)

    def test_minimum_interval(self):
        # 2 km at the same second: 2000 m / 60 s = 120 km/h, not above the limit; 3 km is
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9), accuracy=None),
                              check_in("e2", at(9), visit="v2", where=north_of(HOME, 2000), accuracy=None),
                              check_in("e3", at(9, 10), visit="v3", accuracy=None),
                              check_in("e4", at(9, 10), visit="v4", where=north_of(HOME, 3000), accuracy=None)])
        speeds = [e.data["speed_kmh"] for e in agg.pending]
        assert speeds == [None, 120.0, pytest.approx(12.0), 180.0]
        assert ["impossible_travel" in i.flags for i in result.items] == [False, False, False, True]

    def test_accuracy_is_taken_off_the_distance(self):
        # 3 km in one minute would be 180 km/h; with 600 m + 600 m of uncertainty it is 1.8 km -> 108 km/h
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), accuracy=600),
                     check_in("e2", at(9, 1), visit="v2", where=north_of(HOME, 3000), accuracy=600)])
        assert (last(agg)["speed_kmh"], last(agg)["impossible_travel"]) == (108.0, False)

    def test_speed_limit_is_configurable(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9), accuracy=None),
                     check_in("e2", at(9, 10), visit="v2", where=north_of(HOME, 10_000), accuracy=None)],
               settings=AttendanceSettings(max_speed_kmh=50))
        assert (last(agg)["speed_kmh"], last(agg)["impossible_travel"]) == (60.0, True)


class TestVisits:
    def test_check_out_without_check_in(self):
        result = ingest(cadre(), [check_out("e1", at(10), visit="nope")])
        assert (one(result).status, one(result).code, one(result).field) == ("rejected", "visit_not_open", "visit_id")

    def test_check_out_before_check_in_in_one_batch(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(10)), check_out("e2", at(9, 30))])
        assert statuses(result) == ["accepted", "rejected"]
        assert result.items[1].code == "check_out_before_check_in"
        assert agg.open_visits.keys() == {"v1"}

    def test_check_out_before_check_in_across_batches(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(10))])
        result = ingest(agg, [check_out("e2", at(9, 30))])
        assert one(result).code == "check_out_before_check_in"

    def test_check_out_of_a_rejected_check_in(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9), household="not-a-uuid"), check_out("e2", at(10))])
        assert codes(result) == ["invalid_household_id", "visit_not_open"]
        assert "not accepted" in result.items[1].reason

    def test_check_out_for_another_household(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), check_out("e2", at(10), household=OTHER_HOUSEHOLD)])
        assert codes(result) == [None, "household_mismatch"]

    def test_second_check_out(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), check_out("e2", at(10)), check_out("e3", at(11))])
        assert codes(result) == [None, None, "visit_already_closed"]

    def test_check_in_reusing_a_visit_id(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), check_in("e2", at(9, 5)), check_out("e3", at(10)),
                              check_in("e4", at(11))])
        assert codes(result) == [None, "visit_already_open", None, "visit_already_closed"]

    def test_several_open_visits(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), check_in("e2", at(10), visit="v2", household=NO_COORDS)])
        assert statuses(result) == ["accepted", "accepted"]
        assert set(agg.open_visits) == {"v1", "v2"}

    def test_duration_is_rounded_minutes(self):
        agg = cadre()
        ingest(agg, [check_in("e1", at(9, 0, 0)), check_out("e2", at(9, 12, 20))])
        assert last(agg)["minutes_at_household"] == 12.33

    def test_visit_log_rules(self):
        agg = cadre()
        result = ingest(agg, [visit_log("l0", at(8, 50)), check_in("e1", at(9)), visit_log("l1", at(9, 10)),
                              visit_log("l2", at(9, 20), household=OTHER_HOUSEHOLD),
                              visit_log("l3", at(9, 30), visit="other"), check_out("e2", at(10)),
                              visit_log("l4", at(10, 30))])
        assert codes(result) == ["visit_log_before_check_in", None, None, "household_mismatch", "unknown_visit",
                                 None, None]
        assert agg.visits["v1"].logs == 2   # a log may follow the check-out

    @pytest.mark.parametrize("needs", ["loan", [""], [1], ["x" * 65], [f"n{i}" for i in range(21)]])
    def test_invalid_needs(self, needs):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), visit_log("l1", at(9, 10), needs=needs)])
        assert result.items[1].code == "invalid_needs"

    def test_visit_log_needs_notes(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), visit_log("l1", at(9, 10), notes="  ")])
        assert (result.items[1].code, result.items[1].field) == ("missing_field", "notes")


class TestContacts:
    def test_message(self):
        agg = cadre()
        result = ingest(agg, [contact("c1", at(9), channel="message", note="  ")])
        assert one(result).status == "accepted"
        assert (last(agg)["channel"], last(agg)["duration_s"], last(agg)["note"]) == ("message", None, None)

    @pytest.mark.parametrize("extra,code", [
        ({"channel": "visit"}, "invalid_channel"),
        ({"channel": None}, "missing_field"),
        ({"channel": "message", "duration_s": 30}, "unexpected_field"),
        ({"duration_s": -1}, "invalid_duration"),
        ({"duration_s": 1.5}, "invalid_duration"),
        ({"duration_s": True}, "invalid_duration"),
        ({"duration_s": 86_401}, "invalid_duration"),
        ({"note": "x" * 2001}, "too_long"),
        ({"household_id": OTHER_HOUSEHOLD.upper()}, "invalid_household_id"),
        ({"household_id": "99999999-2222-4333-8444-555555555555"}, "unknown_household"),
    ])
    def test_invalid(self, extra, code):
        item = {**contact("c1", at(9)), **extra}
        result = ingest(cadre(), [item])
        assert (one(result).status, one(result).code) == ("rejected", code)


class TestTeamDays:
    def test_day_is_the_china_date(self):
        agg = cadre()
        result = ingest(agg, [team_day("t1", "2025-03-09T23:30:00+00:00")])   # 07:30 on 10 March in China
        assert one(result).details["day"] == "2025-03-10"
        assert last(agg)["day"] == "2025-03-10"

    def test_given_day_must_match(self):
        result = ingest(cadre(), [team_day("t1", at(9), day="2025-03-09")])
        assert one(result).code == "day_mismatch"
        result = ingest(cadre(), [team_day("t1", at(9), day="10 March")])
        assert one(result).code == "invalid_day"
        assert one(ingest(cadre(), [team_day("t1", at(9), day="2025-03-10")])).status == "accepted"

    def test_distance_from_the_village(self):
        agg = cadre()
        ingest(agg, [team_day("t1", at(9), where=north_of(HOME, 800))], village_locations={VILLAGE: HOME})
        assert last(agg)["distance_m"] == 800.0
        agg = cadre()
        ingest(agg, [team_day("t1", at(9))], village_locations={VILLAGE: None})
        assert last(agg)["distance_m"] is None

    @pytest.mark.parametrize("village", ["62010200100", "6201020010011", "62010200100x", None])
    def test_invalid_village(self, village):
        result = ingest(cadre(), [team_day("t1", at(9), village=village)])
        assert one(result).code in ("invalid_village_code", "missing_field")


class TestTimeWindow:
    def test_clock_skew(self):
        agg = cadre()
        ahead = [contact("c1", (NOW + timedelta(minutes=9, seconds=59)).isoformat()),
                 contact("c2", (NOW + timedelta(minutes=10)).isoformat()),
                 contact("c3", (NOW + timedelta(minutes=10, seconds=1)).isoformat())]
        result = ingest(agg, ahead)
        assert codes(result) == [None, None, "occurred_in_future"]
        assert "device clock" in result.items[2].reason

    def test_backdate(self):
        agg = cadre()
        result = ingest(agg, [contact("c1", (NOW - timedelta(days=30)).isoformat()),
                              contact("c2", (NOW - timedelta(days=30, seconds=1)).isoformat())])
        assert codes(result) == [None, "too_old"]
        assert "30 days" in result.items[1].reason
        result = ingest(cadre(), [contact("c1", (NOW - timedelta(days=40)).isoformat())],
                        settings=AttendanceSettings(max_backdate_days=45))
        assert one(result).status == "accepted"

    def test_received_at_is_now(self):
        agg = cadre()
        ingest(agg, [contact("c1", at(9))], now=datetime(2025, 3, 10, 20, 0, tzinfo=CN))
        assert last(agg)["received_at"] == "2025-03-10T12:00:00Z"

    def test_now_must_be_aware(self):
        with pytest.raises(ValueError):
            cadre().ingest([], now=datetime(2025, 3, 10), household_locations={}, household_villages={})


class TestValidation:
    @pytest.mark.parametrize("change,code,field_name", [
        ({"client_event_id": None}, "missing_field", "client_event_id"),
        ({"client_event_id": "  "}, "missing_field", "client_event_id"),
        ({"client_event_id": 17}, "invalid_client_event_id", "client_event_id"),
        ({"client_event_id": "x" * 129}, "invalid_client_event_id", "client_event_id"),
        ({"client_event_id": " e1"}, "invalid_client_event_id", "client_event_id"),
        ({"kind": None}, "missing_field", "kind"),
        ({"kind": "checkin"}, "invalid_kind", "kind"),
        ({"occurred_at": None}, "missing_field", "occurred_at"),
        ({"occurred_at": "yesterday"}, "invalid_occurred_at", "occurred_at"),
        ({"occurred_at": "2025-03-10T09:00:00"}, "invalid_occurred_at", "occurred_at"),
        ({"occurred_at": 1741568400}, "invalid_occurred_at", "occurred_at"),
        ({"latitude": None}, "missing_field", "latitude"),
        ({"latitude": "36.06"}, "invalid_location", "latitude"),
        ({"latitude": True}, "invalid_location", "latitude"),
        ({"latitude": 90.5}, "invalid_location", "latitude"),
        ({"longitude": -180.1}, "invalid_location", "longitude"),
        ({"longitude": float("inf")}, "invalid_location", "longitude"),
        ({"latitude": 0, "longitude": 0.0}, "invalid_location", "latitude"),
        ({"accuracy_m": -3}, "invalid_accuracy", "accuracy_m"),
        ({"accuracy_m": "10"}, "invalid_accuracy", "accuracy_m"),
        ({"visit_id": ""}, "missing_field", "visit_id"),
        ({"visit_id": "v" * 129}, "too_long", "visit_id"),
        ({"household_id": None}, "missing_field", "household_id"),
        ({"household_id": "3F2B8C1E-9D4A-4E6B-8F7A-1C2D3E4F5A6B"}, "invalid_household_id", "household_id"),
        ({"photo_ref": "p" * 513}, "too_long", "photo_ref"),
    ])
    def test_invalid_check_in(self, change, code, field_name):
        agg = cadre()
        result = ingest(agg, [{**check_in("e1", at(9)), **change}, contact("ok", at(10))])
        item = result.items[0]
        assert (item.status, item.code, item.field) == ("rejected", code, field_name), item.reason
        assert item.reason
        assert result.items[1].status == "accepted"   # one bad item does not sink the batch
        assert types_of(agg) == ["ContactLogged"]

    def test_equator_and_meridian_are_valid_apart(self):
        h = "11111111-2222-4333-8444-555555555555"
        result = ingest(cadre(), [check_in("e1", at(9), household=h, where=(0.0, 10.0))],
                        household_locations={h: None}, household_villages={h: None})
        assert one(result).status == "accepted"

    def test_text_fields_must_be_text(self):
        agg = cadre()
        result = ingest(agg, [check_in("e1", at(9)), visit_log("l1", at(9, 10), notes=5)])
        assert (result.items[1].code, result.items[1].field) == ("invalid_value", "notes")

    def test_optional_fields_may_be_absent(self):
        agg = cadre()
        item = check_in("e1", at(9))
        del item["accuracy_m"]
        log = visit_log("l1", at(9, 10))
        del log["needs"]
        result = ingest(agg, [item, log])
        assert statuses(result) == ["accepted", "accepted"]
        assert (agg.pending[0].data["accuracy_m"], agg.pending[1].data["needs"]) == (None, [])

    def test_occurred_at_may_be_a_datetime(self):
        agg = cadre()
        result = ingest(agg, [contact("c1", datetime(2025, 3, 10, 9, 0, tzinfo=CN))])  # type: ignore[arg-type]
        assert one(result).status == "accepted"
        assert last(agg)["occurred_at"] == "2025-03-10T09:00:00+08:00"

    def test_contract_is_the_last_check(self):
        # a village code the registry read model should never hold is caught by the event contract
        result = ingest(cadre(), [check_in("e1", at(9))], household_villages={HOUSEHOLD: "6201"})
        assert (one(result).status, one(result).code, one(result).field) == ("rejected", "invalid_item",
                                                                             "village_code")

    def test_duplicate_of_a_recorded_item_needs_no_valid_body(self):
        agg = cadre()
        ingest(agg, [contact("c1", at(9))])
        result = ingest(agg, [{"client_event_id": "c1", "kind": "whatever"}])
        assert (one(result).status, one(result).kind) == ("duplicate", None)

    def test_non_object_item(self):
        result = ingest(cadre(), ["check_in", None, 5])
        assert codes(result) == ["invalid_item"] * 3

    def test_rejection_keeps_client_event_id_and_kind(self):
        result = ingest(cadre(), [check_out("e9", at(9))])
        assert (one(result).client_event_id, one(result).kind, one(result).index) == ("e9", "check_out", 0)

    def test_batch_must_be_a_list(self):
        for bad in ({"items": []}, "batch", None):
            with pytest.raises(DomainError) as info:
                ingest(cadre(), bad)  # type: ignore[arg-type]
            assert info.value.code == "invalid_batch"

    def test_batch_size(self):
        settings = AttendanceSettings(max_batch_items=2)
        with pytest.raises(DomainError) as info:
            ingest(cadre(), [contact(f"c{i}", at(9)) for i in range(3)], settings=settings)
        assert (info.value.code, info.value.details["limit"], info.value.details["size"]) == ("batch_too_large", 2, 3)
        assert len(ingest(cadre(), [contact(f"c{i}", at(9)) for i in range(2)], settings=settings).accepted) == 2


# --- duty compliance --------------------------------------------------------------------------------

AFTER_Q1 = datetime(2025, 4, 2, 1, 0, tzinfo=timezone.utc)
H1 = HOUSEHOLD
H2 = OTHER_HOUSEHOLD
H3 = NO_COORDS


def findings(pairings, visits=(), contacts=(), team_days=None, settings=None, *, now=AFTER_Q1, quarter="2025-Q1"):
    return quarterly_findings(CADRE, quarter, list(pairings), list(visits), list(contacts), team_days, settings,
                              now=now)


def summary(found: list[dict[str, Any]]) -> list[tuple[str, str, str | None, int, int]]:
    return [(f["duty"], f["period"], f["household_id"], f["expected"], f["actual"]) for f in found]


WHOLE = (H1, VILLAGE, date(2024, 6, 1), None)


class TestPeriods:
    def test_quarter_of(self):
        assert [quarter_of(date(2025, m, 15)) for m in (1, 3, 4, 6, 7, 9, 10, 12)] == [
            "2025-Q1", "2025-Q1", "2025-Q2", "2025-Q2", "2025-Q3", "2025-Q3", "2025-Q4", "2025-Q4"]

    def test_months_and_bounds(self):
        assert months_of("2025-Q2") == ["2025-04", "2025-05", "2025-06"]
        assert months_of("2025-Q4") == ["2025-10", "2025-11", "2025-12"]
        assert quarter_bounds("2024-Q1") == (date(2024, 1, 1), date(2024, 4, 1))
        assert quarter_bounds("2025-Q4") == (date(2025, 10, 1), date(2026, 1, 1))
        assert month_bounds("2024-02") == (date(2024, 2, 1), date(2024, 3, 1))

    @pytest.mark.parametrize("bad", ["2025-Q5", "2025Q1", "2025-q1", "Q1-2025", None])
    def test_invalid_quarter(self, bad):
        with pytest.raises(DomainError) as info:
            months_of(bad)  # type: ignore[arg-type]
        assert info.value.code == "invalid_quarter"

    def test_invalid_month(self):
        with pytest.raises(DomainError):
            month_bounds("2025-13")


class TestCompliance:
    def test_all_duties_done(self):
        visits = [(H1, date(2025, 2, 10))]
        contacts = [(H1, date(2025, 1, 5)), (H1, date(2025, 3, 31))]
        assert findings([WHOLE], visits, contacts) == []

    def test_nothing_done(self):
        found = findings([WHOLE])
        assert summary(found) == [("quarterly_visit", "2025-Q1", H1, 1, 0),
                                  ("monthly_contact", "2025-01", H1, 1, 0),
                                  ("monthly_contact", "2025-02", H1, 1, 0),
                                  ("monthly_contact", "2025-03", H1, 1, 0)]
        for f in found:
            ev.DutyNonCompliance.model_validate(f)
            assert (f["cadre_id"], f["village_code"]) == (CADRE, VILLAGE)
            assert datetime.fromisoformat(f["detected_at"]) == AFTER_Q1

    def test_visit_counts_as_contact(self):
        found = findings([WHOLE], visits=[(H1, date(2025, 2, 10))], contacts=[(H1, date(2025, 1, 5))])
        assert summary(found) == [("monthly_contact", "2025-03", H1, 1, 0)]

    def test_activity_outside_the_quarter_does_not_count(self):
        found = findings([WHOLE], visits=[(H1, date(2024, 12, 31)), (H1, date(2025, 4, 1))])
        assert [f["duty"] for f in found].count("quarterly_visit") == 1

    def test_other_households_activity_does_not_count(self):
        found = findings([WHOLE, (H2, OTHER_VILLAGE, date(2024, 1, 1), None)],
                         visits=[(H2, date(2025, 2, 1))], contacts=[(H2, "2025-01-02"), (H2, "2025-03-02")])
        assert {(f["duty"], f["household_id"]) for f in found} == {
            ("quarterly_visit", H1), ("monthly_contact", H1)}
        assert all(f["village_code"] == VILLAGE for f in found)

    def test_partial_pairing(self):
        # paired from 5 March: 27 days of the quarter -> no visit owed; 27 days of March -> a contact owed
        assert summary(findings([(H1, VILLAGE, date(2025, 3, 5), None)])) == [
            ("monthly_contact", "2025-03", H1, 1, 0)]
        # paired from 2 March: 30 days -> the visit is owed too
        assert summary(findings([(H1, VILLAGE, date(2025, 3, 2), None)])) == [
            ("quarterly_visit", "2025-Q1", H1, 1, 0), ("monthly_contact", "2025-03", H1, 1, 0)]
        # paired from 18 March: 14 days of March -> nothing owed
        assert findings([(H1, VILLAGE, date(2025, 3, 18), None)]) == []
        # paired after the quarter -> nothing
        assert findings([(H1, VILLAGE, date(2025, 4, 1), None)]) == []

    def test_released_cadre(self):
        # released 10 January: paired 1-9 January only
        assert findings([(H1, VILLAGE, date(2024, 1, 1), date(2025, 1, 10))]) == []
        # released 20 February: 31 + 19 days -> visit owed; January and February contacts owed
        found = findings([(H1, VILLAGE, date(2024, 1, 1), date(2025, 2, 20))], contacts=[(H1, date(2025, 2, 25))])
        # (the contact on 25 February, after the release, still counts for February)
        assert summary(found) == [("quarterly_visit", "2025-Q1", H1, 1, 0), ("monthly_contact", "2025-01", H1, 1, 0)]
        found = findings([(H1, VILLAGE, date(2024, 1, 1), date(2025, 2, 20))])
        assert ("monthly_contact", "2025-02", H1, 1, 0) in summary(found)
        assert not [f for f in found if f["period"] == "2025-03"]

    def test_release_day_is_not_paired(self):
        assert findings([(H1, VILLAGE, date(2025, 1, 1), date(2025, 1, 1))]) == []
        # 1 January to 15 January exclusive = 14 days -> no January contact owed; to the 16th = 15 days -> owed
        assert findings([(H1, VILLAGE, date(2025, 1, 1), date(2025, 1, 15))]) == []
        assert summary(findings([(H1, VILLAGE, date(2025, 1, 1), date(2025, 1, 16))])) == [
            ("monthly_contact", "2025-01", H1, 1, 0)]

    def test_repairing_adds_up_overlaps_once(self):
        rows = [(H1, VILLAGE, date(2025, 1, 1), date(2025, 1, 20)),
                (H1, VILLAGE, date(2025, 1, 10), date(2025, 1, 20)),   # overlap: counted once
                (H1, OTHER_VILLAGE, date(2025, 3, 20), None)]           # paired again, village moved
        found = findings(rows)
        # 19 + 12 = 31 days -> visit owed; January 19 days -> contact owed; March 12 days -> not owed
        assert summary(found) == [("quarterly_visit", "2025-Q1", H1, 1, 0), ("monthly_contact", "2025-01", H1, 1, 0)]
        assert {f["village_code"] for f in found} == {OTHER_VILLAGE}   # the latest pairing's village
        assert summary(findings(rows[:2])) == [("monthly_contact", "2025-01", H1, 1, 0)]   # 19 days < 30

    def test_release_before_assignment_pairs_no_day(self):
        assert findings([(H1, VILLAGE, date(2025, 2, 1), date(2025, 1, 1))]) == []

    def test_distinct_days(self):
        settings = DutySettings(visits_per_quarter=2, contacts_per_month=2)
        same_day = [(H1, date(2025, 1, 5)), (H1, date(2025, 1, 5))]
        found = findings([WHOLE], visits=same_day, contacts=same_day, settings=settings)
        assert ("quarterly_visit", "2025-Q1", H1, 2, 1) in summary(found)
        assert ("monthly_contact", "2025-01", H1, 2, 1) in summary(found)
        found = findings([WHOLE], visits=[(H1, date(2025, 1, 5)), (H1, date(2025, 2, 5))],
                         contacts=[(H1, date(2025, 1, 6)), (H1, date(2025, 2, 6)), (H1, date(2025, 3, 6)),
                                   (H1, date(2025, 3, 7))], settings=settings)
        assert found == []

    def test_days_as_text_and_instants(self):
        # 2025-03-31T17:00Z is 1 April in China: outside Q1
        found = findings([WHOLE], visits=[(H1, datetime(2025, 3, 31, 17, 0, tzinfo=timezone.utc))],
                         contacts=[(H1, "2025-01-05"), (H1, "2025-02-05"),
                                   (H1, datetime(2025, 3, 31, 15, 0, tzinfo=timezone.utc))])
        assert summary(found) == [("quarterly_visit", "2025-Q1", H1, 1, 0)]
        with pytest.raises(ValueError):
            findings([WHOLE], visits=[(H1, "March")])
        with pytest.raises(ValueError):
            findings([WHOLE], visits=[(H1, datetime(2025, 3, 1))])

    def test_team_days(self):
        jan = [(VILLAGE, date(2025, 1, d)) for d in range(1, 21)]                    # 20 days
        feb = [(VILLAGE, date(2025, 2, d)) for d in range(1, 13)] + \
              [(OTHER_VILLAGE, date(2025, 2, d)) for d in range(13, 20)] + [(VILLAGE, date(2025, 2, 1))]
        found = findings([], team_days=jan + feb)
        assert summary(found) == [("team_days", "2025-02", None, 20, 19), ("team_days", "2025-03", None, 20, 0)]
        assert [f["village_code"] for f in found] == [VILLAGE, None]
        assert findings([], team_days=None) == []
        assert findings([], team_days=jan, settings=DutySettings(team_days_per_month=0)) == []

    def test_duties_can_be_switched_off(self):
        off = DutySettings(visits_per_quarter=0, contacts_per_month=0)
        assert findings([WHOLE], settings=off) == []
        visits_only = DutySettings(contacts_per_month=0)
        assert [f["duty"] for f in findings([WHOLE], settings=visits_only)] == ["quarterly_visit"]

    def test_order(self):
        found = findings([(H3, VILLAGE, date(2024, 1, 1), None), WHOLE, (H2, OTHER_VILLAGE, date(2024, 1, 1), None)],
                         team_days=[])
        keys = [(f["duty"], f["period"], f["household_id"] or "") for f in found]
        duty_rank = {"quarterly_visit": 0, "monthly_contact": 1, "team_days": 2}
        assert keys == sorted(keys, key=lambda k: (duty_rank[k[0]], k[1], k[2]))
        assert len(found) == 3 + 9 + 3

    def test_finding_ids_are_stable(self):
        first = findings([WHOLE, (H2, OTHER_VILLAGE, date(2024, 1, 1), None)], team_days=[])
        again = findings([(H2, OTHER_VILLAGE, date(2024, 1, 1), None), WHOLE], team_days=[],
                         now=AFTER_Q1 + timedelta(days=3))
        assert sorted(f["finding_id"] for f in first) == sorted(f["finding_id"] for f in again)
        ids = [f["finding_id"] for f in first]
        assert len(set(ids)) == len(ids)
        f = first[0]
        assert f["finding_id"] == str(uuid.uuid5(FINDING_NAMESPACE, f"{CADRE}|quarterly_visit|2025-Q1|{H1}"))
        assert f["finding_id"] == finding_id(CADRE, "quarterly_visit", "2025-Q1", H1)
        team = next(x for x in first if x["duty"] == "team_days")
        assert team["finding_id"] == str(uuid.uuid5(FINDING_NAMESPACE, f"{CADRE}|team_days|2025-01|"))
        assert finding_id("other-cadre", "quarterly_visit", "2025-Q1", H1) != f["finding_id"]
        assert str(FINDING_NAMESPACE) == str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:tpa:monitoring:duty-finding"))

    def test_quarter_must_have_ended(self):
        end_cn = datetime(2025, 4, 1, 0, 0, tzinfo=CN)
        assert findings([WHOLE], now=end_cn) != []
        with pytest.raises(DomainError) as info:
            findings([WHOLE], now=end_cn - timedelta(seconds=1))
        assert (info.value.code, info.value.status, info.value.details["checkable_from"]) == (
            "period_not_ended", 409, "2025-04-01")
        with pytest.raises(DomainError) as info:
            findings([WHOLE], quarter="2025-Q5")
        assert info.value.code == "invalid_quarter"
        with pytest.raises(DomainError):
            quarterly_findings(" ", "2025-Q1", [], [], [], None, now=AFTER_Q1)
        with pytest.raises(ValueError):
            findings([WHOLE], now=datetime(2025, 5, 1))

    @pytest.mark.parametrize("kw", [{"visits_per_quarter": -1}, {"contacts_per_month": 1.0},
                                    {"team_days_per_month": 32}, {"min_paired_days_quarter": 0},
                                    {"min_paired_days_month": 0}, {"visits_per_quarter": True}])
    def test_invalid_settings(self, kw):
        with pytest.raises(ValueError):
            DutySettings(**kw)
