"""Monitoring domain core: return-risk thresholds, household risk facts, the risk rules and the
Alert aggregate with its lifecycle, overdue and escalation. No infrastructure."""

from __future__ import annotations

import json

import copy
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts import funds as fev
from contracts import monitoring as mev
from contracts import registry as rev
from eventkit.events import RecordedEvent

from services.monitoring import rules as R
from services.monitoring.alerts import (
    DEFAULT_LIMITS,
    Alert,
    OverdueLimits,
    alert_key,
)
from services.monitoring.rules import (
    CadreReport,
    Finding,
    MedicalCost,
    ThresholdsError,
    evaluate,
    finding_id,
    fold_risk_facts,
    load_thresholds,
    medical_costs_from_disbursements,
    most_severe,
    parse_thresholds,
    suggested_object_type,
)

from .domain_helpers import raises

TODAY = date(2025, 3, 10)
NOW = datetime(2025, 3, 10, 2, 0, tzinfo=timezone.utc)
VILLAGE = "620102001001"            # province 62
OTHER_VILLAGE = "530102001001"      # province 53
HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
OTHER_HOUSEHOLD = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"
HASH = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"
TH = R.default_thresholds()
RAW = yaml.safe_load(R.THRESHOLDS_FILE.read_text(encoding="utf-8"))


def uid() -> str:
    return str(uuid.uuid4())


def raw(**changes: Any) -> dict[str, Any]:
    """The shipped thresholds data with some dotted paths changed (value ``...`` deletes the key)."""
    data = copy.deepcopy(RAW)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return data


def with_province(code: str, *entries: tuple[int, str]) -> R.Thresholds:
    data = raw()
    data["income"]["provinces"] = {code: [{"year": y, "amount": a, "confirmed": False} for y, a in entries]}
    return parse_thresholds(data)


# --- registry event builder --------------------------------------------------------------------


def ev(model: type, **data: Any) -> tuple[str, dict[str, Any]]:
    """An event as published: validated by its contract model."""
    event = model(**data)
    return event.event_type, event.model_dump(mode="json")


class HH:
    """A household's registry stream, built step by step."""

    def __init__(self, status: str | None = "lifted_out", village: str = VILLAGE,
                 household_id: str = HOUSEHOLD) -> None:
        self.id = household_id
        self.events: list[tuple[str, dict[str, Any]]] = [ev(
            rev.HouseholdRegistered, household_id=household_id, village_code=village, member_count=1,
            status=status)]

    def add(self, *, birth_year: int = 1980, skill: str | None = "ordinary", health: list[str] | None = None,
            stage: str | None = None, insurance: list[str] | None = None, joined_on: date | None = None,
            member_id: str | None = None) -> str:
        member_id = member_id or uid()
        profile = rev.MemberProfile(health=health, labour_skill=skill, schooling_stage=stage, insurance=insurance)
        self.events.append(ev(rev.MemberAdded, household_id=self.id, member_id=member_id, relation="head", sex="male",
                              birth_year=birth_year, id_hmac=HASH, id_masked="6201**********1234",
                              name_masked="Z*Q", reason="initial", joined_on=joined_on, profile=profile))
        return member_id

    def update(self, member_id: str, **changes: Any) -> None:
        self.events.append(ev(rev.MemberUpdated, household_id=self.id, member_id=member_id,
                              changes=rev.MemberProfile(**changes)))

    def remove(self, member_id: str, reason: str = "death", on: date = date(2025, 1, 5)) -> None:
        self.events.append(ev(rev.MemberRemoved, household_id=self.id, member_id=member_id, reason=reason,
                              removed_on=on))

    def income(self, year: int, per_capita: str, members: int = 2) -> None:
        net = Decimal(per_capita) * members
        self.events.append(ev(rev.IncomeAssessed, household_id=self.id, year=year, wage=f"{net:.2f}",
                              business="0.00", property="0.00", transfer="0.00", business_expenses="0.00",
                              resident_members=members, net_income=f"{net:.2f}",
                              per_capita_net_income=f"{Decimal(per_capita):.2f}"))

    def conditions(self, on: date, **items: bool) -> None:
        self.events.append(ev(rev.LivingConditionsAssessed, household_id=self.id, assessed_on=on, conditions=items))

    def status(self, to_status: str, on: date = date(2021, 6, 1)) -> None:
        self.events.append(ev(rev.HouseholdStatusChanged, household_id=self.id, from_status="identified",
                              to_status=to_status, effective_on=on, basis="decision"))

    def facts(self, **kw: Any) -> R.HouseholdRiskFacts:
        return fold_risk_facts(self.events, **kw)


def report(kind: str = "disaster", risk: str | None = None, report_id: str = "r-1",
           note: str | None = "flood damaged the fields") -> dict[str, Any]:
    return {"report_id": report_id, "kind": kind, "risk": risk, "note": note, "reported_at": NOW.isoformat()}


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


# --- thresholds: loading, dated lookup ----------------------------------------------------------


def test_shipped_thresholds_load_with_every_rule_and_the_2020_figure_confirmed():
    assert set(TH.rules) == set(R.RULES)
    t2020 = TH.income_threshold(2020)
    assert (t2020.amount, t2020.confirmed, t2020.province) == (Decimal("6000.00"), True, None)
    assert all(not t.confirmed for t in TH.income.national if t.year > 2020)
    assert TH.income.drop_ratio == Decimal("0.30")
    assert TH.medical.self_paid_above == Decimal("10000.00")
    assert TH.medical.share_of_net_income_above == Decimal("0.50")
    assert TH.compulsory_school_age == (6, 15)
    assert TH.condition_items == {"safe_housing": "unsafe_housing", "drinking_water": "unsafe_drinking_water"}
    assert TH.applies_to_statuses == {"applicant", "lifted_out"}
    assert load_thresholds(R.THRESHOLDS_FILE) == TH


def test_threshold_is_in_force_from_its_year_until_the_next_entry():
    th = parse_thresholds(raw(income__national=[{"year": 2020, "amount": "6000"}, {"year": 2022, "amount": "6600"}]))
    assert th.income_threshold(2019) is None
    assert th.income_threshold(2020).amount == Decimal("6000.00")
    assert th.income_threshold(2021).year == 2020          # carried forward
    assert th.income_threshold(2022).amount == Decimal("6600.00")
    assert th.income_threshold(2030).amount == Decimal("6600.00")
    assert th.income_threshold(2022, "62").province is None  # no provincial series: national


def test_provincial_threshold_overrides_the_national_one_until_a_later_national_entry():
    th = parse_thresholds(raw(income__national=[{"year": 2020, "amount": "6000"}, {"year": 2026, "amount": "9000"}],
                              income__provinces={"62": [{"year": 2025, "amount": "8700.00"}]}))
    assert th.income_threshold(2024, "62").amount == Decimal("6000.00")   # before the provincial entry
    assert th.income_threshold(2025, "62").amount == Decimal("8700.00")
    assert th.income_threshold(2025, "62").province == "62"
    assert th.income_threshold(2025, "53").amount == Decimal("6000.00")   # other province
    assert th.income_threshold(2025).amount == Decimal("6000.00")         # national
    assert th.income_threshold(2026, "62").amount == Decimal("9000.00")   # later national entry wins
    same_year = parse_thresholds(raw(income__provinces={"62": [{"year": 2024, "amount": "7000"}]}))
    assert same_year.income_threshold(2024, "62").amount == Decimal("7000.00")  # tie: provincial


