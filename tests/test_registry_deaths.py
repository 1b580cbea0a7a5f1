"""Death records from the civil registration department: parsing and checking the files."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import date, datetime

import pytest
from openpyxl import Workbook

from eventkit.errors import DomainError
from services.registry import deaths, identity
from services.registry.deaths import parse_death_records

KEY = b"registry-id-hash-key-for-tests!!"
HASHER = deaths.keyed_hasher(KEY)
TODAY = date(2024, 6, 1)
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _id(first17: str) -> str:
    return first17 + identity.check_character(first17)


A = _id("62010219400101123")  # born 1940-01-01
B = _id("62010219550612002")  # born 1955-06-12
C = _id("62010219300203401")  # born 1930-02-03
D = _id("62010220000101005")  # born 2000-01-01
PEOPLE = {A: "张三丰", B: "李秀英", C: "阿里·买买提", D: "王小明"}
HEADER = "id_number 身份证号,name 姓名,date_of_death 死亡日期,certificate_ref 证明编号,place 死亡地点"


def _csv(*lines: str, header: str = HEADER, encoding: str = "utf-8") -> bytes:
    return ("\r\n".join([header, *lines]) + "\r\n").encode(encoding)


def _parse(data: bytes, hint: str = "deaths.csv"):
    return parse_death_records(data, hint, hasher=HASHER, today=TODAY)


def _codes(batch) -> list[tuple[int, str | None, str]]:
    return [(e["row"], e["column"], e["code"]) for e in batch.errors]


def _values(obj, seen=None):
    """Every string reachable from an object (dataclass fields, lists, dicts)."""
    if isinstance(obj, str):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _values(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _values(k)
            yield from _values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _values(v)
    elif obj is not None:
        yield str(obj)


def _assert_nothing_plain(batch, plain: list[str]) -> None:
    texts = [*_values(batch), repr(batch), json.dumps(batch.to_json(), ensure_ascii=False)]
    texts.extend(repr(record) for record in batch.records)
    for secret in plain:
        for text in texts:
            assert secret not in text, (secret, text[:200])


# -- valid files ---------------------------------------------------------------------

def test_csv_records():
    batch = _parse(_csv(f"{A},张三丰,2024-03-05,DC2024-0001,城关镇卫生院",
                        f"{B},李秀英,2024/3/5,,",
                        f"{C},阿里·买买提,2024年3月5日,,家中"))
    assert batch.ok and batch.errors == []
    assert batch.format == "csv" and batch.rows == 3 and len(batch.sha256) == 64
    first, second, third = batch.records
    assert [r.row for r in batch.records] == [2, 3, 4]
    assert first.id_hmac == identity.id_hmac(KEY, A)
    assert first.id_masked == identity.mask_id_number(A)
    assert first.name_masked == "张*丰"
    assert first.name_hash == deaths.name_hash(HASHER, "张三丰") == HASHER("name:张三丰")
    assert first.date_of_death == second.date_of_death == third.date_of_death == date(2024, 3, 5)
    assert first.certificate_ref == "DC2024-0001" and first.place == "城关镇卫生院"
    assert second.certificate_ref is None and second.place is None
    assert third.name_masked == "阿*·买**" and third.place == "家中"
    assert first.to_json()["date_of_death"] == "2024-03-05"


def test_chinese_headers_gb18030_tabs_and_unknown_columns():
    data = ("序号\t姓名\t公民身份号码\t死亡日期\t备注\r\n"
            f"1\t王小明\t{D}\t2023-12-31\t无\r\n").encode("gb18030")
    batch = _parse(data, "text/csv")
    assert batch.ok
    assert batch.records[0].id_hmac == identity.id_hmac(KEY, D)
    assert batch.records[0].date_of_death == date(2023, 12, 31)


def test_key_only_headers_marked_required_and_blank_rows():
    data = _csv(f"{A},张三丰,2024-03-05", ",,", "", f"{B},李秀英,2024-03-06",
                header="ID_Number *,name*,date_of_death")
    batch = _parse(data, "deaths.CSV")
    assert batch.ok and batch.rows == 2
    assert [r.row for r in batch.records] == [2, 5]  # rows as a spreadsheet shows them


def test_lower_case_x_and_spaces():
    number = "11010519491231002X"
    batch = _parse(_csv(f" {number.lower()} , 张　三丰 , 2024-03-05 10:30:00 "))
    assert batch.ok
    record = batch.records[0]
    assert record.id_hmac == identity.id_hmac(KEY, number)
    assert record.name_hash == deaths.name_hash(HASHER, "张三丰")


def _xlsx(rows: list[list[object]], sheet: str = "deaths", first: str | None = None) -> bytes:
    wb = Workbook()
    ws = wb.active
    if first is not None:
        ws.title = first
        ws.append(["not", "this", "sheet"])
        ws = wb.create_sheet(sheet)
    else:
        ws.title = sheet
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_records():
    data = _xlsx([["身份证号", "姓名", "死亡日期", "证明编号"],
                  [A, "张三丰", datetime(2024, 3, 5), 20240001],
                  [None, None, None, None],
                  [B, "李秀英", "2024年3月6日", None],
                  [620102195506120021, "李四", date(2024, 3, 7), None]],
                 sheet="死亡", first="说明")
    batch = _parse(data, XLSX_TYPE)
    assert batch.format == "xlsx" and batch.rows == 3
    assert [(r.row, r.date_of_death) for r in batch.records] == [(2, date(2024, 3, 5)), (4, date(2024, 3, 6))]
    assert batch.records[0].certificate_ref == "20240001"
    assert _codes(batch) == [(5, "id_number", "id_format")]
    assert "stored as a number" in batch.errors[0]["message"]


def test_xlsx_first_sheet_and_detected_from_content():
    data = _xlsx([["id_number", "name", "date_of_death"], [A, "张三丰", "2024-03-05"]], sheet="Sheet1")
    batch = _parse(data, "application/octet-stream")
    assert batch.format == "xlsx" and batch.ok and len(batch.records) == 1


# -- row errors ----------------------------------------------------------------------

def test_row_errors():
    bad_check = A[:17] + ("0" if A[17] != "0" else "1")
    batch = _parse(_csv(
        f"{bad_check},张三丰,2024-03-05",          # 2 check digit
        f"{B},李秀英,2024-06-02",                  # 3 future
        f"{D},王小明,1999-12-31",                  # 4 before the birth date in the ID
        f"{C},,2024-03-05",                        # 5 no name
        ",某人,2024-03-05",                        # 6 no ID
        f"{_id('62010219600101123')},赵六,05/03/2024",  # 7 ambiguous format
        f"{_id('62010219600101145')},钱七,2024-02-30",  # 8 not a real date
        f"{_id('62010219600101161')},孙八,",            # 9 no date
        f"{_id('62010219600101188')},周九,2024-03-05,{'X' * 65}",  # 10 certificate too long
        f"{_id('62010219600101196')},{'名' * 51},2024-03-05",       # 11 name too long
        "6.20102E+17,吴十,2024-03-05",             # 12 scientific notation
        "62010219400101,郑一,2024-03-05",           # 13 short
        f"{_id('62010219600101200')},王二,2024-06-01,,{'地' * 201}",  # 14 place too long
        f"{_id('62010219600101218')},冯三,2024-06-01",  # 15 valid: died today
    ))
    assert _codes(batch) == [
        (2, "id_number", "id_check_digit"),
        (3, "date_of_death", "date_in_future"),
        (4, "date_of_death", "death_before_birth"),
        (5, "name", "missing_field"),
        (6, "id_number", "missing_field"),
        (7, "date_of_death", "invalid_date"),
        (8, "date_of_death", "invalid_date"),
        (9, "date_of_death", "missing_field"),
        (10, "certificate_ref", "invalid_value"),
        (11, "name", "invalid_name"),
        (12, "id_number", "id_format"),
        (13, "id_number", "id_format"),
        (14, "place", "invalid_value"),
    ]
    assert [r.row for r in batch.records] == [15]
    assert batch.rows == 14
    assert all(set(e) == {"row", "column", "code", "message"} and e["message"] for e in batch.errors)


def test_several_errors_in_one_row():
    batch = _parse(_csv(",,,DC1", ",,not a date"))
    assert _codes(batch) == [(2, "id_number", "missing_field"), (2, "name", "missing_field"),
                             (2, "date_of_death", "missing_field"), (3, "id_number", "missing_field"),
                             (3, "name", "missing_field"), (3, "date_of_death", "invalid_date")]


def test_duplicate_that_agrees_keeps_the_first_row():
    batch = _parse(_csv(f"{A},张三丰,2024-03-05", f"{B},李秀英,2024-03-06", f"{A.lower()},张三丰,2024/03/05"))
    assert _codes(batch) == [(4, "id_number", "duplicate_id_in_file")]
    assert "row 2" in batch.errors[0]["message"] and identity.mask_id_number(A) in batch.errors[0]["message"]
    assert [r.row for r in batch.records] == [2, 3]


@pytest.mark.parametrize("again", ["张三丰,2024-03-06", "张四丰,2024-03-05", "张三丰,2025-01-01", ",2024-03-05"])
def test_duplicate_that_disagrees_drops_both(again):
    batch = _parse(_csv(f"{A},张三丰,2024-03-05", f"{B},李秀英,2024-03-06", f"{A},{again}", f"{A},张三丰,2024-03-05"))
    codes = _codes(batch)
    assert (2, "id_number", "conflicting_duplicate") in codes
    assert (4, "id_number", "duplicate_id_in_file") in codes and (5, "id_number", "duplicate_id_in_file") in codes
    assert codes.count((2, "id_number", "conflicting_duplicate")) == 1
    assert [r.row for r in batch.records] == [3]


def test_duplicate_of_an_invalid_first_row():
    batch = _parse(_csv(f"{A},张三丰,2030-01-01", f"{A},张三丰,2024-03-05"))
    assert _codes(batch) == [(2, "date_of_death", "date_in_future"), (3, "id_number", "duplicate_id_in_file")]
    assert batch.records == []


# -- file errors ---------------------------------------------------------------------

def test_missing_and_duplicate_columns():
    batch = _parse(_csv(f"{A},张三丰", header="身份证号,姓名"))
    assert _codes(batch) == [(1, "date_of_death", "missing_column")]
    assert batch.records == [] and batch.rows == 0
    batch = _parse(_csv(f"{A},{A},张三丰,2024-03-05", header="id_number,身份证号,name,date_of_death"))
    assert _codes(batch) == [(1, "id_number", "duplicate_column")]
    assert batch.records == []
    batch = _parse(_csv("x", header="foo"))
    assert [c for _, c, _ in _codes(batch)] == ["id_number", "name", "date_of_death"]


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b",,\r\n" + _csv(f"{A},张三丰,2024-03-05")])
def test_empty_file(data):
    batch = _parse(data)
    assert _codes(batch) == [(1, None, "missing_header")] and batch.records == []


def test_too_many_rows(monkeypatch):
    monkeypatch.setattr(deaths, "MAX_ROWS", 3)
    ok = _parse(_csv(f"{A},张三丰,2024-03-05", "", f"{B},李秀英,2024-03-05", f"{C},阿里·买买提,2024-03-05"))
    assert ok.ok and ok.rows == 3
    with pytest.raises(DomainError) as info:
        _parse(_csv(f"{A},张三丰,2024-03-05", f"{B},李秀英,2024-03-05", f"{C},阿里·买买提,2024-03-05",
                    f"{D},王小明,2024-03-05"))
    assert info.value.code == "too_many_rows" and info.value.details["max_rows"] == 3
    assert "3" in str(info.value)


def test_the_real_row_limit():
    assert deaths.MAX_ROWS == 50_000
    data = HEADER.encode() + b"\r\n" + b"x,y,z\r\n" * (deaths.MAX_ROWS + 1)
    with pytest.raises(DomainError) as info:
        _parse(data)
    assert info.value.code == "too_many_rows" and info.value.status == 413


def test_file_too_large(monkeypatch):
    monkeypatch.setattr(deaths, "MAX_FILE_BYTES", 100)
    with pytest.raises(DomainError) as info:
        _parse(_csv(*[f"{A},张三丰,2024-03-05"] * 5))
    assert info.value.code == "file_too_large"


@pytest.mark.parametrize("data,hint,code", [
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "deaths.xls", "unsupported_format"),
    (HEADER.encode(), "deaths.pdf", "unsupported_format"),
    (HEADER.encode(), "application/pdf", "unsupported_format"),
    (HEADER.encode(), "deaths.xlsx", "invalid_file"),
    (HEADER.encode(), XLSX_TYPE, "invalid_file"),
    (b"PK\x03\x04 not really a zip", "deaths.xlsx", "invalid_file"),
    (b"id_number,name\x00\x01\x02", "deaths.csv", "invalid_file"),
    (b"\xff\xfe\x00\x00\x81\x30", "deaths.csv", "invalid_file"),
])
def test_unreadable_files(data, hint, code):
    with pytest.raises(DomainError) as info:
        _parse(data, hint)
    assert info.value.code == code


@pytest.mark.parametrize("hint", ["deaths.csv", "text/csv; charset=utf-8", "application/vnd.ms-excel",
                                  "application/octet-stream", "", "DEATHS.TXT", "export.xls", "deaths"])
def test_csv_hints(hint):
    assert _parse(_csv(f"{A},张三丰,2024-03-05"), hint).ok


# -- no plain personal data ----------------------------------------------------------

def test_batch_never_holds_plain_ids_or_names():
    bad_check = B[:17] + ("0" if B[17] != "0" else "1")
    batch = _parse(_csv(
        f"{A},张三丰,2024-03-05,DC1,医院",
        f"{bad_check},李秀英,2024-03-05",
        f"{C},阿里·买买提,2030-03-05",
        f"{D},王小明,2024-03-05",
        f"{D},王小明,2024-03-05",
        f"{A},张三丰,2024-03-07",
    ))
    assert batch.errors
    plain = [A, A.lower(), B, bad_check, C, D, *PEOPLE.values(), "买买提", "小明"]
    _assert_nothing_plain(batch, plain)


def test_a_hasher_that_returns_its_input_is_refused():
    with pytest.raises(ValueError):
        parse_death_records(_csv(f"{A},张三丰,2024-03-05"), "deaths.csv", hasher=lambda s: s, today=TODAY)
    with pytest.raises(ValueError):
        parse_death_records(_csv(f"{A},张三丰,2024-03-05"), "deaths.csv", hasher=lambda s: "h" + s + "h",
                            today=TODAY)


def test_keyed_hasher():
    assert HASHER(A) == identity.id_hmac(KEY, A)
    assert deaths.keyed_hasher(b"x" * 16)(A) != HASHER(A)
    with pytest.raises(ValueError):
        deaths.keyed_hasher(b"short")


# -- helpers -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["2024-03-05", "2024-3-5", "2024/03/05", "2024/3/5", "2024.3.5", "20240305",
                                   "2024年3月5日", "2024 年 3 月 5 日", "２０２４年３月５日", "2024年03月05号",
                                   "2024-03-05 10:30:00", "2024-03-05T10:30", "2024/3/5 8:05", 20240305,
                                   20240305.0, datetime(2024, 3, 5, 23, 59), date(2024, 3, 5)])
def test_parse_date(value):
    assert deaths.parse_date(value) == date(2024, 3, 5)


@pytest.mark.parametrize("value", ["05/03/2024", "2024-13-01", "2024-02-30", "", "yesterday", "2024-03",
                                   "2024/03-05", "240305", True, 45356, 3.5])
def test_parse_date_rejects(value):
    with pytest.raises(ValueError):
        deaths.parse_date(value)


@pytest.mark.parametrize("raw,normal", [("张三", "张三"), (" 张　三 ", "张三"), ("阿里・买买提", "阿里·买买提"),
                                        ("阿里 • 买买提", "阿里·买买提"), ("John   Smith", "John Smith"),
                                        ("ＪＯＨＮ", "JOHN")])
def test_normalise_name(raw, normal):
    assert deaths.normalise_name(raw) == normal
    assert deaths.name_hash(HASHER, raw) == deaths.name_hash(HASHER, normal)


def test_template_csv():
    data = deaths.template_csv()
    assert data.startswith(b"\xef\xbb\xbf")
    assert data.decode("utf-8-sig") == HEADER + "\r\n"
    batch = _parse(data)
    assert batch.ok and batch.rows == 0 and batch.records == []
    filled = data + f"{A},张三丰,2024-03-05,,\r\n".encode()
    assert len(_parse(filled).records) == 1
