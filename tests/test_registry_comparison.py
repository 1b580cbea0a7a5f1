"""Bulk comparison (大数据比对): purposes, hashing, jurisdiction, ID files and results files.

Pure unit tests: no database, no broker.
"""

from __future__ import annotations

import csv
import io
from dataclasses import fields
from datetime import date

import pytest
from openpyxl import Workbook

from contracts.gateway import DEPARTMENTS, SCOPES
from eventkit.errors import DomainError
from services.registry import comparison as cmp
from services.registry.comparison import (
    FACTS,
    MAX_IDS_PER_FILE,
    MAX_IDS_PER_REQUEST,
    PURPOSE_SCOPES,
    PURPOSES,
    Match,
    ParsedFile,
    Prepared,
    answer,
    check_purpose,
    chunks,
    group_matches,
    parse_id_file,
    prepare_ids,
    purpose_for_scope,
    purposes_for_scopes,
    result_columns,
    results_csv,
    scope_for_purpose,
)
from services.registry.identity import check_character, id_hmac, validate_id_number

KEY = b"comparison-test-key-0123456789ab"
TODAY = date(2024, 6, 1)
COUNTY = "620102"
OTHER_COUNTY = "620103"


def make_id(address: str = COUNTY, born: str = "19900101", seq: int = 123) -> str:
    first17 = f"{address}{born}{seq:03d}"
    return first17 + check_character(first17)