def test_ratios_may_be_written_as_yaml_floats():
    assert parse_thresholds(raw(income__drop_ratio=0.3)).income.drop_ratio == Decimal("0.3")


@pytest.mark.parametrize("changes, field", [
    ({"rules": ...}, "rules"),
    ({"colour": "red"}, "colour"),
    ({"applies_to_statuses": ["lifted_out", "rich"]}, "applies_to_statuses[1]"),
    ({"applies_to_statuses": []}, "applies_to_statuses"),
    ({"income__national": [{"year": 2021, "amount": "6000"}, {"year": 2020, "amount": "6000"}]},
     "income.national[1].year"),
    ({"income__national": [{"year": 2020, "amount": "6000"}, {"year": 2020, "amount": "6100"}]},
     "income.national[1].year"),
    ({"income__national": [{"year": 2020, "amount": "-1"}]}, "income.national[0].amount"),
    ({"income__national": [{"year": 2020, "amount": "lots"}]}, "income.national[0].amount"),
    ({"income__national": [{"year": 2020}]}, "income.national[0].amount"),
    ({"income__national": [{"year": 2020, "amount": "6000", "by": "x"}]}, "income.national[0].by"),
    ({"income__national": [{"year": 2020, "amount": "6000", "confirmed": "yes"}]}, "income.national[0].confirmed"),
    ({"income__national": []}, "income.national"),
    ({"income__provinces": {62: [{"year": 2025, "amount": "8700"}]}}, "income.provinces.62"),
    ({"income__provinces": {"620": [{"year": 2025, "amount": "8700"}]}}, "income.provinces.620"),
    ({"income__provinces": {"62": [{"year": 1999, "amount": "8700"}]}}, "income.provinces.62[0].year"),
    ({"income__drop_ratio": "1.5"}, "income.drop_ratio"),
    ({"income__drop_ratio": "0"}, "income.drop_ratio"),
    ({"income__drop_max_gap_years": 0}, "income.drop_max_gap_years"),
    ({"income__stale_after_years": True}, "income.stale_after_years"),
    ({"medical__health_risks": {"healthy": "01"}}, "medical.health_risks.healthy"),
    ({"medical__health_risks": {"serious_illness": "42"}}, "medical.health_risks.serious_illness"),
    ({"medical__health_risks": {}}, "medical.health_risks"),
    ({"medical__policy_codes": ["Health Extra"]}, "medical.policy_codes[0]"),
    ({"medical__self_paid_above": None, "medical__share_of_net_income_above": None,
      "medical__below_threshold_after_cost": False}, "medical"),
    ({"labour__skills": ["ordinary", "strong"]}, "labour.skills[1]"),
    ({"labour__skills": ["ordinary", "ordinary"]}, "labour.skills[1]"),
    ({"labour__working_age": {"from": 65, "to": 16}}, "labour.working_age"),
    ({"labour__working_age": {"from": 16}}, "labour.working_age.to"),
    ({"labour__removal_reasons": ["death", "vanished"]}, "labour.removal_reasons[1]"),
    ({"school__compulsory_age": {"from": 6, "to": "15"}}, "school.compulsory_age.to"),
    ({"conditions__items": {"swimming_pool": "unsafe_housing"}}, "conditions.items.swimming_pool"),
    ({"conditions__items": {"safe_housing": "leaky_roof"}}, "conditions.items.safe_housing"),
    ({"rules__income_drop": ...}, "rules.income_drop"),
    ({"rules__astrology": {"enabled": True, "severity": "low", "requires_verification": False}}, "rules.astrology"),
    ({"rules__income_drop": {"enabled": True, "risk": "income", "severity": "urgent",
                             "requires_verification": False}}, "rules.income_drop.severity"),
    ({"rules__income_drop": {"enabled": "on", "risk": "income", "severity": "low",
                             "requires_verification": False}}, "rules.income_drop.enabled"),
    ({"rules__income_drop": {"enabled": True, "risk": "poor", "severity": "low",
                             "requires_verification": False}}, "rules.income_drop.risk"),
    ({"rules__income_drop": {"enabled": True, "severity": "low", "requires_verification": False}},
     "rules.income_drop.risk"),
    ({"rules__housing_or_water_lost": {"enabled": True, "risk": "unsafe_housing", "severity": "low",
                                       "requires_verification": False}}, "rules.housing_or_water_lost.risk"),
    ({"rules__disaster_reported": {"enabled": True, "risk": "99", "severity": "high",
                                   "requires_verification": True}}, "rules.disaster_reported.risk"),
    ({"rules__manual_report": {"enabled": True, "risk": "0201", "severity": "high",
                               "requires_verification": True}}, "rules.manual_report.risk"),
])
def test_invalid_thresholds_are_refused_naming_the_field(changes, field):
    with pytest.raises(ThresholdsError) as info:
        parse_thresholds(raw(**changes), "t.yaml")
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"t.yaml: {field}: ")


def test_thresholds_must_be_a_mapping():
    with pytest.raises(ThresholdsError) as info:
        parse_thresholds(["not", "a", "mapping"])
    assert "must be a mapping" in str(info.value)


def test_load_thresholds_names_a_file_that_is_missing_or_not_yaml(tmp_path: Path):
    with pytest.raises(ThresholdsError) as info:
        load_thresholds(tmp_path / "absent.yaml")
    assert info.value.field == "(file)" and "cannot be read" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("income: [unclosed", encoding="utf-8")
    with pytest.raises(ThresholdsError) as info:
        load_thresholds(bad)
    assert info.value.field == "(file)" and "not valid YAML" in str(info.value)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(raw(income__drop_ratio="0.25")), encoding="utf-8")
    assert load_thresholds(good).income.drop_ratio == Decimal("0.25")
    assert load_thresholds(good).source == str(good)


def test_with_rules_changes_one_rule_and_refuses_unknown_rules():
    th = TH.with_rules(income_drop={"enabled": False, "severity": "low"})
    assert (th.rule("income_drop").enabled, th.rule("income_drop").severity) == (False, "low")
    assert TH.rule("income_drop").enabled
    with pytest.raises(KeyError):
        TH.with_rules(astrology={"enabled": False})


# --- fold ----------------------------------------------------------------------------------------


def test_fold_needs_the_registration_first():
    with pytest.raises(ValueError):
        fold_risk_facts([])
    hh = HH()
    with pytest.raises(ValueError):
        fold_risk_facts(hh.events[1:] + [ev(rev.CoordinatesSet, household_id=HOUSEHOLD, latitude=1, longitude=2)])


