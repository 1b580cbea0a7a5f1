"""Identifying data: resident ID numbers, names and phone numbers.

Pure functions, no I/O. Full ID numbers, names and phones live only in the
registry's vault; everything else sees masked forms or the keyed hash
``id_hmac``.

Resident ID numbers follow GB 11643-1999: a 6-digit address code, an 8-digit
birth date (YYYYMMDD), a 3-digit sequence number (odd for men, even for women)
and a check character computed with ISO 7064 MOD 11-2. First-generation 15-digit
numbers are not accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import date

from contracts.masking import mask_id_number, mask_name  # noqa: F401  (re-exported)

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"  # index: weighted sum mod 11
_ID_PATTERN = re.compile(r"^[0-9]{17}[0-9X]$")
_EARLIEST_BIRTH = date(1900, 1, 1)
_MIN_KEY_BYTES = 16


class IdNumberError(ValueError):
    """Invalid identifying data. ``code`` is the machine code:
    ``id_format``, ``id_check_digit``, ``id_birth_date``, ``id_birth_date_mismatch``
    for ID numbers and ``phone_format`` for phone numbers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# One error type for all identifying data; this name reads better for phones.
IdentityError = IdNumberError


@dataclass(frozen=True)
class ResidentId:
    """A validated resident ID number and what it encodes. Its repr is masked so
    that a logged object never shows the full number."""

    number: str = field(repr=False)
    birth_date: date
    sex: str  # 'male' or 'female'
    address_code: str

    @property
    def masked(self) -> str:
        return mask_id_number(self.number)

    def __repr__(self) -> str:
        return (f"ResidentId(number={self.masked!r}, birth_date={self.birth_date!r}, "
                f"sex={self.sex!r}, address_code={self.address_code!r})")


def check_character(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise IdNumberError("id_format", "the check character needs exactly 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS))
    return _CHECK_CHARS[total % 11]


def normalise_id_number(raw: object) -> str:
    """Strip surrounding whitespace and upper-case a final 'x'; check the shape
    (17 digits and a digit or X). Does not verify the check character."""
    if not isinstance(raw, str):
        raise IdNumberError("id_format", "the ID number must be a string")
    number = raw.strip().upper()
    if len(number) == 15 and number.isascii() and number.isdigit():
        raise IdNumberError("id_format", "15-digit first-generation ID numbers are not accepted; "
                                         "give the 18-digit number")
    if len(number) != 18:
        raise IdNumberError("id_format", f"an ID number has 18 characters, not {len(number)}")
    if not _ID_PATTERN.match(number):
        raise IdNumberError("id_format", "an ID number is 17 digits followed by a digit or X")
    return number


def validate_id_number(raw: str, birth_date: date | None = None, *,
                       today: date | None = None) -> ResidentId:
    """Validate an 18-character resident ID number.

    Checks, in order: shape (``id_format``), check character (``id_check_digit``),
    embedded birth date is a real date from 1900-01-01 up to ``today``
    (``id_birth_date``), and, when ``birth_date`` is given, that it equals the
    embedded one (``id_birth_date_mismatch``). ``today`` defaults to the local date.
    """
    number = normalise_id_number(raw)
    expected = check_character(number[:17])
    if number[17] != expected:
        raise IdNumberError("id_check_digit", "the ID number's check character is wrong "
                                              "(a digit may be mistyped)")
    digits = number[6:14]
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise IdNumberError("id_birth_date", "the birth date in the ID number is not a real date") from None
    today = today or date.today()
    if born > today:
        raise IdNumberError("id_birth_date", "the birth date in the ID number is in the future")
    if born < _EARLIEST_BIRTH:
        raise IdNumberError("id_birth_date", "the birth date in the ID number is before 1900")
    if birth_date is not None and birth_date != born:
        raise IdNumberError("id_birth_date_mismatch",
                            f"birth date {birth_date.isoformat()} does not match the ID number "
                            f"({born.isoformat()})")
    sex = "male" if int(number[16]) % 2 == 1 else "female"
    return ResidentId(number=number, birth_date=born, sex=sex, address_code=number[:6])


# -- masking -------------------------------------------------------------------------

_MOBILE = re.compile(r"^1[3-9][0-9]{9}$")
# Area code 010, 02x (3 digits) or 0xxx (4 digits); local number 7-8 digits not
# starting with 0 or 1; optional extension.
_LANDLINE = re.compile(
    r"^(?:\((?P<a1>0(?:10|2[0-9]|[3-9][0-9]{2}))\)|(?P<a2>0(?:10|2[0-9]|[3-9][0-9]{2}))[-\s]?)"
    r"(?P<local>[2-9][0-9]{6,7})(?:(?:[-#]|转)(?P<ext>[0-9]{1,6}))?$")


def validate_phone(raw: str) -> str:
    """Validate a mainland China phone number and return its normal form.

    Mobile: ``1[3-9]`` and 9 more digits, optionally written with spaces or
    hyphens and a ``+86``/``86`` prefix; normal form ``13912345678``.
    Landline: with area code, as ``0931-8123456``, ``0931 8123456``,
    ``(0931)8123456`` or ``09318123456``, optionally with an extension
    (``-123``, ``#123``, ``转123``); normal form ``0931-8123456`` (``-123``).
    Raises ``IdNumberError('phone_format', ...)``.
    """
    if not isinstance(raw, str):
        raise IdNumberError("phone_format", "the phone number must be a string")
    s = raw.strip()
    compact = re.sub(r"[\s\-]", "", s)
    mobile = re.sub(r"^(?:\+86|0086|86)(?=1[0-9]{10}$)", "", compact)
    if _MOBILE.match(mobile):
        return mobile
    m = _LANDLINE.match(s)
    if m:
        area = m.group("a1") or m.group("a2")
        out = f"{area}-{m.group('local')}"
        if m.group("ext"):
            out += f"-{m.group('ext')}"
        return out
    raise IdNumberError("phone_format", "not a mainland mobile number (11 digits starting 13-19) "
                                        "or a landline number with area code (e.g. 0931-8123456)")


def mask_phone(phone: str) -> str:
    """Mask a phone number: mobile ``139****5678``; landline keeps the area code
    and the last 4 digits (``0931-***3456``); anything else keeps its last 4 digits."""
    s = (phone or "").strip()
    try:
        normal = validate_phone(s)
    except IdNumberError:
        digits = re.sub(r"[^0-9]", "", s)
        if len(digits) <= 4:
            return "*" * len(digits)
        return "*" * (len(digits) - 4) + digits[-4:]
    if "-" not in normal:
        return normal[:3] + "****" + normal[-4:]
    area, local, *_ = normal.split("-")  # the extension is dropped
    return f"{area}-{'*' * (len(local) - 4)}{local[-4:]}"


# -- keyed hash ----------------------------------------------------------------------

def id_hmac(key: bytes, id_number: str) -> str:
    """Hex HMAC-SHA256 of the normalised ID number (stripped, upper-case X).

    Lets other systems and the one-person-one-household index match people
    without seeing ID numbers. ``key`` is a secret held by the registry (from its
    secret store, at least 16 random bytes): it is never logged, never put in an
    event and never sent to another service; without it the hash cannot be
    reversed by enumerating the small space of ID numbers. Changing the key
    changes every hash, so rotating it means recomputing the index from the vault.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the ID hashing key must be at least {_MIN_KEY_BYTES} bytes")
    number = normalise_id_number(id_number)
    return hmac.new(bytes(key), number.encode("ascii"), hashlib.sha256).hexdigest()