def many_ids(n: int, address: str = COUNTY) -> list[str]:
    """n distinct valid ID numbers (birth dates 1950-2009, sequences 000-999)."""
    out = []
    for i in range(n):
        seq, rest = i % 1000, i // 1000
        year, day = 1950 + rest % 60, 1 + (rest // 60) % 28
        out.append(make_id(address, f"{year:04d}01{day:02d}", seq))
    return out


A = make_id(born="19900101", seq=11)   # in the county, active
B = make_id(born="20100315", seq=22)   # pupil, in the county
C = make_id(OTHER_COUNTY, "19850707", 33)  # another county
D = make_id(born="19500505", seq=44)   # removed member
E = make_id(born="19700202", seq=55)   # not in the ledger at all
F = make_id(born="19600606", seq=66)   # household that left the register


def covers_county(village_code: str) -> bool:
    return village_code.startswith(COUNTY)


def match(household: str = "h-1", member: str = "m-1", village: str = COUNTY + "001001",
          status: str = "identified", active: bool = True, **facts: object) -> Match:
    return Match(household_id=household, member_id=member, village_code=village, household_status=status,
                 member_active=active, **facts)  # type: ignore[arg-type]


FULL_FACTS = {"schooling_stage": "junior", "attribute": "minimum_living", "monitoring_object_type": "marginal",
              "minimum_living_tier": "tier_2"}


def ledger() -> dict[str, Match]:
    return {
        id_hmac(KEY, A): match("h-a", "m-a", **FULL_FACTS),
        id_hmac(KEY, B): match("h-b", "m-b", status="lifted_out", schooling_stage="primary", attribute="general"),
        id_hmac(KEY, C): match("h-c", "m-c", village=OTHER_COUNTY + "002003", **FULL_FACTS),
        id_hmac(KEY, D): match("h-d", "m-d", active=False, **FULL_FACTS),
        id_hmac(KEY, F): match("h-f", "m-f", status="wrongly_identified_removed", **FULL_FACTS),
    }


def run(values: list[object], purpose: str, matches: dict | None = None, covers=covers_county) -> cmp.Answer:
    prepared = prepare_ids(values, KEY, today=TODAY)  # type: ignore[arg-type]
    return answer(prepared, ledger() if matches is None else matches, purpose, covers=covers)


# -- purposes ------------------------------------------------------------------------------

def test_purposes_and_scopes_are_consistent_with_the_gateway_contract() -> None:
    assert set(PURPOSES) == {"education", "health_insurance", "civil_affairs"}
    assert PURPOSES["education"] == ("in_register", "household_status", "schooling_stage")
    assert PURPOSES["health_insurance"] == ("in_register", "household_status", "attribute",
                                            "monitoring_object_type")
    assert PURPOSES["civil_affairs"] == ("in_register", "household_status", "attribute", "minimum_living_tier")
    for purpose in PURPOSES:
        assert purpose in DEPARTMENTS
        assert scope_for_purpose(purpose) == f"comparison:{purpose}" == PURPOSE_SCOPES[purpose]
        assert scope_for_purpose(purpose) in SCOPES
        assert purpose_for_scope(scope_for_purpose(purpose)) == purpose
        assert set(PURPOSES[purpose]) <= set(FACTS)
    assert purpose_for_scope("status:read") is None
    assert purpose_for_scope("comparison:statistics") is None
    assert purposes_for_scopes(["status:read", "comparison:civil_affairs", "comparison:education"]) == [
        "education", "civil_affairs"]
    assert purposes_for_scopes([]) == []


def test_purpose_tables_cannot_be_modified() -> None:
    with pytest.raises(TypeError):
        PURPOSES["statistics"] = ("in_register",)  # type: ignore[index]


@pytest.mark.parametrize("bad", ["statistics", "", "Education", None, 3, "x" * 500])
def test_unknown_purpose_is_refused(bad: object) -> None:
    with pytest.raises(DomainError) as exc:
        check_purpose(bad)
    assert exc.value.code == "invalid_purpose"
    assert exc.value.status == 422
    assert exc.value.details["allowed"] == ["education", "health_insurance", "civil_affairs"]
    assert len(str(exc.value)) < 300
    if isinstance(bad, str):
        with pytest.raises(DomainError):
            scope_for_purpose(bad)


def test_check_purpose_returns_the_purpose() -> None:
    assert check_purpose("health_insurance") == "health_insurance"


def test_answer_refuses_an_unknown_purpose() -> None:
    with pytest.raises(DomainError) as exc:
        run([A], "statistics")
    assert exc.value.code == "invalid_purpose"


@pytest.mark.parametrize("purpose", list(PURPOSES))
def test_each_purpose_discloses_exactly_its_facts(purpose: str) -> None:
    result = run([A, E], purpose)
    hit, miss = result.results
    allowed = PURPOSES[purpose]
    assert set(hit) == {"index", "id_masked", *allowed}
    assert set(miss) == {"index", "id_masked", *allowed}
    forbidden = set(FACTS) - set(allowed)
    assert not forbidden & set(hit)
    assert hit["in_register"] is True and hit["household_status"] == "identified"
    for fact in allowed[2:]:
        assert hit[fact] == FULL_FACTS[fact]
    assert miss["in_register"] is False
    assert all(miss[f] is None for f in allowed[1:])


def test_education_answer_in_detail() -> None:
    result = run([B, A], "education")
    assert result.results == [
        {"index": 0, "id_masked": B[:4] + "*" * 10 + B[-4:], "in_register": True,
         "household_status": "lifted_out", "schooling_stage": "primary"},
        {"index": 1, "id_masked": A[:4] + "*" * 10 + A[-4:], "in_register": True,
         "household_status": "identified", "schooling_stage": "junior"},
    ]
    assert result.purpose == "education"
    assert result.disclosed_household_ids == ["h-a", "h-b"]
    assert result.disclosed_member_ids == ["m-a", "m-b"]
    assert result.matched_count == 2 and result.invalid_count == 0 and result.count == 2


# -- jurisdiction and register membership --------------------------------------------------

def test_match_outside_the_jurisdiction_is_answered_like_no_match() -> None:
    for purpose in PURPOSES:
        result = run([C, E], purpose)
        outside, absent = result.results
        assert {k: v for k, v in outside.items() if k not in ("index", "id_masked")} == \
               {k: v for k, v in absent.items() if k not in ("index", "id_masked")}
        assert outside["in_register"] is False
        assert result.disclosed_household_ids == [] and result.matched_count == 0


def test_the_same_match_is_disclosed_to_a_caller_who_covers_it() -> None:
    result = run([C], "civil_affairs", covers=lambda v: v.startswith(OTHER_COUNTY))
    assert result.results[0]["in_register"] is True
    assert result.results[0]["minimum_living_tier"] == "tier_2"
    assert result.disclosed_household_ids == ["h-c"]


def test_covers_is_asked_with_the_village_code() -> None:
    asked: list[str] = []

    def covers(village: str) -> bool:
        asked.append(village)
        return True

    run([A, C], "education", covers=covers)
    assert sorted(asked) == [COUNTY + "001001", OTHER_COUNTY + "002003"]


def test_inactive_member_is_not_in_the_register() -> None:
    result = run([D], "health_insurance")
    assert result.results[0] == {"index": 0, "id_masked": D[:4] + "*" * 10 + D[-4:], "in_register": False,
                                 "household_status": None, "attribute": None, "monitoring_object_type": None}
    assert result.disclosed_household_ids == [] and result.disclosed_member_ids == []


@pytest.mark.parametrize("status", sorted(cmp.LEFT_REGISTER_STATUSES))
def test_household_that_left_the_register_is_answered_like_no_match(status: str) -> None:
    matches = {id_hmac(KEY, F): match("h-f", "m-f", status=status, **FULL_FACTS)}
    result = run([F], "civil_affairs", matches)
    assert result.results[0]["in_register"] is False
    assert result.results[0]["household_status"] is None
    assert result.disclosed_household_ids == []


@pytest.mark.parametrize("status", ["applicant", "identified", "lifted_out", "returned_to_poverty"])
def test_households_still_in_the_register_report_their_status(status: str) -> None:
    matches = {id_hmac(KEY, A): match(status=status)}
    row = run([A], "education", matches).results[0]
    assert row["in_register"] is True and row["household_status"] == status


def test_several_memberships_use_the_active_one_in_the_jurisdiction() -> None:
    old = match("h-old", "m-old", active=False, attribute="general")
    elsewhere = match("h-else", "m-else", village=OTHER_COUNTY + "000001", attribute="extreme_poverty")
    current = match("h-new", "m-new", attribute="minimum_living")
    digest = id_hmac(KEY, A)
    grouped = group_matches([(digest, old), (digest, current), (digest, elsewhere)])
    assert grouped == {digest: [old, current, elsewhere]}
    result = run([A], "civil_affairs", grouped)
    assert result.results[0]["attribute"] == "minimum_living"
    assert result.disclosed_household_ids == ["h-new"]
    # Only memberships that do not count: answered like no match.
    result = run([A], "civil_affairs", {digest: [old, elsewhere]})
    assert result.results[0]["in_register"] is False and result.disclosed_household_ids == []
    # Two active ones (a data error): deterministic choice.
    twin = match("h-aaa", "m-z", attribute="general")
    first = run([A], "civil_affairs", {digest: [current, twin]}).results[0]
    second = run([A], "civil_affairs", {digest: [twin, current]}).results[0]
    assert first == second and first["attribute"] == "general"


# -- invalid IDs, duplicates -----------------------------------------------------------------

def test_invalid_ids_are_reported_per_item_with_their_code() -> None:
    wrong_check = A[:17] + ("0" if A[17] != "0" else "1")
    future = make_id(born="20300101")
    not_a_date = make_id(born="19900230")
    before_1900 = make_id(born="18991231")
    values = [A, "12345", wrong_check, future, not_a_date, before_1900, None, 42, "", "6201021990010112",
              "62010219900101123", A[:15], "ABCDEFGHIJKLMNOPQR", E]
    result = run(values, "education")
    errors = {r["index"]: r["error"] for r in result.results if "error" in r}
    assert errors == {1: "id_format", 2: "id_check_digit", 3: "id_birth_date", 4: "id_birth_date",
                      5: "id_birth_date", 6: "id_format", 7: "id_format", 8: "id_format", 9: "id_format",
                      10: "id_format", 11: "id_format", 12: "id_format"}
    assert result.results[2] == {"index": 2, "id_masked": wrong_check[:4] + "*" * 10 + wrong_check[-4:],
                                 "error": "id_check_digit"}
    assert result.results[1] == {"index": 1, "id_masked": "*****", "error": "id_format"}
    assert result.results[6] == {"index": 6, "id_masked": None, "error": "id_format"}
    assert result.results[0]["in_register"] is True
    assert result.results[13]["in_register"] is False and "error" not in result.results[13]
    assert result.invalid_count == 12 and result.matched_count == 1
    assert [r["index"] for r in result.results] == list(range(len(values)))


def test_error_codes_agree_with_the_reference_validator() -> None:
    samples = [A, A.lower(), " " + A + "\t", A[:17] + "X", make_id(born="20240601"), make_id(born="20240602"),
               make_id(born="19000101"), make_id(born="20000229"), make_id(born="19000229"), "１" * 18,
               "6201021990010112３4", A + "\n", "\u3000" + A]
    prepared = prepare_ids(samples, KEY, today=TODAY)
    for i, raw in enumerate(samples):
        try:
            validate_id_number(raw, today=TODAY)
        except ValueError as exc:
            assert prepared.errors.get(i) == exc.code, raw  # type: ignore[attr-defined]
            assert prepared.hmacs[i] is None
        else:
            assert i not in prepared.errors, raw
            assert prepared.hmacs[i] == id_hmac(KEY, raw)


def test_normalisation_lower_case_x_and_whitespace() -> None:
    x_id = next(i for i in many_ids(200) if i.endswith("X"))
    prepared = prepare_ids([x_id, x_id.lower(), f"  {x_id}  "], KEY, today=TODAY)
    assert prepared.errors == {}
    assert len(set(prepared.hmacs)) == 1 and prepared.distinct_hmacs == [id_hmac(KEY, x_id)]
    assert prepared.masked == (x_id[:4] + "*" * 10 + x_id[-4:],) * 3


def test_duplicates_are_answered_at_every_position_and_looked_up_once() -> None:
    values = [A, E, A, "bad", A.lower(), E]
    prepared = prepare_ids(values, KEY, today=TODAY)
    assert prepared.distinct_hmacs == [id_hmac(KEY, A), id_hmac(KEY, E)]
    assert prepared.duplicate_count == 3 and prepared.valid_count == 5 and prepared.invalid_count == 1
    result = answer(prepared, ledger(), "education", covers=covers_county)
    rows = result.results
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[0]["in_register"] and rows[2]["in_register"] and rows[4]["in_register"]
    assert {k: v for k, v in rows[0].items() if k != "index"} == {k: v for k, v in rows[2].items() if k != "index"}
    assert rows[0] is not rows[2]  # separate dicts: a caller may add fields to one
    assert result.matched_count == 3
    assert result.disclosed_household_ids == ["h-a"]


def test_answer_does_not_mutate_shared_rows() -> None:
    result = run([A, A], "education")
    result.results[0]["row"] = 7
    assert "row" not in result.results[1]


def test_error_counts_and_repr_summary() -> None:
    prepared = prepare_ids([A, "x", make_id(born="20990101"), None, A], KEY, today=TODAY)
    assert prepared.error_counts() == {"id_format": 2, "id_birth_date": 1}
    assert repr(prepared) == "Prepared(count=5, valid=2, invalid=3, distinct=1)"
    assert len(prepared) == prepared.count == 5


def test_prepared_holds_no_plain_id_numbers() -> None:
    values = [A, B, C, " " + D.lower(), A[:17] + "0" if A[17] != "0" else A[:17] + "1", A + "9", A[:15]]
    prepared = prepare_ids(values, KEY, today=TODAY)
    dumped = [repr(prepared), str(prepared)]
    for f in fields(prepared):
        value = getattr(prepared, f.name)
        dumped.append(repr(value))
        if isinstance(value, dict) or hasattr(value, "items"):
            dumped.extend(repr(v) for v in value.items())
        elif isinstance(value, (list, tuple)):
            dumped.extend(repr(v) for v in value)
    assert not hasattr(prepared, "__dict__") or not prepared.__dict__.keys() - {f.name for f in fields(prepared)}
    text = "\n".join(dumped)
    for raw in values:
        number = raw.strip().upper()
        assert number not in text
        assert number[:17] not in text  # nor the 17 digits without the check character
        assert number[6:14] not in text  # nor the birth date
    assert KEY.decode() not in text


def test_prepared_matches_id_hmac_and_the_key_matters() -> None:
    ids = many_ids(50)
    one = prepare_ids(ids, KEY, today=TODAY)
    other = prepare_ids(ids, b"another-key-of-enough-length-123", today=TODAY)
    assert list(one.hmacs) == [id_hmac(KEY, i) for i in ids]
    assert not set(one.hmacs) & set(other.hmacs)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in one.distinct_hmacs)