def test_fold_follows_members_incomes_conditions_and_status():
    hh = HH(status=None)
    a = hh.add(health=["healthy"], insurance=["basic_medical"])
    b = hh.add(birth_year=2015, skill=None, stage="primary")
    hh.update(a, health=["serious_illness"], labour_skill="lost")
    hh.update(b, schooling_stage="not_in_school")
    hh.update(uid(), labour_skill="ordinary")          # unknown member: ignored
    hh.income(2023, "9000")
    hh.income(2024, "5000")
    hh.income(2024, "5200")                             # re-assessment of the year replaces it
    hh.conditions(date(2024, 6, 1), safe_housing=False)
    hh.conditions(date(2023, 6, 1), safe_housing=True)  # entered late: ordered by date
    hh.status("lifted_out")
    hh.events.append(ev(rev.MonitoringDesignated, household_id=HOUSEHOLD, object_type="marginal",
                        effective_on=date(2024, 7, 1)))
    hh.remove(b, "moved_out", date(2024, 9, 1))
    f = hh.facts()
    assert (f.household_id, f.village_code, f.province, f.status) == (HOUSEHOLD, VILLAGE, "62", "lifted_out")
    assert f.monitoring_object_type == "marginal"
    assert f.members[a].health == ("serious_illness",) and f.members[a].labour_skill == "lost"
    assert f.members[a].insurance == ("basic_medical",)
    assert f.members[b].schooling_stage == "not_in_school"
    assert (f.members[b].active, f.members[b].removal_reason, f.members[b].removed_on) == (
        False, "moved_out", date(2024, 9, 1))
    assert [m.member_id for m in f.active_members()] == [a]
    assert f.incomes[2024].per_capita_net_income == Decimal("5200.00") and f.latest_income().year == 2024
    assert f.income_before(2024).year == 2023 and f.income_up_to(2025).year == 2024
    assert [c.assessed_on for c in f.conditions] == [date(2023, 6, 1), date(2024, 6, 1)]
    assert [(c.member_id, c.kind, c.cause, c.skill_before) for c in f.labour_changes] == [
        (a, "skill_changed", "lost", "ordinary"), (b, "removed", "moved_out", None)]
    hh.events.append(ev(rev.MonitoringRiskEliminated, household_id=HOUSEHOLD, effective_on=date(2025, 1, 1)))
    assert hh.facts().monitoring_object_type is None
    assert HH(status=None).facts().status == "applicant"


def test_medical_costs_from_disbursements_take_the_latest_cost_per_member_and_year():
    member, other = uid(), uid()

    def requested(cost: str | None, *, period: str = "2024", member_id: str = member, policy: str =
                  "health_extra_reimbursement", household: str = HOUSEHOLD) -> tuple[str, dict[str, Any]]:
        return ev(fev.DisbursementRequested, disbursement_id=uid(), household_id=household, member_id=member_id,
                  village_code=VILLAGE, basis="policy", policy_code=policy, policy_version=1, period=period,
                  amount="100.00", cost_basis=cost, requested_by="officer", requested_at=NOW)

    first, second = requested("35000.00"), requested("36000.00")
    events = [first, second, requested("12000.00", member_id=other), requested("9000.00", period="2023-S1"),
              requested(None), requested("50000.00", policy="edu_boarding_junior"),
              requested("70000.00", household=OTHER_HOUSEHOLD),
              ("DisbursementPaid", {"disbursement_id": uid()})]
    costs = medical_costs_from_disbursements(events, household_id=HOUSEHOLD)
    assert sorted((c.year, c.member_id, c.amount) for c in costs) == sorted([
        (2023, member, Decimal("9000.00")), (2024, member, Decimal("36000.00")),
        (2024, other, Decimal("12000.00"))])
    assert next(c for c in costs if c.year == 2024 and c.member_id == member).ref == second[1]["disbursement_id"]
    assert len(medical_costs_from_disbursements(events)) == 4          # no household filter
    assert medical_costs_from_disbursements(events, policy_codes=["other_policy"]) == ()


def test_medical_costs_may_be_given_as_year_cost_pairs_and_are_checked():
    f = HH().facts(medical_costs=[(2024, "12000.50"), MedicalCost(2024, Decimal(100), None, "insurer:1")])
    assert sum(c.amount for c in f.medical_costs_in(2024)) == Decimal("12100.50")
    for bad in [(2024,), (1999, "100"), (2024, "-5"), (2024, 1.5), "2024:100"]:
        with pytest.raises(ValueError):
            HH().facts(medical_costs=[bad])


@pytest.mark.parametrize("changes, field", [
    ({"report_id": ""}, "report_id"),
    ({"kind": "rumour"}, "kind"),
    ({"risk": "42"}, "risk"),
    ({"kind": "disaster", "risk": "01"}, "risk"),
    ({"kind": "other", "risk": "0201"}, "risk"),
    ({"note": 5}, "note"),
    ({"note": "x" * 2001}, "note"),
    ({"reported_at": "yesterday"}, "reported_at"),
    ({"reported_at": "2025-03-10T10:00:00"}, "reported_at"),
])
def test_invalid_reports_are_refused_naming_the_field(changes, field):
    with raises("invalid_report", 422, field=field):
        HH().facts(reports=[{**report(), **changes}])


def test_reports_are_parsed():
    f = HH().facts(reports=[report("other", "05", note="  "), CadreReport("r-2", "disaster", None, None, NOW)])
    assert f.reports[0] == CadreReport("r-1", "other", "05", None, NOW)
    assert f.reports[1].kind == "disaster"


# --- income rules --------------------------------------------------------------------------------


def test_income_below_threshold_fires_on_the_latest_assessed_year():
    hh = HH()
    hh.income(2023, "5000")   # an older low year does not count
    hh.income(2024, "7199.99")
    f = only(R.income_below_threshold(hh.facts(), TH, TODAY))
    assert (f.rule, f.risk, f.severity, f.requires_verification) == ("income_below_threshold", "income", "high", False)
    assert f.key == "income_below_threshold:2024"
    assert f.evidence == {"year": 2024, "per_capita_net_income": "7199.99", "province": "62", "threshold": "7200.00",
                          "threshold_year": 2024, "threshold_province": None, "threshold_confirmed": False}
    assert "7199.99" in f.detail and "7200.00" in f.detail


def test_income_exactly_at_or_above_the_threshold_does_not_fire():
    for amount in ("7200.00", "9000.00"):
        hh = HH()
        hh.income(2024, amount)
        assert R.income_below_threshold(hh.facts(), TH, TODAY) == []


def test_income_rules_need_an_income_a_threshold_and_a_recent_year():
    assert R.income_below_threshold(HH().facts(), TH, TODAY) == []
    old = HH()
    old.income(2019, "1000")                        # no threshold before 2020
    assert R.income_below_threshold(old.facts(), TH, date(2020, 1, 1)) == []
    stale = HH()
    stale.income(2022, "1000")
    assert R.income_below_threshold(stale.facts(), TH, date(2024, 12, 31))       # 2 years: still current
    assert R.income_below_threshold(stale.facts(), TH, date(2025, 1, 1)) == []   # 3 years: stale


def test_income_below_threshold_uses_the_household_province():
    th = with_province("62", (2024, "8700"))
    hh = HH()
    hh.income(2024, "8000")
    f = only(R.income_below_threshold(hh.facts(), th, TODAY))
    assert (f.evidence["threshold"], f.evidence["threshold_province"]) == ("8700.00", "62")
    elsewhere = HH(village=OTHER_VILLAGE)
    elsewhere.income(2024, "8000")
    assert R.income_below_threshold(elsewhere.facts(), th, TODAY) == []


def test_income_drop_fires_at_exactly_the_drop_ratio():
    hh = HH()
    hh.income(2023, "20000")
    hh.income(2024, "14000")          # exactly 30 % down
    f = only(R.income_drop(hh.facts(), TH, TODAY))
    assert (f.risk, f.severity, f.key) == ("income", "medium", "income_drop:2023-2024")
    assert f.evidence["drop_ratio"] == "0.3000" and f.evidence["previous_per_capita_net_income"] == "20000.00"
    assert "30.0 %" in f.detail


