"""Resident ID numbers, masking, phone numbers and the keyed ID hash."""

from __future__ import annotations

from datetime import date

import pytest

from services.registry.identity import (
    IdNumberError,
    ResidentId,
    check_character,
    id_hmac,
    mask_id_number,
    mask_name,
    mask_phone,
    validate_id_number,
    validate_phone,
)

TODAY = date(2024, 6, 1)


def _check(first17: str) -> str:
    """Independent statement of the GB 11643 check character (ISO 7064 MOD 11-2):
    the check c satisfies sum(a_i * 2^(18-i) mod 11) + c ≡ 1 (mod 11)."""
    total = sum(int(d) * pow(2, 17 - i, 11) for i, d in enumerate(first17))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def _make(first17: str) -> str:
    return first17 + _check(first17)


VALID = [
    "11010519491231002X",  # the standard's example (female)
    _make("62010219900101123"),  # odd sequence: male
    _make("62010219900101124"),  # even sequence: female
    _make("45010320001231001"),
    _make("53250119800229008"),  # leap day
]


def _code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.code


def test_independent_check_matches_the_weight_table() -> None:
    for number in VALID:
        assert check_character(number[:17]) == number[17] == _check(number[:17])
    assert check_character("11010519491231002") == "X"


def test_the_standard_example_is_valid() -> None:
    rid = validate_id_number("11010519491231002X", today=TODAY)
    assert rid == ResidentId(number="11010519491231002X", birth_date=date(1949, 12, 31),
                             sex="female", address_code="110105")


def test_valid_numbers_decode() -> None:
    male = validate_id_number(VALID[1], today=TODAY)
    assert (male.birth_date, male.sex, male.address_code) == (date(1990, 1, 1), "male", "620102")
    female = validate_id_number(VALID[2], today=TODAY)
    assert female.sex == "female"
    assert validate_id_number(VALID[4], today=TODAY).birth_date == date(1980, 2, 29)


def test_normalises_whitespace_and_lower_case_x() -> None:
    rid = validate_id_number("  11010519491231002x\n", today=TODAY)
    assert rid.number == "11010519491231002X"


def test_repr_is_masked() -> None:
    rid = validate_id_number(VALID[1], today=TODAY)
    assert VALID[1] not in repr(rid)
    assert "6201**********" in repr(rid)


@pytest.mark.parametrize("raw", ["", "1101051949123100", "11010519491231002XX", "110105194912310021A",
                                 "1101051949123100X2", "A1010519491231002X", "110105 9491231002X",
                                 "１１０１０５１９４９１２３１００２Ｘ", "110105491231002"])
def test_format_errors(raw: str) -> None:
    with pytest.raises(IdNumberError) as info:
        validate_id_number(raw, today=TODAY)
    assert _code(info) == "id_format"


def test_non_string_is_a_format_error() -> None:
    with pytest.raises(IdNumberError) as info:
        validate_id_number(11010519491231002, today=TODAY)  # type: ignore[arg-type]
    assert _code(info) == "id_format"


@pytest.mark.parametrize("number", VALID)
def test_every_single_digit_mutation_fails_the_check(number: str) -> None:
    for pos in range(17):
        for d in "0123456789":
            if d == number[pos]:
                continue
            mutated = number[:pos] + d + number[pos + 1:]
            with pytest.raises(IdNumberError) as info:
                validate_id_number(mutated, today=TODAY)
            assert _code(info) in ("id_check_digit",), (mutated, _code(info))
    for c in "0123456789X":
        if c != number[17]:
            with pytest.raises(IdNumberError) as info:
                validate_id_number(number[:17] + c, today=TODAY)
            assert _code(info) == "id_check_digit"


def test_transposed_digits_fail_the_check() -> None:
    number = VALID[1]
    swapped = number[:10] + number[11] + number[10] + number[12:]
    assert swapped != number
    with pytest.raises(IdNumberError) as info:
        validate_id_number(swapped, today=TODAY)
    assert _code(info) == "id_check_digit"


@pytest.mark.parametrize("first17", [
    "62010219900230123",  # 30 February
    "62010219901301123",  # month 13
    "62010219900100123",  # day 0
    "62010219810229123",  # 1981 is not a leap year
    "62010218991231123",  # before 1900
    "62010220240602123",  # after TODAY
    "62010230000101123",  # far future
])
def test_birth_date_errors(first17: str) -> None:
    with pytest.raises(IdNumberError) as info:
        validate_id_number(_make(first17), today=TODAY)
    assert _code(info) == "id_birth_date"


def test_birth_date_today_is_allowed() -> None:
    rid = validate_id_number(_make("62010220240601123"), today=TODAY)
    assert rid.birth_date == TODAY