def test_today_parameter_controls_birth_dates() -> None:
    newborn = make_id(born="20240615")
    assert prepare_ids([newborn], KEY, today=TODAY).errors == {0: "id_birth_date"}
    assert prepare_ids([newborn], KEY, today=date(2024, 6, 15)).errors == {}
    assert prepare_ids([make_id(born="20000101")], KEY).errors == {}  # default: the local date


def test_prepare_accepts_any_non_string_iterable() -> None:
    assert prepare_ids((x for x in [A, B]), KEY, today=TODAY).valid_count == 2
    assert prepare_ids((A,), KEY, today=TODAY).valid_count == 1
    assert prepare_ids([], KEY, today=TODAY).count == 0


@pytest.mark.parametrize("bad", [A, A.encode(), {"ids": [A]}, 5, None])
def test_prepare_refuses_a_string_or_non_list(bad: object) -> None:
    with pytest.raises(DomainError) as exc:
        prepare_ids(bad, KEY, today=TODAY)  # type: ignore[arg-type]
    assert exc.value.code == "invalid_ids" and exc.value.status == 422


@pytest.mark.parametrize("key", [b"short", "a string key of sufficient length", None])
def test_prepare_needs_a_proper_key(key: object) -> None:
    with pytest.raises(ValueError):
        prepare_ids([A], key)  # type: ignore[arg-type]


