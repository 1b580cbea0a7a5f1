"""Event contracts: generated files are fresh, published schemas stay compatible."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from contracts import generate as gen
from contracts.compat import check_backward_compatible
from contracts.envelope import EventEnvelope
from contracts.registry import HouseholdRegistered
from contracts.topics import (
    EVENT_MODELS,
    TOPICS,
    UnknownEventError,
    ce_type,
    dlq_topic,
    parse_event,
    record_headers,
    record_key,
    topic_name,
)
from eventkit.events import Metadata, RecordedEvent

HOUSEHOLD_ID = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
# One sample payload per catalogued event: (stream id, data). A new event needs a sample here.
MEMBER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
HMAC = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"


CHANGE_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CASE_ID = "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a"
AT = "2025-03-01T08:00:00+00:00"


def _household(**data: Any) -> tuple[str, dict[str, Any]]:
    return HOUSEHOLD_ID, {"household_id": HOUSEHOLD_ID, **data}


def _case(**data: Any) -> tuple[str, dict[str, Any]]:
    return CASE_ID, {"case_id": CASE_ID, **data}


ALLOCATION_ID = "5b6a7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
PROJECT_ID = "6c7d8e9f-0a1b-4c2d-9e3f-4a5b6c7d8e9f"
DISBURSEMENT_ID = "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a"
ANOMALY_ID = "8e9f0a1b-2c3d-5e4f-9a5b-6c7d8e9f0a1b"
ACCESS_ID = "9f0a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c"


def _allocation(**data: Any) -> tuple[str, dict[str, Any]]:
    return ALLOCATION_ID, {"allocation_id": ALLOCATION_ID, **data}


def _project(**data: Any) -> tuple[str, dict[str, Any]]:
    return PROJECT_ID, {"project_id": PROJECT_ID, **data}


def _disbursement(**data: Any) -> tuple[str, dict[str, Any]]:
    return DISBURSEMENT_ID, {"disbursement_id": DISBURSEMENT_ID, **data}


SAMPLES: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {
    ("HouseholdRegistered", 1): _household(
        village_code="530102001001", member_count=4, registered_on="2024-03-01", address="3组12号",
        attribute="general", identification_standard="national", head_member_id=MEMBER_ID, status="applicant"),
    ("MemberAdded", 1): _household(
        member_id=MEMBER_ID, relation="head", sex="male", birth_year=1970, ethnicity="汉",
        id_hmac=HMAC, id_masked="5301**********1234", name_masked="张*强", reason="initial",
        joined_on="2024-03-01", profile={"health": ["chronic_illness"], "labour_skill": "ordinary"}),
    ("MemberUpdated", 1): _household(member_id=MEMBER_ID, changes={"schooling_stage": "junior"}),
    ("MemberRemoved", 1): _household(member_id=MEMBER_ID, reason="death", removed_on="2025-01-02", note=None),
    ("HeadChanged", 1): _household(head_member_id=MEMBER_ID, previous_head_member_id=None,
                                   changed_on="2025-01-03"),
    ("IncomeAssessed", 1): _household(
        year=2024, wage="12000.00", business="3000.00", property="0.00", transfer="1200.00",
        business_expenses="800.00", resident_members=4, net_income="15400.00", per_capita_net_income="3850.00"),
    ("LivingConditionsAssessed", 1): _household(assessed_on="2024-06-01",
                                                conditions={"food": True, "safe_housing": False}),
    ("PovertyCausesRecorded", 1): _household(primary="lack_of_funds", others=["illness"]),
    ("CadreAssigned", 1): _household(cadre_id="cadre-17", unit="县农业农村局", assigned_on="2024-03-05"),
    ("CadreReleased", 1): _household(cadre_id="cadre-17", released_on="2025-03-05", reason="rotation"),
    ("AssistancePlanRecorded", 1): _household(year=2024, measures=[{"kind": "industry",
                                                                    "description": "养殖肉牛2头"}]),
    ("CoordinatesSet", 1): _household(latitude=36.06, longitude=103.83),
    ("HouseholdStatusChanged", 1): _household(
        from_status="applicant", to_status="identified", effective_on="2024-04-01", basis="decision",
        case_id="case-1", decision_event_id="0b1c2d3e-0000-4000-8000-000000000001"),
    ("MonitoringDesignated", 1): _household(object_type="marginal", effective_on="2025-04-01",
                                            case_id="case-2", decision_event_id="d-2"),
    ("MonitoringRiskEliminated", 1): _household(effective_on="2025-10-01", case_id="case-3",
                                                decision_event_id="d-3"),
    ("MemberPersonalDataErased", 1): _household(member_id=MEMBER_ID, erased_on="2025-02-01"),
    ("VillageProfileUpdated", 1): ("530102001001", {
        "village_code": "530102001001", "effective_on": "2024-01-01", "rural_population": 1200,
        "registered_population": 300, "poor_village": True, "hardened_road": True, "leading_industry": "核桃",
        "service_centre": True, "safe_water": True, "broadband": False, "collective_income": "52000.00",
        "resident_work_team": True}),
    ("CaseConcluded", 1): ("case-1", {
        "case_id": "case-1", "case_type": "identification", "household_id": HOUSEHOLD_ID,
        "outcome": "approved", "status_effect": "identified", "monitoring_object_type": None,
        "effective_on": "2024-04-01", "subject": None}),
    ("ChangeRequested", 1): _household(
        change_request_id=CHANGE_ID, kind="income", target="2024", fields=["wage", "transfer"],
        reason="工资收入核实有误", requested_by="cadre-17", requested_at="2025-03-01T08:00:00+00:00"),
    ("ChangeRequestApplied", 1): _household(change_request_id=CHANGE_ID, case_id="case-4",
                                            decision_event_id="0b1c2d3e-0000-4000-8000-000000000004"),
    ("ChangeRequestClosed", 1): _household(change_request_id=CHANGE_ID, case_id="case-4", outcome="rejected",
                                           reason=None, decision_event_id="0b1c2d3e-0000-4000-8000-000000000004"),
    ("CaseOpened", 1): _case(
        case_type="identification", case_type_version=1, household_id=HOUSEHOLD_ID, village_code="530102001001",
        opened_by="cadre-17", reason="本人申请", subject=None, monitoring_object_type=None, household_status="applicant",
        first_step="application", opened_at=AT),
    ("StepDecided", 1): _case(
        step_id="group_appraisal", decision="return", return_to="application", comment="材料不全",
        override_reason=None, reviewer_id="u-9", reviewer_role="village_committee", reviewer_level="village",
        next_step="application", decided_at=AT),
    ("NoticePosted", 1): _case(notice_id="first_notice#1", step_id="first_notice", starts_at=AT,
                               ends_at="2025-03-08T08:00:00+00:00"),
    ("ObjectionFiled", 1): _case(objection_id="objection-1", notice_id="first_notice#1", step_id="first_notice",
                                 content="该户有轿车一辆", filer_name_masked="李*", filed_at=AT),
    ("ObjectionResolved", 1): _case(objection_id="objection-1", finding="车辆已于2023年转让", upheld=False,
                                    reviewer_id="u-9", reviewer_role="village_committee", resolved_at=AT),
    ("ComparisonRecorded", 1): _case(step_id="data_comparison", member_id=MEMBER_ID, source="vehicles", hit=True,
                                     detail="名下小型轿车一辆", recorded_by="dept:public-security", recorded_at=AT),
    ("CaseEscalated", 1): _case(from_step="village_handling", to_step="township_handling", from_level="village",
                                to_level="township", reason="需乡镇协调", reviewer_id="u-3",
                                reviewer_role="village_committee", escalated_at=AT),
    ("CaseResolved", 1): _case(step_id="township_handling", level="township", what_was_done="安排公益岗位",
                               reviewer_id="u-4", reviewer_role="township_reviewer", resolved_at=AT),
    ("StepOverdue", 1): _case(step_id="township_review", level="township", role="township_reviewer",
                              entered_at=AT, due_at="2025-03-11T08:00:00+00:00",
                              detected_at="2025-03-12T08:00:00+00:00"),
    ("AlertAcknowledged", 1): ("alert-1", {"alert_id": "alert-1", "acknowledged_by": "op-3", "note": None,
                                           "acknowledged_at": AT}),
    ("AlertVerificationRequested", 1): ("alert-1", {
        "alert_id": "alert-1", "household_id": HOUSEHOLD_ID, "village_code": "530102001001",
        "risk": "medical_expense", "object_type": "unstable_lifted_out", "requested_by": "op-3",
        "requested_at": AT}),
    ("AlertResolved", 1): ("alert-1", {"alert_id": "alert-1", "resolution": "not_confirmed", "case_id": CASE_ID,
                                       "resolved_by": "op-3", "note": "核实无风险", "resolved_at": AT}),
    ("AlertEscalated", 1): ("alert-1", {"alert_id": "alert-1", "from_state": "raised", "to_level": "county",
                                        "overdue_since": AT, "escalated_at": AT}),
    ("VisitCheckedIn", 1): ("cadre-17", {
        "cadre_id": "cadre-17", "client_event_id": "dev-1:41", "occurred_at": AT, "received_at": AT,
        "latitude": 36.06, "longitude": 103.83, "accuracy_m": 12.0, "visit_id": "v-1", "household_id": HOUSEHOLD_ID,
        "village_code": "530102001001", "photo_ref": None, "distance_m": 35.2, "outside_geofence": False,
        "geofence_m": 500.0, "speed_kmh": 20.5, "impossible_travel": False}),
    ("VisitCheckedOut", 1): ("cadre-17", {
        "cadre_id": "cadre-17", "client_event_id": "dev-1:42", "occurred_at": AT, "received_at": AT,
        "latitude": 36.06, "longitude": 103.83, "accuracy_m": None, "visit_id": "v-1", "household_id": HOUSEHOLD_ID,
        "minutes_at_household": 45.0}),
    ("VisitLogged", 1): ("cadre-17", {
        "cadre_id": "cadre-17", "client_event_id": "dev-1:43", "occurred_at": AT, "received_at": AT,
        "visit_id": "v-1", "household_id": HOUSEHOLD_ID, "notes": "了解春耕准备情况", "needs": ["loan"]}),
    ("ContactLogged", 1): ("cadre-17", {
        "cadre_id": "cadre-17", "client_event_id": "dev-1:44", "occurred_at": AT, "received_at": AT,
        "household_id": HOUSEHOLD_ID, "channel": "call", "duration_s": 180, "note": None}),
    ("TeamDayRecorded", 1): ("cadre-17", {
        "cadre_id": "cadre-17", "client_event_id": "dev-1:45", "occurred_at": AT, "received_at": AT,
        "latitude": 36.06, "longitude": 103.83, "accuracy_m": 8.0, "village_code": "530102001001",
        "day": "2025-03-01", "distance_m": None}),
    ("DutyNonCompliance", 1): ("f-1", {
        "finding_id": "f-1", "cadre_id": "cadre-17", "duty": "quarterly_visit", "period": "2025-Q1",
        "household_id": HOUSEHOLD_ID, "village_code": "530102001001", "expected": 1, "actual": 0,
        "detected_at": AT}),
    ("ReturnRiskAlertRaised", 1): ("alert-1", {
        "alert_id": "alert-1", "household_id": HOUSEHOLD_ID, "village_code": "530102001001",
        "risk": "medical_expense", "rule_id": "medical-expense-over-income", "severity": "high",
        "requires_verification": True, "object_type": None, "detail": None, "raised_at": AT}),
    ("AllocationCreated", 1): _allocation(source="central", year=2025, purpose="中央财政衔接推进乡村振兴补助资金",
                                          region_code="620102", amount="5000000.00", created_by="u-co",
                                          created_at=AT),
    ("AllocationAdjusted", 1): _allocation(amount_delta="-200000.00", new_amount="4800000.00", reason="预算调减",
                                           adjusted_by="u-co", adjusted_at=AT),
    ("FundsReserved", 1): _allocation(ref_type="project", ref_id=PROJECT_ID, amount="300000.00", reserved_at=AT),
    ("ReservationReleased", 1): _allocation(ref_type="disbursement", ref_id=DISBURSEMENT_ID, amount="1250.00",
                                            reason="payment failed", released_at=AT),
    ("FundsSpent", 1): _allocation(ref_type="disbursement", ref_id=DISBURSEMENT_ID,
                                   disbursement_id=DISBURSEMENT_ID, amount="1250.00", spent_on="2025-03-05"),
    ("SpendingReversed", 1): _allocation(ref_type="disbursement", ref_id=DISBURSEMENT_ID,
                                         disbursement_id=DISBURSEMENT_ID, amount="1250.00", reason="资金退回",
                                         reversed_at=AT),
    ("ProjectDeclared", 1): _project(
        name="肉牛养殖合作社", kind="industry", region_code="620102001001", budget="300000.00", plan_year=2025,
        beneficiary_household_ids=[HOUSEHOLD_ID], declared_by="u-vc", declared_at=AT),
    ("ProjectReviewed", 1): _project(reviewer="u-tr", comment="材料齐全", reviewed_at=AT),
    ("ProjectApproved", 1): _project(approved_budget="280000.00",
                                     funding=[{"allocation_id": ALLOCATION_ID, "amount": "280000.00"}],
                                     approved_by="u-co", approved_at=AT),
    ("ProjectRejected", 1): _project(reason="不符合规划", rejected_by="u-co", rejected_at=AT),
    ("ProjectStarted", 1): _project(started_on="2025-04-01", started_by="u-vc"),
    ("MilestoneRecorded", 1): _project(name="牛舍建成", reached_on="2025-06-01", note=None, recorded_by="u-vc"),
    ("ProjectCompleted", 1): _project(completed_on="2025-10-01", completed_by="u-vc"),
    ("ProjectAccepted", 1): _project(accepted_by="u-co", accepted_at=AT,
                                     released=[{"allocation_id": ALLOCATION_ID, "amount": "1200.00"}]),
    ("ProjectCancelled", 1): _project(reason="选址不符", cancelled_by="u-co", cancelled_at=AT, released=[]),
    ("ProjectPaymentCommitted", 1): _project(disbursement_id=DISBURSEMENT_ID, allocation_id=ALLOCATION_ID,
                                             amount="5000.00", committed_at=AT),
    ("ProjectPaymentRecorded", 1): _project(disbursement_id=DISBURSEMENT_ID, allocation_id=ALLOCATION_ID,
                                            amount="5000.00", paid_on="2025-05-01"),
    ("ProjectPaymentReleased", 1): _project(disbursement_id=DISBURSEMENT_ID, allocation_id=ALLOCATION_ID,
                                            amount="5000.00", was_paid=False, reason="bank rejected",
                                            released_at=AT),
    ("DisbursementRequested", 1): _disbursement(
        household_id=HOUSEHOLD_ID, member_id=MEMBER_ID, village_code="620102001001", basis="policy",
        policy_code="edu_boarding_junior", policy_version=1, policy_group="edu_boarding", policy_unit="per_year",
        project_id=None, period="2025", amount="1250.00", standard_amount="1250.00", cost_basis=None,
        account_masked="6217****1234", account_hash=HMAC, requested_by="u-io", requested_at=AT),
    ("DisbursementApproved", 1): _disbursement(approved_by="u-co", allocation_id=ALLOCATION_ID, approved_at=AT),
    ("DisbursementPaid", 1): _disbursement(channel="student_aid_card", channel_reference="SA20250305-0001",
                                           paid_on="2025-03-05", recorded_at=AT),
    ("DisbursementReconciled", 1): _disbursement(statement_id="stmt-2025-03", statement_line="17",
                                                 reconciled_at=AT),
    ("DisbursementFailed", 1): _disbursement(reason="card closed", failed_at=AT),
    ("DisbursementReversed", 1): _disbursement(reason="recovered after audit", reversed_at=AT),
    ("DepartmentPaymentRecorded", 1): _disbursement(
        household_id=HOUSEHOLD_ID, member_id=MEMBER_ID, village_code="620102001001",
        policy_code="minimum_living_tier1", policy_version=1, policy_group="minimum_living", policy_unit="per_month",
        period="2025-02", amount="310.00", standard_amount="310.00", channel="one_card", paid_on="2025-02-05",
        department="civil_affairs", payer_jurisdiction="620102000000", department_reference="MZ2025020500017",
        quarter="2025-Q1", import_id="0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", recorded_by="mz-dibao-620102",
        recorded_at=AT),
    ("AnomalyDetected", 1): (ANOMALY_ID, {
        "anomaly_id": ANOMALY_ID, "rule": "paid_to_deceased", "severity": "high", "subject_type": "disbursement",
        "subject_id": DISBURSEMENT_ID, "household_id": HOUSEHOLD_ID, "village_code": "620102001001",
        "evidence": {"member_id": MEMBER_ID, "died_on": "2025-01-02", "paid_on": "2025-03-05", "amount": "1250.00",
                     "disbursement_ids": [DISBURSEMENT_ID], "payment_count": 1, "once": False},
        "detected_at": AT}),
    ("UserCreated", 1): ("u-17", {
        "user_id": "u-17", "username": "gs0102-017", "roles": ["cadre", "information_officer"], "level": "township",
        "jurisdiction": "620102001000", "created_by": "u-admin", "created_at": AT}),
    ("UserPasswordSet", 1): ("u-17", {"user_id": "u-17", "set_by": "u-admin", "temporary": True, "set_at": AT}),
    ("UserLockedOut", 1): ("u-17", {"user_id": "u-17", "failures": 5, "locked_at": AT,
                                    "until": "2025-03-01T08:15:00+00:00"}),
    ("UserUnlocked", 1): ("u-17", {"user_id": "u-17", "unlocked_by": "u-admin", "unlocked_at": AT}),
    ("UserRolesChanged", 1): ("u-17", {
        "user_id": "u-17", "roles": ["county_office"], "level": "county", "jurisdiction": "620102000000",
        "previous_roles": ["cadre", "information_officer"], "changed_by": "u-admin", "changed_at": AT}),
    ("UserDeactivated", 1): ("u-17", {"user_id": "u-17", "reason": "调离", "deactivated_by": "u-admin",
                                      "deactivated_at": AT}),
    ("ClientRegistered", 1): ("edu-aid", {
        "client_id": "edu-aid", "name": "省学生资助管理系统", "department": "education",
        "scopes": ["comparison:education", "inbound:subsidies"], "jurisdiction": "620000000000",
        "registered_by": "u-admin", "registered_at": AT}),
    ("ClientSecretRotated", 1): ("edu-aid", {
        "client_id": "edu-aid", "secret_id": "9f86d081884c7d65", "previous_secret_id": "2c26b46b68ffc68f",
        "previous_valid_until": "2025-03-02T08:00:00+00:00", "rotated_by": "u-admin", "rotated_at": AT}),
    ("ClientRevoked", 1): ("edu-aid", {"client_id": "edu-aid", "reason": "系统下线", "revoked_by": "u-admin",
                                       "revoked_at": AT}),
    ("PersonalDataAccessed", 1): (ACCESS_ID, {
        "access_id": ACCESS_ID, "principal_type": "user", "principal_id": "u-17",
        "route": "GET /api/v1/households/{household_id}", "purpose": "入户核实", "records": [HOUSEHOLD_ID, HMAC],
        "count": 4, "accessed_at": AT}),
    ("AccessDenied", 1): (ACCESS_ID, {
        "access_id": ACCESS_ID, "principal_type": "client", "principal_id": "edu-aid",
        "route": "GET /api/v1/households/{household_id}", "action": "household:read_personal",
        "reason": "forbidden", "denied_at": AT}),
}


def sample_envelope(event_type: str = "HouseholdRegistered", schema_version: int = 1) -> dict[str, Any]:
    """An envelope as the real producer (eventkit) builds it."""
    model = EVENT_MODELS[(event_type, schema_version)]
    stream_id, data = SAMPLES[(event_type, schema_version)]
    meta = Metadata(
        actor="user:42",
        correlation_id=str(uuid.uuid4()),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        occurred_at=datetime(2024, 3, 1, 8, 30, tzinfo=timezone.utc),
    )
    recorded = RecordedEvent(
        global_position=12,
        event_id=uuid.uuid4(),
        stream_id=stream_id,
        stream_type=model.stream_type,
        version=1,
        event_type=event_type,
        schema_version=schema_version,
        data=data,
        metadata=meta.to_json(),
        occurred_at=meta.occurred_at,
        recorded_at=datetime.now(timezone.utc),
    )
    return json.loads(json.dumps(recorded.envelope(f"/tpa/{TOPICS[model.topic].service}")))


# --- (a) generated files are fresh ------------------------------------------------------


def test_generated_contract_files_are_up_to_date() -> None:
    stale = gen.generate(check=True)
    assert stale == [], f"contract files are stale, run `make schemas`: {stale}"


def test_generator_refuses_incompatible_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(gen, "SCHEMA_DIR", tmp_path / "schemas")
    monkeypatch.setattr(gen, "ASYNCAPI_PATH", tmp_path / "asyncapi.yaml")
    assert len(gen.generate()) == len(EVENT_MODELS) + 2  # fresh dir: everything written
    published = tmp_path / "schemas" / "HouseholdRegistered.v1.json"
    old = json.loads(published.read_text())
    old["properties"]["legacy_score"] = {"type": "integer"}  # a field the model no longer has
    published.write_text(json.dumps(old))
    with pytest.raises(gen.IncompatibleSchemaError, match=r"(?s)legacy_score.*removed.*schema_version \+ 1"):
        gen.generate()
    assert json.loads(published.read_text()) == old  # nothing overwritten


# --- (b) published schemas stay compatible ----------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(gen.REPO_ROOT), *args], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _git_schema_dir() -> tuple[Path, str] | None:
    """(git top level, schema dir relative to it), or None without git."""
    top = _git("rev-parse", "--show-toplevel")
    if not top:
        return None
    top_path = Path(top.strip()).resolve()
    return top_path, gen.SCHEMA_DIR.resolve().relative_to(top_path).as_posix()


def _published_versions(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every known version of one schema file: working tree plus git history (if any)."""
    versions = []
    path = gen.SCHEMA_DIR / name
    if path.exists():
        versions.append(("working tree", json.loads(path.read_text(encoding="utf-8"))))
    repo = _git_schema_dir()
    if repo:
        rel = f"{repo[1]}/{name}"
        for sha in (_git("log", "--format=%H", "--", rel) or "").split():
            text = _git("show", f"{sha}:{rel}")
            if text:  # None where the file was deleted in that commit
                versions.append((sha[:12], json.loads(text)))
    return versions