def test_income_drop_below_the_ratio_or_without_a_comparable_year_does_not_fire():
    small = HH()
    small.income(2023, "20000")
    small.income(2024, "14000.01")
    assert R.income_drop(small.facts(), TH, TODAY) == []
    single = HH()
    single.income(2024, "100")
    assert R.income_drop(single.facts(), TH, TODAY) == []
    gap = HH()
    gap.income(2021, "20000")
    gap.income(2024, "1000")          # previous assessed year 3 years earlier: too far
    assert R.income_drop(gap.facts(), TH, TODAY) == []
    two = HH()
    two.income(2022, "20000")
    two.income(2024, "1000")          # 2 years: compared
    assert R.income_drop(two.facts(), TH, TODAY)[0].evidence["previous_year"] == 2022
    zero = HH()
    zero.income(2023, "0")
    zero.income(2024, "0")
    assert R.income_drop(zero.facts(), TH, TODAY) == []
    stale = HH()
    stale.income(2020, "20000")
    stale.income(2021, "1000")
    assert R.income_drop(stale.facts(), TH, TODAY) == []


# --- illness with medical cost --------------------------------------------------------------------


def ill_household(health: list[str] | None = None, per_capita: str = "20000") -> tuple[HH, str]:
    hh = HH()
    member = hh.add(health=health or ["serious_illness"])
    hh.add(health=["healthy"])
    hh.income(2024, per_capita)       # net income 2 x per capita
    return hh, member


def test_illness_with_cost_above_the_amount_fires_with_the_illness_risk():
    hh, member = ill_household()
    f = only(R.illness_with_medical_cost(hh.facts(medical_costs=[MedicalCost(2025, Decimal("10000.01"), member,
                                                                              "d-1")]), TH, TODAY))
    assert (f.rule, f.risk, f.severity, f.key) == ("illness_with_medical_cost", "01", "high",
                                                   "illness_with_medical_cost:2025")
    assert f.evidence["criteria"] == ["self_paid_above"]
    assert f.evidence["member_ids"] == [member] and f.evidence["health"] == {member: ["serious_illness"]}
    assert (f.evidence["self_paid_cost"], f.evidence["cost_refs"], f.evidence["income_year"]) == (
        "10000.01", ["d-1"], 2024)


def test_medical_cost_exactly_at_the_amount_and_small_against_income_does_not_fire():
    hh, _ = ill_household()           # net income 40,000: half is 20,000
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "10000.00")]), TH, TODAY) == []


def test_medical_cost_above_half_the_net_income_fires():
    hh, _ = ill_household(per_capita="4000")   # net 8,000; threshold 7,200 per capita
    th = parse_thresholds(raw(medical__below_threshold_after_cost=False))
    f = only(R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "4000.01")]), th, TODAY))
    assert f.evidence["criteria"] == ["share_of_net_income"]
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "4000.00")]), th, TODAY) == []


def test_medical_cost_that_pushes_income_below_the_threshold_fires():
    hh, _ = ill_household(per_capita="8000")   # net 16,000; after 2,000: 7,000 per capita < 7,200
    th = parse_thresholds(raw(medical__self_paid_above=None, medical__share_of_net_income_above=None))
    f = only(R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "2000")]), th, TODAY))
    assert f.evidence["criteria"] == ["below_threshold_after_cost"]
    assert (f.evidence["per_capita_after_cost"], f.evidence["threshold"]) == ("7000.00", "7200.00")
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "1600")]), th, TODAY) == []


def test_large_cost_without_an_ill_or_disabled_member_does_not_fire():
    hh = HH()
    hh.add(health=["healthy"])
    hh.add(health=None)
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "90000")]), TH, TODAY) == []


def test_disability_alone_is_risk_03_and_illness_comes_first():
    hh, _ = ill_household(["disabled"])
    assert only(R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "50000")]), TH, TODAY)).risk == "03"
    both, _ = ill_household(["disabled", "chronic_illness"])
    assert only(R.illness_with_medical_cost(both.facts(medical_costs=[(2025, "50000")]), TH, TODAY)).risk == "01"


def test_medical_costs_are_looked_at_for_this_year_and_last_year_only():
    hh, _ = ill_household()
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2024, "50000")]), TH, TODAY)[0].evidence["year"] == 2024
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2023, "50000")]), TH, TODAY) == []
    both = R.illness_with_medical_cost(hh.facts(medical_costs=[(2024, "50000"), (2025, "60000")]), TH, TODAY)
    assert only(both).evidence["year"] == 2025      # the most recent year is reported


def test_medical_cost_names_the_member_it_was_paid_for_and_counts_a_member_who_died_that_year():
    hh = HH()
    ill = hh.add(health=["serious_illness"])
    other = hh.add(health=["chronic_illness"])
    hh.remove(ill, "death", date(2025, 2, 1))
    costs = [MedicalCost(2025, Decimal(40000), ill, "d-9")]
    f = only(R.illness_with_medical_cost(hh.facts(medical_costs=costs), TH, TODAY))
    assert f.evidence["member_ids"] == [ill]
    assert "net_income" not in f.evidence            # no income assessed: only the amount criterion
    unnamed = only(R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "40000")]), TH, TODAY))
    assert unnamed.evidence["member_ids"] == sorted([ill, other])
    gone = HH()
    left = gone.add(health=["serious_illness"])
    gone.remove(left, "death", date(2023, 5, 1))
    assert R.illness_with_medical_cost(gone.facts(medical_costs=[(2025, "40000")]), TH, TODAY) == []
    late = HH()
    late.add(health=["serious_illness"], joined_on=date(2025, 2, 1))
    assert R.illness_with_medical_cost(late.facts(medical_costs=[(2024, "40000")]), TH, TODAY) == []


def test_no_medical_cost_no_finding():
    hh, _ = ill_household()
    assert R.illness_with_medical_cost(hh.facts(), TH, TODAY) == []
    assert R.illness_with_medical_cost(hh.facts(medical_costs=[(2025, "0")]), TH, TODAY) == []


# --- main labourer lost --------------------------------------------------------------------------


def test_death_of_the_only_labourer_fires():
    hh = HH()
    worker = hh.add(birth_year=1975, skill="skilled")
    hh.add(birth_year=1950, skill="none")
    hh.remove(worker, "death", date(2025, 1, 5))
    f = only(R.main_labourer_lost(hh.facts(), TH, TODAY))
    assert (f.rule, f.risk, f.severity) == ("main_labourer_lost", "04", "high")
    assert f.evidence == {"member_id": worker, "change": "removed", "cause": "death", "on": "2025-01-05",
                          "labour_skill_before": "skilled", "birth_year": 1975, "active_members": 1}
    assert f.key == f"main_labourer_lost:{worker}:removed:death:2025-01-05"


def test_losing_one_of_two_labourers_does_not_fire():
    hh = HH()
    worker = hh.add(birth_year=1975)
    hh.add(birth_year=1980)
    hh.remove(worker)
    assert R.main_labourer_lost(hh.facts(), TH, TODAY) == []


def test_last_labourer_no_longer_able_to_work_fires_undated():
    hh = HH()
    worker = hh.add(birth_year=1975)
    hh.update(worker, labour_skill="lost")
    f = only(R.main_labourer_lost(hh.facts(), TH, TODAY))
    assert (f.evidence["change"], f.evidence["cause"], f.evidence["on"]) == ("skill_changed", "lost", None)
    assert f.evidence["active_members"] == 1


