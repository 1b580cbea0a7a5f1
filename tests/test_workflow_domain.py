"""Workflow domain core: case types, the Case aggregate's guards, replay. No infrastructure."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from contracts.workflow_cases import CASE_EVENTS
from eventkit.events import RecordedEvent
from eventkit.clock import FixedClock, SystemClock
from services.workflow.definitions import DefinitionError, load_case_types
from services.workflow.domain import (
    Case,
    DomainError,
    Reviewer,
    jurisdiction_prefix,
    mask_name,
)

VILLAGE = "620102001001"
TOWNSHIP = "620102001000"
COUNTY = "620102000000"
HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
TYPES = load_case_types()

VC = Reviewer("u-vc", "village_committee", "village", VILLAGE)
RT = Reviewer("u-rt", "resident_team", "village", VILLAGE)
CADRE = Reviewer("u-cadre", "cadre", "village", VILLAGE)
TR = Reviewer("u-tr", "township_reviewer", "township", TOWNSHIP)
CO = Reviewer("u-co", "county_office", "county", COUNTY)
IO = Reviewer("u-io", "information_officer", "county", "620102")
BY_STEP_ROLE = {r.role: r for r in (VC, RT, CADRE, TR, CO, IO)}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2025, 3, 3, 2, 0, tzinfo=timezone.utc))


def new_case(clock: FixedClock, case_type: str = "identification", **kw) -> Case:
    case = Case(str(uuid.uuid4()), TYPES)
    args = dict(case_type=case_type, household_id=HOUSEHOLD, village_code=VILLAGE, opened_by="u-applicant",
                reason="written application", now=clock.now())
    args.update(kw)
    case.open(**args)
    return case


def approve(case: Case, clock: FixedClock, **kw) -> None:
    step = case.definition.step(case.current_step)
    if step.kind == "notice":
        clock.set(max(clock.now(), case.notice.ends_at))
    if step.kind == "comparison" and not case.comparisons:
        case.record_comparison(member_id="m-1", source="vehicles", hit=False, recorded_by="u-co", now=clock.now())
    case.decide(step_id=step.id, decision="approve", reviewer=BY_STEP_ROLE[step.role], now=clock.now(), **kw)


def run_to(case: Case, clock: FixedClock, step_id: str) -> None:
    while case.current_step != step_id:
        approve(case, clock)


def raises(code: str, status: int):
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(DomainError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert self.info.value.code == code, (self.info.value.code, str(self.info.value))
            assert self.info.value.status == status
            return handled
    return _Check()


def replayed(case: Case) -> Case:
    fresh = Case(case.id, TYPES)
    for version, e in enumerate(case.pending, start=1):
        fresh.replay(RecordedEvent(version, e.event_id, case.id, "case", version, e.event_type, e.schema_version,
                                   dict(e.data), {}, None, datetime.now(timezone.utc)))
    return fresh


def types_of(case: Case) -> list[str]:
    return [e.event_type for e in case.pending]


# -- clock ------------------------------------------------------------------------------

def test_clocks_are_utc_and_fixed_clock_moves() -> None:
    assert SystemClock().now().tzinfo is not None
    c = FixedClock(datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=8))))
    assert c.now() == datetime(2024, 12, 31, 16, tzinfo=timezone.utc)
    assert c.advance(timedelta(days=2)) == datetime(2025, 1, 2, 16, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        FixedClock(datetime(2025, 1, 1))


# -- definitions ------------------------------------------------------------------------

def test_shipped_case_types() -> None:
    assert set(TYPES) == {"identification", "exit", "return_risk", "risk_elimination", "data_change",
                          "assistance_need"}
    ident = TYPES["identification"]
    kinds = [s.kind for s in ident.steps]
    assert kinds.count("notice") == 3 and kinds.count("comparison") == 1
    assert all(s.min_days >= 7 for s in ident.steps if s.kind == "notice")
    assert ident.status_effect == "identified"
    assert TYPES["exit"].status_effect == "lifted_out"
    assert ident.effect_for("applicant") == "identified"
    assert ident.effect_for("lifted_out") == "returned_to_poverty"  # re-identification
    assert not ident.may_open_for("identified") and not TYPES["exit"].may_open_for("applicant")
    assert not TYPES["data_change"].may_open_for("natural_decrease")
    assert TYPES["risk_elimination"].status_effect == "risk_eliminated"
    assert TYPES["return_risk"].status_effect == "monitoring_designated"
    assert TYPES["data_change"].status_effect is None
    assert [s.level for s in TYPES["assistance_need"].steps] == ["village", "township", "county"]


GOOD = """\
id: sample
name: Sample
version: 1
status_effect: null
steps:
  - {id: a, name: A, kind: decision, role: cadre, level: village}
  - {id: b, name: B, kind: notice, role: village_committee, level: village}
