"""The household card (明白卡): a printed card with a QR code for each household.

Pure functions, no I/O. The API that serves the cards (elsewhere) reads the
household's ledger document and passes it in here.

Links
-----
Each household's card carries a link ``{base_url}/api/v1/cards/{household_id}/{token}``.
The token is ``HMAC-SHA256(key, "card:v1:" + household_id)``, base64url
without padding, cut to 22 characters (132 bits), so card links cannot be
guessed or enumerated from household ids, yet a reprinted card carries the same
link. The key is a secret of the registry (at least 16 random bytes); use a key
of its own, not the ID-hashing key: rotating the card key invalidates every
printed card, which must then be reprinted.

What the public card shows
--------------------------
Anyone holding the card (or a photo of it) can open the link, so the public
view is built from a whitelist and shows only what the card is for, telling the
household and visitors where the household stands and who helps it:

* ``household_id`` and ``village_code``;
* ``status`` and ``attribute`` as code, Chinese label and English label
  (unknown codes are left out rather than echoed);
* the head's masked name (``head_name_masked``, masked again here in case the
  document ever held a full name) and the number of active members
  (``member_count``);
* the assistance measure *kinds* of the given year's plan (``assistance``),
  known codes only, never the free-text descriptions;
* the units of the cadres currently paired with the household
  (``support_units``). The ledger holds cadres as ``cadre_id`` (a user id of
  the platform), ``unit`` and ``assigned_on``; it holds no cadre names or
  phones. User ids are login names and stay off the public card; once a cadre
  directory exists, the API may add cadres' public contact details itself.

Deliberately left out: the address and coordinates, members other than the
head, every ID number, phone and unmasked name, member facts (health,
disability, schooling), poverty causes, living conditions, monitoring, and all
income figures. The full ledger is served only to logged-in users within their
jurisdiction (elsewhere).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import io
import re
import uuid
from datetime import date
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

import segno

from contracts.masking import mask_name

from . import codes

CARD_PATH = "/api/v1/cards"
TOKEN_LENGTH = 22
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
_VILLAGE_PATTERN = re.compile(r"^[0-9]{12}$")
_MIN_KEY_BYTES = 16
_MAX_UNITS = 10
_MAX_UNIT_LENGTH = 200
_QR_ERROR = "m"
_QR_BORDER = 4  # the quiet zone the QR standard asks for, in modules


# -- links ---------------------------------------------------------------------------

def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the card key must be at least {_MIN_KEY_BYTES} bytes")
    return bytes(key)


def _canonical_id(household_id: object) -> str:
    """The canonical (lower-case, hyphenated) form of a household UUID; ValueError otherwise."""
    if isinstance(household_id, uuid.UUID):
        return str(household_id)
    if not isinstance(household_id, str):
        raise ValueError("the household id must be a UUID")
    try:
        return str(uuid.UUID(household_id.strip()))
    except ValueError:
        raise ValueError("the household id must be a UUID") from None


def card_token(key: bytes, household_id: str) -> str:
    """The card token of a household: stable for a key, unguessable without it."""
    message = ("card:v1:" + _canonical_id(household_id)).encode("ascii")
    digest = hmac.new(_check_key(key), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:TOKEN_LENGTH]


def verify_card_token(key: bytes, household_id: str, token: str) -> bool:
    """Whether ``token`` is the household's card token (constant-time comparison).

    Malformed household ids or tokens give False; a bad key still raises ValueError.
    """
    key = _check_key(key)
    if not isinstance(token, str) or not token.isascii():
        return False
    try:
        expected = card_token(key, household_id)
    except ValueError:
        return False
    return hmac.compare_digest(expected, token)


def card_url(base_url: str, household_id: str, token: str) -> str:
    """The public link of a card: ``{base_url}/api/v1/cards/{household_id}/{token}``.

    ``base_url`` is the public origin (and optional path prefix) of the gateway,
    an absolute http(s) URL; a trailing slash is ignored.
    """
    if not isinstance(base_url, str):
        raise ValueError("base_url must be an absolute http(s) URL")
    base = base_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("base_url must be an absolute http(s) URL without query or fragment")
    if not isinstance(token, str) or not _TOKEN_PATTERN.match(token):
        raise ValueError(f"a card token is {TOKEN_LENGTH} base64url characters")
    return f"{base}{CARD_PATH}/{quote(_canonical_id(household_id), safe='')}/{quote(token, safe='')}"


# -- the public card -----------------------------------------------------------------

def _coded(list_name: str, value: object) -> dict[str, str] | None:
    """Code and labels of a known code; None for anything else (never echoes unknown text)."""
    if not isinstance(value, str) or not codes.is_valid(list_name, value):
        return None
    entry = codes.CODE_LISTS[list_name][value]
    return {"code": value, "label": entry["zh"], "label_en": entry["en"]}


def _head_name(doc: Mapping[str, Any]) -> str | None:
    head = doc.get("head_member_id")
    members = doc.get("members")
    if not isinstance(head, str) or not isinstance(members, list):
        return None
    for m in members:
        if not isinstance(m, Mapping) or m.get("member_id") != head:
            continue
        if m.get("active") is not True or m.get("personal_data_erased") is True:
            return None
        masked = m.get("name_masked")
        if not isinstance(masked, str) or not masked.strip():
            return None
        # Mask again: a masked name stays as it is, a full name that got into the
        # document by mistake is masked here instead of being published.
        return mask_name(masked) or None
    return None


def _member_count(doc: Mapping[str, Any]) -> int | None:
    n = doc.get("member_count")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return None
    return n


def _measures(doc: Mapping[str, Any], year: int) -> list[dict[str, str]]:
    plans = doc.get("plans")
    plan = plans.get(str(year)) if isinstance(plans, Mapping) else None
    measures = plan.get("measures") if isinstance(plan, Mapping) else None
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for m in measures if isinstance(measures, list) else []:
        kind = _coded("assistance_measure_kind", m.get("kind") if isinstance(m, Mapping) else None)
        if kind is not None and kind["code"] not in seen:  # kinds only, each once, in plan order
            seen.add(kind["code"])
            out.append(kind)
    return out


def _units(doc: Mapping[str, Any]) -> list[str]:
    cadres = doc.get("cadres")
    current = cadres.get("current") if isinstance(cadres, Mapping) else None
    out: list[str] = []
    for c in current if isinstance(current, list) else []:
        unit = c.get("unit") if isinstance(c, Mapping) else None
        if isinstance(unit, str):
            unit = " ".join(unit.split())[:_MAX_UNIT_LENGTH]
            if unit and unit not in out:
                out.append(unit)
    return out[:_MAX_UNITS]


def public_card(doc: Mapping[str, Any], *, today: date | None = None) -> dict[str, Any]:
    """The public, masked view of a household from its ledger document.

    ``doc`` has the shape of ``HouseholdLedgerView`` (as stored by the ledger or as
    served). Only whitelisted fields are read, each checked for its type; see the
    module docstring for what is shown and why. ``today`` (default: the local date)
    picks the plan year. Values that are missing or not of the expected form are
    ``None`` (or empty lists).
    """
    if not isinstance(doc, Mapping):
        raise TypeError("doc must be a household ledger document (a mapping)")
    year = (today or date.today()).year
    try:
        household_id: str | None = _canonical_id(doc.get("household_id"))
    except ValueError:
        household_id = None
    village = doc.get("village_code")
    return {
        "household_id": household_id,
        "village_code": village if isinstance(village, str) and _VILLAGE_PATTERN.match(village) else None,
        "status": _coded("household_status", doc.get("status")),
        "attribute": _coded("household_attribute", doc.get("attribute")),
        "head_name_masked": _head_name(doc),
        "member_count": _member_count(doc),
        "assistance": {"year": year, "measures": _measures(doc, year)},
        "support_units": _units(doc),
    }


# -- QR codes ------------------------------------------------------------------------

def _qr(url: str) -> segno.QRCode:
    if not isinstance(url, str) or not url:
        raise ValueError("the QR code needs a non-empty URL")
    # Exactly level M (no boosting), never a Micro QR code: phones read these reliably.
    return segno.make(url, error=_QR_ERROR, boost_error=False, micro=False)


def qr_svg(url: str, *, label: str = "QR code of this household card's link", scale: int = 4) -> str:
    """An SVG QR code of ``url`` for inline use in HTML (and valid standalone XML).

    No XML declaration; the SVG namespace, a width/height of ``scale`` pixels per
    module with a ``viewBox`` (so CSS can resize it), white background and quiet
    zone, ``role="img"`` and an ``aria-label``/``<title>`` with ``label``.
    """
    qr = _qr(url)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=scale, border=_QR_BORDER, xmldecl=False, svgns=True, title=label,
            svgclass=None, lineclass=None, dark="#000", light="#fff", nl=False)
    svg = buf.getvalue().decode("utf-8")
    width, height = qr.symbol_size(scale=scale, border=_QR_BORDER)
    attrs = (f' role="img" aria-label="{html.escape(label, quote=True)}"'
             f' viewBox="0 0 {width} {height}"')
    if not svg.startswith("<svg "):  # segno's output format changed: fail loudly, not silently
        raise RuntimeError("unexpected SVG output from segno")
    return "<svg" + attrs + svg[len("<svg"):]


def qr_png(url: str, *, scale: int = 8) -> bytes:
    """A PNG QR code of ``url`` (black on white, quiet zone included)."""
    buf = io.BytesIO()
    _qr(url).save(buf, kind="png", scale=scale, border=_QR_BORDER, dark="#000", light="#fff")
    return buf.getvalue()


# -- HTML ----------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: .5rem; font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "PingFang SC",
       "Microsoft YaHei", sans-serif; line-height: 1.5; color: #1a1a1a; background: #f4f4f1; }
main { max-width: 40rem; margin: 1rem auto; padding: 1.5rem; background: #fff;
       border: 1px solid #c8c8c0; border-radius: .5rem; }
h1 { font-size: 1.5rem; margin: 0 0 1rem; }
dl { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: .5rem 1rem; margin: 0 0 1.5rem; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
dd ul { margin: 0; padding-left: 1.2rem; }
.en { color: #4a4a4a; }
figure { margin: 0; text-align: center; }
figure svg { width: min(100%, 14rem); height: auto; display: block; margin: 0 auto .5rem; }
figcaption { font-size: .9rem; overflow-wrap: anywhere; }
a { color: #0b4f9c; }
.note { font-size: .9rem; color: #4a4a4a; margin: 1.5rem 0 0; }
@media (max-width: 30rem) { dl { grid-template-columns: 1fr; } dd { margin-bottom: .5rem; } }
@media print { body { background: #fff; padding: 0; } main { border: 0; margin: 0; max-width: none; } }
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _coded_html(value: object) -> str:
    if not isinstance(value, Mapping) or not value.get("code"):
        return "<dd>Not recorded</dd>"
    zh, en = value.get("label"), value.get("label_en")
    parts = []
    if zh:
        parts.append(f'<span lang="zh">{_e(zh)}</span>')
    if en:
        parts.append(f'<span class="en">{_e(en)}</span>')
    return f"<dd>{' · '.join(parts) if parts else _e(value['code'])}</dd>"


def _text_html(value: object, lang: str | None = None) -> str:
    if value is None or value == "":
        return "<dd>Not recorded</dd>"
    attr = f' lang="{lang}"' if lang else ""
    return f"<dd{attr}>{_e(value)}</dd>"


def render_card_html(card: Mapping[str, Any], url: str) -> str:
    """A standalone HTML5 page of a public card (from ``public_card``) with its QR code.

    No scripts and no external resources (styles inline, the QR code as inline
    SVG); every value is HTML-escaped. ``url`` is the card's own link: it becomes
    the QR code and, when it is an http(s) URL, a link under it.
    """
    assistance = card.get("assistance") if isinstance(card.get("assistance"), Mapping) else {}
    year = assistance.get("year")
    measures = [m for m in assistance.get("measures") or [] if isinstance(m, Mapping)]
    units = [u for u in card.get("support_units") or [] if isinstance(u, str)]

    if measures:
        items = "".join(
            "<li>" + (f'<span lang="zh">{_e(m.get("label") or m.get("code"))}</span>'
                      + (f' · <span class="en">{_e(m["label_en"])}</span>' if m.get("label_en") else ""))
            + "</li>" for m in measures)
        measures_html = f"<dd><ul>{items}</ul></dd>"
    else:
        measures_html = "<dd>None recorded</dd>"
    if units:
        units_html = "<dd><ul>" + "".join(f"<li>{_e(u)}</li>" for u in units) + "</ul></dd>"
    else:
        units_html = "<dd>None assigned</dd>"
    year_text = f" ({_e(year)})" if year is not None else ""
    count = card.get("member_count")

    rows = [
        ("Village code", _text_html(card.get("village_code"))),
        ("Status", _coded_html(card.get("status"))),
        ("Household attribute", _coded_html(card.get("attribute"))),
        ("Head of household", _text_html(card.get("head_name_masked"), "zh")),
        ("Members", _text_html(count)),
        (f"Assistance measures{year_text}", measures_html),
        ("Assisting units", units_html),
    ]
    dl = "\n".join(f"<dt>{_e(term)}</dt>{dd}" for term, dd in rows)

    qr = qr_svg(url, label="QR code with the link to this household card")
    link_ok = urlsplit(url).scheme in ("http", "https")
    link = f'<a href="{_e(url)}">{_e(url)}</a>' if link_ok else _e(url)
    village = card.get("village_code")
    title = "Household card (明白卡)" + (f" – village {village}" if village else "")

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Household card <span lang="zh">明白卡</span></h1>
<dl>
{dl}
</dl>
<figure>
{qr}
<figcaption>Scan to open this card: {link}</figcaption>
</figure>
<p class="note">Public view: personal data is masked and income is not shown.
The full household record is available to authorised staff after login.</p>
</main>
</body>
</html>
"""
