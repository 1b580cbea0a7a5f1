"""The gateway's OpenAPI document carries valid examples (services/gateway/examples.py).

No infrastructure: the gateway app is built (building does no I/O) and its document generated.
Every JSON example is checked against the document's schema of the operation and against the
pydantic model the route validates with; the form and CSV examples are read by the parsers the
services use; and the domain facts the schemas cannot express (ID check characters, case-type
steps, policy standards, attendance rules, password rules) are checked with the domain code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

import jsonschema
import pytest
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from eventkit.settings import load_settings
from eventkit.tokens import keyring_text
from services.gateway import examples as ex
from services.gateway.app import build
from services.gateway.identity import password_problems

JSON, FORM, CSV, MULTIPART = ex.JSON, ex.FORM, ex.CSV, ex.MULTIPART
METHODS = ("get", "put", "post", "patch", "delete")


@pytest.fixture(scope="module")
def runtime() -> Any:
    return build(load_settings("gateway", token_keys=keyring_text("a"), internal_token_keys=keyring_text("b"),
                               database_url="postgresql://unused"))


@pytest.fixture(scope="module")
def doc(runtime: Any) -> dict[str, Any]:
    return runtime.app.openapi()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def _validate(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate against an OpenAPI 3.1 schema whose ``$ref``s point into the document's components."""
    assert doc["openapi"].startswith("3.1")
    root = {**schema, "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def _content(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    assert path in doc["paths"], f"{path} is not in the document"
    operation = doc["paths"][path].get(method.lower())
    assert operation is not None, f"{method} {path} is not in the document"
    return operation["requestBody"]["content"]


def _body_models(runtime: Any) -> dict[tuple[str, str], Any]:
    """(METHOD, document path) -> the type the route validates its body with."""
    models: dict[tuple[str, str], Any] = {}

    def visit(routes: list[Any]) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI keeps included routers as such
            if included is not None:
                visit(included.routes)
            elif isinstance(route, APIRoute) and route.body_field is not None:
                path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
                for method in route.methods:
                    models[(method, path)] = route.body_field.field_info.annotation

    visit(runtime.app.routes)
    return models


# -- coverage -----------------------------------------------------------------------------------

def test_every_json_request_body_has_an_example(doc: dict[str, Any]) -> None:
    missing = [f"{m} {p}" for m, p, op in _operations(doc)
               if JSON in op.get("requestBody", {}).get("content", {})
               and "example" not in op["requestBody"]["content"][JSON]]
    assert missing == []
    bodies = [(m, p) for m, p, op in _operations(doc) if "requestBody" in op]
    without = [f"{m} {p}" for m, p in bodies
               if not any("example" in c for c in _content(doc, m, p).values())]
    assert without == [], "request bodies without any example"


def test_every_example_names_an_operation_of_the_document(doc: dict[str, Any]) -> None:
    for (method, path) in ex.REQUEST_EXAMPLES:
        assert JSON in _content(doc, method, path), f"{method} {path} takes no JSON body"
    for (method, path) in ex.FORM_EXAMPLES:
        assert FORM in _content(doc, method, path), f"{method} {path} takes no form"
    for (method, path) in ex.CSV_EXAMPLES:
        content = _content(doc, method, path)
        assert CSV in content or MULTIPART in content, f"{method} {path} takes no upload"
    for (method, path, status) in ex.RESPONSE_EXAMPLES:
        assert path in doc["paths"] and method.lower() in doc["paths"][path], f"{method} {path}"
        assert JSON in doc["paths"][path][method.lower()]["responses"][status]["content"]


def test_the_document_carries_the_examples(doc: dict[str, Any]) -> None:
    for (method, path), example in ex.REQUEST_EXAMPLES.items():
        assert _content(doc, method, path)[JSON]["example"] == example
    for (method, path), example in ex.FORM_EXAMPLES.items():
        assert _content(doc, method, path)[FORM]["example"] == example
    for (method, path), text in ex.CSV_EXAMPLES.items():
        content = _content(doc, method, path)
        shown = content[CSV]["example"] if CSV in content else content[MULTIPART]["example"]["file"]
        assert shown == text
    json.dumps(doc, ensure_ascii=False)  # still serialisable


# -- JSON bodies: schema and model ----------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(ex.REQUEST_EXAMPLES), ids=lambda k: f"{k[0]} {k[1]}")
def test_json_example_matches_the_documented_schema(doc: dict[str, Any], key: tuple[str, str]) -> None:
    method, path = key
    _validate(doc, _content(doc, method, path)[JSON]["schema"], ex.REQUEST_EXAMPLES[key])


@pytest.mark.parametrize("key", sorted(ex.REQUEST_EXAMPLES), ids=lambda k: f"{k[0]} {k[1]}")
def test_json_example_is_accepted_by_the_route_model(runtime: Any, key: tuple[str, str]) -> None:
    models = _body_models(runtime)
    assert key in models, f"no body model found for {key}"
    TypeAdapter(models[key]).validate_json(json.dumps(ex.REQUEST_EXAMPLES[key], ensure_ascii=False))


@pytest.mark.parametrize("key", sorted(ex.RESPONSE_EXAMPLES), ids=lambda k: " ".join(k))
def test_response_example_matches_the_documented_schema(doc: dict[str, Any], key: tuple[str, str, str]) -> None:
    method, path, status = key
    content = doc["paths"][path][method.lower()]["responses"][status]["content"][JSON]
    assert content["example"] == ex.RESPONSE_EXAMPLES[key]
    _validate(doc, content["schema"], ex.RESPONSE_EXAMPLES[key])


# -- the form-encoded token request ---------------------------------------------------------------

def test_token_form_example(doc: dict[str, Any], runtime: Any) -> None:
    key = ("POST", "/api/v1/auth/token")
    form = ex.FORM_EXAMPLES[key]
    _validate(doc, _content(doc, *key)[FORM]["schema"], form)
    parsed = {k: v[0] for k, v in parse_qs(urlencode(form), strict_parsing=True).items()}
    assert parsed == form
    TypeAdapter(_body_models(runtime)[key]).validate_python(parsed)
    assert parsed["grant_type"] == "password" and parsed["username"] and parsed["password"]
    assert password_problems(parsed["password"], parsed["username"]) == []


# -- uploads --------------------------------------------------------------------------------------

def _csv_bytes(path: str) -> bytes:
    return ex.CSV_EXAMPLES[("POST", "/api/v1" + path)].encode("utf-8")


def test_statement_example_is_read_by_the_reconciliation() -> None:
    from services.funds import reconciliation

    lines, errors = reconciliation.parse_statement(_csv_bytes("/statements"))
    assert errors == []
    assert len(lines) == 3
    paid = ex.REQUEST_EXAMPLES[("POST", "/api/v1/disbursements/{disbursement_id}/payment")]
    first = lines[0]
    assert (first.reference, first.paid_on.isoformat(), first.status) == (
        paid["channel_reference"], paid["paid_on"], "paid")
    assert first.amount == Decimal(ex.REQUEST_EXAMPLES[("POST", "/api/v1/disbursements")]["amount"])
    assert re.fullmatch(r"^[0-9]{0,6}\*{4,}[0-9]{0,4}$", first.account_masked or "")


def test_subsidy_example_is_read_by_the_subsidy_parser() -> None:
    from services.funds import subsidies
    from services.funds.policies import default_catalogue
    from services.registry import deaths

    batch = subsidies.parse_subsidy_file(
        _csv_bytes("/subsidy-records"), "text/csv", quarter=subsidies.parse_quarter("2025-Q1"),
        department="civil_affairs", catalogue=default_catalogue(), today=date(2025, 4, 10),
        hasher=deaths.keyed_hasher(b"k" * 32))
    assert batch.errors == []
    assert len(batch.records) == 3


def test_comparison_job_example_is_read_by_parse_id_file() -> None:
    from services.registry import comparison

    parsed = comparison.parse_id_file(_csv_bytes("/comparison-jobs"), "text/csv")
    assert parsed.format == "csv" and parsed.header_row == 1 and len(parsed) == 2
    prepared = comparison.prepare_ids(parsed.values, b"k" * 32, today=date(2025, 4, 1))
    assert dict(prepared.errors) == {}


def test_national_extract_example_is_read_by_parse_extract() -> None:
    from services.registry import deaths, national

    extract = national.parse_extract(_csv_bytes("/reconciliations/national"), "text/csv",
                                     deaths.keyed_hasher(b"k" * 32), today=date(2025, 4, 1))
    assert extract.errors == []
    assert len(extract.households) == 1
    household = extract.households[0]
    assert household.village_code == ex.VILLAGE and household.status == "identified"
    assert len(household.members) == 4 and household.head is not None


def test_death_records_example_is_read_by_parse_death_records() -> None:
    from services.registry import deaths

    batch = deaths.parse_death_records(_csv_bytes("/inbound/deaths"), "text/csv",
                                       hasher=deaths.keyed_hasher(b"k" * 32), today=date(2025, 3, 1))
    assert batch.errors == []
    assert [r.date_of_death for r in batch.records] == [date(2025, 2, 14), date(2025, 2, 27)]


def test_household_import_example_is_read_and_checked_by_the_importer() -> None:
    from services.registry import importer

    parsed = importer.parse(_csv_bytes("/imports/households"), file_name="households.csv")
    assert parsed.errors == []
    validation = importer.check(parsed, today=date(2025, 4, 1))
    assert [e.to_json() for e in validation.errors] == []
    assert len(validation.valid) == 1 and len(validation.valid[0].members) == 3


# -- domain facts the schemas cannot express --------------------------------------------------------

def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_id_numbers_are_valid_and_match_the_birth_dates() -> None:
    from services.registry.identity import validate_id_number

    seen = 0
    for body in ex.REQUEST_EXAMPLES.values():
        for obj in _walk(body):
            numbers = ([obj["id_number"]] if isinstance(obj.get("id_number"), str) else []) + obj.get("id_numbers", [])
            for number in numbers:
                birth = date.fromisoformat(obj["birth_date"]) if "birth_date" in obj else None
                rid = validate_id_number(number, birth, today=date(2025, 1, 1))
                if "sex" in obj:
                    assert obj["sex"] == rid.sex, number
                seen += 1
    assert seen >= 8


def test_passwords_follow_the_password_rules() -> None:
    user = ex.REQUEST_EXAMPLES[("POST", "/api/v1/users")]
    assert password_problems(user["password"], user["username"]) == []
    change = ex.REQUEST_EXAMPLES[("PUT", "/api/v1/me/password")]
    assert password_problems(change["new_password"], ex.USERNAME) == []
    assert change["new_password"] != change["current_password"]
    reset = ex.REQUEST_EXAMPLES[("POST", "/api/v1/users/{user_id}/password")]
    assert password_problems(reset["password"], ex.USERNAME) == []


def test_case_examples_use_real_case_types_and_steps() -> None:
    from services.workflow.definitions import load_case_types

    types = load_case_types()
    steps = {(t, s.id): s for t, ct in types.items() for s in ct.steps}
    opened = ex.REQUEST_EXAMPLES[("POST", "/api/v1/cases")]
    assert opened["case_type"] in types
    decide = ex.REQUEST_EXAMPLES[("POST", "/api/v1/cases/{case_id}/decisions")]
    assert steps[("identification", decide["step_id"])].kind == "decision"
    batch = ex.REQUEST_EXAMPLES[("POST", "/api/v1/batch-decisions")]
    assert steps[("identification", batch["step_id"])].kind == "decision"
    assert any(s.kind == "comparison" for s in types["identification"].steps)
    assert all(s.kind == "escalation" for s in types["assistance_need"].steps)


def test_payment_examples_follow_the_policy_catalogue() -> None:
    from services.funds.policies import default_catalogue

    request = ex.REQUEST_EXAMPLES[("POST", "/api/v1/disbursements")]
    policy = default_catalogue()[request["policy_code"]]
    period = policy.check_period(request["period"])
    assert policy.standard_for(period).amount == Decimal(request["amount"])
    assert policy.paid_to == "member" and request["member_id"] == ex.CHILD
    payment = ex.REQUEST_EXAMPLES[("POST", "/api/v1/disbursements/{disbursement_id}/payment")]
    assert payment["channel"] in policy.channels


def test_risk_report_example_is_a_valid_cadre_report() -> None:
    from services.monitoring.rules import CadreReport

    body = ex.REQUEST_EXAMPLES[("POST", "/api/v1/households/{household_id}/risk-reports")]
    CadreReport.parse({"report_id": "r-1", **body, "reported_at": datetime.fromisoformat(body["reported_at"])})


def test_attendance_example_is_accepted_item_by_item() -> None:
    from services.monitoring.attendance import CadreAttendance

    items = ex.REQUEST_EXAMPLES[("POST", "/api/v1/attendance/batches")]["items"]
    now = datetime(2025, 3, 10, 18, 0, tzinfo=timezone(timedelta(hours=8)))
    result = CadreAttendance("user-cg031").ingest(
        items, now=now, household_locations={ex.HOUSEHOLD: (36.0612, 103.8471)},
        household_villages={ex.HOUSEHOLD: ex.VILLAGE})
    assert [(r.status, r.code, r.flags) for r in result.items] == [("accepted", None, ())] * len(items)
