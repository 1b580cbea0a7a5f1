"""The shared spreadsheet and upload plumbing (``eventkit.sheets``, ``eventkit.uploads``).

The services' own tests (comparison, national extract, deaths, subsidies, household
import) cover how each module uses it; these pin the shared behaviour itself.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime

import httpx
import pytest
from openpyxl import Workbook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventkit import sheets
from eventkit.errors import DomainError
from eventkit.uploads import UploadError, read_upload

OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 40


def _xlsx(sheet_rows: dict[str, list[list[object]]]) -> bytes:
    wb = Workbook()
    wb.remove(wb.active)
    for title, rows in sheet_rows.items():
        ws = wb.create_sheet(title)
        for r in rows:
            ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


# -- format ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hint,expected", [
    ("ids.csv", "csv"), ("exports/IDS.TSV", "csv"), ("C:\\data\\ids.txt", "csv"), ("a.xlsx", "xlsx"),
    ("a.xlsm", "xlsx"), ("old.xls", "xls"), ("a.pdf", "other"), ("text/csv; charset=utf-8", "csv"),
    ("application/vnd.ms-excel", "csv"), (sheets.XLSX_CONTENT_TYPE, "xlsx"), ("application/octet-stream", None),
    ("image/png", "other"), ("deaths", None), ("", None), (None, None),
])
def test_hinted_format(hint, expected):
    assert sheets.hinted_format(hint) == expected


def test_the_content_decides_first():
    workbook = _xlsx({"Sheet": [["a"]]})
    assert sheets.detect_format(workbook, "ids.csv") == "xlsx"
    with pytest.raises(DomainError) as exc:
        sheets.detect_format(OLE2, "ids.csv")
    assert exc.value.code == "unsupported_format" and exc.value.status == 422
    with pytest.raises(DomainError) as exc:
        sheets.detect_format(b"a,b\n", "ids.xlsx")
    assert exc.value.code == "invalid_file"


@pytest.mark.parametrize("hint,strict,xls_is_csv,expected", [
    ("ids.pdf", True, False, "unsupported_format"),
    ("ids.pdf", False, False, "csv"),
    ("application/pdf", False, False, "unsupported_format"),
    ("image/png", False, False, "unsupported_format"),
    ("application/x-www-form-urlencoded", True, False, "unsupported_format"),
    ("application/x-www-form-urlencoded", False, False, "csv"),
    ("export.xls", True, False, "unsupported_format"),
    ("export.xls", True, True, "csv"),
    (None, True, False, "csv"),
])
def test_format_policies(hint, strict, xls_is_csv, expected):
    try:
        got = sheets.detect_format(b"a,b\n", hint, strict=strict, xls_is_csv=xls_is_csv)
    except DomainError as exc:
        got = exc.code
    assert got == expected


def test_errors_come_from_the_given_factory():
    with pytest.raises(DomainError) as exc:
        sheets.detect_format(OLE2, None, error=sheets.file_field_error)
    assert exc.value.status == 415 and exc.value.details == {"field": "file"}

    class Refused(ValueError):
        def __init__(self, code: str, message: str) -> None:
            super().__init__(message)
            self.code = code

    with pytest.raises(Refused):
        list(sheets.csv_rows(b"a\x00b", error=Refused))
    with pytest.raises(Refused):
        with sheets.workbook(b"PK\x03\x04 not a zip", error=Refused):
            pass


# -- reading -----------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "utf-16"])
def test_csv_encodings(encoding):
    data = "姓名,身份证号\n张三,1\n".encode(encoding)
    assert list(sheets.csv_rows(data)) == [(1, ["姓名", "身份证号"]), (2, ["张三", "1"])]


@pytest.mark.parametrize("data,message", [
    (b"\xff\xfe\x00", "UTF-16"),
    (b"\xff\x00\xff\x00", "neither UTF-8 nor GB 18030"),
    (b"a,b\x00", "not a text (CSV) file"),
])
def test_unreadable_csv(data, message):
    with pytest.raises(DomainError) as exc:
        list(sheets.csv_rows(data))
    assert exc.value.code == "invalid_file" and message in str(exc.value)


def test_csv_rows_keep_the_numbers_a_spreadsheet_shows():
    data = b'\n\na\tb\n"two\nlines"\tx\n\ny\tz\n'
    assert list(sheets.csv_rows(data)) == [(1, []), (2, []), (3, ["a", "b"]), (4, ["two\nlines", "x"]),
                                           (5, []), (6, ["y", "z"])]


def test_xlsx_rows_of_a_named_sheet_or_the_first():
    data = _xlsx({"说明": [["readme"]], "Deaths 死亡": [["h"], [None], ["v"]]})
    assert list(sheets.xlsx_rows(data)) == [(1, ("readme",))]
    rows = list(sheets.xlsx_rows(data, sheet_names=("deaths",)))
    assert [(n, cells[:1]) for n, cells in rows] == [(1, ("h",)), (2, (None,)), (3, ("v",))]


def test_find_sheet_ignores_case_spaces_and_full_width_forms():
    data = _xlsx({"other": [[1]], "ＨＯＵＳＥ holds": [[2]], "members 成员": [[3]]})
    with sheets.workbook(data) as wb:
        assert sheets.find_sheet(wb, ["households"]).title == "ＨＯＵＳＥ holds"
        assert sheets.find_sheet(wb, ["members"]).title == "members 成员"
        assert sheets.find_sheet(wb, ["nope", "other"]).title == "other"
        assert sheets.find_sheet(wb, ["nope"]) is None


def test_a_corrupt_workbook_is_an_invalid_file():
    with pytest.raises(DomainError) as exc:
        list(sheets.xlsx_rows(b"PK\x03\x04 broken"))
    assert exc.value.code == "invalid_file" and "not a readable XLSX workbook" in str(exc.value)


# -- cells and headers -------------------------------------------------------------------------

@pytest.mark.parametrize("value,text", [
    (None, ""), (True, "true"), (3.0, "3"), (2.5, "2.5"), (datetime(2024, 3, 5, 8, 0), "2024-03-05"),
    (date(2024, 3, 5), "2024-03-05"), ("\u3000张三 ", "张三"), (620102, "620102"),
])
def test_cell_text(value, text):
    assert sheets.cell_text(value) == text


def test_plain_text_and_blanks():
    assert sheets.plain_text(" Ａ\u3000 b  c ") == "A b c"
    assert sheets.plain_text("  ") is None
    assert sheets.blank(None) and sheets.blank(" \t") and not sheets.blank(0)
    assert sheets.blank_row(None) and sheets.blank_row(()) and sheets.blank_row([None, ""])
    assert not sheets.blank_row([None, "x"])


@pytest.mark.parametrize("value,expected", [
    ("2024-03-05", date(2024, 3, 5)), ("2024/3/5", date(2024, 3, 5)), ("2024.3.5 08:30", date(2024, 3, 5)),
    ("2024年3月5日", date(2024, 3, 5)), ("２０２４年 ３月５日", date(2024, 3, 5)), (20240305, date(2024, 3, 5)),
    (20240305.0, date(2024, 3, 5)), (datetime(2024, 3, 5, 9), date(2024, 3, 5)),
])
def test_cell_date(value, expected):
    assert sheets.cell_date(value) == expected


@pytest.mark.parametrize("value", ["2024-02-30", "5 March", True, "3/5/2024"])
def test_cell_date_refuses(value):
    with pytest.raises(ValueError):
        sheets.cell_date(value)


COLUMNS = (sheets.Column("id_number", "身份证号", True, ("公民身份号码",)), sheets.Column("amount", "金额", True),
           sheets.Column("note", "备注"))
KEYS = {c.key for c in COLUMNS}
LABELS = sheets.label_index(COLUMNS)


@pytest.mark.parametrize("header,key", [
    ("id_number", "id_number"), ("ID_Number *", "id_number"), ("ｉｄ＿ｎｕｍｂｅｒ", "id_number"),
    ("id_number 身份证号", "id_number"), ("身份证号", "id_number"), ("身份证号（必填）", "id_number"),
    ("公民身份号码*", "id_number"), ("姓名 身份证号", "id_number"), ("金额(元)", "amount"), ("金额 (元) *", "amount"),
    ("姓名", None), ("", None), (None, None),
])
def test_header_key(header, key):
    assert sheets.header_key(header, KEYS, LABELS) == key


def test_header_index_reports_duplicate_and_missing_columns():
    index, problems = sheets.header_index(["身份证号", "姓名", "id_number", "备注"], COLUMNS)
    assert index == {0: "id_number", 3: "note"}
    assert problems == [("id_number", "duplicate_column", "column id_number appears twice"),
                        ("amount", "missing_column", "required column amount (金额) is missing")]
    rows = [(2, ["1", "x", "2"]), (3, [None, " "]), (4, ["5"])]
    assert list(sheets.records(rows, {0: "id_number", 2: "amount"})) == [
        (2, {"id_number": "1", "amount": "2"}), (4, {"id_number": "5"})]


# -- writing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,cell", [
    ("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"),
    ("-5.50", "-5.50"), ("+86", "+86"), (-3, -3), (None, ""), (False, "false"), ("张三", "张三"),
])
def test_csv_cell_escapes_formulas_but_not_numbers(value, cell):
    assert sheets.csv_cell(value) == cell


def test_write_csv_is_for_excel():
    data = sheets.write_csv(["a 甲", "b"], [["=x", 1], [None, True]])
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    assert list(csv.reader(io.StringIO(data.decode("utf-8-sig")))) == [["a 甲", "b"], ["'=x", "1"], ["", "true"]]


# -- uploads -----------------------------------------------------------------------------------

async def _receive(request: Request) -> JSONResponse:
    try:
        up = await read_upload(request, 100)
    except UploadError as exc:
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.status)
    return JSONResponse({"data": up.data.decode(), "filename": up.filename, "content_type": up.content_type,
                         "hint": up.hint, "multipart": up.multipart})


@pytest.fixture
async def client():
    app = Starlette(routes=[Route("/upload", _receive, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_upload_as_multipart_file_text_field_or_raw_body(client):
    r = await client.post("/upload", files={"file": ("ids.csv", b"a,b", "text/csv")})
    assert r.json() == {"data": "a,b", "filename": "ids.csv", "content_type": "text/csv", "hint": "ids.csv",
                        "multipart": True}
    r = await client.post("/upload", data={"file": "a,b"})  # urlencoded: a raw body like any other
    assert r.json()["data"] == "file=a%2Cb" and r.json()["hint"] == "application/x-www-form-urlencoded"
    r = await client.post("/upload", files={"file": (None, b"x,y")})  # a text field (curl -F "file=<ids.csv")
    assert r.json()["data"] == "x,y" and r.json()["hint"] is None and r.json()["multipart"]
    r = await client.post("/upload", content=b"raw", headers={"content-type": "text/plain"})
    assert r.json() == {"data": "raw", "filename": None, "content_type": "text/plain", "hint": "text/plain",
                        "multipart": False}


async def test_upload_limits_and_missing_file(client):
    r = await client.post("/upload", content=b"x" * 101, headers={"content-type": "text/csv"})
    assert r.status_code == 413 and r.json()["code"] == "file_too_large"
    r = await client.post("/upload", files={"file": ("big.csv", b"x" * 101, "text/csv")})
    assert r.status_code == 413 and r.json()["message"] == "the file is larger than 0 MB"
    r = await client.post("/upload", files={"other": ("a.csv", b"x", "text/csv")})
    assert r.status_code == 422 and r.json()["code"] == "missing_file"
    r = await client.post("/upload", content=b"--nope", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_multipart"
