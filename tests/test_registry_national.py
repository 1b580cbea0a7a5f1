"""Reconciliation with the national poverty information system (services/registry/national.py)."""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import pytest
from openpyxl import Workbook

from eventkit.errors import DomainError
from services.registry import national as nat
from services.registry.identity import (
    check_character,
    id_hmac,
    mask_id_number,
    mask_name,
)
from services.registry.ledger import fold

KEY = b"national-reconciliation-test-key"
V1 = "620102001001"
V2 = "620102001002"
V_OTHER = "620103002001"  # another county

_seq = itertools.count(11)


def make_id(birth: str = "19800101", address: str = "620102") -> str:
    first17 = f"{address}{birth}{next(_seq) % 1000:03d}"
    return first17 + check_character(first17)


def hasher(number: str) -> str:
    return id_hmac(KEY, number)


def name_hasher(name: str) -> str:
    return nat.name_hmac(KEY, name)


EN = ["household_ref", "village_code", "household_status", "id_number", "name", "relation",
      "per_capita_income", "income_year"]
ZH = ["户编号", "行政区划代码", "户状态", "证件号码", "姓名", "与户主关系", "人均纯收入（元）", "年度"]


def csv_bytes(header: list[str], rows: list[list[Any]], encoding: str = "utf-8") -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue().encode(encoding)


