"""Examples for the gateway's OpenAPI document (``/openapi.json``).

One realistic request body per operation that takes one, keyed by ``(METHOD, path)`` with the
path exactly as the document spells it (``/api/v1/...``, path parameters without converters):

* ``REQUEST_EXAMPLES``: JSON bodies (``application/json``);
* ``FORM_EXAMPLES``: form-encoded bodies (``application/x-www-form-urlencoded``: the token endpoint);
* ``CSV_EXAMPLES``: uploaded files as CSV text (``text/csv``; an upload that declares only
  ``multipart/form-data`` gets it as its ``file`` field);
* ``RESPONSE_EXAMPLES``: a few answers, keyed by ``(METHOD, path, status)``.

The examples tell one story: the household of 张国强 in village 620102001001 (东岗村, 城关区,
兰州市, 甘肃省), its members, its cases, payments and alerts. ID numbers carry correct GB 11643
check characters and birth dates matching the members; codes come from the registry's code lists,
step ids from ``services/workflow/casetypes``, policy codes from ``services/funds/policies``.
``tests/test_gateway_openapi_examples.py`` checks every example against the document's schemas,
the routes' models and the upload parsers.

:func:`add_examples` puts them into a generated document; paths or media types the document does
not have are skipped (the test reports them), so a renamed route never breaks ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

V1 = "/api/v1"

# -- the people and records the examples refer to ----------------------------------------------

VILLAGE = "620102001001"          # a village of township 620102001, county 620102
TOWNSHIP = "620102001"
COUNTY = "620102"
HOUSEHOLD = "3f6b2c1e-8a4d-4f7b-9c2e-5d1a7b8e9f01"
NEIGHBOUR = "4a7c3d2f-9b5e-4a8c-8d3f-6e2b8c9fa012"   # another household of the village
HEAD = "a1c4e8f2-3b5d-4e6f-8a9b-0c1d2e3f4a51"         # 张国强, b. 1972-05-01
SPOUSE = "b2d5f9a3-4c6e-4f70-9b8c-1d2e3f4a5b62"       # 李秀英, b. 1975-08-09
CHILD = "c3e6a0b4-5d7f-4081-8c9d-2e3f4a5b6c73"        # 张小明, b. 2012-09-01
FATHER = "d4f7b1c5-6e80-4192-9dae-3f4a5b6c7d84"       # 张德福, b. 1943-02-11
CASE = "5e8c9d0a-1b2c-4d3e-8f4a-6b7c8d9e0f12"
CASE_2 = "6f9d0e1b-2c3d-4e4f-9a5b-7c8d9e0f1a23"
DECISION_EVENT = "7a0e1f2c-3d4e-4f50-8b6c-8d9e0f1a2b34"
ALLOCATION = "8b1f2a3d-4e5f-4061-9c7d-9e0f1a2b3c45"

ID_HEAD = "620102197205010137"
ID_SPOUSE = "620102197508090242"
ID_CHILD = "620102201209010352"
ID_FATHER = "620102194302110179"
ID_NEWBORN = "620102202411180464"     # 张小红, b. 2024-11-18
ID_OTHER_PUPIL = "620102200804120797"  # 王浩然, b. 2008-04-12, not of the household
ID_OTHER_DECEASED = "620102193807230286"  # 王秀兰, b. 1938-07-23

ACCOUNT = "6228480123456781234"        # the student aid card; statements show 622848*********1234
CHANNEL_REFERENCE = "XSZZ-2025-620102-000123"
CADRE = "cg-nyj-031"
USERNAME = "wang.li"


# -- JSON bodies --------------------------------------------------------------------------------

_MEMBERS = [
    {"name": "张国强", "id_number": ID_HEAD, "relation": "head", "birth_date": "1972-05-01", "sex": "male",
     "phone": "13919123456", "ethnicity": "汉族",
     "facts": {"health": ["chronic_illness"], "education": "junior", "labour_skill": "weak",
               "employment": "local", "employment_months": 6, "insurance": ["basic_medical", "serious_illness"]}},
    {"name": "李秀英", "id_number": ID_SPOUSE, "relation": "10", "birth_date": "1975-08-09", "sex": "female",
     "facts": {"health": ["healthy"], "education": "primary", "labour_skill": "ordinary", "employment": "none",
               "insurance": ["basic_medical"]}},
    {"name": "张小明", "id_number": ID_CHILD, "relation": "20", "birth_date": "2012-09-01", "sex": "male",
     "facts": {"health": ["healthy"], "schooling_stage": "junior", "insurance": ["basic_medical"]}},
    {"name": "张德福", "id_number": ID_FATHER, "relation": "51", "birth_date": "1943-02-11", "sex": "male",
     "facts": {"health": ["serious_illness"], "education": "illiterate", "labour_skill": "lost",
               "insurance": ["basic_medical", "serious_illness"]}},
]

_INCOME = {"wage": "18600.00", "business": "4200.00", "property": "0.00", "transfer": "3560.00",
           "business_expenses": "1800.00"}

REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    # -- identity -------------------------------------------------------------------------------
    ("PUT", f"{V1}/me/password"): {
        "current_password": "Dg-Linshi-2025!7q", "new_password": "Huangheqiao@Lanzhou-1909"},
    ("POST", f"{V1}/users"): {
        "username": USERNAME, "roles": ["cadre"], "level": "village", "jurisdiction": VILLAGE,
        "password": "Dg-Linshi-2025!7q"},
    ("PUT", f"{V1}/users/{{user_id}}/roles"): {
        "roles": ["cadre", "village_committee"], "level": "village", "jurisdiction": VILLAGE},
    ("POST", f"{V1}/users/{{user_id}}/password"): {"password": "Chongzhi-Mima#2025q"},
    ("POST", f"{V1}/users/{{user_id}}/deactivation"): {
        "reason": "调离城关区乡村振兴局，不再从事帮扶工作（区人社局调令〔2025〕12号）"},
    ("POST", f"{V1}/clients"): {
        "name": "城关区教育局学生资助管理系统", "department": "education",
        "scopes": ["comparison:education", "status:read"], "jurisdiction": COUNTY},
    ("POST", f"{V1}/clients/{{client_id}}/secret"): {"grace_hours": 24},
    ("POST", f"{V1}/clients/{{client_id}}/revocation"): {
        "reason": "旧版学生资助系统停用，已由新系统（新客户端）接替"},

    # -- households -----------------------------------------------------------------------------
    ("POST", f"{V1}/households"): {
        "village_code": VILLAGE, "address": "甘肃省兰州市城关区东岗村二组15号", "attribute": "general",
        "identification_standard": "national", "registered_on": "2024-03-01", "members": _MEMBERS},
    ("POST", f"{V1}/households/{{household_id}}/members"): {
        "member": {"name": "张小红", "id_number": ID_NEWBORN, "relation": "30", "birth_date": "2024-11-18",
                   "sex": "female", "facts": {"health": ["healthy"], "schooling_stage": "not_in_school"}},
        "reason": "birth", "joined_on": "2024-12-02"},
    ("POST", f"{V1}/households/{{household_id}}/members/{{member_id}}/removal"): {
        "reason": "death", "removed_on": "2025-02-14", "note": "死亡医学证明编号 S620102202500318"},
    ("PATCH", f"{V1}/households/{{household_id}}/members/{{member_id}}"): {
        "health": ["chronic_illness"], "labour_skill": "weak", "employment": "local", "employment_months": 8,
        "insurance": ["basic_medical", "serious_illness"]},
    ("POST", f"{V1}/households/{{household_id}}/head"): {"member_id": SPOUSE, "changed_on": "2025-03-01"},
    ("PUT", f"{V1}/households/{{household_id}}/incomes/{{year}}"): _INCOME,
    ("PUT", f"{V1}/households/{{household_id}}/conditions"): {
        "assessed_on": "2025-03-10",
        "conditions": {"food": True, "clothing": True, "drinking_water": True, "compulsory_education": True,
                       "basic_medical": True, "safe_housing": False, "electricity": True, "radio_tv": True,
                       "road_access": True}},
    ("PUT", f"{V1}/households/{{household_id}}/causes"): {"primary": "illness", "others": ["lack_of_funds"]},
    ("POST", f"{V1}/households/{{household_id}}/cadres"): {
        "cadre_id": CADRE, "unit": "城关区农业农村局", "assigned_on": "2024-03-15"},
    ("POST", f"{V1}/households/{{household_id}}/cadres/{{cadre_id}}/release"): {
        "released_on": "2025-06-30", "reason": "工作调动，由驻村工作队队员接替结对帮扶"},
    ("PUT", f"{V1}/households/{{household_id}}/plans/{{year}}"): {"measures": [
        {"kind": "industry", "description": "扶持发展设施蔬菜种植2亩，提供种苗和技术指导"},
        {"kind": "employment", "description": "推荐户主到村扶贫车间务工，每月收入约2000元"},
        {"kind": "health", "description": "落实家庭医生签约服务，慢性病用药按规定报销"}]},
    ("PUT", f"{V1}/households/{{household_id}}/coordinates"): {"latitude": 36.0612, "longitude": 103.8471},
    ("POST", f"{V1}/households/{{household_id}}/change-requests"): {
        "kind": "income", "target": 2024, "changes": _INCOME,
        "reason": "入户核查发现2024年户主在本地务工收入漏报，按务工单位工资表补录"},
    ("POST", f"{V1}/households/{{household_id}}/status-decisions"): {
        "decision_event_id": DECISION_EVENT, "case_id": CASE, "status_effect": "identified",
        "effective_on": "2025-05-20"},
    ("PUT", f"{V1}/villages/{{village_code}}/profile"): {
        "effective_on": "2025-01-01", "rural_population": 2860, "registered_population": 412, "poor_village": True,
        "hardened_road": True, "leading_industry": "高原夏菜种植", "service_centre": True, "safe_water": True,
        "broadband": True, "collective_income": "86500.00", "resident_work_team": True},
    ("POST", f"{V1}/households/search"): {"id_number": ID_HEAD, "limit": 10},

    # -- cases ----------------------------------------------------------------------------------
    ("POST", f"{V1}/cases"): {
        "case_type": "return_risk", "household_id": HOUSEHOLD,
        "reason": "户主父亲张德福突发脑梗住院，自付医疗费用约4.6万元，家庭人均纯收入大幅下降",
        "subject": "01", "monitoring_object_type": "sudden_hardship"},
    ("POST", f"{V1}/cases/{{case_id}}/decisions"): {
        "step_id": "household_survey", "decision": "approve",
        "comment": "入户核实：家庭人均纯收入5860元，低于国家扶贫标准；住房为土木结构危房，情况属实"},
    ("POST", f"{V1}/batch-decisions"): {
        "village_code": VILLAGE, "step_id": "group_appraisal", "decision": "approve",
        "comment": "二组村民小组会议民主评议通过（应到32户，实到29户）", "case_ids": [CASE, CASE_2]},
    ("POST", f"{V1}/cases/{{case_id}}/comparisons"): {"results": [
        {"member_id": HEAD, "source": "vehicles", "hit": False},
        {"member_id": HEAD, "source": "business_registry", "hit": False},
        {"member_id": SPOUSE, "source": "payroll", "hit": False},
        {"member_id": HEAD, "source": "property", "hit": True,
         "detail": "不动产登记：城关区雁滩路商品房一套（89.5平方米），需乡镇复核是否为本户所有"}]},
    ("POST", f"{V1}/cases/{{case_id}}/escalation"): {
        "reason": "该户申请的设施大棚扶持资金超出村级权限，需乡镇统筹产业发展资金解决"},
    ("POST", f"{V1}/cases/{{case_id}}/resolution"): {
        "what_was_done": "乡镇从产业发展资金中安排1.2万元，为该户新建日光温室1座，已于4月15日交付使用"},
    ("POST", f"{V1}/cases/{{case_id}}/objections"): {
        "content": "据我所知，该户在城关区开有一家门店，家庭收入不低，不符合贫困户条件，请核实。",
        "name": "王建国"},
    ("POST", f"{V1}/cases/{{case_id}}/objections/{{objection_id}}/resolution"): {
        "finding": "经乡镇和驻村工作队入户核实并查询市场监管登记，门店经营者为其亲属，与该户无经济往来，异议不成立。",
        "upheld": False},

    # -- funds ----------------------------------------------------------------------------------
    ("POST", f"{V1}/allocations"): {
        "source": "central", "year": 2025, "purpose": "2025年中央财政衔接推进乡村振兴补助资金（产业发展）",
        "region_code": COUNTY, "amount": "5000000.00"},
    ("POST", f"{V1}/allocations/{{allocation_id}}/adjustments"): {
        "amount_delta": "-200000.00", "reason": "市级调减：统筹20万元用于易地扶贫搬迁后续扶持（市财农〔2025〕31号）"},
    ("POST", f"{V1}/projects"): {
        "name": "东岗村设施蔬菜大棚建设项目", "kind": "industry", "region_code": VILLAGE, "budget": "850000.00",
        "plan_year": 2025, "beneficiary_household_ids": [HOUSEHOLD, NEIGHBOUR]},
    ("POST", f"{V1}/projects/{{project_id}}/review"): {
        "comment": "项目可行性论证充分，带贫益贫机制明确，同意上报县级审批。"},
    ("POST", f"{V1}/projects/{{project_id}}/approval"): {
        "approved_budget": "800000.00", "funding": [{"allocation_id": ALLOCATION, "amount": "800000.00"}]},
    ("POST", f"{V1}/projects/{{project_id}}/rejection"): {
        "reason": "选址占用基本农田，不符合国土空间规划，请调整选址后重新申报"},
    ("POST", f"{V1}/projects/{{project_id}}/start"): {"started_on": "2025-04-01"},
    ("POST", f"{V1}/projects/{{project_id}}/milestones"): {
        "name": "大棚钢架主体完工", "reached_on": "2025-06-20", "note": "共建成日光温室24座，监理单位已现场验收"},
    ("POST", f"{V1}/projects/{{project_id}}/completion"): {"completed_on": "2025-09-30"},
    ("POST", f"{V1}/projects/{{project_id}}/cancellation"): {
        "reason": "受汛期山洪影响，原选址地块不再适宜建设，项目撤销，资金收回统筹使用"},
    ("POST", f"{V1}/disbursements"): {
        "household_id": HOUSEHOLD, "member_id": CHILD, "basis": "policy", "policy_code": "edu_boarding_junior",
        "period": "2025", "amount": "1250.00", "account_number": ACCOUNT},
    ("POST", f"{V1}/disbursements/{{disbursement_id}}/approval"): {"allocation_id": ALLOCATION},
    ("POST", f"{V1}/disbursements/{{disbursement_id}}/payment"): {
        "channel": "student_aid_card", "channel_reference": CHANNEL_REFERENCE, "paid_on": "2025-03-15"},
    ("POST", f"{V1}/disbursements/{{disbursement_id}}/failure"): {
        "reason": "银行退回：学生资助卡已挂失，需重新提供有效卡号"},
    ("POST", f"{V1}/disbursements/{{disbursement_id}}/reversal"): {
        "reason": "重复发放：该生2025年寄宿生生活补助已由学校另行发放，冲回本笔支付"},

    # -- monitoring -----------------------------------------------------------------------------
    ("POST", f"{V1}/attendance/batches"): {"items": [
        {"client_event_id": "app-cg031-20250310-001", "kind": "team_day", "occurred_at": "2025-03-10T08:30:00+08:00",
         "latitude": 36.0615, "longitude": 103.8462, "accuracy_m": 15, "village_code": VILLAGE, "day": "2025-03-10"},
        {"client_event_id": "app-cg031-20250310-002", "kind": "check_in", "occurred_at": "2025-03-10T09:30:00+08:00",
         "visit_id": "visit-20250310-01", "household_id": HOUSEHOLD, "latitude": 36.06124, "longitude": 103.84705,
         "accuracy_m": 8, "photo_ref": "photos/2025-03-10/visit-20250310-01.jpg"},
        {"client_event_id": "app-cg031-20250310-003", "kind": "visit_log", "occurred_at": "2025-03-10T09:55:00+08:00",
         "visit_id": "visit-20250310-01", "household_id": HOUSEHOLD,
         "notes": "了解春耕备耕情况；户主慢性病用药正常，家庭医生已签约", "needs": ["蔬菜种苗", "大棚种植技术指导"]},
        {"client_event_id": "app-cg031-20250310-004", "kind": "check_out", "occurred_at": "2025-03-10T10:15:00+08:00",
         "visit_id": "visit-20250310-01", "household_id": HOUSEHOLD, "latitude": 36.06121, "longitude": 103.84709,
         "accuracy_m": 10},
        {"client_event_id": "app-cg031-20250310-005", "kind": "contact", "occurred_at": "2025-03-10T16:20:00+08:00",
         "household_id": HOUSEHOLD, "channel": "call", "duration_s": 320,
         "note": "电话告知户主春季产业补助申报时间和所需材料"}]},
    ("POST", f"{V1}/households/{{household_id}}/risk-reports"): {
        "kind": "disaster", "risk": "0201",
        "note": "7月暴雨引发山洪，该户2间住房受损、3亩玉米绝收", "reported_at": "2025-07-22T10:30:00+08:00"},
    ("POST", f"{V1}/alerts/{{alert_id}}/acknowledgement"): {
        "note": "已通知村两委，安排驻村工作队明日入户核实"},
    ("POST", f"{V1}/alerts/{{alert_id}}/resolution"): {
        "resolution": "risk_eliminated",
        "note": "落实临时救助5000元、公益性岗位1个，住房已维修加固，经评议风险消除"},
    ("POST", f"{V1}/webhooks"): {
        "url": "https://fxpjc.chengguan.example.gov.cn/tpa/alerts",
        "event_types": ["ReturnRiskAlertRaised", "AlertEscalated", "AlertResolved"],
        "description": "城关区防止返贫监测预警平台"},

    # -- data exchanges -------------------------------------------------------------------------
    ("POST", f"{V1}/comparisons"): {"purpose": "education", "id_numbers": [ID_CHILD, ID_OTHER_PUPIL]},
    ("POST", f"{V1}/status-checks"): {"id_number": ID_FATHER, "purpose": "health_insurance"},
}


# -- form-encoded bodies ------------------------------------------------------------------------

FORM_EXAMPLES: dict[tuple[str, str], dict[str, str]] = {
    ("POST", f"{V1}/auth/token"): {"grant_type": "password", "username": USERNAME,
                                   "password": "Huangheqiao@Lanzhou-1909"},
}


# -- uploads (CSV text) -------------------------------------------------------------------------

def _csv(*rows: str) -> str:
    return "\r\n".join(rows) + "\r\n"


CSV_EXAMPLES: dict[tuple[str, str], str] = {
    # funds.reconciliation.parse_statement (with ?channel=student_aid_card)
    ("POST", f"{V1}/statements"): _csv(
        "reference,account_masked,amount,date,status",
        f"{CHANNEL_REFERENCE},622848*********1234,1250.00,2025-03-15,paid",
        "XSZZ-2025-620102-000124,622848*********5678,1000.00,2025-03-15,paid",
        "XSZZ-2025-620102-000125,621700*********0021,1250.00,2025-03-15,returned"),
    # funds.subsidies.parse_subsidy_file (with ?quarter=2025-Q1&department=civil_affairs)
    ("POST", f"{V1}/subsidy-records"): _csv(
        "id_number 身份证号,policy_code 政策代码,amount 金额,paid_on 发放日期,channel 发放渠道,"
        "reference 业务流水号,period 所属期间",
        f"{ID_HEAD},minimum_living_tier2,290.00,2025-01-10,one_card,MZ-DB-2025-01-000381,2025-01",
        f"{ID_SPOUSE},minimum_living_tier2,290.00,2025-01-10,one_card,MZ-DB-2025-01-000382,2025-01",
        f"{ID_FATHER},insurance_premium_subsidy,380.00,2025-02-20,one_card,MZ-YB-2025-000097,2025"),
    # registry.comparison.parse_id_file (with ?purpose=education); other columns are ignored
    ("POST", f"{V1}/comparison-jobs"): _csv(
        "身份证号,姓名,学校",
        f"{ID_CHILD},张小明,城关区东岗中学",
        f"{ID_OTHER_PUPIL},王浩然,兰州市第五十一中学"),
    # registry.national.parse_extract (with ?year=2024&region=620102)
    ("POST", f"{V1}/reconciliations/national"): _csv(
        "household_ref 户编号,village_code 行政区划代码,household_status 户状态,id_number 证件号码,name 姓名,"
        "relation 与户主关系,per_capita_income 人均纯收入,income_year 年度",
        f"6201020010010015,{VILLAGE},未脱贫,{ID_HEAD},张国强,户主,5860.50,2024",
        f"6201020010010015,{VILLAGE},未脱贫,{ID_SPOUSE},李秀英,配偶,,",
        f"6201020010010015,{VILLAGE},未脱贫,{ID_CHILD},张小明,之子,,",
        f"6201020010010015,{VILLAGE},未脱贫,{ID_FATHER},张德福,父亲,,"),
    # registry.deaths.parse_death_records
    ("POST", f"{V1}/inbound/deaths"): _csv(
        "id_number 身份证号,name 姓名,date_of_death 死亡日期,certificate_ref 证明编号,place 死亡地点",
        f"{ID_FATHER},张德福,2025-02-14,S620102202500318,兰州市第一人民医院",
        f"{ID_OTHER_DECEASED},王秀兰,2025/2/27,S620102202500355,城关区东岗村"),
    # registry.importer.parse + check: one CSV file, a `record` column per row
    ("POST", f"{V1}/imports/households"): _csv(
        "record,household_no,village_code,address,attribute,identification_standard,registered_on,primary_cause,"
        "other_causes,name,id_number,relation,sex,birth_date,health,education,labour_skill,employment,insurance",
        f"household,0016,{VILLAGE},东岗村三组7号,general,national,2024-03-01,lack_of_labour,illness;lack_of_funds"
        ",,,,,,,,,,",
        f"member,0016,{VILLAGE},,,,,,,王建军,620102196811030117,户主,男,1968-11-03,disabled,primary,weak,none,"
        "basic_medical",
        f"member,0016,{VILLAGE},,,,,,,赵桂花,620102197002170229,配偶,女,1970-02-17,chronic_illness,illiterate,"
        "weak,none,basic_medical;serious_illness",
        f"member,0016,{VILLAGE},,,,,,,王磊,62010219950630033X,20,男,1995-06-30,healthy,senior,ordinary,migrant,"
        "basic_medical;pension"),
}


# -- a few answers ------------------------------------------------------------------------------

RESPONSE_EXAMPLES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("POST", f"{V1}/auth/token", "200"): {
        "access_token": "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ3YW5nLmxpIn0.c2lnbmF0dXJl",
        "token_type": "Bearer", "expires_in": 900, "refresh_token": "rt_5kqX2mB7vN9pL3wR8tY1zA4cD6fH0jK",
        "password_change_required": False},
    ("POST", f"{V1}/households", "201"): {
        "household_id": HOUSEHOLD, "version": 5,
        "events": ["HouseholdRegistered", "MemberAdded", "MemberAdded", "MemberAdded", "MemberAdded"]},
    ("POST", f"{V1}/cases", "201"): {
        "case_id": CASE, "version": 1, "current_step": "township_verification", "closed": False,
        "events": ["CaseOpened"]},
    ("POST", f"{V1}/disbursements", "201"): {
        "id": "9c2a3b4e-5f60-4172-8d8e-0f1a2b3c4d56", "version": 1, "status": "requested",
        "events": ["DisbursementRequested"]},
}


# -- putting them into the document -------------------------------------------------------------

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
CSV = "text/csv"
MULTIPART = "multipart/form-data"


def _request_content(schema: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    operation = schema.get("paths", {}).get(path, {}).get(method.lower())
    if not isinstance(operation, dict):
        return None
    return operation.get("requestBody", {}).get("content")


def add_examples(schema: dict[str, Any]) -> None:
    """Put the examples into a generated OpenAPI document, in place (``content[<media type>].example``)."""
    for table, media in ((REQUEST_EXAMPLES, JSON), (FORM_EXAMPLES, FORM)):
        for (method, path), example in table.items():
            content = _request_content(schema, method, path)
            if content is not None and media in content:
                content[media]["example"] = example
    for (method, path), text in CSV_EXAMPLES.items():
        content = _request_content(schema, method, path)
        if content is None:
            continue
        if CSV in content:
            content[CSV]["example"] = text
        elif MULTIPART in content:  # a multipart-only upload: the file as its `file` field
            content[MULTIPART]["example"] = {"file": text}
    for (method, path, status), example in RESPONSE_EXAMPLES.items():
        operation = schema.get("paths", {}).get(path, {}).get(method.lower())
        response = operation.get("responses", {}).get(status) if isinstance(operation, dict) else None
        if isinstance(response, dict) and JSON in response.get("content", {}):
            response["content"][JSON]["example"] = example
