"""The registry's code lists: data shape, validation, labels."""

from __future__ import annotations

import pytest

from services.registry import codes
from services.registry.codes import CODE_LISTS, CodeError, UnknownCodeList, label, validate, validate_many

EXPECTED = {
    "household_attribute": ["general", "minimum_living", "extreme_poverty"],
    "identification_standard": ["national", "provincial"],
    "household_status": ["applicant", "identified", "lifted_out", "returned_to_poverty",
                         "wrongly_identified_removed", "natural_decrease"],
    "monitoring_object_type": ["unstable_lifted_out", "marginal", "sudden_hardship"],
    "poverty_cause": ["illness", "disability", "schooling", "disaster", "lack_of_land", "lack_of_water",
                      "lack_of_skills", "lack_of_labour", "lack_of_funds", "poor_transport",
                      "lack_of_drive", "marriage", "funeral", "other"],
    "health_condition": ["healthy", "chronic_illness", "serious_illness", "disabled"],
    "labour_skill": ["ordinary", "skilled", "weak", "lost", "none"],
    "education_level": ["illiterate", "primary", "junior", "senior", "college", "bachelor_or_above"],
    "schooling_stage": ["not_in_school", "preschool", "primary", "junior", "senior",
                        "secondary_vocational", "higher_vocational", "undergraduate", "postgraduate"],
    "employment": ["none", "local", "migrant"],
    "insurance_kind": ["basic_medical", "serious_illness", "pension", "commercial"],
    "member_removal_reason": ["death", "marriage_out", "moved_out", "imprisoned", "settled_abroad", "other"],
    "member_join_reason": ["initial", "birth", "marriage_in", "moved_in", "other"],
    "sex": ["male", "female"],
    "assistance_measure_kind": ["industry", "employment", "education", "health", "housing", "relocation",
                                "credit", "social_security", "other"],
}


def test_every_list_has_zh_and_en_labels() -> None:
    assert set(EXPECTED) <= set(CODE_LISTS)
    assert {"relation_to_head", "living_condition_item"} <= set(CODE_LISTS)
    for name, entries in CODE_LISTS.items():
        assert entries, name
        for code, labels in entries.items():
            assert isinstance(code, str) and code == code.strip() and code
            assert set(labels) == {"zh", "en"}, (name, code)
            assert labels["zh"].strip() and labels["en"].strip(), (name, code)
            assert labels["en"].isascii(), (name, code)


@pytest.mark.parametrize("list_name", sorted(EXPECTED))
def test_lists_hold_the_expected_codes_in_order(list_name: str) -> None:
    assert list(CODE_LISTS[list_name]) == EXPECTED[list_name]


@pytest.mark.parametrize("list_name", sorted(CODE_LISTS))
def test_each_list_validates_its_codes_and_rejects_others(list_name: str) -> None:
    for code in CODE_LISTS[list_name]:
        assert validate(list_name, code) == code
        assert validate(list_name, f" {code} ") == code
    first = next(iter(CODE_LISTS[list_name]))
    wrong_case = first.upper() if first.upper() != first else "X" + first
    for bad in ("no_such_code", "", None, 3, wrong_case):
        with pytest.raises(CodeError) as info:
            validate(list_name, bad)
        err = info.value
        assert isinstance(err, ValueError)
        assert err.list_name == list_name and err.value == bad
        assert err.allowed == tuple(CODE_LISTS[list_name])
        assert err.code == f"invalid_{list_name}"
        message = str(err)
        assert list_name in message
        for allowed in CODE_LISTS[list_name]:
            assert allowed in message


def test_labels_from_the_domain() -> None:
    assert label("household_attribute", "minimum_living") == "低保贫困户"
    assert label("household_attribute", "extreme_poverty", "zh") == "特困供养户"
    assert label("household_status", "identified") == "贫困户"
    assert label("household_status", "wrongly_identified_removed") == "错评剔除"
    assert label("monitoring_object_type", "marginal") == "边缘易致贫户"
    assert label("poverty_cause", "lack_of_drive") == "自身发展动力不足"
    assert label("poverty_cause", "poor_transport") == "交通条件落后"
    assert label("insurance_kind", "commercial") == "商业补充保险"
    assert label("member_removal_reason", "settled_abroad") == "定居国外"
    assert label("living_condition_item", "drinking_water") == "饮水安全"
    assert label("poverty_cause", "illness", lang="en") == "illness"
    with pytest.raises(ValueError, match="language"):
        label("sex", "male", "fr")
    with pytest.raises(CodeError):
        label("sex", "unknown")


def test_relation_to_head_uses_gbt4761_codes_and_a_head_marker() -> None:
    rel = CODE_LISTS["relation_to_head"]
    assert next(iter(rel)) == codes.HEAD_RELATION == "head"
    assert rel["head"]["zh"] == "户主"
    assert rel["10"]["zh"] == "配偶"
    assert rel["20"]["zh"] == "子"
    assert rel["30"]["zh"] == "女"
    assert rel["50"]["zh"] == "父母"
    assert rel["70"]["zh"] == "兄弟姐妹"
    assert rel["99"]["zh"] == "非亲属"
    # Two-digit codes only besides the marker; the standard's own head codes are not used.
    assert all(c == "head" or (len(c) == 2 and c.isdigit()) for c in rel)
    assert "01" not in rel and codes.GBT4761_HEAD not in rel


def test_validate_many_dedupes_and_keeps_order() -> None:
    assert validate_many("health_condition", ["disabled", "chronic_illness", "disabled"]) == [
        "disabled", "chronic_illness"]
    assert validate_many("health_condition", ["healthy", "healthy"]) == ["healthy"]
    assert validate_many("insurance_kind", []) == []
    assert validate_many("poverty_cause", ("illness", "lack_of_funds")) == ["illness", "lack_of_funds"]


def test_validate_many_rejects_healthy_with_others() -> None:
    with pytest.raises(CodeError) as info:
        validate_many("health_condition", ["healthy", "disabled"])
    assert "healthy" in str(info.value) and "disabled" in str(info.value)
    assert info.value.code == "invalid_health_condition"


def test_validate_many_rejects_unknown_codes_and_bare_strings() -> None:
    with pytest.raises(CodeError, match="insurance_kind"):
        validate_many("insurance_kind", ["pension", "car_insurance"])
    with pytest.raises(CodeError, match="list of codes"):
        validate_many("health_condition", "healthy")


def test_unknown_list_name() -> None:
    with pytest.raises(UnknownCodeList) as info:
        validate("no_such_list", "x")
    assert "no_such_list" in str(info.value)
    assert isinstance(info.value, KeyError)


def test_multi_valued_lists_are_known() -> None:
    assert codes.MULTI_VALUED <= set(CODE_LISTS)
    assert "health_condition" in codes.MULTI_VALUED
    for name, exclusive in codes.EXCLUSIVE.items():
        assert exclusive <= set(CODE_LISTS[name])