def xlsx_bytes(header: list[str], rows: list[list[Any]], first_sheet: str = "国办数据") -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.title = first_sheet
    ws.append(header)
    for r in rows:
        ws.append(r)
    other = wb.create_sheet("说明")
    other.append(["this sheet is ignored"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def parse(data: bytes, name: str = "extract.csv", **kw: Any) -> nat.Extract:
    return nat.parse_extract(data, name, hasher, **kw)


# A small household: head, spouse, son.
HEAD_ID, WIFE_ID, SON_ID = make_id("19720501"), make_id("19750809"), make_id("20120901")
HEAD_NAME, WIFE_NAME, SON_NAME = "张国强", "李秀英", "张小明"


def household_rows(ref: str = "N001", village: str = V1, status: str = "已脱贫", income: Any = "6543.21",
                   year: Any = 2024) -> list[list[Any]]:
    return [
        [ref, village, status, HEAD_ID, HEAD_NAME, "户主", income, year],
        [ref, village, status, WIFE_ID, WIFE_NAME, "配偶", None, year],
        [ref, village, status, SON_ID, SON_NAME, "之子", None, year],
    ]


def reg_member(number: str | None, relation: str | None, *, active: bool = True, member_id: str | None = None,
               name: str | None = None) -> nat.RegistryMember:
    return nat.RegistryMember(
        member_id=member_id or f"m-{hasher(number)[:8] if number else 'erased'}", id_hmac=hasher(number) if number else None,
        relation=relation, active=active, name_masked=mask_name(name) if name else None,
        id_masked=mask_id_number(number) if number else None,
        name_hmac=name_hasher(name) if name else None)


def reg_household(household_id: str = "h-1", village: str = V1, status: str = "lifted_out",
                  income: Decimal | None = Decimal("6543.21"), members: list[nat.RegistryMember] | None = None
                  ) -> nat.RegistryHousehold:
    if members is None:
        members = [reg_member(HEAD_ID, "head", name=HEAD_NAME), reg_member(WIFE_ID, "12", name=WIFE_NAME),
                   reg_member(SON_ID, "22", name=SON_NAME)]
    return nat.RegistryHousehold(household_id, village, status, income, tuple(members))


def fields(report: nat.Report) -> list[tuple[str, str]]:
    return [(it["field"], it["kind"]) for it in report.items]


# -- template and headers ------------------------------------------------------------

def test_template_has_bom_and_bilingual_headers():
    data = nat.template_csv()
    assert data.startswith(b"\xef\xbb\xbf")
    header = next(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert header == [c.header for c in nat.COLUMNS]
    assert header[0] == "household_ref 户编号"
    extract = parse(data)
    assert [e["code"] for e in extract.errors] == ["no_data_rows"]


def test_template_headers_with_rows_parse():
    body = nat.template_csv() + csv_bytes(EN, household_rows()).split(b"\r\n", 1)[1]
    extract = parse(body)
    assert extract.errors == []
    assert len(extract.households) == 1 and len(extract.households[0].members) == 3


def test_english_headers_csv():
    extract = parse(csv_bytes(EN, household_rows()))
    assert extract.ok and extract.format == "csv" and extract.rows == 3
    (h,) = extract.households
    assert h.household_ref == "N001" and h.village_code == V1
    assert h.status == "lifted_out" and h.status_raw == "已脱贫"
    assert h.per_capita_income == Decimal("6543.21") and h.income_year == 2024
    assert h.row == 2
    assert [m.row for m in h.members] == [2, 3, 4]
    assert [m.relation for m in h.members] == ["head", "10", "20"]
    assert h.head is not None and h.head.id_hmac == hasher(HEAD_ID)
    assert h.members[0].id_masked == mask_id_number(HEAD_ID)
    assert h.members[0].name_masked == mask_name(HEAD_NAME)
    assert h.members[0].name_hmac is None  # names are not hashed without a name_hasher
    assert extract.villages == [V1] and extract.member_count == 3


def test_chinese_headers_gb18030_csv():
    rows = household_rows(status="未脱贫", income="3,200.5", year="2024年")
    extract = parse(csv_bytes(ZH, rows, encoding="gb18030"), "text/csv")
    assert extract.ok, extract.errors
    (h,) = extract.households
    assert h.status == "identified" and h.per_capita_income == Decimal("3200.5") and h.income_year == 2024


def test_chinese_headers_with_utf8_bom_and_aliases_and_extra_columns():
    header = ["序号", "户编码", "村代码", "户状态", "身份证号", "姓名", "与户主关系", "人均纯收入", "备注"]
    rows = [[1, "N9", V1, "0", HEAD_ID, HEAD_NAME, "02", "4000", "x"],
            [2, "N9", V1, "0", WIFE_ID, WIFE_NAME, "妻", "", ""]]
    extract = parse(b"\xef\xbb\xbf" + csv_bytes(header, rows))
    assert extract.ok, extract.errors
    (h,) = extract.households
    assert h.status == "identified" and h.income_year is None
    assert [m.relation for m in h.members] == ["head", "12"]


def test_xlsx_first_sheet_chinese_headers_and_numbers():
    rows = [["N001", int(V1), "返贫", HEAD_ID, HEAD_NAME, "户主", 5100.5, 2024],
            [None, None, None, None, None, None, None, None],  # blank row: skipped, numbering kept
            ["N001", int(V1), "返贫", WIFE_ID, WIFE_NAME, "10", None, None]]
    data = xlsx_bytes(ZH, rows)
    extract = parse(data, "国办导出.xlsx")
    assert extract.ok, extract.errors
    assert extract.format == "xlsx" and extract.rows == 2
    (h,) = extract.households
    assert h.village_code == V1 and h.status == "returned_to_poverty"
    assert h.per_capita_income == Decimal("5100.5")
    assert [m.row for m in h.members] == [2, 4]


def test_xlsx_row_numbers_in_errors_and_content_type_detection():
    bad = HEAD_ID[:17] + ("0" if HEAD_ID[17] != "0" else "1")
    rows = [["N1", V1, "已脱贫", WIFE_ID, WIFE_NAME, "户主", 100, None],
            ["N1", V1, "已脱贫", bad, HEAD_NAME, "配偶", None, None]]
    # The content decides: a ZIP is read as XLSX whatever the name says.
    extract = nat.parse_extract(xlsx_bytes(EN, rows), "application/octet-stream", hasher)
    assert extract.format == "xlsx"
    assert [(e["row"], e["column"], e["code"]) for e in extract.errors] == [(3, "id_number", "id_check_digit")]


def test_csv_sent_as_ms_excel_content_type_is_read_as_csv():
    extract = nat.parse_extract(csv_bytes(EN, household_rows()), "application/vnd.ms-excel", hasher)
    assert extract.ok and extract.format == "csv"


def test_old_xls_and_corrupt_xlsx_are_refused():
    with pytest.raises(DomainError) as exc:
        parse(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "a.xls")
    assert exc.value.code == "unsupported_format"
    with pytest.raises(DomainError) as exc:
        parse(b"PK\x03\x04 not really a zip", "a.xlsx")
    assert exc.value.code == "invalid_file"
    with pytest.raises(DomainError) as exc:
        parse(b"plain text", "a.xlsx")
    assert exc.value.code == "invalid_file"
    with pytest.raises(DomainError) as exc:
        parse(b"x" * 100, max_bytes=10)
    assert exc.value.code == "file_too_large" and exc.value.status == 413


# -- row-numbered errors ---------------------------------------------------------------

def test_missing_and_duplicate_columns_are_header_errors():
    extract = parse(csv_bytes(["household_ref", "village_code", "姓名", "name"], [["N1", V1, "a", "b"]]))
    codes_ = {(e["row"], e["column"], e["code"]) for e in extract.errors}
    assert (1, "name", "duplicate_column") in codes_
    for column in ("household_status", "id_number", "relation", "per_capita_income"):
        assert (1, column, "missing_column") in codes_
    assert (1, "income_year", "missing_column") not in codes_  # optional
    assert extract.households == []


def test_empty_file():
    extract = parse(b"")
    assert [(e["row"], e["code"]) for e in extract.errors] == [(1, "missing_header")]


def test_row_errors_are_numbered_as_in_a_spreadsheet():
    bad_check = HEAD_ID[:17] + ("0" if HEAD_ID[17] != "0" else "1")
    other = make_id("19900101")
    rows = [
        ["N1", V1, "已脱贫", bad_check, HEAD_NAME, "户主", "100", 2024],  # row 2: check digit
        ["N1", "62010200100", "已脱贫", WIFE_ID, WIFE_NAME, "配偶", "", 2024],  # row 3: village code
        ["N1", V1, "搬走了", SON_ID, SON_NAME, "子", "", 2024],  # row 4: status
        ["N2", V1, "贫困户", other, "王五", "邻居", "", 2024],  # row 5: relation
        ["N3", V1, "贫困户", make_id("19910101"), "赵六", "户主", "abc", 2024],  # row 6: income
        ["N3", V1, "贫困户", make_id("19920101"), "", "配偶", "", "24"],  # row 7: name, year
        ["", V1, "贫困户", make_id("19930101"), "钱七", "户主", "", ""],  # row 8: household_ref
        ["N4", V1, "贫困户", "12345", "孙八", "户主", "", ""],  # row 9: ID format
        ["N4", "620102000000", "贫困户", make_id("19940101"), "周九", "配偶", "", ""],  # row 10: not a village
    ]
    extract = parse(csv_bytes(EN, rows))
    got = {(e["row"], e["column"], e["code"]) for e in extract.errors}
    assert got == {
        (2, "id_number", "id_check_digit"),
        (3, "village_code", "invalid_village_code"),
        (4, "household_status", "invalid_household_status"),
        (5, "relation", "invalid_relation"),
        (6, "per_capita_income", "invalid_income"),
        (7, "name", "missing_value"),
        (7, "income_year", "invalid_income_year"),
        (8, "household_ref", "missing_value"),
        (9, "id_number", "id_format"),
        (10, "village_code", "invalid_village_code"),
    }
    assert all(set(e) == {"row", "column", "code", "message"} for e in extract.errors)
    assert not extract.ok
    # Rows with errors are left out of the households.
    assert {h.household_ref for h in extract.households} == set()


def test_inconsistent_household_values_between_rows():
    rows = [
        ["N1", V1, "已脱贫", HEAD_ID, HEAD_NAME, "户主", "100.00", 2024],
        ["N1", V1, "未脱贫", WIFE_ID, WIFE_NAME, "配偶", "", 2024],  # row 3: status
        ["N1", V2, "已脱贫", SON_ID, SON_NAME, "子", "", 2024],  # row 4: village
        ["N1", V1, "已脱贫", make_id("19990101"), "张四", "女", "100.5", 2024],  # row 5: income
        ["N1", V1, "已脱贫", make_id("19990102"), "张五", "女", "100", 2023],  # row 6: year (100 == 100.00)
        ["N1", V1, "脱贫", make_id("19990103"), "张六", "女", "", ""],  # row 7: same status, blanks: fine
    ]
    extract = parse(csv_bytes(EN, rows))
    got = [(e["row"], e["column"], e["code"]) for e in extract.errors]
    assert got == [(3, "household_status", "inconsistent_household"),
                   (4, "village_code", "inconsistent_household"),
                   (5, "per_capita_income", "inconsistent_household"),
                   (6, "income_year", "inconsistent_household")]
    assert "row 2" in extract.errors[0]["message"]
    (h,) = extract.households
    assert [m.row for m in h.members] == [2, 7]


def test_income_may_be_given_on_any_single_row():
    rows = household_rows(income=None)
    rows[2][6] = "888"
    (h,) = parse(csv_bytes(EN, rows)).households
    assert h.per_capita_income == Decimal("888")


def test_duplicate_id_numbers():
    rows = household_rows() + [["N2", V1, "已脱贫", WIFE_ID, WIFE_NAME, "户主", "1", 2024],
                               ["N001", V1, "已脱贫", SON_ID, SON_NAME, "子", "", 2024]]
    extract = parse(csv_bytes(EN, rows))
    got = [(e["row"], e["column"], e["code"]) for e in extract.errors]
    assert got == [(5, "id_number", "duplicate_id_number"), (6, "id_number", "duplicate_id_number")]
    assert "row 3 (household N001)" in extract.errors[0]["message"]
    assert "the same household" in extract.errors[1]["message"]


def test_id_number_stored_as_a_float_in_xlsx():
    rows = [["N1", V1, "已脱贫", float(HEAD_ID[:17] + "0"), HEAD_NAME, "户主", 1, None]]
    extract = parse(xlsx_bytes(EN, rows), "x.xlsx")
    assert [(e["row"], e["code"]) for e in extract.errors] == [(2, "id_format")]


# -- no plain personal data --------------------------------------------------------------

def _everything(obj: Any) -> str:
    return repr(obj) + repr(asdict(obj))


def test_extract_holds_no_plain_id_number_or_name():
    bad = WIFE_ID[:17] + ("0" if WIFE_ID[17] != "0" else "1")
    rows = household_rows() + [["N2", V1, "已脱贫", bad, "欧阳娜娜", "户主", "", ""],
                               ["N2", V1, "已脱贫", HEAD_ID, "欧阳娜娜", "户主", "", ""]]
    extract = parse(csv_bytes(EN, rows), name_hasher=name_hasher)
    text = _everything(extract)
    for secret in (HEAD_ID, WIFE_ID, SON_ID, bad, HEAD_ID[:17], HEAD_NAME, WIFE_NAME, SON_NAME, "欧阳娜娜"):
        assert secret not in text
    for h in extract.households:
        for m in h.members:
            for value in vars(m).values():
                assert value not in (HEAD_ID, WIFE_ID, SON_ID, HEAD_NAME, WIFE_NAME, SON_NAME)
    assert extract.errors  # the errors name the row, never the number
    assert extract.households[0].members[0].name_hmac == name_hasher(nat.normalise_name(HEAD_NAME))


def test_id_number_in_a_wrong_column_is_masked_in_error_messages():
    rows = [["N1", HEAD_ID, WIFE_ID + "x", make_id("19800202"), "某某", "户主", SON_ID[:17] + "X", ""]]
    extract = parse(csv_bytes(EN, rows))
    assert {e["column"] for e in extract.errors} >= {"village_code", "household_status", "per_capita_income"}
    text = repr(extract.errors)
    for secret in (HEAD_ID, WIFE_ID, SON_ID[:17]):
        assert secret not in text
    assert mask_id_number(HEAD_ID) in text


def test_name_hmac_normalises_and_needs_a_key():
    assert nat.name_hmac(KEY, " 阿依古丽•买买提 ") == nat.name_hmac(KEY, "阿依古丽·买买提")
    assert nat.name_hmac(KEY, "张三") != nat.name_hmac(b"another-key-of-16-bytes", "张三")
    with pytest.raises(ValueError):
        nat.name_hmac(b"short", "张三")


# -- reconciliation -------------------------------------------------------------------------

def test_identical_households_match_despite_different_refs():
    extract = parse(csv_bytes(EN, household_rows(ref="4201-ANY-NUMBER")))
    report = nat.reconcile(extract, [reg_household()], year=2024)
    assert report.items == []
    s = report.summary
    assert (s["matched"], s["missing_in_registry"], s["missing_in_national"]) == (1, 0, 0)
    assert s["households_compared"] == 1 and s["matched_without_differences"] == 1
    assert s["by_kind"] == {"missing_in_registry": 0, "missing_in_national": 0, "different": 0}


def test_household_missing_in_registry_and_in_national():
    other_head = make_id("19600101")
    rows = household_rows() + [["N2", V1, "未脱贫", other_head, "刘一", "户主", "", ""]]
    extract = parse(csv_bytes(EN, rows))
    only_registry = reg_household("h-2", V1, members=[reg_member(make_id("19500101"), "head", name="陈二")])
    outside = reg_household("h-3", V_OTHER, members=[reg_member(make_id("19500102"), "head")])
    report = nat.reconcile(extract, [reg_household(), only_registry, outside], year=2024)
    # Same village: ordered by household (the national ref, else the registry id).
    assert fields(report) == [("household", "missing_in_registry"), ("household", "missing_in_national")]
    missing_reg, missing_nat = report.items
    assert missing_reg["household_ref"] == "N2" and missing_reg["household_id"] is None
    assert missing_reg["national"] == "N2" and missing_reg["registry"] is None
    assert missing_reg["member"] == mask_id_number(other_head) and missing_reg["member_name"] == "刘*"
    assert missing_nat["household_id"] == "h-2" and missing_nat["household_ref"] is None
    assert missing_nat["member_name"] == "陈*"
    s = report.summary
    assert (s["matched"], s["missing_in_registry"], s["missing_in_national"]) == (1, 1, 1)
    assert s["registry_households_in_scope"] == 2 and s["households_compared"] == 3
    assert s["by_field"]["household"] == 2

    # With the county as region, the household of another county is still out of scope;
    # with the city it is in.
    assert nat.reconcile(extract, [reg_household(), only_registry, outside], year=2024,
                         region="620102").summary["missing_in_national"] == 1
    city = nat.reconcile(extract, [reg_household(), only_registry, outside], year=2024, region="620100000000")
    assert city.summary["missing_in_national"] == 2 and city.region == "6201"


def test_region_prefix_covers_villages_without_national_rows():
    extract = parse(csv_bytes(EN, household_rows()))
    elsewhere = reg_household("h-9", V2, members=[reg_member(make_id("19500103"), "head")])
    assert nat.reconcile(extract, [reg_household(), elsewhere], year=2024).items == []
    report = nat.reconcile(extract, [reg_household(), elsewhere], year=2024, region="620102001")
    assert fields(report) == [("household", "missing_in_national")]


def test_household_level_differences():
    extract = parse(csv_bytes(EN, household_rows(village=V2, status="未脱贫", income="5000")))
    registry = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "10")])
    report = nat.reconcile(extract, [registry], year=2024)
    by_field = {it["field"]: it for it in report.items}
    assert by_field["village_code"]["national"] == V2 and by_field["village_code"]["registry"] == V1
    assert by_field["status"]["national"] == "identified" and by_field["status"]["registry"] == "lifted_out"
    assert by_field["member_count"]["national"] == 3 and by_field["member_count"]["registry"] == 2
    assert by_field["per_capita_income"]["national"] == "5000.00"
    assert by_field["per_capita_income"]["registry"] == "6543.21"
    assert by_field["member"]["kind"] == "missing_in_registry"
    assert all(it["household_id"] == "h-1" and it["household_ref"] == "N001" for it in report.items)
    assert all(it["village_code"] == V1 for it in report.items)  # the registry's village
    assert report.summary["matched_with_differences"] == 1
    assert report.summary["by_kind"]["different"] == 4