def test_too_many_ids_are_refused() -> None:
    assert MAX_IDS_PER_REQUEST == 100_000 and MAX_IDS_PER_FILE >= MAX_IDS_PER_REQUEST
    with pytest.raises(DomainError) as exc:
        prepare_ids(["x"] * (MAX_IDS_PER_REQUEST + 1), KEY, today=TODAY)
    assert exc.value.code == "too_many_ids" and exc.value.status == 422
    assert exc.value.details == {"max": MAX_IDS_PER_REQUEST, "count": MAX_IDS_PER_REQUEST + 1}
    with pytest.raises(DomainError):
        prepare_ids([A, B, C], KEY, today=TODAY, limit=2)
    assert prepare_ids([A, B], KEY, today=TODAY, limit=2).count == 2


def test_one_hundred_thousand_ids() -> None:
    ids = many_ids(MAX_IDS_PER_REQUEST)
    assert len(set(ids)) == MAX_IDS_PER_REQUEST
    ids[500] = "not an id"
    ids[99_999] = ids[0]
    prepared = prepare_ids(ids, KEY, today=TODAY)
    assert prepared.count == MAX_IDS_PER_REQUEST
    assert prepared.errors == {500: "id_format"}
    assert len(prepared.distinct_hmacs) == MAX_IDS_PER_REQUEST - 2
    assert prepared.hmacs[99_999] == prepared.hmacs[0]
    for i in range(0, MAX_IDS_PER_REQUEST, 4_999):
        if i != 500:
            assert prepared.hmacs[i] == id_hmac(KEY, ids[i])
            assert prepared.masked[i] == ids[i][:4] + "*" * 10 + ids[i][-4:]
    matches = {prepared.hmacs[i]: match(f"h-{i}", f"m-{i}", schooling_stage="senior")
               for i in range(0, MAX_IDS_PER_REQUEST, 10) if i != 500}
    result = answer(prepared, matches, "education", covers=covers_county)
    assert len(result.results) == MAX_IDS_PER_REQUEST
    assert result.matched_count == len(matches) + 1  # the duplicate at 99 999 repeats position 0
    assert result.invalid_count == 1
    assert len(result.disclosed_household_ids) == len(matches)
    assert result.results[99_999]["in_register"] is True
    assert result.results[1]["in_register"] is False