def test_future_date_against_the_real_clock() -> None:
    future = date.today().year + 1
    with pytest.raises(IdNumberError) as info:
        validate_id_number(_make(f"620102{future}0101123"))
    assert _code(info) == "id_birth_date"


def test_birth_date_must_match_when_given() -> None:
    assert validate_id_number(VALID[1], date(1990, 1, 1), today=TODAY).birth_date == date(1990, 1, 1)
    with pytest.raises(IdNumberError) as info:
        validate_id_number(VALID[1], date(1990, 1, 2), today=TODAY)
    assert _code(info) == "id_birth_date_mismatch"
    assert "1990-01-02" in str(info.value) and "1990-01-01" in str(info.value)


def test_error_is_a_value_error_with_code_and_message() -> None:
    with pytest.raises(ValueError) as info:
        validate_id_number("123", today=TODAY)
    err = info.value
    assert isinstance(err, IdNumberError)
    assert err.code == "id_format" and err.message == str(err)


# -- masking -------------------------------------------------------------------------

def test_mask_id_number() -> None:
    assert mask_id_number("620102199001011234") == "6201**********1234"
    assert mask_id_number("11010519491231002x") == "1101**********002X"
    assert mask_id_number("12345678") == "********"
    assert mask_id_number("") == ""


@pytest.mark.parametrize(("name", "masked"), [
    ("张三强", "张*强"),
    ("张三", "张*"),
    ("张", "*"),
    ("欧阳娜娜", "欧**娜"),
    (" 李四 ", "李*"),
    ("John Smith", "J*** S****"),
    ("Alice", "A****"),
    ("买买提·艾力", "买**·艾*"),
    ("", ""),
])
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


def test_mask_phone() -> None:
    assert mask_phone("13912345678") == "139****5678"
    assert mask_phone("139-1234-5678") == "139****5678"
    assert mask_phone("0931-8123456") == "0931-***3456"
    assert mask_phone("010-62345678") == "010-****5678"
    assert mask_phone("12") == "**"


# -- phone numbers -------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "normal"), [
    ("13912345678", "13912345678"),
    (" 139 1234 5678 ", "13912345678"),
    ("139-1234-5678", "13912345678"),
    ("+86 139 1234 5678", "13912345678"),
    ("8619912345678", "19912345678"),
    ("0931-8123456", "0931-8123456"),
    ("0931 8123456", "0931-8123456"),
    ("(0931)8123456", "0931-8123456"),
    ("09318123456", "0931-8123456"),
    ("010-62345678", "010-62345678"),
    ("02087654321", "020-87654321"),
    ("0931-8123456-123", "0931-8123456-123"),
    ("0931-8123456转88", "0931-8123456-88"),
])
def test_validate_phone_accepts(raw: str, normal: str) -> None:
    assert validate_phone(raw) == normal


@pytest.mark.parametrize("raw", ["", "12345678901", "1391234567", "139123456789", "8123456",
                                 "0931-0123456", "0931-812345", "abc", "1391234567８", "+1 139 1234 5678"])
def test_validate_phone_rejects(raw: str) -> None:
    with pytest.raises(IdNumberError) as info:
        validate_phone(raw)
    assert info.value.code == "phone_format"


# -- keyed hash ----------------------------------------------------------------------

KEY = bytes(range(32))


def test_id_hmac_is_stable_hex_sha256() -> None:
    h = id_hmac(KEY, "11010519491231002X")
    assert len(h) == 64 and set(h) <= set("0123456789abcdef")
    assert id_hmac(KEY, "11010519491231002X") == h
    assert id_hmac(bytearray(KEY), " 11010519491231002x ") == h  # normalised first


def test_id_hmac_depends_on_key_and_number() -> None:
    h = id_hmac(KEY, VALID[1])
    assert id_hmac(KEY[::-1], VALID[1]) != h
    assert id_hmac(KEY, VALID[2]) != h
    assert h != id_hmac(KEY, VALID[0])


def test_id_hmac_known_value() -> None:
    import hashlib
    import hmac

    assert id_hmac(KEY, "11010519491231002x") == hmac.new(
        KEY, b"11010519491231002X", hashlib.sha256).hexdigest()


def test_id_hmac_rejects_weak_keys_and_malformed_numbers() -> None:
    with pytest.raises(ValueError, match="key"):
        id_hmac(b"short", VALID[1])
    with pytest.raises(ValueError):
        id_hmac("a string key of enough length", VALID[1])  # type: ignore[arg-type]
    with pytest.raises(IdNumberError):
        id_hmac(KEY, "not an id")