@pytest.mark.parametrize("national, registry, differs", [
    ("6543.21", Decimal("6543.21"), False),
    ("6543.2", Decimal("6543.21"), False),  # within 0.01 yuan
    ("6543.22", Decimal("6543.21"), False),
    ("6543.23", Decimal("6543.21"), True),
    ("6543.19", Decimal("6543.21"), True),
    ("6543.21", None, True),
    (None, Decimal("6543.21"), True),
    (None, None, False),
])
def test_income_tolerance(national, registry, differs):
    extract = parse(csv_bytes(EN, household_rows(income=national)))
    report = nat.reconcile(extract, [reg_household(income=registry)], year=2024)
    assert (("per_capita_income", "different") in fields(report)) is differs


def test_income_of_another_year_is_not_compared_and_blank_year_means_the_compared_year():
    extract = parse(csv_bytes(EN, household_rows(income="1", year=2023)))
    report = nat.reconcile(extract, [reg_household()], year=2024)
    assert report.items == [] and report.summary["income_not_compared"] == 1
    extract = parse(csv_bytes(EN, household_rows(income="1", year=None)))
    report = nat.reconcile(extract, [reg_household()], year=2024)
    assert fields(report) == [("per_capita_income", "different")]


def test_registry_income_given_as_text_or_float_is_a_decimal():
    assert reg_household(income="12.5").per_capita_income == Decimal("12.5")  # type: ignore[arg-type]