def _published_names() -> set[str]:
    names = {p.name for p in gen.SCHEMA_DIR.glob("*.json")}
    repo = _git_schema_dir()
    if repo:
        listed = _git("log", "--format=", "--name-only", "--", repo[1]) or ""
        names |= {Path(line).name for line in listed.split() if line.endswith(".json")}
    return names


def test_published_schemas_are_backward_compatible_with_models() -> None:
    current = gen.schema_documents()
    names = _published_names()
    assert names, "no committed schemas found; run `make schemas`"
    problems = []
    for name in sorted(names):
        if name not in current:
            problems.append(f"{name}: published, but no model generates it any more (keep old event models)")
            continue
        for where, old in _published_versions(name):
            problems += [f"{name} @ {where}: {p}" for p in check_backward_compatible(old, current[name])]
    assert not problems, (
        "published schemas changed incompatibly; add a model with schema_version + 1 instead:\n"
        + "\n".join(problems)
    )


# --- (c) the compatibility rules ---------------------------------------------------------

BASE = {
    "type": "object",
    "properties": {
        "household_id": {"type": "string", "format": "uuid"},
        "member_count": {"type": "integer", "minimum": 1},
        "status": {"enum": ["active", "closed"], "type": "string"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["household_id", "member_count"],
}


def _changed(**properties: Any) -> dict[str, Any]:
    new = json.loads(json.dumps(BASE))
    for name, schema in properties.items():
        if schema is None:
            del new["properties"][name]
        else:
            new["properties"][name] = schema
    return new


def test_compat_identical_and_optional_addition_are_compatible() -> None:
    assert check_backward_compatible(BASE, BASE) == []
    added = _changed(registered_on={"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]})
    assert check_backward_compatible(BASE, added) == []


def test_compat_reports_removed_property() -> None:
    problems = check_backward_compatible(BASE, _changed(member_count=None))
    assert any("member_count" in p and "removed" in p for p in problems), problems


def test_compat_reports_type_change() -> None:
    problems = check_backward_compatible(BASE, _changed(member_count={"type": "string"}))
    assert any("member_count" in p and "type changed" in p for p in problems), problems
    problems = check_backward_compatible(BASE, _changed(note={"type": "string"}))  # no longer nullable
    assert any("note" in p and "type changed" in p for p in problems), problems
    problems = check_backward_compatible(BASE, _changed(household_id={"type": "string", "format": "email"}))
    assert any("household_id" in p and "format" in p for p in problems), problems


def test_compat_reports_new_required_property() -> None:
    new = _changed(village_code={"type": "string"})
    new["required"].append("village_code")
    problems = check_backward_compatible(BASE, new)
    assert any("village_code" in p and "required" in p for p in problems), problems


def test_compat_reports_removed_enum_value_and_tightened_constraint() -> None:
    problems = check_backward_compatible(BASE, _changed(status={"enum": ["active"], "type": "string"}))
    assert any("status" in p and "closed" in p for p in problems), problems
    problems = check_backward_compatible(BASE, _changed(member_count={"type": "integer", "minimum": 2}))
    assert any("member_count" in p and "minimum" in p for p in problems), problems


def test_compat_follows_refs_into_nested_defs() -> None:
    class Address(BaseModel):
        village_code: str

    class Old(BaseModel):
        address: Address

    class Address2(BaseModel):
        village_code: int

    class New(BaseModel):
        address: Address2

    problems = check_backward_compatible(Old.model_json_schema(), New.model_json_schema())
    assert any("address.village_code" in p and "type changed" in p for p in problems), problems


# --- (d) AsyncAPI document ---------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return yaml.safe_load(gen.ASYNCAPI_PATH.read_text(encoding="utf-8"))


def _validator(doc: dict[str, Any], pointer: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:tpa:asyncapi", DRAFT202012.create_resource(doc))
    return Draft202012Validator(
        {"$ref": f"urn:tpa:asyncapi#{pointer}"}, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def test_asyncapi_lists_every_catalogued_topic(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] == "TPA events"
    assert sorted(c["address"] for c in asyncapi["channels"].values()) == sorted(TOPICS)
    for topic in TOPICS.values():
        channel = asyncapi["channels"][topic.name]
        assert len(channel["messages"]) == len(topic.events)
    for op in asyncapi["operations"].values():
        assert op["action"] == "receive"


def test_asyncapi_messages_validate_real_envelopes(asyncapi: dict[str, Any]) -> None:
    assert set(SAMPLES) == set(EVENT_MODELS), "every catalogued event needs a sample in SAMPLES"
    messages = asyncapi["components"]["messages"]
    assert len(messages) == len(EVENT_MODELS)
    for event_type, version in EVENT_MODELS:
        name = f"{event_type}.v{version}"
        assert name in messages
        envelope = sample_envelope(event_type, version)
        _validator(asyncapi, f"/components/messages/{name}/payload").validate(envelope)
        headers = {k: v.decode() for k, v in record_headers(EventEnvelope.model_validate(envelope))}
        _validator(asyncapi, f"/components/messages/{name}/headers").validate(headers)

    payload = _validator(asyncapi, "/components/messages/HouseholdRegistered.v1/payload")
    bad = sample_envelope()
    bad["data"]["member_count"] = 0
    assert not payload.is_valid(bad)
    bad = sample_envelope()
    bad["event_type"] = "HouseholdDissolved"
    assert not payload.is_valid(bad)


# --- (e) parsing ------------------------------------------------------------------------


def test_parse_event_round_trips() -> None:
    envelope = sample_envelope()
    env, payload = parse_event(envelope)
    assert isinstance(payload, HouseholdRegistered)
    assert payload.registered_on == date(2024, 3, 1)
    assert payload.model_dump(mode="json") == envelope["data"]
    assert str(env.event_id) == envelope["event_id"]
    assert env.metadata.actor == "user:42"
    again = parse_event(env.model_dump_json().encode())
    assert again == (env, payload)


def test_parse_event_tolerates_unknown_fields() -> None:
    envelope = sample_envelope()
    envelope["partition_hint"] = 3
    envelope["data"]["added_in_a_later_release"] = True
    envelope["metadata"]["tenant"] = "yunnan"
    env, payload = parse_event(envelope)
    assert env.metadata.model_extra == {"tenant": "yunnan"}
    assert payload.member_count == 4


def test_parse_event_rejects_unknown_and_invalid_events() -> None:
    envelope = sample_envelope()
    envelope["event_type"] = "HouseholdTeleported"
    with pytest.raises(UnknownEventError, match=r"HouseholdTeleported.*known: .*HouseholdRegistered v1"):
        parse_event(envelope)
    envelope = sample_envelope()
    envelope["schema_version"] = 99
    with pytest.raises(UnknownEventError, match="schema_version 99"):
        parse_event(envelope)
    envelope = sample_envelope()
    envelope["data"]["village_code"] = "5301"
    with pytest.raises(ValidationError, match="village_code"):
        parse_event(envelope)


# --- naming and Kafka record layout ---------------------------------------------------------


def test_topic_naming_and_record_layout() -> None:
    assert topic_name("registry", "household") == "tpa.registry.household.v1"
    assert HouseholdRegistered.topic in TOPICS
    assert dlq_topic("tpa.registry.household.v1") == "tpa.registry.household.v1.dlq"
    assert ce_type("HouseholdRegistered", 1) == "tpa.registry.HouseholdRegistered.v1"
    with pytest.raises(UnknownEventError):
        ce_type("Nope", 1)
    with pytest.raises(ValueError):
        topic_name("payroll", "household")
    env = EventEnvelope.model_validate(sample_envelope())
    assert record_key(env) == HOUSEHOLD_ID.encode()
    headers = dict(record_headers(env))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == str(env.event_id).encode()
    assert headers["ce_source"] == b"/tpa/registry"
    assert headers["ce_subject"] == HOUSEHOLD_ID.encode()
    assert headers["content-type"] == b"application/json"
    assert headers["traceparent"].startswith(b"00-")
    assert datetime.fromisoformat(headers["ce_time"].decode()) == env.metadata.recorded_at