def test_household_that_never_had_a_labourer_or_lost_one_not_of_working_age_does_not_fire():
    never = HH()
    never.add(birth_year=1940, skill="none")
    assert R.main_labourer_lost(never.facts(), TH, TODAY) == []
    old = HH()
    elder = old.add(birth_year=1950, skill="ordinary")    # 75 when he died: not of working age
    old.remove(elder)
    assert R.main_labourer_lost(old.facts(), TH, TODAY) == []
    edge = HH()
    at_64 = edge.add(birth_year=1961)                       # 64 in 2025: still of working age
    edge.remove(at_64)
    assert R.main_labourer_lost(edge.facts(), TH, TODAY)


def test_unknown_labour_skill_of_a_working_age_member_is_missing_data():
    hh = HH()
    worker = hh.add(birth_year=1975)
    hh.add(birth_year=1990, skill=None)
    hh.remove(worker)
    assert R.main_labourer_lost(hh.facts(), TH, TODAY) == []


def test_a_new_labourer_joining_or_an_unconfigured_removal_reason_stops_the_finding():
    hh = HH()
    worker = hh.add(birth_year=1975)
    hh.remove(worker)
    hh.add(birth_year=1995)
    assert R.main_labourer_lost(hh.facts(), TH, TODAY) == []
    moved = HH()
    worker = moved.add(birth_year=1975)
    moved.remove(worker, "moved_out")
    assert R.main_labourer_lost(moved.facts(), TH, TODAY)
    th = parse_thresholds(raw(labour__removal_reasons=["death"]))
    assert R.main_labourer_lost(moved.facts(), th, TODAY) == []


def test_the_most_recent_labour_loss_is_reported():
    hh = HH()
    first, second = hh.add(birth_year=1975), hh.add(birth_year=1985)
    hh.remove(first, "death", date(2024, 3, 1))
    hh.remove(second, "imprisoned", date(2024, 9, 1))
    assert only(R.main_labourer_lost(hh.facts(), TH, TODAY)).evidence["member_id"] == second


# --- child out of school ---------------------------------------------------------------------


@pytest.mark.parametrize("birth_year, fires", [(2019, True), (2010, True), (2020, False), (2009, False)])
def test_child_out_of_school_by_compulsory_age_bounds(birth_year, fires):
    hh = HH()
    child = hh.add(birth_year=birth_year, skill=None, stage="not_in_school")
    found = R.child_out_of_school(hh.facts(), TH, TODAY)
    if fires:
        f = only(found)
        assert (f.risk, f.severity, f.requires_verification) == ("child_out_of_school", "medium", False)
        assert f.evidence == {"year": 2025, "member_ids": [child], "ages": {child: 2025 - birth_year},
                              "compulsory_age": [6, 15]}
        assert f.key == f"child_out_of_school:2025:{child}"
    else:
        assert found == []


def test_child_in_school_unknown_stage_or_removed_does_not_fire():
    hh = HH()
    hh.add(birth_year=2015, skill=None, stage="primary")
    hh.add(birth_year=2016, skill=None, stage=None)
    gone = hh.add(birth_year=2014, skill=None, stage="not_in_school")
    hh.remove(gone, "moved_out")
    assert R.child_out_of_school(hh.facts(), TH, TODAY) == []


def test_several_children_out_of_school_are_one_finding():
    hh = HH()
    a = hh.add(birth_year=2012, skill=None, stage="not_in_school")
    b = hh.add(birth_year=2014, skill=None, stage="primary")
    hh.update(b, schooling_stage="not_in_school")
    assert only(R.child_out_of_school(hh.facts(), TH, TODAY)).evidence["member_ids"] == sorted([a, b])


# --- housing or water lost ---------------------------------------------------------------------


def test_safe_housing_secured_earlier_and_lost_now_fires():
    hh = HH()
    hh.conditions(date(2023, 5, 1), safe_housing=True, drinking_water=True)
    hh.conditions(date(2024, 5, 1), safe_housing=False, drinking_water=True)
    f = only(R.housing_or_water_lost(hh.facts(), TH, TODAY))
    assert (f.risk, f.severity, f.key) == ("unsafe_housing", "high", "housing_or_water_lost:safe_housing:2024-05-01")
    assert f.evidence == {"item": "safe_housing", "secured_on": "2023-05-01", "lost_on": "2024-05-01",
                          "latest_assessed_on": "2024-05-01"}


def test_housing_and_water_lost_together_are_two_findings_and_the_key_keeps_the_first_loss():
    hh = HH()
    hh.conditions(date(2023, 5, 1), safe_housing=True, drinking_water=True)
    hh.conditions(date(2024, 5, 1), safe_housing=False, drinking_water=False)
    hh.conditions(date(2024, 11, 1), safe_housing=False, drinking_water=False)
    found = R.housing_or_water_lost(hh.facts(), TH, TODAY)
    assert [(f.risk, f.evidence["lost_on"], f.evidence["latest_assessed_on"]) for f in found] == [
        ("unsafe_housing", "2024-05-01", "2024-11-01"), ("unsafe_drinking_water", "2024-05-01", "2024-11-01")]


def test_conditions_never_secured_missing_or_regained_do_not_fire():
    never = HH()
    never.conditions(date(2023, 5, 1), safe_housing=False)
    never.conditions(date(2024, 5, 1), safe_housing=False)
    assert R.housing_or_water_lost(never.facts(), TH, TODAY) == []
    missing = HH()
    missing.conditions(date(2023, 5, 1), safe_housing=True)
    missing.conditions(date(2024, 5, 1), food=True)
    assert R.housing_or_water_lost(missing.facts(), TH, TODAY) == []
    regained = HH()
    regained.conditions(date(2023, 5, 1), safe_housing=True)
    regained.conditions(date(2024, 1, 1), safe_housing=False)
    regained.conditions(date(2024, 5, 1), safe_housing=True)
    assert R.housing_or_water_lost(regained.facts(), TH, TODAY) == []
    assert R.housing_or_water_lost(HH().facts(), TH, TODAY) == []
    single = HH()
    single.conditions(date(2024, 5, 1), safe_housing=False)
    assert R.housing_or_water_lost(single.facts(), TH, TODAY) == []


def test_the_latest_assessment_is_the_latest_by_date_not_by_entry():
    hh = HH()
    hh.conditions(date(2024, 5, 1), safe_housing=False)
    hh.conditions(date(2023, 5, 1), safe_housing=True)   # an older assessment entered late
    assert only(R.housing_or_water_lost(hh.facts(), TH, TODAY)).evidence["lost_on"] == "2024-05-01"
    back = HH()
    back.conditions(date(2024, 5, 1), safe_housing=True)
    back.conditions(date(2023, 5, 1), safe_housing=False)
    assert R.housing_or_water_lost(back.facts(), TH, TODAY) == []


# --- uninsured member ----------------------------------------------------------------------------


def test_member_without_basic_medical_insurance_fires_only_when_enrolments_are_known():
    hh = HH()
    uninsured = hh.add(insurance=["pension"])
    hh.add(insurance=["basic_medical", "pension"])
    hh.add(insurance=None)
    f = only(R.uninsured_member(hh.facts(), TH, TODAY))
    assert (f.risk, f.severity, f.evidence["member_ids"]) == ("no_basic_medical_insurance", "low", [uninsured])
    hh.update(uninsured, insurance=["basic_medical"])
    assert R.uninsured_member(hh.facts(), TH, TODAY) == []


# --- reports -----------------------------------------------------------------------------------