def test_member_differences():
    newcomer = make_id("20200202")
    rows = household_rows()
    rows[2][5] = "之女婿"  # son recorded as son-in-law in the national system
    rows.append(["N001", V1, "已脱贫", newcomer, "张小宝", "孙子", "", 2024])
    extract = parse(csv_bytes(EN, rows))
    grandma = make_id("19400101")
    registry = reg_household(members=[
        reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "12"), reg_member(SON_ID, "22"),
        reg_member(grandma, "52", name="王秀兰", member_id="m-grandma")])
    report = nat.reconcile(extract, [registry], year=2024)
    items = {(it["field"], it["kind"]): it for it in report.items}
    assert set(items) == {("member", "missing_in_registry"), ("member", "missing_in_national"),
                          ("relation", "different")}
    added = items[("member", "missing_in_registry")]
    assert added["national"] == mask_id_number(newcomer) and added["registry"] is None
    assert added["member"] == mask_id_number(newcomer) and added["member_name"] == "张*宝"
    gone = items[("member", "missing_in_national")]
    assert gone["national"] is None and gone["registry"] == mask_id_number(grandma)
    assert gone["member_id"] == "m-grandma" and gone["member_name"] == "王*兰"
    rel = items[("relation", "different")]
    assert (rel["national"], rel["registry"]) == ("28", "22")
    assert rel["member"] == mask_id_number(SON_ID) and rel["member_id"] == f"m-{hasher(SON_ID)[:8]}"
    # 4 on each side: no member_count difference
    assert report.summary["by_field"]["member"] == 2 and report.summary["by_field"]["member_count"] == 0


