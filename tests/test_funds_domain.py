"""Funds domain core: policy catalogue, household facts, eligibility, allocations, projects,
disbursements and anomaly rules. No infrastructure."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts import funds as ev
from eventkit.aggregate import Aggregate
from eventkit.events import RecordedEvent

from services.funds.anomalies import (
    Anomaly,
    AnomalyRecord,
    PaymentFacts,
    above_standard,
    duplicate_periods,
    member_anomalies,
    payment_anomalies,
    project_overspend,
    removed_household,
    shared_accounts,
)
from services.funds.domain import (
    Allocation,
    Disbursement,
    HouseholdFacts,
    Project,
    duplicate_payment,
    fold_household_facts,
    payment_key,
    policy_eligibility,
)
from services.funds.policies import (
    CatalogueError,
    default_catalogue,
    load_catalogue,
    parse_catalogue,
    parse_period,
)
from services.registry import codes

from .domain_helpers import raises

NOW = datetime(2025, 3, 10, 2, 0, tzinfo=timezone.utc)  # 2025-03-10 in China
TODAY = date(2025, 3, 10)
COUNTY = "620102"
VILLAGE = "620102001001"
OTHER_VILLAGE = "530102001001"
HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
OTHER_HOUSEHOLD = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"
STUDENT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
PARENT = "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e"
HASH = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"
CATALOGUE = default_catalogue()


def uid() -> str:
    return str(uuid.uuid4())


def replayed(agg: Aggregate) -> Aggregate:
    fresh = type(agg)(agg.id)
    for version, e in enumerate(agg.pending, start=1):
        fresh.replay(RecordedEvent(version, e.event_id, agg.id, agg.stream_type, version, e.event_type,
                                   e.schema_version, dict(e.data), {}, None, NOW))
    return fresh


def state(agg: Aggregate) -> dict[str, Any]:
    return {k: v for k, v in vars(agg).items() if k not in ("pending", "version")}


def types_of(agg: Aggregate) -> list[str]:
    return [e.event_type for e in agg.pending]


def registry_events(*, status: str = "identified", stage: str | None = "junior",
                    extra: tuple[tuple[str, dict[str, Any]], ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    h = {"household_id": HOUSEHOLD}
    return [
        ("HouseholdRegistered", {**h, "village_code": VILLAGE, "member_count": 2, "registered_on": "2024-01-05",
                                 "status": status}),
        ("MemberAdded", {**h, "member_id": PARENT, "relation": "head", "joined_on": "2024-01-05", "profile": {}}),
        ("MemberAdded", {**h, "member_id": STUDENT, "relation": "20", "joined_on": "2024-01-05",
                         "profile": {"schooling_stage": "primary"}}),
        ("MemberUpdated", {**h, "member_id": STUDENT, "changes": {"schooling_stage": stage, "health": None}}),
        ("IncomeAssessed", {**h, "year": 2024}),
        *extra,
    ]


def facts(**kw: Any) -> HouseholdFacts:
    return fold_household_facts(registry_events(**kw))


def allocation(amount: str = "1000000.00", region: str = COUNTY) -> Allocation:
    a = Allocation(uid())
    a.create(source="central", year=2025, purpose="education aid", region_code=region, amount=amount,
             created_by="u-co", now=NOW)
    return a


def request(d: Disbursement, **kw: Any) -> Disbursement:
    args: dict[str, Any] = dict(household_id=HOUSEHOLD, basis="policy", policy_code="edu_boarding_junior",
                                member_id=STUDENT, period="2025", amount="1250.00", requested_by="u-io", now=NOW,
                                facts=facts(), account_masked="6217****1234", account_hash=HASH)
    args.update(kw)
    d.request(**args)
    return d


# --- catalogue ---------------------------------------------------------------------------


def test_shipped_catalogue_holds_the_documented_standards() -> None:
    c = CATALOGUE
    assert c.standard("edu_boarding_junior", TODAY).amount == Decimal("1250.00")
    assert c.standard("edu_preschool", TODAY).amount == Decimal("300.00")
    assert [c.standard(f"minimum_living_tier{i}", TODAY).amount for i in range(1, 5)] == [
        Decimal("310.00"), Decimal("290.00"), Decimal("84.00"), Decimal("58.00")]
    assert {c[f"minimum_living_tier{i}"].group for i in range(1, 5)} == {"minimum_living"}
    assert c["minimum_living_tier1"].period == "month"
    assert c.standard("relocation_town", TODAY).amount == Decimal("57740.00")
    assert c["relocation_rural"].group == c["relocation_town"].group == "relocation"
    renovation = c["house_renovation"]
    assert (renovation.paid_to, renovation.unit, renovation.standard_for(parse_period("2025")).amount) == (
        "household", "once", Decimal("20000.00"))
    assert c["edu_college_grant"].stages == {"higher_vocational", "undergraduate"}
    assert c["edu_boarding_primary"].channels == ("student_aid_card",)
    assert c.standard("edu_preschool", date(2015, 12, 31)) is None
    # codes are the registry's
    for p in c.values():
        assert p.statuses <= set(codes.HOUSEHOLD_STATUS) | {"monitoring_object"}
        assert p.stages is None or p.stages <= set(codes.SCHOOLING_STAGE)
        assert not p.statuses & {"applicant", "wrongly_identified_removed", "natural_decrease"}
    with raises("unknown_policy", 422):
        c.policy("edu_flying_lessons")


def test_health_reimbursement_bands() -> None:
    health = CATALOGUE["health_extra_reimbursement"]
    year = parse_period("2025")
    assert health.standard_for(year, Decimal("25000")).amount == Decimal("0.00")
    assert health.standard_for(year, Decimal("35000")).amount == Decimal("4000.00")      # 5k at 80 %
    # 65k above 30k: 10k*0.8 + 10k*0.9 + 30k*0.95 + 15k*0.98
    assert health.standard_for(year, Decimal("95000")).amount == Decimal("60200.00")
    with raises("missing_field", 422, field="cost_basis"):
        health.standard_for(year)


def _policy(code: str = "living", **kw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"code": code, "name": code, "paid_to": "member", "unit": "per_month", "period": "month",
                           "statuses": ["identified"], "versions": [{"effective_from": "2016-01-01", "amount": 310}]}
    raw.update(kw)
    return raw


VERSIONED = parse_catalogue({"test.yaml": {"policies": [
    _policy("living", statuses=["identified", "monitoring_object"], versions=[
        {"effective_from": "2016-01-01", "amount": "310.00"},
        {"effective_from": "2025-03-01", "amount": "330.00"},
        {"effective_from": "2026-01-01", "until": "2026-12-31", "amount": "350.00"}]),
    _policy("senior_grant", unit="per_year", period="semester", stages=["senior"],
            versions=[{"effective_from": "2016-01-01", "amount": "2500.00"}]),
    _policy("capped", unit="per_year", period="year", kind="banded", versions=[
        {"effective_from": "2016-01-01", "threshold": 1000, "bands": [{"from": 0, "rate": "0.5"}], "cap": 300}]),
]}})


def test_versions_take_effect_from_their_date_and_never_rewrite_earlier_periods() -> None:
    living = VERSIONED["living"]
    assert [(v.effective_from, v.until) for v in living.versions] == [
        (date(2016, 1, 1), date(2025, 2, 28)), (date(2025, 3, 1), date(2025, 12, 31)),
        (date(2026, 1, 1), date(2026, 12, 31))]
    assert VERSIONED.standard("living", date(2025, 2, 28)).amount == Decimal("310.00")
    assert VERSIONED.standard("living", date(2025, 3, 1)).amount == Decimal("330.00")
    assert VERSIONED.standard("living", date(2027, 1, 1)) is None
    feb = living.standard_for(parse_period("2025-02"))
    assert (feb.version, feb.amount, feb.reference_date) == (1, Decimal("310.00"), date(2025, 2, 1))
    assert living.standard_for(parse_period("2025-03")).amount == Decimal("330.00")
    with raises("policy_not_in_force", 409, rule="policy_in_force"):
        living.standard_for(parse_period("2027-01"))
    # a February payment requested after the raise keeps February's standard
    d = request(Disbursement(uid()), policy_code="living", period="2025-02", amount="310.00", catalogue=VERSIONED)
    assert (d.standard_amount, d.policy_version) == (Decimal("310.00"), 1)
    with raises("amount_above_standard", 422, standard_amount="310.00", rule="amount_above_standard"):
        request(Disbursement(uid()), policy_code="living", period="2025-02", amount="330.00", catalogue=VERSIONED)
    march = request(Disbursement(uid()), policy_code="living", period="2025-03", amount="330.00",
                    catalogue=VERSIONED)
    assert (march.standard_amount, march.policy_version) == (Decimal("330.00"), 2)


def test_semester_is_half_a_year_and_caps_apply() -> None:
    grant = VERSIONED["senior_grant"]
    assert grant.standard_for(grant.check_period("2025-S1")).amount == Decimal("1250.00")
    with raises("invalid_period", 422, expected="semester"):
        grant.check_period("2025")
    assert VERSIONED["capped"].standard_for(parse_period("2025"), Decimal("5000")).amount == Decimal("300.00")
    assert VERSIONED["capped"].standard_for(parse_period("2025"), Decimal("1200")).amount == Decimal("100.00")


def test_periods() -> None:
    assert parse_period("2025").end == date(2025, 12, 31)
    assert (parse_period("2024-02").start, parse_period("2024-02").end) == (date(2024, 2, 1), date(2024, 2, 29))
    assert parse_period("2025-12").end == date(2025, 12, 31)
    s2 = parse_period("2025-S2")
    assert (s2.form, s2.start, s2.end) == ("semester", date(2025, 7, 1), date(2025, 12, 31))
    assert parse_period("2025").overlaps(parse_period("2025-03"))
    assert not parse_period("2025-S1").overlaps(parse_period("2025-07"))
    for bad in ("2025-13", "2025-S3", "25", "2025-3", "1999", None, 2025):
        with raises("invalid_period", 422):
            parse_period(bad)


@pytest.mark.parametrize("policies, field, message", [
    ([_policy(versions=[{"effective_from": "2025-01-01", "amount": 1}, {"effective_from": "2024-01-01", "amount": 2}])],
     "policies[living].versions[1].effective_from", "date order"),
    ([_policy(versions=[{"effective_from": "2024-01-01", "until": "2025-06-30", "amount": 1},
                        {"effective_from": "2025-01-01", "amount": 2}])],
     "policies[living].versions[1].effective_from", "overlaps version 1"),
    ([_policy(versions=[{"effective_from": "2024-01-01", "amount": 0}])], "policies[living].versions[0].amount",
     "positive"),
    ([_policy(versions=[{"effective_from": "2024-01-01", "amount": "-5"}])], "policies[living].versions[0].amount",
     "positive"),
    ([_policy(versions=[{"effective_from": "2024-01-01"}])], "policies[living].versions[0].amount", "amount"),
    ([_policy(versions=[{"effective_from": "2024-02-30", "amount": 1}])], "policies[living].versions[0]"
     ".effective_from", "date"),
    ([_policy(versions=[])], "policies[living].versions", "at least one version"),
    ([_policy(statuses=["identified", "rich"])], "policies[living].statuses[1]", "unknown value 'rich'"),
    ([_policy(stages=["kindergarten"])], "policies[living].stages[0]", "unknown value"),
    ([_policy(paid_to="household", stages=["junior"])], "policies[living].stages", "paid to a member"),
    ([_policy(unit="per_month", period="year")], "policies[living].period", "unknown value 'year'"),
    ([_policy(kind="banded", unit="per_year", period="year")], "policies[living].versions[0].bands", "threshold"),
    ([_policy(kind="banded", unit="per_year", period="year", versions=[
        {"effective_from": "2016-01-01", "threshold": 0, "bands": [{"from": 0, "rate": "1.5"}]}])],
     "policies[living].versions[0].bands[0].rate", "at most 1"),
    ([_policy(colour="red")], "policies[living].colour", "unknown key"),
    ([_policy(), _policy()], "policies[living].code", "also defined"),
    ([_policy("a", group="g"), _policy("b", group="g", paid_to="household")], "policies[b].group",
     "mixes beneficiaries or periods"),
    ([_policy("Bad Code")], "code", "lower_snake_case"),
    (["living"], "(policy)", "must be a mapping"),
    ([{k: v for k, v in _policy().items() if k != "statuses"}], "policies[living].statuses", "is required"),
    ([_policy(statuses=[])], "policies[living].statuses", "non-empty list"),
    ([_policy(name=" ")], "policies[living].name", "non-empty string"),
    ([_policy(versions=["2016"])], "policies[living].versions[0]", "must be a mapping"),
    ([_policy(versions=[{"amount": 1}])], "policies[living].versions[0].effective_from", "is required"),
    ([_policy(versions=[{"effective_from": "2016-01-01", "amount": 1, "tax": 0}])],
     "policies[living].versions[0].tax", "unknown key"),
    ([_policy(versions=[{"effective_from": "2016-01-01", "until": "2015-01-01", "amount": 1}])],
     "policies[living].versions[0].until", "before effective_from"),
    ([_policy(versions=[{"effective_from": "2016-01-01", "amount": True}])], "policies[living].versions[0].amount",
     "must be an amount"),
    ([_policy(versions=[{"effective_from": "2016-01-01", "amount": "ten"}])], "policies[living].versions[0].amount",
     "not a number"),
    ([_policy(kind="banded")], "policies[living].period", "paid per year"),
    ([_policy(kind="banded", unit="per_year", period="year", versions=[
        {"effective_from": "2016-01-01", "threshold": 0, "bands": [{"from": 100, "rate": "0.5"}]}])],
     "policies[living].versions[0].bands[0].from", "start at 0"),
    ([_policy(kind="banded", unit="per_year", period="year", versions=[
        {"effective_from": "2016-01-01", "threshold": 0, "bands": [{"from": 0, "rate": "0.5"}, {"rate": "0.6"}]}])],
     "policies[living].versions[0].bands[1]", "a band is"),
])
def test_catalogue_validation(policies: list[dict[str, Any]], field: str, message: str) -> None:
    with pytest.raises(CatalogueError) as info:
        parse_catalogue({"p.yaml": {"policies": policies}})
    assert (info.value.source, info.value.field) == ("p.yaml", field), str(info.value)
    assert message in info.value.message


def test_catalogue_document_shape() -> None:
    with pytest.raises(CatalogueError, match="one key, policies"):
        parse_catalogue({"p.yaml": {"policy": []}})
    with pytest.raises(CatalogueError, match="has no policies"):
        parse_catalogue({"p.yaml": {"policies": []}})


def test_load_catalogue_from_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="no policy catalogue files"):
        load_catalogue(tmp_path)
    (tmp_path / "a.yaml").write_text("policies: [\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="a.yaml: \\(document\\): not valid YAML"):
        load_catalogue(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "policies:\n  - {code: x, name: X, paid_to: household, unit: once, period: once, statuses: [identified],"
        " versions: [{effective_from: 2020-01-01, amount: '100.50'}]}\n", encoding="utf-8")
    loaded = load_catalogue(tmp_path)
    assert loaded.standard("x", date(2021, 1, 1)).amount == Decimal("100.50")
    assert loaded["x"].source == "a.yaml" and loaded["x"].group == "x"


# --- household facts and eligibility ------------------------------------------------------


def test_fold_household_facts_dates_statuses_members_and_monitoring() -> None:
    f = fold_household_facts(registry_events(status="applicant", extra=(
        ("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "applicant", "to_status": "identified",
                                    "effective_on": "2024-04-01"}),
        ("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "identified",
                                    "to_status": "lifted_out", "effective_on": date(2024, 12, 1)}),
        ("MonitoringDesignated", {"household_id": HOUSEHOLD, "object_type": "marginal",
                                  "effective_on": "2025-01-10"}),
        ("MonitoringRiskEliminated", {"household_id": HOUSEHOLD, "effective_on": "2025-02-10"}),
        ("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": PARENT, "reason": "death",
                           "removed_on": "2025-02-01"}),
    )))
    assert (f.household_id, f.village_code) == (HOUSEHOLD, VILLAGE)
    assert f.status_on(date(2024, 1, 4)) is None
    assert f.status_on(date(2024, 1, 5)) == "applicant"
    assert f.status_on(date(2024, 4, 1)) == "identified"
    assert f.status_on(TODAY) == "lifted_out" and f.status_since(TODAY) == date(2024, 12, 1)
    assert f.monitoring_on(date(2025, 1, 10)) == "marginal"
    assert f.monitoring_on(date(2025, 2, 10)) is None
    student, parent = f.members[STUDENT], f.members[PARENT]
    assert student.schooling_stage == "junior" and student.active_on(TODAY)
    assert parent.deceased and parent.active_on(date(2025, 1, 31)) and not parent.active_on(date(2025, 2, 1))
    with pytest.raises(ValueError, match="before HouseholdRegistered"):
        fold_household_facts([("MemberAdded", {"member_id": STUDENT})])
    with pytest.raises(ValueError, match="no HouseholdRegistered"):
        fold_household_facts([])


def test_policy_eligibility_names_every_failed_rule() -> None:
    boarding = CATALOGUE["edu_boarding_junior"]
    assert policy_eligibility(boarding, facts(), STUDENT, TODAY) == []
    failures = policy_eligibility(boarding, facts(status="applicant", stage="senior"), STUDENT, TODAY)
    assert [f.rule for f in failures] == ["household_status", "schooling_stage"]
    assert failures[1].details == {"member_id": STUDENT, "schooling_stage": "senior", "required": ["junior"]}
    assert [f.rule for f in policy_eligibility(boarding, facts(), uid(), TODAY)] == ["member_not_in_household"]
    # a monitoring object may receive what allows monitoring_object, whatever its status
    monitored = facts(status="applicant", extra=(("MonitoringDesignated", {
        "household_id": HOUSEHOLD, "object_type": "sudden_hardship", "effective_on": "2025-01-01"}),))
    assert policy_eligibility(boarding, monitored, STUDENT, TODAY) == []
    assert [f.rule for f in policy_eligibility(CATALOGUE["relocation_rural"], monitored, STUDENT, TODAY)] == [
        "household_status"]


def test_request_refused_by_eligibility_rules() -> None:
    removed = facts(extra=(("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "identified",
                                                      "to_status": "wrongly_identified_removed",
                                                      "effective_on": "2025-03-01"}),))
    with raises("not_eligible", 409, rule="household_status", household_status="wrongly_identified_removed"):
        request(Disbursement(uid()), facts=removed)
    dead = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                                           "removed_on": "2025-03-01"}),))
    with raises("not_eligible", 409, rule="member_deceased", died_on="2025-03-01"):
        request(Disbursement(uid()), facts=dead)
    moved = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT,
                                            "reason": "moved_out", "removed_on": "2025-01-01"}),))
    with raises("not_eligible", 409, rule="member_not_active", removal_reason="moved_out"):
        request(Disbursement(uid()), facts=moved)
    with raises("not_eligible", 409, rule="schooling_stage", failed_rules=["schooling_stage"]):
        request(Disbursement(uid()), facts=facts(stage="primary"))
    d = Disbursement(uid())
    with raises("not_eligible", 409):
        request(d, facts=facts(stage=None))
    assert d.pending == []


def test_member_must_be_in_the_household_on_the_date() -> None:
    newborn = fold_household_facts(registry_events()[:1] + [
        ("MemberAdded", {"household_id": HOUSEHOLD, "member_id": STUDENT, "relation": "20", "joined_on": "2025-04-01",
                         "profile": {"schooling_stage": "junior"}})])
    [failure] = policy_eligibility(CATALOGUE["edu_boarding_junior"], newborn, STUDENT, TODAY)
    assert (failure.rule, failure.details["joined_on"]) == ("member_not_active", "2025-04-01")


def test_request_input_validation() -> None:
    with raises("missing_field", 422, field="member_id"):
        request(Disbursement(uid()), member_id=None)
    with raises("unexpected_field", 422, field="member_id"):
        request(Disbursement(uid()), policy_code="house_renovation", amount="20000.00")
    with raises("invalid_period", 422, expected="year"):
        request(Disbursement(uid()), period="2025-03")
    with raises("invalid_period", 422, expected="month"):
        request(Disbursement(uid()), policy_code="minimum_living_tier1", period="2025", amount="310.00")
    with raises("period_in_future", 422):
        request(Disbursement(uid()), policy_code="minimum_living_tier1", period="2025-04", amount="310.00")
    with raises("unknown_policy", 422):
        request(Disbursement(uid()), policy_code="nope")
    with raises("missing_field", 422, field="cost_basis"):
        request(Disbursement(uid()), policy_code="health_extra_reimbursement", amount="100.00")
    with raises("unexpected_field", 422, field="cost_basis"):
        request(Disbursement(uid()), cost_basis="100.00")
    for bad in ("0", "-1.00", "12.345", "abc", 1.5, None):
        with raises("invalid_amount", 422):
            request(Disbursement(uid()), amount=bad)
    with raises("unexpected_field", 422, field="project_id"):
        request(Disbursement(uid()), project=Project(uid()))
    with raises("missing_field", 422, field="policy_code"):
        request(Disbursement(uid()), policy_code=None)
    for plain in ("6217000011112222", "62170000****1234", "****12345"):
        with raises("invalid_account_masked", 422):
            request(Disbursement(uid()), account_masked=plain)
    with raises("invalid_account_hash", 422):
        request(Disbursement(uid()), account_hash="6217000011112222")
    with raises("invalid_basis", 422):
        request(Disbursement(uid()), basis="charity")
    with raises("too_long", 422, field="requested_by"):
        request(Disbursement(uid()), requested_by="u" * 2001)
    with raises("invalid_id", 422):
        request(Disbursement(uid()), household_id="h-1")
    with pytest.raises(ValueError, match="facts of household"):
        request(Disbursement(uid()), household_id=OTHER_HOUSEHOLD)
    with pytest.raises(ValueError, match="timezone-aware"):
        request(Disbursement(uid()), now=datetime(2025, 3, 10))
    d = request(Disbursement(uid()))
    with raises("disbursement_exists", 409):
        request(d)


def test_banded_request_checks_the_computed_standard() -> None:
    d = request(Disbursement(uid()), policy_code="health_extra_reimbursement", amount="4000.00",
                cost_basis="35000.00", period="2024")
    assert (d.standard_amount, d.cost_basis) == (Decimal("4000.00"), Decimal("35000.00"))
    with raises("amount_above_standard", 422, standard_amount="4000.00"):
        request(Disbursement(uid()), policy_code="health_extra_reimbursement", amount="4000.01",
                cost_basis="35000.00", period="2024")


# --- allocation --------------------------------------------------------------------------


def test_allocation_never_goes_below_zero() -> None:
    a = allocation("1000.00")
    ref = uid()
    with raises("insufficient_funds", 409, available="1000.00", requested="1000.01", rule="allocation_balance"):
        a.reserve(ref_type="disbursement", ref_id=ref, amount="1000.01", now=NOW)
    a.reserve(ref_type="disbursement", ref_id=ref, amount="600.00", now=NOW)
    assert (a.available, a.reserved) == (Decimal("400.00"), Decimal("600.00"))
    with raises("already_reserved", 409):
        a.reserve(ref_type="disbursement", ref_id=ref, amount="1.00", now=NOW)
    with raises("insufficient_funds", 409, available="400.00"):
        a.reserve(ref_type="project", ref_id=uid(), amount="500.00", now=NOW)
    a.spend(ref_type="disbursement", ref_id=ref, disbursement_id=ref, amount="250.00", spent_on=TODAY)
    assert (a.available, a.reserved, a.spent) == (Decimal("400.00"), Decimal("350.00"), Decimal("250.00"))
    with raises("insufficient_reservation", 409):
        a.spend(ref_type="disbursement", ref_id=ref, disbursement_id=uid(), amount="350.01", spent_on=TODAY)
    with raises("already_spent", 409):
        a.spend(ref_type="disbursement", ref_id=ref, disbursement_id=ref, amount="1.00", spent_on=TODAY)
    with raises("below_committed", 409, reserved="350.00", spent="250.00", rule="allocation_balance"):
        a.adjust(amount_delta="-400.01", reason="budget cut", adjusted_by="u-co", now=NOW)
    a.adjust(amount_delta="-400.00", reason="budget cut", adjusted_by="u-co", now=NOW)
    assert (a.amount, a.available) == (Decimal("600.00"), Decimal("0.00"))
    assert a.release(ref_type="disbursement", ref_id=ref, reason="not needed", now=NOW) == Decimal("350.00")
    assert (a.available, a.reserved) == (Decimal("350.00"), Decimal("0.00"))
    assert a.release(ref_type="disbursement", ref_id=ref, reason="again", now=NOW) == Decimal("0.00")
    with raises("no_reservation", 409):
        a.release(ref_type="project", ref_id=uid(), reason="x", now=NOW)
    a.reverse_spending(disbursement_id=ref, reason="returned", now=NOW, release=True)
    assert (a.available, a.spent, a.reserved) == (Decimal("600.00"), Decimal("0.00"), Decimal("0.00"))
    with raises("not_spent", 409):
        a.reverse_spending(disbursement_id=ref, reason="returned", now=NOW, release=True)
    assert types_of(a) == ["AllocationCreated", "FundsReserved", "FundsSpent", "AllocationAdjusted",
                           "ReservationReleased", "SpendingReversed", "ReservationReleased"]
    assert state(replayed(a)) == state(a)


def test_allocation_creation_and_adjustment_validation() -> None:
    a = Allocation(uid())
    with raises("allocation_not_found", 404):
        a.reserve(ref_type="project", ref_id=uid(), amount="1.00", now=NOW)
    args = dict(source="central", year=2025, purpose="p", region_code=COUNTY, amount="10.00", created_by="u",
                now=NOW)
    for change, code in ((dict(source="lottery"), "invalid_source"), (dict(year=1999), "invalid_year"),
                         (dict(region_code=VILLAGE), "invalid_region"), (dict(amount="0.00"), "invalid_amount"),
                         (dict(purpose=" "), "missing_field")):
        with raises(code, 422):
            a.create(**{**args, **change})
    a.create(**args)
    with raises("allocation_exists", 409):
        a.create(**args)
    with raises("invalid_amount", 422):
        a.adjust(amount_delta="0.00", reason="r", adjusted_by="u", now=NOW)
    a.adjust(amount_delta="5.50", reason="supplement", adjusted_by="u", now=NOW)
    assert a.amount == Decimal("15.50")
    assert a.pending[-1].data["amount_delta"] == "5.50" and a.pending[-1].data["new_amount"] == "15.50"
    with raises("outside_region", 409, rule="allocation_region"):
        a.reserve(ref_type="disbursement", ref_id=uid(), amount="1.00", now=NOW, region_code=OTHER_VILLAGE)
    with raises("invalid_ref_type", 422):
        a.reserve(ref_type="household", ref_id=uid(), amount="1.00", now=NOW)


# --- project -----------------------------------------------------------------------------


def declared(budget: str = "300000.00", **kw: Any) -> Project:
    p = Project(uid())
    args = dict(name="Cattle cooperative", kind="industry", region_code=VILLAGE, budget=budget, plan_year=2025,
                beneficiary_household_ids=[HOUSEHOLD, OTHER_HOUSEHOLD], declared_by="u-vc", now=NOW)
    args.update(kw)
    p.declare(**args)
    return p


def approved(a1: Allocation, a2: Allocation | None = None, amounts: tuple[str, ...] = ("200000.00",)) -> Project:
    p = declared()
    p.review(reviewer="u-tr", now=NOW, comment="complete")
    allocs = [a for a in (a1, a2) if a is not None]
    p.approve(approved_budget=str(sum(Decimal(x) for x in amounts)), approved_by="u-co", now=NOW,
              funding=[{"allocation_id": a.id, "amount": x} for a, x in zip(allocs, amounts, strict=True)],
              allocations={a.id: a for a in allocs})
    return p


def test_project_lifecycle_reserves_and_releases() -> None:
    a1, a2 = allocation("150000.00"), allocation("150000.00")
    p = approved(a1, a2, ("120000.00", "80000.00"))
    assert p.status == "approved" and p.approved_budget == Decimal("200000.00")
    assert (a1.reservation("project", p.id), a2.available) == (Decimal("120000.00"), Decimal("70000.00"))
    p.start(started_on=date(2025, 3, 1), started_by="u-vc", now=NOW)
    with raises("invalid_date", 422):
        p.record_milestone(name="shed built", reached_on=date(2025, 2, 1), recorded_by="u-vc", now=NOW)
    with raises("invalid_date", 422):
        p.record_milestone(name="shed built", reached_on=date(2025, 3, 11), recorded_by="u-vc", now=NOW)
    p.record_milestone(name="shed built", reached_on=date(2025, 3, 5), recorded_by="u-vc", now=NOW, note="ok")
    p.complete(completed_on=TODAY, completed_by="u-vc", now=NOW)
    p.accept(accepted_by="u-co", now=NOW, allocations={a1.id: a1, a2.id: a2})
    assert p.status == "accepted" and p.closed
    assert (a1.available, a2.available) == (Decimal("150000.00"), Decimal("150000.00"))
    assert p.pending[-1].data["released"] == [
        {"allocation_id": x.id, "amount": amt} for x, amt in sorted(((a1, "120000.00"), (a2, "80000.00")),
                                                                     key=lambda t: t[0].id)]
    assert types_of(p) == ["ProjectDeclared", "ProjectReviewed", "ProjectApproved", "ProjectStarted",
                           "MilestoneRecorded", "ProjectCompleted", "ProjectAccepted"]
    assert state(replayed(p)) == state(p)


def test_project_transitions_are_guarded() -> None:
    p = declared()
    a = allocation()
    with raises("invalid_transition", 409, current_status="declared", command="approve"):
        p.approve(approved_budget="1.00", funding=[{"allocation_id": a.id, "amount": "1.00"}], approved_by="u",
                  now=NOW, allocations={a.id: a})
    with raises("invalid_transition", 409):
        p.start(started_on=TODAY, started_by="u", now=NOW)
    with raises("invalid_transition", 409):
        p.commit_payment(disbursement_id=uid(), allocation_id=a.id, amount="1.00", now=NOW)
    p.reject(reason="not in the plan", rejected_by="u-co", now=NOW)
    with raises("invalid_transition", 409, current_status="rejected"):
        p.review(reviewer="u", now=NOW)
    with raises("invalid_transition", 409):
        p.cancel(reason="x", cancelled_by="u", now=NOW)
    with raises("project_not_found", 404):
        Project(uid()).review(reviewer="u", now=NOW)
    with raises("project_exists", 409):
        p.declare(name="x", kind="industry", region_code=VILLAGE, budget="1.00", plan_year=2025,
                  beneficiary_household_ids=[HOUSEHOLD], declared_by="u", now=NOW)


@pytest.mark.parametrize("change, code", [
    (dict(kind="casino"), "invalid_kind"), (dict(region_code=COUNTY), "invalid_region"),
    (dict(plan_year=2030), "invalid_year"), (dict(beneficiary_household_ids=[]), "beneficiaries_required"),
    (dict(beneficiary_household_ids=[HOUSEHOLD, HOUSEHOLD]), "duplicate_beneficiary"),
    (dict(beneficiary_household_ids=["h-1"]), "invalid_id"), (dict(budget="-1"), "invalid_amount"),
])
def test_project_declaration_validation(change: dict[str, Any], code: str) -> None:
    with raises(code, 422):
        declared(**change)


def test_township_project_and_approval_checks() -> None:
    township = declared(region_code="620102001000")
    assert township.region_code == "620102001000"
    declared(region_code="620102001")
    p = declared(budget="100.00")
    p.review(reviewer="u", now=NOW)
    a1, a2, far = allocation("60.00"), allocation("50.00"), allocation("1000.00", region="5301")
    allocs = {a.id: a for a in (a1, a2, far)}

    def approve(budget: str, *lines: tuple[Allocation, str]) -> None:
        p.approve(approved_budget=budget, approved_by="u", now=NOW, allocations=allocs,
                  funding=[{"allocation_id": a.id, "amount": x} for a, x in lines])

    with raises("approved_above_declared", 422):
        approve("100.01", (a1, "100.01"))
    with raises("funding_mismatch", 422, funding_total="90.00"):
        approve("100.00", (a1, "50.00"), (a2, "40.00"))
    with raises("duplicate_funding_line", 422):
        approve("100.00", (a1, "50.00"), (a1, "50.00"))
    with raises("outside_region", 409):
        approve("100.00", (far, "100.00"))
    with raises("insufficient_funds", 409, allocation_id=a2.id, available="50.00", requested="55.00"):
        approve("100.00", (a1, "45.00"), (a2, "55.00"))
    assert a1.pending[1:] == [] and a2.pending[1:] == []  # nothing reserved on the first line either
    with raises("allocation_not_found", 404):
        p.approve(approved_budget="10.00", approved_by="u", now=NOW, allocations={},
                  funding=[{"allocation_id": uid(), "amount": "10.00"}])
    with raises("funding_required", 422):
        approve("100.00")
    approve("100.00", (a1, "50.00"), (a2, "50.00"))
    assert (a1.available, a2.available) == (Decimal("10.00"), Decimal("0.00"))


def test_cancel_releases_the_reservation_but_keeps_what_was_paid() -> None:
    a = allocation("500000.00")
    p = approved(a)
    p.start(started_on=TODAY, started_by="u", now=NOW)
    d = project_disbursement(p, a, amount="5000.00")
    d.pay(channel="bank_transfer", channel_reference="B-1", paid_on=TODAY, now=NOW, allocation=a, project=p)
    pending = project_disbursement(p, a, amount="1000.00")
    with raises("payments_pending", 409, disbursement_ids=[pending.id]):
        p.cancel(reason="site unsuitable", cancelled_by="u-co", now=NOW, allocations={a.id: a})
    pending.fail(reason="bank rejected", now=NOW, project=p)
    p.cancel(reason="site unsuitable", cancelled_by="u-co", now=NOW, allocations={a.id: a})
    assert (a.spent, a.reserved, a.available) == (Decimal("5000.00"), Decimal("0.00"), Decimal("495000.00"))
    assert p.pending[-1].data["released"] == [{"allocation_id": a.id, "amount": "195000.00"}]
    # a payment reversed after the project closed goes straight back to the allocation
    d.reverse(reason="recovered", now=NOW, allocation=a, project=p)
    assert (a.spent, a.reserved, a.available) == (Decimal("0.00"), Decimal("0.00"), Decimal("500000.00"))
    assert p.paid == Decimal("0.00")
    assert state(replayed(a)) == state(a) and state(replayed(p)) == state(p)


# --- disbursement: policy basis ----------------------------------------------------------


def test_policy_disbursement_lifecycle_draws_on_the_allocation() -> None:
    a = allocation("10000.00")
    d = request(Disbursement(uid()))
    assert (d.status, d.village_code, d.standard_amount, d.policy_group) == (
        "requested", VILLAGE, Decimal("1250.00"), "edu_boarding")
    assert d.payment_key == ("member", STUDENT, "edu_boarding", "2025")
    d.approve(approved_by="u-co", now=NOW, facts=facts(), allocation=a)
    assert (d.status, d.allocation_id, a.reservation("disbursement", d.id)) == ("approved", a.id, Decimal("1250.00"))
    with raises("invalid_channel", 422, rule="payment_channel"):
        d.pay(channel="one_card", channel_reference="X", paid_on=TODAY, now=NOW, allocation=a)
    with raises("invalid_channel", 422, field="channel"):
        d.pay(channel="cash", channel_reference="X", paid_on=TODAY, now=NOW, allocation=a)
    with pytest.raises(ValueError, match="must be passed in"):
        d.pay(channel="student_aid_card", channel_reference="X", paid_on=TODAY, now=NOW, allocation=allocation())
    with raises("invalid_date", 422):
        d.pay(channel="student_aid_card", channel_reference="X", paid_on=TODAY + timedelta(days=1), now=NOW,
              allocation=a)
    with raises("invalid_date", 422):
        d.pay(channel="student_aid_card", channel_reference="X", paid_on=TODAY - timedelta(days=1), now=NOW,
              allocation=a)
    d.pay(channel="student_aid_card", channel_reference="SA-0001", paid_on=TODAY, now=NOW, allocation=a)
    assert (a.spent, a.reserved, a.available) == (Decimal("1250.00"), Decimal("0.00"), Decimal("8750.00"))
    d.reconcile(statement_id="stmt-3", statement_line="17", now=NOW)
    assert d.status == "reconciled"
    d.reverse(reason="recovered after audit", now=NOW, allocation=a)
    assert (d.status, a.spent, a.available) == ("reversed", Decimal("0.00"), Decimal("10000.00"))
    assert types_of(d) == ["DisbursementRequested", "DisbursementApproved", "DisbursementPaid",
                           "DisbursementReconciled", "DisbursementReversed"]
    assert types_of(a)[1:] == ["FundsReserved", "FundsSpent", "SpendingReversed", "ReservationReleased"]
    assert state(replayed(d)) == state(d) and state(replayed(a)) == state(a)


def test_approval_rechecks_eligibility_and_funds() -> None:
    a = allocation("1000.00")
    d = request(Disbursement(uid()))
    dead = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                                           "removed_on": "2025-03-09"}),))
    with raises("not_eligible", 409, rule="member_deceased"):
        d.approve(approved_by="u", now=NOW, facts=dead, allocation=a)
    with raises("insufficient_funds", 409, available="1000.00", requested="1250.00"):
        d.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)
    far = allocation(region="5301")
    with raises("outside_region", 409):
        d.approve(approved_by="u", now=NOW, facts=facts(), allocation=far)
    assert types_of(d) == ["DisbursementRequested"] and a.pending[1:] == [] and far.pending[1:] == []
    with raises("allocation_not_found", 404):
        d.approve(approved_by="u", now=NOW, facts=facts(), allocation=Allocation(uid()))


def test_failure_releases_the_reservation_and_transitions_are_guarded() -> None:
    a = allocation("5000.00")
    d = request(Disbursement(uid()))
    with raises("invalid_transition", 409, current_status="requested", command="pay"):
        d.pay(channel="student_aid_card", channel_reference="X", paid_on=TODAY, now=NOW, allocation=a)
    with raises("invalid_transition", 409):
        d.reconcile(statement_id="s", statement_line="1", now=NOW)
    d.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)
    with raises("invalid_transition", 409):
        d.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)
    d.fail(reason="card closed", now=NOW, allocation=a)
    assert (d.status, a.available) == ("failed", Decimal("5000.00"))
    with raises("invalid_transition", 409, current_status="failed"):
        d.reverse(reason="x", now=NOW, allocation=a)
    refused = request(Disbursement(uid()))
    refused.fail(reason="documents missing", now=NOW)
    assert refused.status == "failed"
    with raises("disbursement_not_found", 404):
        Disbursement(uid()).fail(reason="x", now=NOW)


def test_payment_keys_and_duplicate_error() -> None:
    renovation = request(Disbursement(uid()), policy_code="house_renovation", member_id=None, amount="20000.00",
                         period="2024")
    assert payment_key(renovation) == ("household", HOUSEHOLD, "house_renovation", "once")
    tier = request(Disbursement(uid()), policy_code="minimum_living_tier2", period="2025-03", amount="290.00")
    assert payment_key(tier) == ("member", STUDENT, "minimum_living", "2025-03")
    err = duplicate_payment(payment_key(tier), "d-1")
    assert (err.code, err.status, err.details["rule"], err.details["existing_disbursement_id"]) == (
        "duplicate_payment", 409, "duplicate_payment", "d-1")
    a = allocation()
    p = approved(a)
    assert payment_key(project_disbursement(p, a)) is None


# --- disbursement: project basis ---------------------------------------------------------


def project_disbursement(p: Project, a: Allocation, amount: str = "5000.00", approve: bool = True,
                         **kw: Any) -> Disbursement:
    args: dict[str, Any] = dict(basis="project", policy_code=None, project=p, member_id=None, amount=amount,
                                period="2025-03")
    args.update(kw)
    d = request(Disbursement(uid()), **args)
    if approve:
        d.approve(approved_by="u-co", now=NOW, facts=facts(), allocation=a, project=p)
    return d


def test_project_payments_stay_within_the_approved_budget() -> None:
    a1, a2 = allocation("100000.00"), allocation("100000.00")
    p = approved(a1, a2, ("6000.00", "4000.00"))
    first = project_disbursement(p, a1, amount="5000.00")
    assert (p.committed, p.line_used(a1.id)) == (Decimal("5000.00"), Decimal("5000.00"))
    with raises("over_budget", 409, rule="project_budget", remaining="1000.00", requested="2000.00"):
        project_disbursement(p, a1, amount="2000.00")
    with raises("not_a_funding_line", 409):
        project_disbursement(p, allocation(), amount="10.00")
    second = project_disbursement(p, a2, amount="4000.00")
    first.pay(channel="bank_transfer", channel_reference="B-1", paid_on=TODAY, now=NOW, allocation=a1, project=p)
    assert (p.paid, p.committed) == (Decimal("5000.00"), Decimal("4000.00"))
    assert (a1.spent, a1.reservation("project", p.id)) == (Decimal("5000.00"), Decimal("1000.00"))
    second.fail(reason="account closed", now=NOW, project=p)
    assert p.committed == Decimal("0.00") and a2.reservation("project", p.id) == Decimal("4000.00")
    # reversal while the project is open: the money goes back into the project's reservation
    first.reverse(reason="returned", now=NOW, allocation=a1, project=p)
    assert (p.paid, a1.spent, a1.reservation("project", p.id)) == (Decimal("0.00"), Decimal("0.00"),
                                                                     Decimal("6000.00"))
    assert types_of(p)[-4:] == ["ProjectPaymentCommitted", "ProjectPaymentRecorded", "ProjectPaymentReleased",
                                "ProjectPaymentReleased"]
    assert state(replayed(p)) == state(p) and state(replayed(a1)) == state(a1)


def test_project_payment_request_rules() -> None:
    a = allocation()
    p = declared()
    with raises("project_not_payable", 409, rule="project_status", project_status="declared"):
        project_disbursement(p, a, approve=False)
    p = approved(a)
    other = fold_household_facts([("HouseholdRegistered", {"household_id": "5b4c3d2e-1f0a-4b9c-8d7e-6f5a4b3c2d1e",
                                                           "village_code": VILLAGE, "status": "identified"})])
    with raises("not_eligible", 409, rule="not_beneficiary"):
        request(Disbursement(uid()), basis="project", policy_code=None, project=p, member_id=None,
                household_id=other.household_id, facts=other, amount="10.00", period="2025-03")
    removed = facts(extra=(("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "identified",
                                                      "to_status": "natural_decrease",
                                                      "effective_on": "2025-01-01"}),))
    with raises("not_eligible", 409, rule="household_status"):
        project_disbursement(p, a, approve=False, facts=removed)
    with raises("unexpected_field", 422, field="policy_code"):
        project_disbursement(p, a, approve=False, policy_code="edu_preschool")
    with raises("missing_field", 422, field="project_id"):
        project_disbursement(p, a, approve=False, project=None)
    with raises("period_in_future", 422):
        project_disbursement(p, a, approve=False, period="2025-04")
    dead = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                                           "removed_on": "2025-03-01"}),))
    with raises("not_eligible", 409, rule="member_deceased"):
        project_disbursement(p, a, approve=False, member_id=STUDENT, facts=dead)
    with raises("project_not_found", 404):
        project_disbursement(Project(uid()), a, approve=False)
    # the project's own guards, as the disbursement commands use them
    did = uid()
    p.commit_payment(disbursement_id=did, allocation_id=a.id, amount="1.00", now=NOW)
    with raises("payment_exists", 409):
        p.commit_payment(disbursement_id=did, allocation_id=a.id, amount="1.00", now=NOW)
    with raises("payment_not_committed", 409):
        p.record_payment(disbursement_id=uid(), paid_on=TODAY)
    with raises("payment_unknown", 409):
        p.release_payment(disbursement_id=uid(), reason="x", now=NOW)
    d = project_disbursement(p, a, approve=False)
    with pytest.raises(ValueError, match="must be passed in"):
        d.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)


# --- anomalies ---------------------------------------------------------------------------


def payment(**kw: Any) -> PaymentFacts:
    args: dict[str, Any] = dict(disbursement_id=uid(), household_id=HOUSEHOLD, village_code=VILLAGE,
                                basis="policy", period="2025-03", amount=Decimal("310.00"),
                                paid_on=date(2025, 3, 5), member_id=STUDENT, policy_code="minimum_living_tier1",
                                policy_group="minimum_living", policy_unit="per_month")
    args.update(kw)
    return PaymentFacts(**args)


def test_paid_to_deceased_or_departed_member() -> None:
    dead = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                                           "removed_on": "2025-03-01"}),))
    [found] = member_anomalies(payment(), dead)
    assert (found.rule, found.severity, found.subject_type) == ("paid_to_deceased", "high", "disbursement")
    assert found.evidence["died_on"] == "2025-03-01" and found.evidence["paid_on"] == "2025-03-05"
    assert found.evidence["amount"] == "310.00" and found.household_id == HOUSEHOLD
    assert member_anomalies(payment(paid_on=date(2025, 3, 1)), dead) == []  # paid on the day of death
    assert member_anomalies(payment(), facts()) == []
    assert member_anomalies(payment(member_id=None), dead) == []
    moved = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT,
                                            "reason": "marriage_out", "removed_on": "2025-02-01"}),))
    [left] = member_anomalies(payment(), moved)
    assert (left.rule, left.severity, left.evidence["removal_reason"]) == (
        "paid_to_departed_member", "medium", "marriage_out")


def test_paid_to_removed_household() -> None:
    removed = facts(extra=(("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "identified",
                                                      "to_status": "wrongly_identified_removed",
                                                      "effective_on": "2025-02-01"}),))
    [found] = removed_household(payment(), removed)
    assert found.rule == "paid_to_removed_household"
    assert found.evidence["household_status"] == "wrongly_identified_removed"
    assert found.evidence["status_since"] == "2025-02-01"
    assert removed_household(payment(paid_on=date(2025, 1, 31)), removed) == []
    assert removed_household(payment(), facts(status="lifted_out")) == []


def test_amount_above_standard_uses_the_standard_of_the_period() -> None:
    assert above_standard(payment(policy_code="living", amount=Decimal("310.00"), period="2025-02"), VERSIONED) == []
    [found] = above_standard(payment(policy_code="living", amount=Decimal("330.00"), period="2025-02"), VERSIONED)
    assert found.evidence["standard_amount"] == "310.00" and found.evidence["excess"] == "20.00"
    assert found.evidence["policy_version"] == 1 and found.evidence["reference_date"] == "2025-02-01"
    assert above_standard(payment(policy_code="living", amount=Decimal("330.00"), period="2025-03"), VERSIONED) == []
    [none_in_force] = above_standard(payment(policy_code="living", period="2027-01"), VERSIONED)
    assert none_in_force.evidence["standard_amount"] == "0.00"
    assert above_standard(payment(policy_code="unknown"), VERSIONED) == []
    assert above_standard(payment(basis="project", policy_code=None), VERSIONED) == []
    [health] = above_standard(payment(policy_code="health_extra_reimbursement", period="2024",
                                      amount=Decimal("5000.00"), cost_basis=Decimal("35000.00")))
    assert health.evidence["standard_amount"] == "4000.00"


def test_payment_anomalies_combines_the_per_payment_rules() -> None:
    dead_and_removed = facts(extra=(
        ("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                           "removed_on": "2025-01-01"}),
        ("HouseholdStatusChanged", {"household_id": HOUSEHOLD, "from_status": "identified",
                                    "to_status": "natural_decrease", "effective_on": "2025-01-01"})))
    found = payment_anomalies(payment(amount=Decimal("400.00")), dead_and_removed)
    assert [a.rule for a in found] == ["paid_to_deceased", "paid_to_removed_household", "amount_above_standard"]
    assert payment_anomalies(payment(), facts()) == []
    with pytest.raises(ValueError):
        payment_anomalies(payment(household_id=OTHER_HOUSEHOLD), facts())


def test_duplicate_periods() -> None:
    march = payment(paid_on=date(2025, 3, 5))
    tier2_march = payment(policy_code="minimum_living_tier2", amount=Decimal("290.00"), paid_on=date(2025, 3, 6))
    april = payment(period="2025-04", paid_on=date(2025, 4, 5))
    yearly = payment(period="2025", amount=Decimal("3720.00"), paid_on=date(2025, 6, 1))
    other_member = payment(member_id=PARENT, paid_on=date(2025, 3, 7))
    found = duplicate_periods([march, tier2_march, april, other_member])
    assert [(a.subject_id, a.evidence["earlier_disbursement_id"]) for a in found] == [
        (tier2_march.disbursement_id, march.disbursement_id)]
    assert found[0].evidence["policy_group"] == "minimum_living" and found[0].key == march.disbursement_id
    found = duplicate_periods([march, april, yearly])  # "2025" overlaps both months
    assert sorted(a.evidence["earlier_period"] for a in found) == ["2025-03", "2025-04"]
    assert {a.subject_id for a in found} == {yearly.disbursement_id}
    assert duplicate_periods([march, april, other_member]) == []
    once = dict(policy_code="house_renovation", policy_group="house_renovation", policy_unit="once", member_id=None)
    again = duplicate_periods([payment(period="2023", **once), payment(period="2025", paid_on=date(2025, 6, 1),
                                                                          **once)])
    assert len(again) == 1 and again[0].evidence["once"] is True
    assert again[0].evidence["beneficiary_id"] == HOUSEHOLD
    assert duplicate_periods([payment(basis="project", policy_group=None), payment(basis="project",
                                                                                   policy_group=None)]) == []


def test_project_overspend() -> None:
    pid = uid()
    paid = [payment(basis="project", project_id=pid, amount=Decimal("6000.00"), policy_code=None),
            payment(basis="project", project_id=pid, amount=Decimal("5000.00"), policy_code=None),
            payment(basis="project", project_id=uid(), amount=Decimal("9000.00"), policy_code=None)]
    assert project_overspend(pid, Decimal("11000.00"), paid) == []
    [found] = project_overspend(pid, Decimal("10000.00"), paid)
    assert (found.subject_type, found.subject_id, found.rule) == ("project", pid, "project_overspend")
    assert (found.evidence["paid_total"], found.evidence["excess"], found.evidence["payment_count"]) == (
        "11000.00", "1000.00", 2)


def test_shared_account() -> None:
    households = [uid() for _ in range(4)]
    paid = [payment(household_id=h, account_hash=HASH) for h in households[:3]]
    paid.append(payment(household_id=households[0], account_hash=HASH))
    paid.append(payment(household_id=uid(), account_hash=None))
    assert shared_accounts(paid) == []
    paid.append(payment(household_id=households[3], account_hash=HASH, village_code=OTHER_VILLAGE))
    [found] = shared_accounts(paid)
    assert (found.subject_type, found.subject_id, found.severity) == ("account", HASH, "medium")
    assert found.evidence["household_count"] == 4 and found.evidence["household_ids"] == sorted(households)
    assert found.evidence["village_codes"] == [OTHER_VILLAGE, VILLAGE]
    assert len(found.evidence["disbursement_ids"]) == 5
    assert len(shared_accounts(paid, threshold=4)) == 0
    with pytest.raises(ValueError):
        shared_accounts(paid, threshold=0)


def test_anomaly_record_is_recorded_once_with_a_stable_id() -> None:
    a = allocation()
    d = request(Disbursement(uid()))
    d.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)
    d.pay(channel="student_aid_card", channel_reference="SA-1", paid_on=TODAY, now=NOW, allocation=a)
    p = PaymentFacts.of(d)
    assert (p.policy_group, p.account_hash, p.amount) == ("edu_boarding", HASH, Decimal("1250.00"))
    dead = facts(extra=(("MemberRemoved", {"household_id": HOUSEHOLD, "member_id": STUDENT, "reason": "death",
                                           "removed_on": "2025-03-01"}),))
    [found] = payment_anomalies(p, dead)
    again = payment_anomalies(p, dead)[0]
    assert found.anomaly_id == again.anomaly_id
    assert Anomaly("shared_account", "medium", "account", HASH, {}, key="4").anomaly_id != Anomaly(
        "shared_account", "medium", "account", HASH, {}, key="5").anomaly_id
    record = AnomalyRecord(found.anomaly_id)
    assert record.detect(found, NOW) is True
    assert record.detect(again, NOW) is False
    data = record.pending[0].data
    assert ev.AnomalyDetected.model_validate(data).evidence["member_id"] == STUDENT
    assert (data["rule"], data["subject_id"], data["village_code"]) == ("paid_to_deceased", d.id, VILLAGE)
    assert state(replayed(record)) == state(record)
    with pytest.raises(ValueError):
        AnomalyRecord(uid()).detect(found, NOW)
    with pytest.raises(ValueError, match="not paid"):
        PaymentFacts.of(request(Disbursement(uid())))


def test_every_recorded_event_satisfies_its_contract() -> None:
    models = {m.event_type: m for m in (*ev.ALLOCATION_EVENTS, *ev.PROJECT_EVENTS, *ev.DISBURSEMENT_EVENTS)}
    a = allocation("500000.00")
    p = approved(a)
    p.start(started_on=TODAY, started_by="u", now=NOW)
    d = project_disbursement(p, a)
    d.pay(channel="bank_transfer", channel_reference="B-1", paid_on=TODAY, now=NOW, allocation=a, project=p)
    d.reconcile(statement_id="s", statement_line="1", now=NOW)
    policy = request(Disbursement(uid()))
    policy.approve(approved_by="u", now=NOW, facts=facts(), allocation=a)
    policy.fail(reason="card closed", now=NOW, allocation=a)
    seen = set()
    for agg in (a, p, d, policy):
        for e in agg.pending:
            model = models[e.event_type]
            assert model.model_validate(e.data).model_dump(mode="json") == e.data
            id_field = {"allocation": "allocation_id", "project": "project_id",
                        "disbursement": "disbursement_id"}[agg.stream_type]
            assert e.data[id_field] == agg.id
            seen.add(e.event_type)
    assert {"FundsReserved", "FundsSpent", "ReservationReleased", "ProjectPaymentCommitted",
            "ProjectPaymentRecorded", "DisbursementPaid", "DisbursementFailed"} <= seen