# -- ID files ----------------------------------------------------------------------------------

def test_csv_without_header() -> None:
    parsed = parse_id_file(f"{A}\n{B}\r\n\n{C}\n".encode(), "ids.csv")
    assert parsed.format == "csv" and parsed.header_row is None and parsed.column == 0
    assert parsed.rows == [(1, A), (2, B), (4, C)]
    assert parsed.values == [A, B, C] and parsed.row_numbers == [1, 2, 4] and len(parsed) == 3


def test_csv_with_header_and_bom() -> None:
    data = ("身份证号\r\n" + A + "\r\n" + B + "\r\n").encode("utf-8-sig")
    parsed = parse_id_file(data, "text/csv")
    assert parsed.header_row == 1 and parsed.rows == [(2, A), (3, B)]


def test_csv_with_a_named_id_column() -> None:
    data = f"序号,姓名,身份证号,备注\n1,张三,{A},\n2,李四,{B.lower()},x\n3,王五,,no id\n".encode()
    parsed = parse_id_file(data, None)
    assert parsed.column == 2 and parsed.header_row == 1
    assert parsed.rows == [(2, A), (3, B.lower())]  # normalisation is prepare_ids' job


@pytest.mark.parametrize("title", ["id_number", "ID Number", "公民身份号码", "身份证号码", " 身份证号（必填） "])
def test_id_column_title_variants(title: str) -> None:
    data = f"name,{title}\nx,{A}\n".encode()
    parsed = parse_id_file(data, "ids.csv")
    assert parsed.column == 1 and parsed.rows == [(2, A)]