@pytest.mark.parametrize("national, registry, equal", [
    ("户主", "head", True), ("配偶", "12", True), ("妻", "10", True), ("子", "22", True),
    ("长子", "23", False), ("子", "28", False), ("父母", "51", True), ("父母", "54", False),
    ("之兄弟姐妹", "71", True), ("兄弟姐妹", "72", False), ("之儿媳", "38", True), ("之子", "head", False),
])
def test_relation_equivalence(national, registry, equal):
    rows = household_rows()
    rows[2][5] = national
    extract = parse(csv_bytes(EN, rows))
    registry_h = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "12"),
                                        reg_member(SON_ID, registry)])
    report = nat.reconcile(extract, [registry_h], year=2024)
    assert (("relation", "different") not in fields(report)) is equal


def test_unknown_registry_relation_is_not_compared():
    extract = parse(csv_bytes(EN, household_rows()))
    registry = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, None),
                                      reg_member(SON_ID, "20")])
    assert nat.reconcile(extract, [registry], year=2024).items == []


def test_inactive_registry_members_count_as_absent():
    extract = parse(csv_bytes(EN, household_rows()))
    registry = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "10"),
                                      reg_member(SON_ID, "20", active=False, member_id="m-son")])
    report = nat.reconcile(extract, [registry], year=2024)
    assert fields(report) == [("member_count", "different"), ("member", "missing_in_registry")]
    count, member = report.items
    assert (count["national"], count["registry"]) == (3, 2)
    assert member["registry"] == "inactive" and member["member_id"] == "m-son"
    assert member["member"] == mask_id_number(SON_ID)