def test_disaster_reports_fire_with_their_disaster_code_or_the_default():
    f = HH().facts(reports=[report("disaster", "0201", "r-1"), report("disaster", None, "r-2", note=None),
                            report("other", "05", "r-3")])
    found = R.disaster_reported(f, TH, TODAY)
    assert [(x.risk, x.key, x.severity, x.requires_verification) for x in found] == [
        ("0201", "disaster_reported:r-1", "high", False), ("02", "disaster_reported:r-2", "high", False)]
    assert found[0].evidence == {"report_id": "r-1", "kind": "disaster", "reported_risk": "0201",
                                 "note": "flood damaged the fields", "reported_at": NOW.isoformat()}
    assert "flood" in found[0].detail and "r-1" in found[0].detail


def test_other_reports_fire_with_their_code_or_other():
    f = HH().facts(reports=[report("other", "05", "r-3"), report("other", None, "r-4"), report("disaster")])
    found = R.manual_report(f, TH, TODAY)
    assert [(x.risk, x.key, x.severity) for x in found] == [("05", "manual_report:r-3", "medium"),
                                                            ("99", "manual_report:r-4", "medium")]
    assert R.manual_report(HH().facts(), TH, TODAY) == []


# --- evaluate ------------------------------------------------------------------------------------


def risky_household(status: str | None = "lifted_out") -> HH:
    hh = HH(status=status)
    worker = hh.add(birth_year=1975, health=["serious_illness"])
    hh.add(birth_year=2014, skill=None, stage="not_in_school")
    hh.remove(worker, "death")
    hh.income(2023, "10000")
    hh.income(2024, "5000")
    hh.conditions(date(2023, 5, 1), safe_housing=True)
    hh.conditions(date(2024, 5, 1), safe_housing=False)
    return hh


def test_evaluate_runs_every_enabled_rule_in_order():
    facts = risky_household().facts(medical_costs=[(2025, "30000")], reports=[report("disaster", "0203")])
    found = evaluate(facts, TH, TODAY)
    assert [f.rule for f in found] == ["income_below_threshold", "income_drop", "illness_with_medical_cost",
                                       "main_labourer_lost", "child_out_of_school", "housing_or_water_lost",
                                       "disaster_reported"]
    without = evaluate(facts, TH.with_rules(income_drop={"enabled": False}, disaster_reported={"enabled": False}),
                       TODAY)
    assert [f.rule for f in without] == ["income_below_threshold", "illness_with_medical_cost",
                                         "main_labourer_lost", "child_out_of_school", "housing_or_water_lost"]


def test_evaluate_only_households_in_scope():
    assert evaluate(risky_household("identified").facts(), TH, TODAY) == []
    assert evaluate(risky_household("natural_decrease").facts(), TH, TODAY) == []
    assert evaluate(risky_household(None).facts(), TH, TODAY)                 # applicant
    hh = risky_household("identified")
    hh.status("lifted_out")
    assert evaluate(hh.facts(), TH, TODAY)


def test_evaluate_needs_a_date():
    with pytest.raises(ValueError):
        evaluate(HH().facts(), TH, NOW)


def test_most_severe_keeps_one_finding_per_risk():
    found = evaluate(risky_household().facts(), TH, TODAY)
    best = most_severe(found)
    assert best["income"].rule == "income_below_threshold"        # high beats medium
    assert set(best) == {"income", "04", "child_out_of_school", "unsafe_housing"}
    low = Finding("a", "x", "low", {}, "a:1")
    high = Finding("b", "x", "high", {}, "b:1")
    assert most_severe([low, high])["x"] is high
    assert most_severe([high, Finding("c", "x", "high", {}, "c:1")])["x"] is high


def test_finding_id_is_stable_per_household_and_evidence():
    f = only(R.income_below_threshold(risky_household().facts(), TH, TODAY))
    again = only(R.income_below_threshold(risky_household().facts(), TH, TODAY))
    assert finding_id(HOUSEHOLD, f) == finding_id(HOUSEHOLD, again)
    assert uuid.UUID(finding_id(HOUSEHOLD, f)).version == 5
    assert finding_id(OTHER_HOUSEHOLD, f) != finding_id(HOUSEHOLD, f)
    later = risky_household()
    later.income(2025, "100")
    newer = only(R.income_below_threshold(later.facts(), TH, date(2026, 1, 1)))
    assert finding_id(HOUSEHOLD, newer) != finding_id(HOUSEHOLD, f)


def test_suggested_object_type():
    lifted = risky_household().facts()
    other = risky_household(None).facts()
    disaster = Finding("disaster_reported", "0201", "high", {}, "k")
    accident = Finding("manual_report", "05", "high", {}, "k")
    income = Finding("income_drop", "income", "medium", {}, "k")
    assert suggested_object_type(lifted, disaster) == "unstable_lifted_out"
    assert suggested_object_type(other, disaster) == "sudden_hardship"
    assert suggested_object_type(other, accident) == "sudden_hardship"
    assert suggested_object_type(other, income) == "marginal"


def test_every_rule_risk_is_a_known_risk_code():
    assert all(r.risk is None or r.risk in R.RISK_CODES for r in TH.rules.values())
    assert set(TH.medical.health_risks.values()) <= set(R.RISK_CODES)
    assert set(TH.condition_items.values()) <= set(R.RISK_CODES)


# --- alert_key ------------------------------------------------------------------------------------


def test_alert_key_is_stable_and_distinct_per_household_and_risk():
    assert alert_key(HOUSEHOLD, "income") == alert_key(HOUSEHOLD, "income") == f"{HOUSEHOLD}:income"
    assert alert_key(HOUSEHOLD, "01") != alert_key(HOUSEHOLD, "03")
    assert alert_key(HOUSEHOLD, "01") != alert_key(OTHER_HOUSEHOLD, "01")
    with raises("invalid_id", 422, field="household_id"):
        alert_key(HOUSEHOLD.upper(), "01")
    for bad in ("", "01:x", None):
        with raises("invalid_risk", 422, field="risk"):
            alert_key(HOUSEHOLD, bad)  # type: ignore[arg-type]


# --- alert lifecycle ------------------------------------------------------------------------------


FINDING = Finding("income_below_threshold", "income", "high", {"year": 2024}, "income_below_threshold:2024",
                  "per-capita net income 5000.00 in 2024 is below the monitoring threshold 7200.00", False)


def replayed(alert: Alert) -> Alert:
    fresh = Alert(alert.id)
    for version, e in enumerate(alert.pending, start=1):
        fresh.replay(RecordedEvent(version, e.event_id, alert.id, alert.stream_type, version, e.event_type,
                                   e.schema_version, dict(e.data), {}, None, NOW))
    return fresh


def raised(at: datetime = NOW, **kw: Any) -> Alert:
    alert = Alert(uid())
    alert.raise_(FINDING, HOUSEHOLD, VILLAGE, at, **kw)
    return alert