def test_header_without_a_known_title_uses_the_first_column() -> None:
    parsed = parse_id_file(f"IDs to check,comment\n{A},a\n{B},b\n".encode(), "ids.csv")
    assert parsed.header_row == 1 and parsed.column == 0 and parsed.values == [A, B]


def test_a_mistyped_first_id_is_data_not_a_header() -> None:
    parsed = parse_id_file(f"62010219900101\n{A}\n".encode(), "ids.csv")
    assert parsed.header_row is None and parsed.rows == [(1, "62010219900101"), (2, A)]


def test_header_after_leading_blank_rows_keeps_its_row_number() -> None:
    parsed = parse_id_file(f"\n,\nid_number\n{A}\n\n{B}\n".encode(), "ids.csv")
    assert parsed.header_row == 3 and parsed.rows == [(4, A), (6, B)]


def test_csv_gb18030() -> None:
    data = f"姓名,身份证号\n张三,{A}\n李四,{B}\n".encode("gb18030")
    parsed = parse_id_file(data, "ids.csv")
    assert parsed.column == 1 and parsed.rows == [(2, A), (3, B)]


def test_csv_utf16_and_tab_separated() -> None:
    data = f"姓名\t身份证号\n张三\t{A}\n".encode("utf-16")
    assert parse_id_file(data, "ids.txt").rows == [(2, A)]
    assert parse_id_file(f"{A}\tx\n{B}\ty\n".encode(), "ids.tsv").values == [A, B]


def test_csv_quoted_multiline_cell_counts_as_one_row() -> None:
    data = f'note,id_number\n"two\nlines",{A}\nx,{B}\n'.encode()
    assert parse_id_file(data, "ids.csv").rows == [(2, A), (3, B)]


def test_excel_text_markers_and_spaces_are_removed() -> None:
    data = f"'{A}\n=\"{B}\"\n\u3000{C} \n".encode()
    assert parse_id_file(data, "ids.csv").values == [A, B, C]