def test_member_active_in_another_registry_household_is_pointed_at():
    extract = parse(csv_bytes(EN, household_rows()))
    mine = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "10")])
    sons = reg_household("h-son", V1, members=[reg_member(SON_ID, "head")])
    report = nat.reconcile(extract, [mine, sons], year=2024)
    member = next(it for it in report.items if it["field"] == "member")
    assert member["kind"] == "missing_in_registry" and member["registry"] == "in household h-son"
    # The son's own household is not in the national extract.
    assert ("household", "missing_in_national") in fields(report)


def test_names_compared_when_both_sides_carry_hashes():
    rows = household_rows()
    rows[1][4] = "李秀云"
    extract = parse(csv_bytes(EN, rows), name_hasher=name_hasher)
    report = nat.reconcile(extract, [reg_household()], year=2024)
    assert fields(report) == [("name", "different")]
    (item,) = report.items
    assert (item["national"], item["registry"]) == ("李*云", "李*英")
    # Without name hashes on the extract, names are not compared.
    assert nat.reconcile(parse(csv_bytes(EN, rows)), [reg_household()], year=2024).items == []


def test_erased_registry_members_are_not_reported_but_counted():
    extract = parse(csv_bytes(EN, household_rows()[:2]))
    registry = reg_household(members=[reg_member(HEAD_ID, "head"), reg_member(WIFE_ID, "10"),
                                      reg_member(None, "20")])
    report = nat.reconcile(extract, [registry], year=2024)
    assert fields(report) == [("member_count", "different")]
    assert report.summary["registry_members_without_id_hash"] == 1