"""


def write(tmp_path: Path, text: str, name: str = "sample.yaml") -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_notice_min_days_defaults_to_seven(tmp_path: Path) -> None:
    assert load_case_types(write(tmp_path, GOOD))["sample"].step("b").min_days == 7


@pytest.mark.parametrize("text, field, words", [
    (GOOD + "colour: red\n", "colour", "unknown key"),
    (GOOD.replace("kind: decision", "kind: vote"), "steps[a].kind", "unknown value 'vote'"),
    (GOOD.replace("role: cadre", "role: mayor"), "steps[a].role", "unknown value 'mayor'"),
    (GOOD.replace("level: village}\n  - {id: b", "level: city}\n  - {id: b"), "steps[a].level", "unknown value"),
    (GOOD.replace("id: b,", "id: a,"), "steps[1].id", "duplicate step id 'a'"),
    (GOOD.replace("level: village}\n", "level: village, min_days: 0}\n").replace(
        "role: cadre, level: village, min_days: 0", "role: cadre, level: village"),
     "steps[b].min_days", ">= 1"),
    (GOOD.replace("kind: decision, role: cadre, level: village}",
                  "kind: decision, role: cadre, level: village, min_days: 3}"), "steps[a].min_days", "only notice"),
    (GOOD.split("steps:")[0] + "steps: []\n", "steps", "at least one step"),
    (GOOD.replace("role: village_committee, level: village}",
                  "role: village_committee, level: village, returns_to: [c]}"), "steps[b].returns_to", "unknown step"),
    (GOOD.replace("role: cadre, level: village}", "role: cadre, level: village, returns_to: [b]}"),
     "steps[a].returns_to", "later step"),
    (GOOD.replace("status_effect: null", "status_effect: rich"), "status_effect", "unknown value"),
    (GOOD.replace("version: 1\n", ""), "version", "is required"),
    (GOOD.replace("steps:\n  - {id: a,", "steps:\n  - {id: a, colour: red,"), "steps[0].colour", "unknown key"),
    ("id: [unclosed\n", "(document)", "not valid YAML"),
])
def test_invalid_definitions_name_file_and_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    with pytest.raises(DefinitionError) as info:
        load_case_types(write(tmp_path, text, "broken.yaml"))
    assert info.value.source == "broken.yaml"
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"broken.yaml: {field}: ")


def test_notice_with_zero_days_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("role: village_committee, level: village}", "role: village_committee, level: village, "
                        "min_days: 0}")
    with pytest.raises(DefinitionError, match=r"steps\[b\]\.min_days: must be a whole number >= 1"):
        load_case_types(write(tmp_path, text))


def test_duplicate_case_type_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="no case type definitions"):
        load_case_types(tmp_path)
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(DefinitionError, match="b.yaml: id: case type 'sample' is also defined in a.yaml"):
        load_case_types(tmp_path)


def test_escalation_must_go_up(tmp_path: Path) -> None:
    text = """\
id: need
name: Need
version: 1
status_effect: null
steps:
  - {id: t, name: T, kind: escalation, role: township_reviewer, level: township}
  - {id: v, name: V, kind: escalation, role: village_committee, level: village}