def _xlsx(rows: list[list[object]], sheets: int = 1, cells: dict[str, object] | None = None) -> bytes:
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    for ref, value in (cells or {}).items():
        ws[ref] = value
    for i in range(1, sheets):
        wb.create_sheet(f"other{i}").append([E])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_with_header_and_blank_rows() -> None:
    data = _xlsx([["姓名", "身份证号"], ["张三", A], [None, None], ["李四", B], ["王五", None]], sheets=2)
    parsed = parse_id_file(data, "ids.xlsx")
    assert parsed.format == "xlsx" and parsed.header_row == 1 and parsed.column == 1
    assert parsed.rows == [(2, A), (4, B)]  # the second sheet is ignored


def test_xlsx_without_header_leading_blank_rows_and_numbers() -> None:
    numeric = "620102199001011"  # a number cell (Excel would lose digits of a real ID)
    data = _xlsx([], cells={"A3": A, "A5": int(numeric), "A6": float(numeric), "A8": B})
    parsed = parse_id_file(data, "application/octet-stream")
    assert parsed.header_row is None
    assert parsed.rows == [(3, A), (5, numeric), (6, numeric), (8, B)]


def test_xlsx_detected_by_content_whatever_the_name() -> None:
    data = _xlsx([["id_number"], [A]])
    assert parse_id_file(data, "ids.csv").format == "xlsx"
    assert parse_id_file(data, None).rows == [(2, A)]
    assert parse_id_file(
        data, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet").values == [A]


def test_parsed_file_repr_shows_no_ids() -> None:
    parsed = parse_id_file(f"{A}\n{B}\n".encode(), "ids.csv")
    assert A not in repr(parsed) and B not in repr(parsed)
    assert repr(parsed) == "ParsedFile(format='csv', rows=2, header_row=None, column=0)"


@pytest.mark.parametrize("data,hint,code", [
    (b"", "ids.csv", "empty_file"),
    (b"  \r\n\r\n", "ids.csv", "empty_file"),
    ("身份证号\n\n".encode(), "ids.csv", "empty_file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, None, "unsupported_format"),
    (b"whatever", "ids.xls", "unsupported_format"),
    (b"%PDF-1.4 ...", "ids.pdf", "unsupported_format"),
    (b"%PDF-1.4 ...", "application/pdf", "unsupported_format"),
    (b"plain text, not a workbook", "ids.xlsx", "invalid_file"),
    (b"PK\x03\x04 broken zip", "ids.xlsx", "invalid_file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", None, "invalid_file"),
    (b"\xff\xfe\x00", "ids.csv", "invalid_file"),
])
def test_structural_errors(data: bytes, hint: str | None, code: str) -> None:
    with pytest.raises(DomainError) as exc:
        parse_id_file(data, hint)
    assert exc.value.code == code and exc.value.status == 422


def test_empty_xlsx_is_refused() -> None:
    with pytest.raises(DomainError) as exc:
        parse_id_file(_xlsx([["身份证号"]]), "ids.xlsx")
    assert exc.value.code == "empty_file"


def test_two_id_columns_are_refused_with_the_row() -> None:
    with pytest.raises(DomainError) as exc:
        parse_id_file(f"\nid_number,身份证号\n{A},{A}\n".encode(), "ids.csv")
    assert exc.value.code == "duplicate_column" and exc.value.details["row"] == 2


def test_too_many_rows_are_refused_with_the_row() -> None:
    data = ("身份证号\n" + "\n".join([A] * 5) + "\n").encode()
    assert len(parse_id_file(data, "ids.csv", limit=5)) == 5
    with pytest.raises(DomainError) as exc:
        parse_id_file(data, "ids.csv", limit=4)
    assert exc.value.code == "too_many_rows"
    assert exc.value.details == {"row": 6, "max": 4}


def test_file_too_large_is_refused() -> None:
    with pytest.raises(DomainError) as exc:
        parse_id_file(b"x" * 2048, "ids.csv", max_bytes=1024)
    assert exc.value.code == "file_too_large" and exc.value.status == 422


def test_file_to_answer_keeps_row_numbers() -> None:
    data = f"身份证号\n{A}\n\nnot-an-id\n{C}\n".encode()
    parsed = parse_id_file(data, "ids.csv")
    prepared = prepare_ids(parsed.values, KEY, today=TODAY, limit=MAX_IDS_PER_FILE)
    result = answer(prepared, ledger(), "education", covers=covers_county)
    out = results_csv(result.results, "education", row_numbers=parsed.row_numbers).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(out)))
    assert [r[0] for r in rows[1:]] == ["2", "4", "5"]