def test_matching_prefers_the_head_and_is_one_to_one():
    # The national system split the registry household: the son has his own household there.
    rows = [["N-PARENTS", V1, "已脱贫", HEAD_ID, HEAD_NAME, "户主", "", ""],
            ["N-SON", V1, "已脱贫", SON_ID, SON_NAME, "户主", "", ""],
            ["N-SON", V1, "已脱贫", make_id("20000101"), "周一", "配偶", "", ""],
            ["N-SON", V1, "已脱贫", make_id("20200101"), "张一", "子", "", ""]]
    extract = parse(csv_bytes(EN, rows))
    registry = reg_household(income=None, members=[
        reg_member(HEAD_ID, "head"), reg_member(SON_ID, "20"),
        reg_member(WIFE_ID, "10")])
    report = nat.reconcile(extract, [registry], year=2024)
    s = report.summary
    assert s["matched"] == 1 and s["missing_in_registry"] == 1
    missing = next(it for it in report.items if it["field"] == "household")
    assert missing["household_ref"] == "N-SON"  # the registry household follows its head
    matched = [it for it in report.items if it["household_id"] == "h-1"]
    assert {it["household_ref"] for it in matched} == {"N-PARENTS"}


def test_matching_by_most_shared_members_without_heads():
    a, b, c = make_id("19700101"), make_id("19700102"), make_id("19700103")
    rows = [["X", V1, "已脱贫", a, "甲", "配偶", "", ""], ["X", V1, "已脱贫", b, "乙", "子", "", ""],
            ["Y", V1, "已脱贫", c, "丙", "子", "", ""]]
    extract = parse(csv_bytes(EN, rows))
    r1 = reg_household("h-a", income=None, members=[reg_member(a, "10"), reg_member(b, "20"),
                                                    reg_member(c, "30")])
    report = nat.reconcile(extract, [r1], year=2024)
    assert {(it["household_ref"], it["household_id"]) for it in report.items
            if it["field"] == "household"} == {("Y", None)}


def test_match_through_inactive_members_only():
    extract = parse(csv_bytes(EN, household_rows()))
    gone = reg_household(status="natural_decrease", members=[
        reg_member(HEAD_ID, "head", active=False), reg_member(WIFE_ID, "10", active=False),
        reg_member(SON_ID, "20", active=False)])
    report = nat.reconcile(extract, [gone], year=2024)
    assert report.summary["matched"] == 1
    assert ("status", "different") in fields(report)
    assert sum(1 for f in fields(report) if f == ("member", "missing_in_registry")) == 3


def test_items_are_ordered_by_village_then_household():
    ids = {k: make_id(f"1960010{k}") for k in range(1, 5)}
    rows = [["B", V2, "已脱贫", ids[1], "一", "户主", "1", ""],
            ["A", V2, "已脱贫", ids[2], "二", "户主", "1", ""],
            ["C", V1, "已脱贫", ids[3], "三", "户主", "1", ""]]
    extract = parse(csv_bytes(EN, rows))
    regs = [reg_household("h-b", V2, status="identified", members=[reg_member(ids[1], "head")]),
            reg_household("h-c", V1, status="identified", members=[reg_member(ids[3], "head")]),
            reg_household("h-z", V1, members=[reg_member(ids[4], "head")])]
    report = nat.reconcile(extract, regs, year=2024)
    order = [(it["village_code"], it["household_ref"] or it["household_id"], it["field"]) for it in report.items]
    assert order == [(V1, "C", "status"), (V1, "C", "per_capita_income"), (V1, "h-z", "household"),
                     (V2, "A", "household"), (V2, "B", "status"), (V2, "B", "per_capita_income")]


def test_invalid_arguments():
    extract = parse(csv_bytes(EN, household_rows()))
    with pytest.raises(DomainError) as exc:
        nat.reconcile(extract, [], year=24)
    assert exc.value.code == "invalid_year"
    for region in ("62010", "abc", "000000"):
        with pytest.raises(DomainError) as exc:
            nat.reconcile(extract, [], year=2024, region=region)
        assert exc.value.code == "invalid_region"
    with pytest.raises(ValueError):
        nat.reconcile(extract, [reg_household(), reg_household()], year=2024)


def test_report_and_csv_hold_no_plain_personal_data():
    newcomer, grandma = make_id("20200303"), make_id("19400303")
    rows = household_rows(status="未脱贫") + [["N001", V1, "未脱贫", newcomer, "张小宝", "孙子", "", 2024],
                                             ["N7", V1, "未脱贫", make_id("19880808"), "马丽", "户主", "", ""]]
    extract = parse(csv_bytes(EN, rows), name_hasher=name_hasher)
    registry = reg_household(members=[reg_member(HEAD_ID, "head", name="张国庆"), reg_member(WIFE_ID, "51"),
                                      reg_member(SON_ID, "20"), reg_member(grandma, "52", name="王秀兰")])
    report = nat.reconcile(extract, [registry], year=2024)
    data = nat.report_csv(report)
    text = repr(report) + repr(report.to_json()) + data.decode("utf-8-sig")
    for secret in (HEAD_ID, WIFE_ID, SON_ID, newcomer, grandma, HEAD_NAME, WIFE_NAME, SON_NAME, "张小宝",
                   "张国庆", "王秀兰", "马丽"):
        assert secret not in text
    assert {f for f, _ in fields(report)} >= {"status", "member", "relation", "name", "household"}