"""
    with pytest.raises(DefinitionError, match=r"steps\[v\]\.level: escalation must go up"):
        load_case_types(write(tmp_path, text))


# -- opening ----------------------------------------------------------------------------

def test_open_posts_nothing_for_a_decision_step_and_rejects_bad_input(clock: FixedClock) -> None:
    case = new_case(clock)
    assert case.current_step == "group_appraisal" and types_of(case) == ["CaseOpened"]
    with raises("case_exists", 409):
        case.open(case_type="identification", household_id=HOUSEHOLD, village_code=VILLAGE, opened_by="x",
                  reason="r", now=clock.now())
    with raises("unknown_case_type", 422):
        new_case(clock, "marriage")
    with raises("invalid_village_code", 422):
        new_case(clock, village_code="6201")
    with raises("missing_field", 422):
        new_case(clock, reason=" ")
    with raises("invalid_monitoring_object_type", 422):
        new_case(clock, "return_risk")


# -- decision guards ---------------------------------------------------------------------

def test_wrong_role_level_and_jurisdiction(clock: FixedClock) -> None:
    case = new_case(clock)
    kw = dict(step_id="group_appraisal", decision="approve", now=clock.now())
    with raises("wrong_role", 403):
        case.decide(reviewer=RT, **kw)
    with raises("wrong_level", 403):
        case.decide(reviewer=Reviewer("u", "village_committee", "township", TOWNSHIP), **kw)
    with raises("outside_jurisdiction", 403):
        case.decide(reviewer=Reviewer("u", "village_committee", "village", "620102001002"), **kw)
    # a township-wide village committee code does not exist, but a prefix that covers the village does
    case.decide(reviewer=Reviewer("u", "village_committee", "village", TOWNSHIP), **kw)
    assert case.current_step == "first_notice"


def test_jurisdiction_prefix() -> None:
    assert jurisdiction_prefix("620000000000") == "62"
    assert jurisdiction_prefix("620102") == "620102"
    assert jurisdiction_prefix("441900003000") == "441900003"
    assert jurisdiction_prefix(VILLAGE) == VILLAGE
    with raises("invalid_jurisdiction", 422):
        jurisdiction_prefix("62")


def test_out_of_order_twice_and_unknown_step(clock: FixedClock) -> None:
    case = new_case(clock)
    with raises("wrong_step", 409):
        case.decide(step_id="township_review", decision="approve", reviewer=TR, now=clock.now())
    with raises("unknown_step", 422):
        case.decide(step_id="party", decision="approve", reviewer=VC, now=clock.now())
    approve(case, clock)
    with raises("already_decided", 409):
        case.decide(step_id="group_appraisal", decision="approve", reviewer=VC, now=clock.now())
    with raises("invalid_decision", 422):
        run_to(case, clock, "household_survey")
        case.decide(step_id="household_survey", decision="maybe", reviewer=RT, now=clock.now())


def test_reject_closes_case_without_status_effect(clock: FixedClock) -> None:
    case = new_case(clock)
    with raises("reason_required", 422):
        case.decide(step_id="group_appraisal", decision="reject", reviewer=VC, now=clock.now())
    case.decide(step_id="group_appraisal", decision="reject", reviewer=VC, now=clock.now(), comment="owns a car")
    assert case.closed and case.outcome == "rejected"
    concluded = case.pending[-1]
    assert concluded.event_type == "CaseConcluded"
    assert concluded.data["outcome"] == "rejected" and concluded.data["status_effect"] is None
    with raises("case_closed", 409):
        case.decide(step_id="group_appraisal", decision="approve", reviewer=VC, now=clock.now())
    with raises("case_closed", 409):
        case.file_objection(content="x", now=clock.now())


def test_full_identification_concludes_identified(clock: FixedClock) -> None:
    case = new_case(clock)
    run_to(case, clock, "county_announcement")
    approve(case, clock)
    assert case.closed and case.outcome == "approved" and case.status_effect == "identified"
    concluded = case.pending[-1].data
    assert concluded["status_effect"] == "identified" and concluded["household_id"] == HOUSEHOLD
    assert types_of(case).count("NoticePosted") == 3
    assert replayed(case).state() == case.state()


# -- public notices and objections -------------------------------------------------------

def test_notice_posted_with_period_and_blocks_until_end(clock: FixedClock) -> None:
    case = new_case(clock)
    approve(case, clock)
    posted = case.pending[-1]
    assert posted.event_type == "NoticePosted"
    assert posted.data["step_id"] == "first_notice"
    assert case.notice.ends_at - case.notice.starts_at == timedelta(days=7)
    clock.advance(timedelta(days=6, hours=23))
    with raises("notice_period_running", 409):
        case.decide(step_id="first_notice", decision="approve", reviewer=VC, now=clock.now())
    clock.advance(timedelta(hours=1))
    case.decide(step_id="first_notice", decision="approve", reviewer=VC, now=clock.now())
    assert case.current_step == "household_survey"


def test_objection_blocks_until_resolved(clock: FixedClock) -> None:
    case = new_case(clock)
    approve(case, clock)
    with raises("missing_field", 422):
        case.file_objection(content="  ", now=clock.now())
    oid = case.file_objection(content="the family runs a shop with employees", name="张小强", now=clock.now())
    filed = case.pending[-1].data
    assert filed["filer_name_masked"] == "张*强" and "张小强" not in str(filed)
    clock.advance(timedelta(days=8))
    with raises("no_open_notice", 409):
        case.file_objection(content="late", now=clock.now())
    with raises("objection_unresolved", 409):
        case.decide(step_id="first_notice", decision="approve", reviewer=VC, now=clock.now())
    with raises("wrong_role", 403):
        case.resolve_objection(objection_id=oid, finding="checked", upheld=False, reviewer=RT, now=clock.now())
    with raises("objection_not_found", 404):
        case.resolve_objection(objection_id="objection-9", finding="x", upheld=False, reviewer=VC, now=clock.now())
    case.resolve_objection(objection_id=oid, finding="the shop closed in 2023", upheld=False, reviewer=VC,
                           now=clock.now())
    with raises("objection_already_resolved", 409):
        case.resolve_objection(objection_id=oid, finding="again", upheld=False, reviewer=VC, now=clock.now())
    case.decide(step_id="first_notice", decision="approve", reviewer=VC, now=clock.now())
    assert case.current_step == "household_survey"
    assert replayed(case).state() == case.state()


def test_upheld_objection_forces_reject_or_return(clock: FixedClock) -> None:
    case = new_case(clock)
    approve(case, clock)
    oid = case.file_objection(content="they bought a car", now=clock.now())
    case.resolve_objection(objection_id=oid, finding="confirmed", upheld=True, reviewer=VC, now=clock.now())
    clock.advance(timedelta(days=7))
    with raises("objection_upheld", 409):
        case.decide(step_id="first_notice", decision="approve", reviewer=VC, now=clock.now())
    case.decide(step_id="first_notice", decision="reject", reviewer=VC, now=clock.now(), comment="owns a car")
    assert case.outcome == "rejected"


def test_no_objection_outside_a_notice(clock: FixedClock) -> None:
    case = new_case(clock)
    with raises("no_open_notice", 409):
        case.file_objection(content="x", now=clock.now())


# -- returns ------------------------------------------------------------------------------

def test_return_to_an_earlier_step_reposts_notice(clock: FixedClock) -> None:
    case = new_case(clock)
    run_to(case, clock, "village_appraisal")
    with raises("reason_required", 422):
        case.decide(step_id="village_appraisal", decision="return", return_to="first_notice", reviewer=VC,
                    now=clock.now())
    with raises("invalid_return_target", 422):
        case.decide(step_id="village_appraisal", decision="return", return_to="second_notice", reviewer=VC,
                    now=clock.now(), comment="x")
    case.decide(step_id="village_appraisal", decision="return", return_to="first_notice", reviewer=VC,
                now=clock.now(), comment="notice board was not visible")
    assert case.current_step == "first_notice"
    assert case.notice.notice_id == "first_notice#2" and case.notice.starts_at == clock.now()
    approve(case, clock)
    assert case.current_step == "household_survey"


def test_return_targets_restricted_by_definition(clock: FixedClock) -> None:
    case = new_case(clock)
    run_to(case, clock, "data_comparison")
    with raises("invalid_return_target", 422):
        case.decide(step_id="data_comparison", decision="return", return_to="group_appraisal", reviewer=CO,
                    now=clock.now(), comment="doubtful")
    case.decide(step_id="data_comparison", decision="return", return_to="township_review", reviewer=CO,
                now=clock.now(), comment="re-verify the business registry hit")
    assert case.current_step == "township_review"


# -- comparison -------------------------------------------------------------------------

def test_comparison_hit_needs_override_or_rejection(clock: FixedClock) -> None:
    case = new_case(clock)
    with raises("no_comparison_step", 409):
        case.record_comparison(member_id="m-1", source="vehicles", hit=True, recorded_by="u-co", now=clock.now())
    run_to(case, clock, "data_comparison")
    with raises("comparison_missing", 409):
        case.decide(step_id="data_comparison", decision="approve", reviewer=CO, now=clock.now())
    with raises("invalid_source", 422):
        case.record_comparison(member_id="m-1", source="horoscope", hit=True, recorded_by="u-co", now=clock.now())
    case.record_comparison(member_id="m-1", source="vehicles", hit=True, detail="small car registered 2019",
                           recorded_by="dept:public-security", now=clock.now())
    case.record_comparison(member_id="m-2", source="payroll", hit=False, recorded_by="u-co", now=clock.now())
    with raises("comparison_hit", 409) as info:
        case.decide(step_id="data_comparison", decision="approve", reviewer=CO, now=clock.now())
    assert info.value.details["hits"] == [{"member_id": "m-1", "source": "vehicles"}]
    case.decide(step_id="data_comparison", decision="approve", reviewer=CO, now=clock.now(),
                override_reason="the car was scrapped in 2022 (certificate seen)")
    assert case.current_step == "data_entry"
    assert case.decisions[-1]["override_reason"].startswith("the car")


def test_comparison_hit_cleared_by_later_result_or_rejected(clock: FixedClock) -> None:
    case = new_case(clock)
    run_to(case, clock, "data_comparison")
    case.record_comparison(member_id="m-1", source="property", hit=True, recorded_by="u-co", now=clock.now())
    case.record_comparison(member_id="m-1", source="property", hit=False, detail="re-checked: namesake",
                           recorded_by="u-co", now=clock.now())
    with raises("unexpected_field", 422):
        case.decide(step_id="data_comparison", decision="approve", reviewer=CO, now=clock.now(),
                    override_reason="nothing to override")
    other = new_case(clock)
    run_to(other, clock, "data_comparison")
    other.record_comparison(member_id="m-1", source="business_registry", hit=True, recorded_by="u-co",
                            now=clock.now())
    other.decide(step_id="data_comparison", decision="reject", reviewer=CO, now=clock.now(),
                 comment="runs a company employing others")
    assert other.outcome == "rejected"
    assert replayed(other).state() == other.state()


# -- other case types ----------------------------------------------------------------------

def test_exit_and_return_risk_effects(clock: FixedClock) -> None:
    exit_case = new_case(clock, "exit")
    run_to(exit_case, clock, "county_announcement")
    approve(exit_case, clock)
    assert exit_case.pending[-1].data["status_effect"] == "lifted_out"

    risk = new_case(clock, "return_risk", opened_by="system:monitoring", reason="monitoring alert",
                    subject="01", monitoring_object_type="marginal")
    assert risk.current_step == "township_verification"
    run_to(risk, clock, "intervention_plan")
    assert [e.data["ends_at"] for e in risk.pending if e.event_type == "NoticePosted"]
    approve(risk, clock)
    concluded = risk.pending[-1].data
    assert concluded["status_effect"] == "monitoring_designated"
    assert concluded["monitoring_object_type"] == "marginal"


def test_data_change_approval_has_no_status_effect(clock: FixedClock) -> None:
    case = new_case(clock, "data_change", opened_by="u-cadre", reason="income corrected", subject="chg-17")
    approve(case, clock)
    assert case.outcome == "approved" and case.pending[-1].data["status_effect"] is None


def test_escalation_chain(clock: FixedClock) -> None:
    case = new_case(clock, "assistance_need", opened_by="u-cadre", reason="needs a roof repair", subject="repair")
    with raises("escalation_step", 409):
        case.decide(step_id="village_handling", decision="approve", reviewer=VC, now=clock.now())
    with raises("wrong_role", 403):
        case.escalate(reason="no funds", reviewer=TR, now=clock.now())
    with raises("reason_required", 422):
        case.escalate(reason="", reviewer=VC, now=clock.now())
    assert case.escalate(reason="village has no repair funds", reviewer=VC, now=clock.now()) == "township_handling"
    assert case.escalate(reason="exceeds township budget", reviewer=TR, now=clock.now()) == "county_handling"
    with raises("cannot_escalate", 409):
        case.escalate(reason="nowhere", reviewer=CO, now=clock.now())
    with raises("missing_field", 422):
        case.resolve(what_was_done="", reviewer=CO, now=clock.now())
    case.resolve(what_was_done="roof repaired under the housing safety programme", reviewer=CO, now=clock.now())
    assert case.closed and case.outcome == "approved" and case.resolution.startswith("roof")
    assert types_of(case)[-2:] == ["CaseResolved", "CaseConcluded"]
    with raises("not_escalation", 409):
        new_case(clock).escalate(reason="x", reviewer=VC, now=clock.now())
    assert replayed(case).state() == case.state()


# -- overdue ------------------------------------------------------------------------------

def test_overdue_detection_and_flag_once_per_entry(clock: FixedClock) -> None:
    case = new_case(clock, "assistance_need", opened_by="u-cadre", reason="needs a job", subject="job")
    assert case.overdue_steps(clock.now()) == []
    later = clock.advance(timedelta(days=7, minutes=1))
    [item] = case.overdue_steps(later)
    assert item.step_id == "village_handling" and item.overdue_by == timedelta(minutes=1)
    assert case.flag_overdue(later) is True
    assert case.flag_overdue(later) is False
    assert case.pending[-1].event_type == "StepOverdue"
    case.escalate(reason="no jobs in the village", reviewer=VC, now=later)
    assert case.overdue_steps(later + timedelta(days=10)) == []
    assert len(case.overdue_steps(later + timedelta(days=11))) == 1
    case.resolve(what_was_done="placed at a county factory", reviewer=TR, now=later)
    assert case.overdue_steps(later + timedelta(days=100)) == []
    assert replayed(case).state() == case.state()


# -- replay and contracts ----------------------------------------------------------------

def test_replay_of_a_busy_case_equals_live_state(clock: FixedClock) -> None:
    case = new_case(clock)
    approve(case, clock)
    oid = case.file_objection(content="please check income", now=clock.now())
    case.resolve_objection(objection_id=oid, finding="income verified", upheld=False, reviewer=VC, now=clock.now())
    run_to(case, clock, "data_comparison")
    case.record_comparison(member_id="m-1", source="vehicles", hit=True, recorded_by="u-co", now=clock.now())
    case.decide(step_id="data_comparison", decision="return", return_to="household_survey", reviewer=CO,
                now=clock.now(), comment="re-verify the car")
    clock.advance(timedelta(days=20))
    case.flag_overdue(clock.now())
    fresh = replayed(case)
    assert fresh.state() == case.state()
    assert fresh.version == len(case.pending)


def test_every_recorded_event_is_a_case_model(clock: FixedClock) -> None:
    models = {m.event_type: m for m in CASE_EVENTS}
    case = new_case(clock)
    approve(case, clock)
    case.file_objection(content="x", now=clock.now())
    for e in case.pending:
        model = models[e.event_type]
        assert model.stream_type == "case" and model.topic == "tpa.workflow.case.v1"
        model.model_validate(e.data)


def test_objectors_names_are_masked_like_everywhere_else() -> None:
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳小明") == "欧**明"  # the shared masking of contracts.masking
    assert mask_name("A") == "*"


def test_household_status_decides_whether_a_case_opens_and_its_effect(clock: FixedClock) -> None:
    case = Case("c-status")
    with pytest.raises(DomainError) as refused:
        case.open(case_type="exit", household_id="h1", village_code=VILLAGE, opened_by="u", reason="r",
                  now=clock.now(), household_status="applicant")
    assert refused.value.status == 409 and refused.value.code == "household_status"
    assert not case.pending
    case.open(case_type="identification", household_id="h1", village_code=VILLAGE, opened_by="u",
              reason="returned after an illness", now=clock.now(), household_status="lifted_out")
    case.decide(step_id="group_appraisal", decision="reject", comment="no", now=clock.now(),
                reviewer=Reviewer("v1", "village_committee", "village", VILLAGE))
    assert case.status_effect is None  # rejected
    again = Case("c-status-2")
    again.open(case_type="identification", household_id="h1", village_code=VILLAGE, opened_by="u",
               reason="returned", now=clock.now(), household_status="lifted_out")
    assert again.household_status == "lifted_out"
    assert again.definition.effect_for(again.household_status) == "returned_to_poverty"