def iso(moment: datetime) -> str:
    """A datetime as the events carry it (pydantic JSON: UTC with Z)."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def last(alert: Alert) -> tuple[str, dict[str, Any]]:
    e = alert.pending[-1]
    return e.event_type, dict(e.data)


def contract_fields(model: type) -> set[str]:
    return set(model.model_fields)


def test_raise_records_exactly_the_contract_fields():
    alert = raised(object_type="unstable_lifted_out")
    kind, data = last(alert)
    assert kind == "ReturnRiskAlertRaised" and set(data) == contract_fields(mev.ReturnRiskAlertRaised)
    assert data == {"alert_id": alert.id, "household_id": HOUSEHOLD, "village_code": VILLAGE, "risk": "income",
                    "rule_id": "income_below_threshold", "severity": "high", "requires_verification": False,
                    "object_type": "unstable_lifted_out", "detail": FINDING.detail, "raised_at": iso(NOW),
                    "evidence": json.loads(json.dumps(dict(FINDING.evidence), default=str)),
                    "evidence_event_ids": None}
    assert alert.pending[0].schema_version == 1
    assert (alert.state, alert.level, alert.is_open, alert.key) == ("raised", "village", True, f"{HOUSEHOLD}:income")
    assert replayed(alert).snapshot() == alert.snapshot()


def test_raise_takes_requires_verification_from_the_finding_unless_given():
    verified = Alert(uid())
    verified.raise_(Finding("r", "01", "high", {}, "r:1", requires_verification=True), HOUSEHOLD, VILLAGE, NOW)
    assert last(verified)[1]["requires_verification"] is True
    assert verified.state == "verification_requested"            # the workflow opens the case on raising
    assert raised(requires_verification=True).state == "verification_requested"
    overridden = Alert(uid())
    overridden.raise_(Finding("r", "01", "high", {}, "r:1", requires_verification=True), HOUSEHOLD, VILLAGE, NOW,
                      requires_verification=False)
    assert overridden.state == "raised"


def test_long_details_are_shortened_and_empty_ones_left_out():
    alert = Alert(uid())
    alert.raise_(Finding("r", "99", "low", {}, "r:1", "x" * 900), HOUSEHOLD, VILLAGE, NOW)
    assert len(last(alert)[1]["detail"]) == 500
    bare = Alert(uid())
    bare.raise_(Finding("r", "99", "low", {}, "r:1"), HOUSEHOLD, VILLAGE, NOW)
    assert last(bare)[1]["detail"] is None


def test_raise_refuses_invalid_input_and_a_second_raise():
    alert = raised()
    with raises("alert_exists", 409):
        alert.raise_(FINDING, HOUSEHOLD, VILLAGE, NOW)
    with raises("invalid_id", 422, field="alert_id"):
        Alert("alert-1").raise_(FINDING, HOUSEHOLD, VILLAGE, NOW)
    with raises("invalid_id", 422, field="household_id"):
        Alert(uid()).raise_(FINDING, "household-1", VILLAGE, NOW)
    with raises("invalid_village_code", 422, field="village_code"):
        Alert(uid()).raise_(FINDING, HOUSEHOLD, "6201", NOW)
    with raises("invalid_object_type", 422, field="object_type"):
        Alert(uid()).raise_(FINDING, HOUSEHOLD, VILLAGE, NOW, object_type="poor")
    with raises("invalid_finding", 422):
        Alert(uid()).raise_({"rule": "x"}, HOUSEHOLD, VILLAGE, NOW)  # type: ignore[arg-type]
    with raises("invalid_finding", 422):
        Alert(uid()).raise_(Finding("r", "01", "urgent", {}, "k"), HOUSEHOLD, VILLAGE, NOW)
    with raises("invalid_value", 422, field="requires_verification"):
        Alert(uid()).raise_(FINDING, HOUSEHOLD, VILLAGE, NOW, requires_verification="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Alert(uid()).raise_(FINDING, HOUSEHOLD, VILLAGE, NOW.replace(tzinfo=None))


def test_full_lifecycle_records_contract_events():
    alert = raised()
    alert.acknowledge("officer-1", NOW + timedelta(hours=1), note="  will visit  ")
    kind, data = last(alert)
    assert kind == "AlertAcknowledged" and set(data) == contract_fields(mev.AlertAcknowledged)
    assert (data["acknowledged_by"], data["note"], alert.state) == ("officer-1", "will visit", "acknowledged")
    alert.request_verification("officer-1", NOW + timedelta(hours=2))
    kind, data = last(alert)
    assert kind == "AlertVerificationRequested" and set(data) == contract_fields(mev.AlertVerificationRequested)
    assert (data["household_id"], data["village_code"], data["risk"], data["object_type"]) == (
        HOUSEHOLD, VILLAGE, "income", None)
    assert alert.state == "verification_requested"
    alert.resolve("risk_eliminated", "county-1", NOW + timedelta(days=10), case_id="case-7", note="plan applied")
    kind, data = last(alert)
    assert kind == "AlertResolved" and set(data) == contract_fields(mev.AlertResolved)
    assert (data["resolution"], data["case_id"], data["resolved_by"]) == ("risk_eliminated", "case-7", "county-1")
    assert (alert.state, alert.is_open, alert.resolution) == ("resolved", False, "risk_eliminated")
    assert [e.event_type for e in alert.pending] == ["ReturnRiskAlertRaised", "AlertAcknowledged",
                                                     "AlertVerificationRequested", "AlertResolved"]
    assert replayed(alert).snapshot() == alert.snapshot()


def test_not_confirmed_may_close_an_alert_from_any_open_state():
    fresh = raised()
    fresh.resolve("not_confirmed", "officer-1", NOW, note="income data was wrong")
    assert fresh.state == "resolved" and last(fresh)[1]["case_id"] is None
    taken = raised()
    taken.acknowledge("officer-1", NOW)
    taken.resolve("not_confirmed", "officer-1", NOW)
    assert taken.resolution == "not_confirmed"
    verifying = raised(requires_verification=True)
    verifying.resolve("not_confirmed", "county-1", NOW, case_id="case-1")
    assert verifying.case_id == "case-1"


def test_risk_eliminated_needs_a_verification():
    taken = raised()
    taken.acknowledge("officer-1", NOW)
    for alert in (raised(), taken):
        with raises("invalid_transition", 409, command="resolve", resolution="risk_eliminated",
                    allowed_from=["verification_requested"]):
            alert.resolve("risk_eliminated", "officer-1", NOW)


def test_invalid_transitions_name_the_current_state():
    alert = raised()
    with raises("invalid_transition", 409, current_state="raised", command="request_verification"):
        alert.request_verification("officer-1", NOW)
    alert.acknowledge("officer-1", NOW)
    with raises("invalid_transition", 409, current_state="acknowledged", command="acknowledge"):
        alert.acknowledge("officer-1", NOW)
    alert.request_verification("officer-1", NOW)
    with raises("invalid_transition", 409, current_state="verification_requested", command="request_verification"):
        alert.request_verification("officer-1", NOW)
    with raises("invalid_transition", 409, current_state="verification_requested"):
        alert.acknowledge("officer-1", NOW)
    with raises("invalid_transition", 409, current_state="verification_requested"):
        raised(requires_verification=True).acknowledge("officer-1", NOW)


def test_nothing_is_accepted_after_resolution():
    alert = raised()
    alert.resolve("not_confirmed", "officer-1", NOW)
    late = NOW + timedelta(days=30)
    for command in (lambda: alert.acknowledge("officer-1", late), lambda: alert.request_verification("o", late),
                    lambda: alert.resolve("not_confirmed", "o", late), lambda: alert.escalate(late),
                    lambda: alert.resolve("bogus", "o", late)):
        with raises("alert_closed", 409, current_state="resolved", resolution="not_confirmed"):
            command()
    assert alert.overdue(late) is None and alert.due_at() is None


def test_commands_on_an_unknown_alert_are_404():
    for command in (lambda a: a.acknowledge("o", NOW), lambda a: a.request_verification("o", NOW),
                    lambda a: a.resolve("not_confirmed", "o", NOW), lambda a: a.escalate(NOW)):
        with raises("alert_not_found", 404):
            command(Alert(uid()))
    assert Alert(uid()).overdue(NOW) is None and Alert(uid()).key is None


def test_command_input_is_validated():
    alert = raised()
    with raises("missing_field", 422, field="acknowledged_by"):
        alert.acknowledge("  ", NOW)
    with raises("too_long", 422, field="note"):
        alert.acknowledge("officer-1", NOW, note="x" * 2001)
    with raises("invalid_value", 422, field="note"):
        alert.acknowledge("officer-1", NOW, note=5)  # type: ignore[arg-type]
    with raises("invalid_resolution", 422, field="resolution"):
        alert.resolve("fixed", "officer-1", NOW)
    with raises("missing_field", 422, field="resolved_by"):
        alert.resolve("not_confirmed", "", NOW)
    with raises("missing_field", 422, field="case_id"):
        alert.resolve("not_confirmed", "officer-1", NOW, case_id=" ")
    with raises("invalid_time", 422, field="now"):
        alert.acknowledge("officer-1", NOW - timedelta(seconds=1))
    with pytest.raises(ValueError):
        alert.acknowledge("officer-1", datetime(2025, 3, 10))
    assert len(alert.pending) == 1


# --- overdue and escalation -----------------------------------------------------------------------


def test_raised_alert_is_overdue_48_hours_after_raising():
    alert = raised()
    assert alert.overdue(NOW + timedelta(hours=48)) is None                 # exactly at the limit: not yet
    late = alert.overdue(NOW + timedelta(hours=48, seconds=1))
    assert (late.state, late.level, late.limit, late.next_level) == ("raised", "village", "raised", "township")
    assert late.due_at == NOW + timedelta(hours=48) and late.overdue_by == timedelta(seconds=1)
    assert late.alert_id == alert.id


def test_acknowledged_alert_has_its_own_limit_capped_by_the_decision_limit():
    alert = raised()
    alert.acknowledge("officer-1", NOW + timedelta(hours=10))
    assert alert.due_at() == (NOW + timedelta(hours=82), "acknowledged")
    late_ack = raised()
    late_ack.acknowledge("officer-1", NOW + timedelta(days=14))
    assert late_ack.due_at() == (NOW + timedelta(days=15), "decision")   # 15 days from discovery


def test_verification_must_be_decided_15_days_after_discovery():
    alert = raised()
    alert.acknowledge("officer-1", NOW + timedelta(hours=1))
    alert.request_verification("officer-1", NOW + timedelta(hours=2))
    assert alert.due_at() == (NOW + timedelta(days=15), "decision")
    assert alert.overdue(NOW + timedelta(days=15)) is None
    assert alert.overdue(NOW + timedelta(days=15, minutes=1)).limit == "decision"
    assert raised(requires_verification=True).due_at() == (NOW + timedelta(days=15), "decision")


def test_configured_limits():
    limits = OverdueLimits.from_hours({"raised": 24, "verification_requested": 240, "decision": 480})
    assert (limits.raised, limits.acknowledged, limits.verification_requested, limits.decision) == (
        timedelta(hours=24), timedelta(hours=72), timedelta(hours=240), timedelta(hours=480))
    alert = raised()
    assert alert.due_at(limits) == (NOW + timedelta(hours=24), "raised")
    alert.acknowledge("o", NOW + timedelta(hours=1))
    alert.request_verification("o", NOW + timedelta(hours=2))
    assert alert.due_at(limits) == (NOW + timedelta(hours=242), "verification_requested")
    assert OverdueLimits.from_hours({"raised": None}).raised is None
    for bad in ({"raised": 0}, {"raised": -1}, {"raised": "48"}, {"raised": True}, {"holiday": 5},
                {"decision": None}):
        with pytest.raises(ValueError):
            OverdueLimits.from_hours(bad)
    with pytest.raises(ValueError):
        OverdueLimits(acknowledged=timedelta(0))


def test_escalation_of_an_overdue_alert_passes_it_up_one_level():
    alert = raised()
    at = NOW + timedelta(hours=50)
    assert alert.escalate(at) == "township"
    kind, data = last(alert)
    assert kind == "AlertEscalated" and set(data) == contract_fields(mev.AlertEscalated)
    assert data == {"alert_id": alert.id, "from_state": "raised", "to_level": "township",
                    "overdue_since": iso(NOW + timedelta(hours=48)), "escalated_at": iso(at)}
    assert (alert.state, alert.level, alert.is_open) == ("raised", "township", True)
    assert replayed(alert).snapshot() == alert.snapshot()


def test_an_escalated_alert_is_overdue_again_only_after_the_reescalation_period():
    alert = raised()
    first = NOW + timedelta(hours=50)
    alert.escalate(first)
    assert alert.overdue(first + timedelta(hours=1)) is None
    with raises("not_overdue", 409, due_at=(first + timedelta(hours=48)).isoformat()):
        alert.escalate(first + timedelta(hours=1))
    assert alert.escalate(first + timedelta(hours=49)) == "county"
    assert [e["to_level"] for e in alert.escalations] == ["township", "county"]


def test_escalation_may_skip_levels_but_not_go_down_or_past_the_province():
    alert = raised()
    late = NOW + timedelta(days=3)
    with raises("invalid_level", 422, field="to_level"):
        alert.escalate(late, "village")
    assert alert.escalate(late, "city") == "city"
    later = late + timedelta(days=3)
    with raises("invalid_escalation", 409, level="city", to_level="county"):
        alert.escalate(later, "county")
    with raises("invalid_escalation", 409, level="city", to_level="city"):
        alert.escalate(later, "city")
    assert alert.escalate(later) == "province"
    latest = later + timedelta(days=3)
    assert alert.overdue(latest).next_level is None
    with raises("cannot_escalate", 409, level="province"):
        alert.escalate(latest)


def test_escalation_needs_an_overdue_alert_and_keeps_the_state():
    alert = raised()
    with raises("not_overdue", 409, current_state="raised"):
        alert.escalate(NOW + timedelta(hours=47))
    alert.acknowledge("officer-1", NOW + timedelta(hours=47))
    at = NOW + timedelta(hours=47 + 73)
    alert.escalate(at)
    assert last(alert)[1]["from_state"] == "acknowledged" and alert.state == "acknowledged"
    alert.request_verification("officer-1", at + timedelta(hours=1))       # still allowed after escalation
    assert alert.level == "township"


def test_default_limits_match_the_domain():
    assert DEFAULT_LIMITS.raised == timedelta(hours=48)
    assert DEFAULT_LIMITS.decision == timedelta(days=15)
    assert DEFAULT_LIMITS.for_state("resolved") is None


def test_every_finding_of_a_household_raises_a_valid_alert_once_per_risk():
    facts = risky_household().facts(medical_costs=[(2025, "30000")],
                                    reports=[report("disaster", "0203"), report("other", None, "r-9")])
    findings = most_severe(evaluate(facts, TH, TODAY))
    keys = set()
    for risk, finding in findings.items():
        alert = Alert(uid())
        alert.raise_(finding, facts.household_id, facts.village_code, NOW,
                     object_type=suggested_object_type(facts, finding))
        data = mev.ReturnRiskAlertRaised.model_validate(last(alert)[1])
        assert (data.risk, data.rule_id, data.object_type) == (risk, finding.rule, "unstable_lifted_out")
        assert data.requires_verification is finding.requires_verification
        assert alert.state == ("verification_requested" if finding.requires_verification else "raised")
        keys.add(alert.key)
    assert len(keys) == len(findings) == 7