def test_report_csv():
    rows = household_rows(status="未脱贫", ref="=HYPERLINK(\"x\")")
    rows[1][5] = "父亲"
    extract = parse(csv_bytes(EN, rows))
    report = nat.reconcile(extract, [reg_household(income=Decimal("-5.5"))], year=2024)
    data = nat.report_csv(report)
    assert data.startswith(b"\xef\xbb\xbf")
    lines = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert list(lines[0])[:4] == ["village_code 行政区划代码", "household_ref 国办户编号",
                                  "household_id 本系统户ID", "field 字段"]
    by_field = {line["field 字段"]: line for line in lines}
    status = by_field["status"]
    assert status["national 国办系统"] == "identified 贫困户" and status["registry 本系统"] == "lifted_out 已脱贫"
    assert status["kind 差异类型"] == "different" and status["kind_label 差异说明"] == "不一致"
    assert status["household_ref 国办户编号"].startswith("'=")  # no formula in a spreadsheet
    assert by_field["relation"]["national 国办系统"] == "51 父亲"
    assert by_field["relation"]["member 成员证件号码(脱敏)"] == mask_id_number(WIFE_ID)
    assert by_field["per_capita_income"]["registry 本系统"] == "-5.50"  # a number, not escaped
    assert len(lines) == len(report.items)


def test_report_csv_of_an_empty_report_has_the_header_only():
    report = nat.reconcile(parse(csv_bytes(EN, household_rows())), [reg_household()], year=2024)
    assert nat.report_csv(report).decode("utf-8-sig").count("\r\n") == 1


# -- registry snapshots from the ledger --------------------------------------------------

def test_registry_household_from_a_ledger_document():
    def ev(event_type: str, **data: Any) -> dict[str, Any]:
        return {"event_type": event_type, "data": data}

    hid = "00000000-0000-0000-0000-000000000001"
    doc = fold([
        ev("HouseholdRegistered", household_id=hid, village_code=V1, status="identified",
           head_member_id="m-head", registered_on="2024-03-01"),
        ev("MemberAdded", member_id="m-head", relation="head", sex="male", birth_year=1972,
           name_masked=mask_name(HEAD_NAME), id_masked=mask_id_number(HEAD_ID), id_hmac=hasher(HEAD_ID)),
        ev("MemberAdded", member_id="m-wife", relation="12", sex="female", birth_year=1975,
           name_masked=mask_name(WIFE_NAME), id_masked=mask_id_number(WIFE_ID), id_hmac=hasher(WIFE_ID)),
        ev("MemberAdded", member_id="m-son", relation="20", sex="male", birth_year=2012,
           name_masked=mask_name(SON_NAME), id_masked=mask_id_number(SON_ID), id_hmac=hasher(SON_ID)),
        ev("IncomeAssessed", year=2024, per_capita_net_income="6543.21"),
        ev("IncomeAssessed", year=2023, per_capita_net_income="5000.00"),
        ev("HeadChanged", head_member_id="m-wife", changed_on="2024-06-01"),
        ev("MemberRemoved", member_id="m-head", reason="death", removed_on="2024-05-30"),
    ])
    snap = nat.RegistryHousehold.from_ledger(doc, 2024, name_hashes={"m-son": name_hasher(SON_NAME)})
    assert snap.household_id == hid and snap.village_code == V1 and snap.status == "identified"
    assert snap.per_capita_income == Decimal("6543.21")
    by_id = {m.member_id: m for m in snap.members}
    assert by_id["m-wife"].relation == "head"  # the current head
    assert by_id["m-head"].relation is None and not by_id["m-head"].active  # stale "head"
    assert by_id["m-son"].relation == "20" and by_id["m-son"].name_hmac == name_hasher(SON_NAME)
    assert nat.RegistryHousehold.from_ledger(doc, 2022).per_capita_income is None

    rows = [["N1", V1, "未脱贫", WIFE_ID, WIFE_NAME, "户主", "6543.21", 2024],
            ["N1", V1, "未脱贫", SON_ID, SON_NAME, "子", "", 2024]]
    report = nat.reconcile(parse(csv_bytes(EN, rows)), [snap], year=2024)
    assert report.items == []