# -- results file ------------------------------------------------------------------------------

def test_results_csv_content() -> None:
    result = run([A, "bad-id-value", C, E], "health_insurance")
    data = results_csv(result.results, "health_insurance")
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "\r\n" in text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["row", "id_masked", "in_register", "household_status", "attribute",
                       "monitoring_object_type", "error"]
    assert rows[0] == result_columns("health_insurance")
    assert rows[1] == ["1", A[:4] + "*" * 10 + A[-4:], "true", "identified", "minimum_living", "marginal", ""]
    assert rows[2] == ["2", "BAD-****ALUE", "", "", "", "", "id_format"]
    assert rows[3] == ["3", C[:4] + "*" * 10 + C[-4:], "false", "", "", "", ""]
    assert rows[4][2] == "false"
    assert len(rows) == 5
    for raw in (A, C, E):
        assert raw not in text


@pytest.mark.parametrize("purpose", list(PURPOSES))
def test_results_csv_columns_per_purpose(purpose: str) -> None:
    text = results_csv([], purpose).decode("utf-8-sig")
    assert text == ",".join(["row", "id_masked", *PURPOSES[purpose], "error"]) + "\r\n"


def test_results_csv_row_column_sources() -> None:
    rows = [{"index": 0, "id_masked": "6201**********0011", "in_register": False, "household_status": None},
            {"index": 1, "row": 17, "id_masked": "6201**********0022", "in_register": True,
             "household_status": "identified", "schooling_stage": None}]
    plain = list(csv.reader(io.StringIO(results_csv(rows, "education").decode("utf-8-sig"))))
    assert [r[0] for r in plain[1:]] == ["1", "17"]
    numbered = list(csv.reader(io.StringIO(
        results_csv(rows, "education", row_numbers=[9, 10]).decode("utf-8-sig"))))
    assert [r[0] for r in numbered[1:]] == ["9", "17"]


def test_results_csv_neutralises_formulas() -> None:
    result = run(["=HYPERLINK(\"http://x\")", "+12345678", "@SUM(1,2,3)", "-12345678"], "education")
    text = results_csv(result.results, "education").decode("utf-8-sig")
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        assert row[1].startswith("'")


def test_results_csv_refuses_an_unknown_purpose() -> None:
    with pytest.raises(DomainError):
        results_csv([], "statistics")


# -- batches -------------------------------------------------------------------------------

def test_chunks() -> None:
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunks((1, 2, 3), 3)) == [(1, 2, 3)]
    assert list(chunks([], 10)) == []
    assert list(chunks(iter(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunks((x for x in "abc"), 2)) == [["a", "b"], ["c"]]
    assert sum(len(c) for c in chunks(list(range(12_345)), cmp.LOOKUP_BATCH_SIZE)) == 12_345
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            list(chunks([1], bad))  # type: ignore[arg-type]


def test_chunks_of_distinct_hmacs_cover_the_lookup() -> None:
    prepared = prepare_ids(many_ids(25), KEY, today=TODAY)
    batches = list(chunks(prepared.distinct_hmacs, 10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [h for b in batches for h in b] == prepared.distinct_hmacs


def test_module_is_pure() -> None:
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(cmp.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"fastapi", "asyncpg", "aiokafka", "logging", "asyncio", "httpx", "starlette"}
    assert isinstance(Prepared, type) and isinstance(ParsedFile, type)
