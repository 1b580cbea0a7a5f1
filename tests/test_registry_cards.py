"""Household cards (明白卡): link tokens, the public masked view, QR codes and the HTML page."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import date
from html.parser import HTMLParser

import pytest
import segno

from services.registry import cards
from services.registry.ledger import fold

KEY = b"card-key-for-tests-0123456789abc"
OTHER_KEY = b"another-card-key-for-tests-98765"
HID = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
BASE = "https://tpa.example.gov.cn"
TODAY = date(2024, 6, 1)
SVG_NS = "{http://www.w3.org/2000/svg}"

# Personal data planted in the document; none of it may reach the card or the page.
HEAD_FULL_NAME = "张三丰"
SPOUSE_FULL_NAME = "李秀英"
HEAD_ID = "11010519491231002X"
SPOUSE_ID = "620102199001011236"
HEAD_PHONE = "13912345678"
SPOUSE_PHONE = "0931-8123456"
ADDRESS = "城关镇幸福村三社12号"
CADRE_USER_ID = "cadre.wang-0931"
SECRETS = [HEAD_FULL_NAME, SPOUSE_FULL_NAME, HEAD_ID, SPOUSE_ID, HEAD_PHONE, SPOUSE_PHONE, "8123456",
           "12345678", ADDRESS, CADRE_USER_ID, "6201**********1236", "1101**********002X", "李*英",
           "feedbeef", "12345.68", "36.0611", "103.8343", "养羊20只", "9876.54", "24691.35"]


def _doc(**registered: object) -> dict:
    head, spouse = str(uuid.uuid4()), str(uuid.uuid4())
    data = {"household_id": HID, "village_code": "620102001001", "status": "identified",
            "attribute": "minimum_living", "identification_standard": "national", "head_member_id": head,
            "address": ADDRESS, "registered_on": "2023-01-05", **registered}
    events = [
        ("HouseholdRegistered", data),
        ("MemberAdded", {"member_id": head, "relation": "head", "sex": "male", "birth_year": 1949,
                         "name_masked": "张*丰", "id_masked": "1101**********002X", "id_hmac": "feedbeef" * 8,
                         "profile": {"health": ["disabled"]}, "reason": "initial"}),
        ("MemberAdded", {"member_id": spouse, "relation": "10", "sex": "female", "birth_year": 1990,
                         "name_masked": "李*英", "id_masked": "6201**********1236", "id_hmac": "beef" * 16,
                         "profile": {"health": ["serious_illness"]}, "reason": "initial"}),
        ("IncomeAssessed", {"year": 2024, "wage": "9876.54", "business": "0", "property": "0", "transfer": "0",
                            "business_expenses": "0", "resident_members": 2, "net_income": "24691.35",
                            "per_capita_net_income": "12345.68"}),
        ("PovertyCausesRecorded", {"primary": "illness", "others": ["disability"]}),
        ("CadreAssigned", {"cadre_id": CADRE_USER_ID, "unit": "兰州市农业农村局", "assigned_on": "2023-02-01"}),
        ("CadreAssigned", {"cadre_id": "cadre.li", "unit": "城关镇人民政府", "assigned_on": "2023-02-01"}),
        ("CadreAssigned", {"cadre_id": "cadre.zhao", "unit": "兰州市农业农村局", "assigned_on": "2023-03-01"}),
        ("CadreAssigned", {"cadre_id": "cadre.old", "unit": "已撤离单位", "assigned_on": "2022-01-01"}),
        ("CadreReleased", {"cadre_id": "cadre.old", "released_on": "2023-01-01", "reason": "transfer"}),
        ("AssistancePlanRecorded", {"year": 2023, "measures": [{"kind": "relocation", "description": "搬迁"}]}),
        ("AssistancePlanRecorded", {"year": 2024, "measures": [
            {"kind": "industry", "description": "养羊20只"}, {"kind": "health", "description": "慢病签约"},
            {"kind": "industry", "description": "种植"}, {"kind": "not_a_kind", "description": "x"},
            {"kind": None, "description": "y"}]}),
        ("CoordinatesSet", {"latitude": 36.0611, "longitude": 103.8343}),
    ]
    return fold({"event_type": t, "data": d, "version": i} for i, (t, d) in enumerate(events, 1))


def _planted(doc: dict) -> dict:
    """The document with full personal data planted everywhere a careless join could put it."""
    doc = copy.deepcopy(doc)
    full = {0: (HEAD_FULL_NAME, HEAD_ID, HEAD_PHONE), 1: (SPOUSE_FULL_NAME, SPOUSE_ID, SPOUSE_PHONE)}
    for i, m in enumerate(doc["members"]):
        name, number, phone = full[i]
        m["personal"] = {"name": name, "id_number": number, "phone": phone, "erased": False}
        m.update(name=name, id_number=number, phone=phone)
    doc["members"][0]["name_masked"] = HEAD_FULL_NAME  # a full name where the masked one belongs
    doc["head"] = {"name": HEAD_FULL_NAME, "id_number": HEAD_ID, "phone": HEAD_PHONE}
    doc["phone"] = HEAD_PHONE
    doc["cadres"]["current"][0].update(name="王五", phone="13800000000")
    return doc


def _url() -> str:
    return cards.card_url(BASE, HID, cards.card_token(KEY, HID))


# -- tokens and links ----------------------------------------------------------------

def test_token_is_stable_and_follows_the_spec():
    token = cards.card_token(KEY, HID)
    assert token == cards.card_token(KEY, HID)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token)
    digest = hmac.new(KEY, f"card:v1:{HID}".encode(), hashlib.sha256).digest()
    assert token == base64.urlsafe_b64encode(digest).decode().rstrip("=")[:22]


def test_token_differs_per_household_and_key():
    other = str(uuid.uuid4())
    tokens = {cards.card_token(KEY, HID), cards.card_token(KEY, other), cards.card_token(OTHER_KEY, HID),
              cards.card_token(OTHER_KEY, other)}
    assert len(tokens) == 4


def test_token_uses_the_canonical_household_id():
    assert cards.card_token(KEY, HID.upper()) == cards.card_token(KEY, HID)
    assert cards.card_token(KEY, uuid.UUID(HID)) == cards.card_token(KEY, HID)  # type: ignore[arg-type]


@pytest.mark.parametrize("household_id", ["", "h1", "6f1c2b3a-4d5e-4f60-8a7b", None])
def test_token_needs_a_uuid(household_id):
    with pytest.raises(ValueError):
        cards.card_token(KEY, household_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", b"short", "a string key of 32 characters!!"])
def test_token_needs_a_real_key(key):
    with pytest.raises(ValueError):
        cards.card_token(key, HID)  # type: ignore[arg-type]


def test_verify_accepts_the_token():
    token = cards.card_token(KEY, HID)
    assert cards.verify_card_token(KEY, HID, token)
    assert cards.verify_card_token(KEY, HID.upper(), token)


def test_verify_rejects_altered_tokens():
    token = cards.card_token(KEY, HID)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        for replacement in (alphabet[(alphabet.index(ch) + 1) % 64], alphabet[(alphabet.index(ch) + 33) % 64]):
            altered = token[:i] + replacement + token[i + 1:]
            assert not cards.verify_card_token(KEY, HID, altered), altered
    for bad in (token[:-1], token + "A", "", token.lower() if token.lower() != token else token.upper(),
                token[:21] + "é", " " + token[1:], None, 12345):
        assert not cards.verify_card_token(KEY, HID, bad)  # type: ignore[arg-type]


def test_verify_rejects_other_households_and_keys():
    token = cards.card_token(KEY, HID)
    assert not cards.verify_card_token(KEY, str(uuid.uuid4()), token)
    assert not cards.verify_card_token(OTHER_KEY, HID, token)
    assert not cards.verify_card_token(KEY, "not-a-uuid", token)


def test_card_url():
    token = cards.card_token(KEY, HID)
    assert cards.card_url(BASE, HID, token) == f"{BASE}/api/v1/cards/{HID}/{token}"
    assert cards.card_url(BASE + "/tpa/", HID.upper(), token) == f"{BASE}/tpa/api/v1/cards/{HID}/{token}"


@pytest.mark.parametrize("base", ["tpa.example.gov.cn", "javascript:alert(1)", "ftp://x.example", "https://",
                                  "https://x.example/?a=1", "https://x.example/#f"])
def test_card_url_needs_an_http_base(base):
    with pytest.raises(ValueError):
        cards.card_url(base, HID, cards.card_token(KEY, HID))


@pytest.mark.parametrize("token", ["", "short", "a" * 23, "a" * 21 + "/", "a" * 21 + "%"])
def test_card_url_needs_a_token(token):
    with pytest.raises(ValueError):
        cards.card_url(BASE, HID, token)


# -- the public card -----------------------------------------------------------------

WHITELIST = {"household_id", "village_code", "status", "attribute", "head_name_masked", "member_count",
             "assistance", "support_units"}


def test_public_card_content():
    card = cards.public_card(_doc(), today=TODAY)
    assert set(card) == WHITELIST
    assert card["household_id"] == HID
    assert card["village_code"] == "620102001001"
    assert card["status"] == {"code": "identified", "label": "贫困户", "label_en": "identified poor household"}
    assert card["attribute"] == {"code": "minimum_living", "label": "低保贫困户",
                                 "label_en": "poor household with minimum-living allowance"}
    assert card["head_name_masked"] == "张*丰"
    assert card["member_count"] == 2
    # This year's plan: kinds only, each once, unknown kinds dropped.
    assert card["assistance"] == {"year": 2024, "measures": [
        {"code": "industry", "label": "产业扶贫", "label_en": "industry development"},
        {"code": "health", "label": "健康扶贫", "label_en": "health"}]}
    # Current cadres' units only (each once); the released cadre's unit is gone.
    assert card["support_units"] == ["兰州市农业农村局", "城关镇人民政府"]


def test_public_card_uses_the_given_year():
    assert [m["code"] for m in cards.public_card(_doc(), today=date(2023, 12, 31))["assistance"]["measures"]] \
        == ["relocation"]
    assert cards.public_card(_doc(), today=date(2025, 1, 1))["assistance"] == {"year": 2025, "measures": []}


def test_public_card_never_leaks_personal_data():
    doc = _planted(_doc())
    card = cards.public_card(doc, today=TODAY)
    assert set(card) == WHITELIST
    assert card["head_name_masked"] == "张*丰"  # the planted full name is masked again
    text = json.dumps(card, ensure_ascii=False)
    page = cards.render_card_html(card, _url())
    for secret in SECRETS + ["王五", "13800000000"]:
        assert secret not in text, secret
        assert secret not in page, secret
    # Nothing financial and no health, causes, address or coordinates.
    for word in ("income", "wage", "net", "cause", "illness", "disab", "address", "latitude", "coordinates",
                 "health_condition", "phone", "id_number"):
        assert word not in text, word


def test_public_card_leaves_out_unknown_or_malformed_values():
    doc = _doc(status="<b>bogus</b>", attribute="无", village_code="<script>alert(1)</script>")
    doc["household_id"] = "x"
    doc["member_count"] = "4"
    doc["plans"]["2024"] = "not a plan"
    doc["cadres"] = {"current": [{"unit": 7}, "x", {"unit": "  某  单位 "}]}
    card = cards.public_card(doc, today=TODAY)
    assert card["status"] is None and card["attribute"] is None and card["village_code"] is None
    assert card["household_id"] is None and card["member_count"] is None
    assert card["assistance"]["measures"] == []
    assert card["support_units"] == ["某 单位"]
    cards.render_card_html(card, _url())  # still renders


def test_public_card_hides_an_inactive_or_erased_head():
    doc = _doc()
    doc["members"][0]["active"] = False
    assert cards.public_card(doc, today=TODAY)["head_name_masked"] is None
    doc = _doc()
    doc["members"][0].update(personal_data_erased=True)
    assert cards.public_card(doc, today=TODAY)["head_name_masked"] is None
    doc = _doc()
    doc["head_member_id"] = None
    assert cards.public_card(doc, today=TODAY)["head_name_masked"] is None


def test_public_card_needs_a_mapping():
    with pytest.raises(TypeError):
        cards.public_card(None)  # type: ignore[arg-type]


# -- QR codes ------------------------------------------------------------------------

def _svg_matrix(svg: str) -> tuple[list[list[int]], ET.Element]:
    """Rebuild the module matrix from the dark path of the SVG (segno draws rows of
    dark modules as horizontal strokes through the modules' centres)."""
    root = ET.fromstring(svg)
    dark = [p for p in root.iter(f"{SVG_NS}path") if p.get("stroke")]
    assert len(dark) == 1
    tokens = re.findall(r"[A-Za-z]|-?\d+(?:\.\d+)?", dark[0].get("d"))
    x = y = 0.0
    cells: set[tuple[int, int]] = set()
    i = 0
    while i < len(tokens):
        op = tokens[i]
        if op in "Mm":
            dx, dy = float(tokens[i + 1]), float(tokens[i + 2])
            x, y = (dx, dy) if op == "M" else (x + dx, y + dy)
            i += 3
        elif op == "h":
            n = float(tokens[i + 1])
            cells.update((int(y - 0.5), int(x + k)) for k in range(int(n)))
            x += n
            i += 2
        else:
            raise AssertionError(f"unexpected path command {op}")
    border = 4
    size = max(max(r for r, _ in cells), max(c for _, c in cells)) + 1 + border
    matrix = [[1 if (r, c) in cells else 0 for c in range(border, size - border)]
              for r in range(border, size - border)]
    return matrix, root


def test_qr_svg_encodes_the_url():
    url = _url()
    svg = cards.qr_svg(url)
    assert not svg.lstrip().startswith("<?xml")
    matrix, root = _svg_matrix(svg)
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("role") == "img" and root.get("aria-label")
    assert root.find(f"{SVG_NS}title") is not None
    width = int(root.get("width"))
    assert root.get("viewBox") == f"0 0 {width} {root.get('height')}"
    expected = segno.make(url, error="m", boost_error=False, micro=False)
    assert expected.error == "M"
    assert matrix == [list(row) for row in expected.matrix]
    assert width == (len(expected.matrix) + 8) * 4


def test_qr_svg_is_deterministic_and_escapes_its_label():
    url = _url()
    assert cards.qr_svg(url) == cards.qr_svg(url)
    assert cards.qr_svg(url) != cards.qr_svg(cards.card_url(BASE, str(uuid.uuid4()), "A" * 22))
    svg = cards.qr_svg(url, label='QR "<&>"')
    root = ET.fromstring(svg)
    assert root.get("aria-label") == 'QR "<&>"'
    assert root.find(f"{SVG_NS}title").text == 'QR "<&>"'


def test_qr_needs_a_url():
    with pytest.raises(ValueError):
        cards.qr_svg("")
    with pytest.raises(ValueError):
        cards.qr_png("")


def test_qr_png():
    png = cards.qr_png(_url())
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert png == cards.qr_png(_url())
    assert len(png) > 200


# -- HTML ----------------------------------------------------------------------------

class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.decl: str | None = None
        self.text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.decl = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def test_html_page_structure():
    url = _url()
    page = cards.render_card_html(cards.public_card(_doc(), today=TODAY), url)
    p = _parse(page)
    assert p.decl and p.decl.lower() == "doctype html"
    assert p.all("html") == [{"lang": "en"}]
    assert {"charset": "utf-8"} in p.all("meta")
    assert any(m.get("name") == "viewport" for m in p.all("meta"))
    head, body = page.split("<body>")
    assert head.count("<title>") == 1 and body.count("<title>") == 1  # the page's and the QR code's
    assert len(p.all("h1")) == 1 and len(p.all("main")) == 1
    assert len(p.all("dl")) == 1 and len(p.all("dt")) == len(p.all("dd")) == 7
    svgs = p.all("svg")
    assert len(svgs) == 1 and svgs[0]["role"] == "img" and svgs[0]["aria-label"]
    # No scripts, no external resources; the only link is the card's own.
    assert "<script" not in page.lower() and not p.all("link") and not p.all("img") and not p.all("iframe")
    assert not [a for _, a in p.tags if "src" in a or any(k.startswith("on") for k in a)]
    assert [a["href"] for a in p.all("a")] == [url]
    assert "兰州市农业农村局" in page and "贫困户" in page and "张*丰" in page


def test_html_escapes_every_value():
    evil = '<script>alert("x")</script>'
    card = cards.public_card(_doc(), today=TODAY)
    card.update(village_code=evil, head_name_masked='"><img src=x onerror=alert(1)>',
                member_count="<b>5</b>", support_units=[evil, "A & B"],
                status={"code": "identified", "label": evil, "label_en": "<i>x</i>"})
    card["assistance"]["measures"][0]["label"] = evil
    page = cards.render_card_html(card, _url())
    assert "<script" not in page and "<img" not in page and "<b>5" not in page and "<i>x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "A &amp; B" in page
    p = _parse(page)
    assert len(p.all("h1")) == 1 and not p.all("script") and not p.all("img")


def test_html_escapes_a_malicious_unit_from_the_ledger():
    doc = _doc()
    doc["cadres"]["current"][0]["unit"] = "</dd><script>alert(1)</script>"
    page = cards.render_card_html(cards.public_card(doc, today=TODAY), _url())
    assert "<script" not in page
    assert "&lt;/dd&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_does_not_link_other_schemes():
    url = 'javascript:alert("x")'
    page = cards.render_card_html(cards.public_card(_doc(), today=TODAY), url)
    assert not _parse(page).all("a")
    assert "javascript:alert(&quot;x&quot;)" in page


def test_html_for_an_empty_card():
    page = cards.render_card_html(cards.public_card({}, today=TODAY), _url())
    assert page.count("Not recorded") >= 4 and "None recorded" in page and "None assigned" in page
