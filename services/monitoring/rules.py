"""Return-to-poverty risk rules (dynamic return-to-poverty monitoring). Pure domain code: no I/O, no frameworks.

What a household's risk is judged on, ``HouseholdRiskFacts``, is folded from its
registry events (``fold_risk_facts``: (event_type, data) pairs, oldest first, the
style of ``services.funds.domain.fold_household_facts``) together with its
self-paid medical costs (``medical_costs_from_disbursements`` reads them from the
funds service's ``DisbursementRequested`` events, or the caller gives
``MedicalCost`` / ``(year, cost)`` items) and the risk reports cadres filed
(``CadreReport``).

Each rule is a small pure function ``(facts, thresholds, today) -> list[Finding]``
(``RULES``); ``evaluate`` runs the enabled ones for a household in scope
(``Thresholds.applies_to_statuses``). The numbers the rules use are dated data
in ``rules/thresholds.yaml`` (``load_thresholds``), never code.

A ``Finding`` names its rule, risk code, severity and the evidence (event values
and ids it fired on), and carries ``key``: the identity of that evidence (e.g.
``income_below_threshold:2024``). The application layer raises at most one open
alert per household and risk (``alerts.alert_key``) and should not raise a
finding again once an alert was raised for it (``finding_id``): a resolved
alert is not re-raised by the same evidence, only by new evidence (a new
assessment year, a new report, ...).

Risk codes (``RISK_CODES``): the risk types of domain.md section 10 (illness
``01``, natural disaster ``02`` and its kinds ``02xx``, disability ``03``, lack of
labour ``04``, accident ``05``, failed business ``06``, unstable employment
``07``, schooling ``09``, other ``99``), the flags (unsafe housing, compulsory-age
child out of school, unsafe drinking water, member without basic medical
insurance) and ``income`` (income below the monitoring threshold or sharply
down: the cause is established on verification).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from eventkit.errors import DomainError

THRESHOLDS_FILE = Path(__file__).parent / "rules" / "thresholds.yaml"
CENT = Decimal("0.01")
MAX_TEXT = 2000
SEVERITIES = ("low", "medium", "high")
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# --- risk codes ------------------------------------------------------------------------------

# domain.md section 10. The natural-disaster kinds are "02xx (flood, geological, drought,
# biological, weather, earthquake, other)": the two-digit suffixes below follow that order
# and are NOT CONFIRMED against the national system's code table.
RISK_CODES: dict[str, dict[str, str]] = {
    "01": {"zh": "因病", "en": "illness"},
    "02": {"zh": "因自然灾害", "en": "natural disaster"},
    "0201": {"zh": "洪涝灾害", "en": "flood"},
    "0202": {"zh": "地质灾害", "en": "geological disaster"},
    "0203": {"zh": "干旱灾害", "en": "drought"},
    "0204": {"zh": "生物灾害", "en": "biological disaster"},
    "0205": {"zh": "气象灾害", "en": "weather disaster"},
    "0206": {"zh": "地震灾害", "en": "earthquake"},
    "0207": {"zh": "其他自然灾害", "en": "other natural disaster"},
    "03": {"zh": "因残", "en": "disability"},
    "04": {"zh": "缺劳动力", "en": "lack of labour"},
    "05": {"zh": "因意外事故", "en": "accident"},
    "06": {"zh": "因产业项目失败", "en": "failed business"},
    "07": {"zh": "因务工就业不稳", "en": "unstable employment"},
    "09": {"zh": "因学", "en": "schooling"},
    "99": {"zh": "其他", "en": "other"},
    "income": {"zh": "收入低于监测范围或大幅下降", "en": "income below the monitoring threshold or sharply down"},
    "unsafe_housing": {"zh": "住房出现安全问题", "en": "unsafe housing"},
    "child_out_of_school": {"zh": "义务教育阶段适龄儿童少年失学辍学", "en": "compulsory-age child out of school"},
    "unsafe_drinking_water": {"zh": "饮水安全问题", "en": "unsafe drinking water"},
    "no_basic_medical_insurance": {"zh": "家庭成员未参加基本医疗保险",
                                   "en": "member without basic medical insurance"},
}
DISASTER_RISKS = frozenset(code for code in RISK_CODES if code.startswith("02"))
REPORT_KINDS = ("disaster", "other")

# Registry code lists (services.registry.codes) the thresholds refer to.
HOUSEHOLD_STATUSES = frozenset({"applicant", "identified", "lifted_out", "returned_to_poverty",
                                "wrongly_identified_removed", "natural_decrease"})
HEALTH_CODES = frozenset({"healthy", "chronic_illness", "serious_illness", "disabled"})
LABOUR_SKILLS = frozenset({"ordinary", "skilled", "weak", "lost", "none"})
REMOVAL_REASONS = frozenset({"death", "marriage_out", "moved_out", "imprisoned", "settled_abroad", "other"})
CONDITION_ITEMS = frozenset({"food", "clothing", "drinking_water", "compulsory_education", "basic_medical",
                             "safe_housing", "electricity", "radio_tv", "road_access"})
NOT_IN_SCHOOL = "not_in_school"
BASIC_MEDICAL_INSURANCE = "basic_medical"
OBJECT_TYPES = ("unstable_lifted_out", "marginal", "sudden_hardship")

_PROVINCE = re.compile(r"^[1-9][0-9]$")
_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
_PERIOD_YEAR = re.compile(r"^([0-9]{4})(?:-(?:0[1-9]|1[0-2]|S[12]))?$")
_FINDING_NAMESPACE = uuid.UUID("6f1d3c52-5b8e-4f1e-9a43-2d7c0b9e8a11")


def _money(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):.2f}"


def _day(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(value)


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{what} must be a decimal string, got {value!r}")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"{what} is not a number: {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return result


# --- thresholds ------------------------------------------------------------------------------


class ThresholdsError(ValueError):
    """Invalid thresholds data: ``source`` is the file, ``field`` the offending path."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source = source
        self.field = field
        self.message = message


@dataclass(frozen=True)
class IncomeThreshold:
    """A monitoring income threshold in force from ``year``; ``province`` None for the national one."""

    year: int
    amount: Decimal
    province: str | None = None
    confirmed: bool = False
    source: str | None = None


@dataclass(frozen=True)
class IncomeSettings:
    national: tuple[IncomeThreshold, ...]
    provinces: Mapping[str, tuple[IncomeThreshold, ...]]
    drop_ratio: Decimal
    drop_max_gap_years: int
    stale_after_years: int


@dataclass(frozen=True)
class MedicalSettings:
    policy_codes: frozenset[str]
    health_risks: Mapping[str, str]          # health code -> risk code, in priority order
    self_paid_above: Decimal | None
    share_of_net_income_above: Decimal | None
    below_threshold_after_cost: bool
    lookback_years: int


@dataclass(frozen=True)
class LabourSettings:
    skills: frozenset[str]
    working_age: tuple[int, int]             # inclusive
    removal_reasons: frozenset[str]


@dataclass(frozen=True)
class RuleSettings:
    rule: str
    enabled: bool
    severity: str
    requires_verification: bool
    risk: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """Validated thresholds and rule settings (``load_thresholds``)."""

    applies_to_statuses: frozenset[str]
    income: IncomeSettings
    medical: MedicalSettings
    labour: LabourSettings
    compulsory_school_age: tuple[int, int]   # inclusive
    condition_items: Mapping[str, str]       # living-condition item -> risk flag
    rules: Mapping[str, RuleSettings]
    source: str = "<memory>"

    def income_threshold(self, year: int, province: str | None = None) -> IncomeThreshold | None:
        """The monitoring threshold for incomes of ``year`` in ``province`` (2-digit code; None: national).

        Each series holds entries in force from their year until the next. Of the national and the
        provincial entry in force in ``year``, the more recent one applies (same year: the provincial);
        None before the first entry."""
        national = _in_force(self.income.national, year)
        regional = _in_force(self.income.provinces.get(province, ()), year) if province else None
        if regional is not None and (national is None or regional.year >= national.year):
            return regional
        return national

    def rule(self, rule_id: str) -> RuleSettings:
        try:
            return self.rules[rule_id]
        except KeyError:
            raise KeyError(f"unknown rule {rule_id!r}; known: {', '.join(RULES)}") from None

    def with_rules(self, **changes: Mapping[str, Any]) -> Thresholds:
        """A copy with some rules' settings changed, e.g. ``with_rules(income_drop={"enabled": False})``."""
        rules = dict(self.rules)
        for rule_id, values in changes.items():
            rules[rule_id] = replace(self.rule(rule_id), **values)
        return replace(self, rules=rules)


def _in_force(entries: Iterable[IncomeThreshold], year: int) -> IncomeThreshold | None:
    found = None
    for entry in entries:  # ascending by year (validated)
        if entry.year <= year:
            found = entry
    return found


class _Reader:
    """Validation helpers that name the file and the field of anything wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> ThresholdsError:
        return ThresholdsError(self.source, field, message)

    def mapping(self, value: Any, field: str, *, allowed: Iterable[str], required: Iterable[str] = ()
                ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be a mapping, got {type(value).__name__}")
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                raise self.fail(f"{field}.{key}" if field else str(key),
                                f"unknown key; expected one of {', '.join(sorted(allowed))}")
        for key in required:
            if key not in value:
                raise self.fail(f"{field}.{key}" if field else key, "is required")
        return value

    def integer(self, value: Any, field: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise self.fail(field, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r}")
        return value

    def number(self, value: Any, field: str, *, positive: bool = True, at_most: Decimal | None = None) -> Decimal:
        if isinstance(value, float):
            value = repr(value)  # YAML 0.3 -> "0.3": the shortest text that reads back the same
        try:
            number = _decimal(value, field)
        except ValueError:
            raise self.fail(field, f"must be a number (a quoted decimal such as \"6000.00\"), got {value!r}") from None
        if positive and number <= 0:
            raise self.fail(field, f"must be positive, got {value!r}")
        if at_most is not None and number > at_most:
            raise self.fail(field, f"must be at most {at_most}, got {value!r}")
        return number

    def optional_number(self, value: Any, field: str, **kw: Any) -> Decimal | None:
        return None if value is None else self.number(value, field, **kw)

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def code(self, value: Any, field: str, allowed: Iterable[str]) -> str:
        allowed = list(allowed)
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(field, f"unknown value {value!r}; expected one of {', '.join(sorted(allowed))}")
        return value

    def codes(self, value: Any, field: str, allowed: Iterable[str], *, non_empty: bool = True) -> frozenset[str]:
        if not isinstance(value, list) or (non_empty and not value):
            raise self.fail(field, "must be a non-empty list")
        out = []
        for i, item in enumerate(value):
            code = self.code(item, f"{field}[{i}]", allowed)
            if code in out:
                raise self.fail(f"{field}[{i}]", f"{code!r} is listed twice")
            out.append(code)
        return frozenset(out)

    def age_range(self, value: Any, field: str) -> tuple[int, int]:
        m = self.mapping(value, field, allowed=("from", "to"), required=("from", "to"))
        low = self.integer(m["from"], f"{field}.from", low=0, high=120)
        high = self.integer(m["to"], f"{field}.to", low=0, high=120)
        if low > high:
            raise self.fail(field, f"from ({low}) is above to ({high})")
        return low, high

    def series(self, value: Any, field: str, province: str | None) -> tuple[IncomeThreshold, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(field, "must be a non-empty list of {year, amount, confirmed, source}")
        out: list[IncomeThreshold] = []
        for i, raw in enumerate(value):
            at = f"{field}[{i}]"
            m = self.mapping(raw, at, allowed=("year", "amount", "confirmed", "source"), required=("year", "amount"))
            year = self.integer(m["year"], f"{at}.year", low=2000, high=2100)
            if out and year <= out[-1].year:
                raise self.fail(f"{at}.year", f"{year} is not after {out[-1].year}: years go up, one entry per year")
            out.append(IncomeThreshold(
                year, self.number(m["amount"], f"{at}.amount").quantize(CENT), province,
                self.boolean(m.get("confirmed", False), f"{at}.confirmed"),
                None if m.get("source") is None else self.text(m["source"], f"{at}.source")))
        return tuple(out)


_TOP_KEYS = ("applies_to_statuses", "income", "medical", "labour", "school", "conditions", "rules")
# Rules whose risk is fixed (set in the rule's settings) and rules whose risk comes from other settings.
_FIXED_RISK_RULES = ("income_below_threshold", "income_drop", "main_labourer_lost", "child_out_of_school",
                     "uninsured_member", "disaster_reported", "manual_report")


def parse_thresholds(data: Any, source: str = "<memory>") -> Thresholds:
    """Validate thresholds data (as read from YAML); raises ``ThresholdsError`` naming the field."""
    r = _Reader(source)
    top = r.mapping(data, "", allowed=_TOP_KEYS, required=_TOP_KEYS)
    statuses = r.codes(top["applies_to_statuses"], "applies_to_statuses", HOUSEHOLD_STATUSES)

    inc = r.mapping(top["income"], "income", allowed=("national", "provinces", "drop_ratio", "drop_max_gap_years",
                                                      "stale_after_years"),
                    required=("national", "drop_ratio", "drop_max_gap_years", "stale_after_years"))
    provinces: dict[str, tuple[IncomeThreshold, ...]] = {}
    raw_provinces = inc.get("provinces") or {}
    if not isinstance(raw_provinces, Mapping):
        raise r.fail("income.provinces", "must be a mapping of 2-digit province code to a list of thresholds")
    for code, entries in raw_provinces.items():
        if not isinstance(code, str) or not _PROVINCE.match(code):
            raise r.fail(f"income.provinces.{code}", f"{code!r} is not a 2-digit province code in quotes (e.g. \"62\")")
        provinces[code] = r.series(entries, f"income.provinces.{code}", code)
    income = IncomeSettings(
        national=r.series(inc["national"], "income.national", None),
        provinces=provinces,
        drop_ratio=r.number(inc["drop_ratio"], "income.drop_ratio", at_most=Decimal(1)),
        drop_max_gap_years=r.integer(inc["drop_max_gap_years"], "income.drop_max_gap_years", low=1, high=50),
        stale_after_years=r.integer(inc["stale_after_years"], "income.stale_after_years", low=0, high=50))

    med = r.mapping(top["medical"], "medical", allowed=(
        "policy_codes", "health_risks", "self_paid_above", "share_of_net_income_above",
        "below_threshold_after_cost", "lookback_years"), required=(
        "policy_codes", "health_risks", "lookback_years"))
    policy_codes = med["policy_codes"]
    if not isinstance(policy_codes, list) or not policy_codes:
        raise r.fail("medical.policy_codes", "must be a non-empty list of policy codes")
    for i, code in enumerate(policy_codes):
        if not isinstance(code, str) or not _CODE.match(code):
            raise r.fail(f"medical.policy_codes[{i}]", f"{code!r} is not a policy code (lower_snake_case)")
    health = r.mapping(med["health_risks"], "medical.health_risks", allowed=sorted(HEALTH_CODES - {"healthy"}))
    if not health:
        raise r.fail("medical.health_risks", "must name at least one health code")
    health_risks = {code: r.code(risk, f"medical.health_risks.{code}", RISK_CODES) for code, risk in health.items()}
    medical = MedicalSettings(
        policy_codes=frozenset(policy_codes),
        health_risks=health_risks,
        self_paid_above=r.optional_number(med.get("self_paid_above"), "medical.self_paid_above"),
        share_of_net_income_above=r.optional_number(med.get("share_of_net_income_above"),
                                                    "medical.share_of_net_income_above", at_most=Decimal(10)),
        below_threshold_after_cost=r.boolean(med.get("below_threshold_after_cost", False),
                                             "medical.below_threshold_after_cost"),
        lookback_years=r.integer(med["lookback_years"], "medical.lookback_years", low=0, high=10))
    if (medical.self_paid_above is None and medical.share_of_net_income_above is None
            and not medical.below_threshold_after_cost):
        raise r.fail("medical", "no criterion of large medical spending is set: set self_paid_above, "
                     "share_of_net_income_above or below_threshold_after_cost")

    lab = r.mapping(top["labour"], "labour", allowed=("skills", "working_age", "removal_reasons"),
                    required=("skills", "working_age", "removal_reasons"))
    labour = LabourSettings(r.codes(lab["skills"], "labour.skills", LABOUR_SKILLS),
                            r.age_range(lab["working_age"], "labour.working_age"),
                            r.codes(lab["removal_reasons"], "labour.removal_reasons", REMOVAL_REASONS))

    school = r.mapping(top["school"], "school", allowed=("compulsory_age",), required=("compulsory_age",))
    school_age = r.age_range(school["compulsory_age"], "school.compulsory_age")

    cond = r.mapping(top["conditions"], "conditions", allowed=("items",), required=("items",))
    items = r.mapping(cond["items"], "conditions.items", allowed=sorted(CONDITION_ITEMS))
    if not items:
        raise r.fail("conditions.items", "must name at least one living-condition item")
    condition_items = {item: r.code(flag, f"conditions.items.{item}", RISK_CODES) for item, flag in items.items()}

    raw_rules = r.mapping(top["rules"], "rules", allowed=RULES, required=RULES)
    rules: dict[str, RuleSettings] = {}
    for rule_id in RULES:
        at = f"rules.{rule_id}"
        fixed = rule_id in _FIXED_RISK_RULES
        m = r.mapping(raw_rules[rule_id], at,
                      allowed=("enabled", "severity", "requires_verification") + (("risk",) if fixed else ()),
                      required=("enabled", "severity", "requires_verification") + (("risk",) if fixed else ()))
        risk = r.code(m["risk"], f"{at}.risk", RISK_CODES) if fixed else None
        if rule_id == "disaster_reported" and risk not in DISASTER_RISKS:
            raise r.fail(f"{at}.risk", f"must be a natural-disaster risk code (02 or 02xx), got {risk!r}")
        if rule_id == "manual_report" and risk in DISASTER_RISKS:
            raise r.fail(f"{at}.risk", "a disaster is reported with kind disaster (rule disaster_reported)")
        rules[rule_id] = RuleSettings(rule_id, r.boolean(m["enabled"], f"{at}.enabled"),
                                      r.code(m["severity"], f"{at}.severity", SEVERITIES),
                                      r.boolean(m["requires_verification"], f"{at}.requires_verification"), risk)
    return Thresholds(statuses, income, medical, labour, school_age, condition_items, rules, source)


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Read and validate a thresholds file (default: ``rules/thresholds.yaml``)."""
    path = Path(path) if path is not None else THRESHOLDS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThresholdsError(str(path), "(file)", f"cannot be read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ThresholdsError(str(path), "(file)", f"is not valid YAML: {exc}") from exc
    return parse_thresholds(data, str(path))


@lru_cache(maxsize=1)
def default_thresholds() -> Thresholds:
    """The shipped thresholds (loaded on first use, then cached)."""
    return load_thresholds()


# --- household risk facts --------------------------------------------------------------------


@dataclass(frozen=True)
class MemberState:
    """A member as the latest events describe them (removed members stay, inactive)."""

    member_id: str
    birth_year: int | None = None
    relation: str | None = None
    joined_on: date | None = None
    health: tuple[str, ...] | None = None
    labour_skill: str | None = None
    schooling_stage: str | None = None
    insurance: tuple[str, ...] | None = None
    active: bool = True
    removed_on: date | None = None
    removal_reason: str | None = None

    def age_in(self, year: int) -> int | None:
        return None if self.birth_year is None else year - self.birth_year

    def in_household_during(self, year: int) -> bool:
        """Was a member at some time in ``year`` (as far as the dates say)."""
        if self.joined_on is not None and self.joined_on.year > year:
            return False
        return self.active or self.removed_on is None or self.removed_on.year >= year


@dataclass(frozen=True)
class IncomeRecord:
    """The income of an assessed year (the latest IncomeAssessed for the year)."""

    year: int
    per_capita_net_income: Decimal
    net_income: Decimal
    resident_members: int


@dataclass(frozen=True)
class ConditionsRecord:
    assessed_on: date
    conditions: Mapping[str, bool]
    seq: int                                 # position in the stream (orders same-day assessments)


@dataclass(frozen=True)
class LabourChange:
    """A member left (``kind`` removed, ``cause`` the removal reason) or their labour skill changed
    (``kind`` skill_changed, ``cause`` the new skill code)."""

    seq: int
    member_id: str
    kind: str                                # removed | skill_changed
    cause: str | None
    skill_before: str | None
    birth_year: int | None
    on: date | None                          # removal date; None for a skill change (events carry none)


@dataclass(frozen=True)
class MedicalCost:
    """A self-paid medical cost of a year; ``ref`` names its evidence (e.g. a disbursement id)."""

    year: int
    amount: Decimal
    member_id: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class CadreReport:
    """A risk reported by a cadre (or the household) through the app."""

    report_id: str
    kind: str                                # disaster | other
    risk: str | None
    note: str | None
    reported_at: datetime

    @classmethod
    def parse(cls, value: CadreReport | Mapping[str, Any]) -> CadreReport:
        """Validate a report; raises ``DomainError`` 422 naming the field."""
        if isinstance(value, CadreReport):
            value = {"report_id": value.report_id, "kind": value.kind, "risk": value.risk, "note": value.note,
                     "reported_at": value.reported_at}
        if not isinstance(value, Mapping):
            raise DomainError("invalid_report", "a report must be a mapping", field="report")
        report_id = value.get("report_id")
        if not isinstance(report_id, str) or not report_id.strip() or len(report_id) > 128:
            raise DomainError("invalid_report", "report_id is required (at most 128 characters)", field="report_id")
        kind = value.get("kind")
        if kind not in REPORT_KINDS:
            raise DomainError("invalid_report", f"kind must be one of {', '.join(REPORT_KINDS)}", field="kind",
                              report_id=report_id)
        risk = value.get("risk")
        if risk is not None:
            if risk not in RISK_CODES:
                raise DomainError("invalid_report", f"risk {risk!r} is not a risk code", field="risk",
                                  report_id=report_id, allowed=sorted(RISK_CODES))
            if kind == "disaster" and risk not in DISASTER_RISKS:
                raise DomainError("invalid_report", f"a disaster report's risk is a natural-disaster code (02 or "
                                  f"02xx), not {risk!r}", field="risk", report_id=report_id)
            if kind == "other" and risk in DISASTER_RISKS:
                raise DomainError("invalid_report", f"risk {risk} is a natural disaster: report it with kind "
                                  "disaster", field="risk", report_id=report_id)
        note = value.get("note")
        if note is not None and not isinstance(note, str):
            raise DomainError("invalid_report", "note must be text", field="note", report_id=report_id)
        note = note.strip() or None if isinstance(note, str) else None
        if note is not None and len(note) > MAX_TEXT:
            raise DomainError("invalid_report", f"note is longer than {MAX_TEXT} characters", field="note",
                              report_id=report_id)
        at = value.get("reported_at")
        try:
            at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
        except (TypeError, ValueError):
            raise DomainError("invalid_report", "reported_at must be a date-time", field="reported_at",
                              report_id=report_id) from None
        if at.tzinfo is None or at.utcoffset() is None:
            raise DomainError("invalid_report", "reported_at must carry a time zone", field="reported_at",
                              report_id=report_id)
        return cls(report_id.strip(), kind, risk, note, at)


@dataclass(frozen=True)
class HouseholdRiskFacts:
    """What the risk rules know about one household."""

    household_id: str
    village_code: str
    status: str
    monitoring_object_type: str | None = None
    members: Mapping[str, MemberState] = field(default_factory=dict)
    incomes: Mapping[int, IncomeRecord] = field(default_factory=dict)
    conditions: tuple[ConditionsRecord, ...] = ()   # by assessment date, then stream order
    labour_changes: tuple[LabourChange, ...] = ()
    medical_costs: tuple[MedicalCost, ...] = ()
    reports: tuple[CadreReport, ...] = ()

    @property
    def province(self) -> str:
        return self.village_code[:2]

    def active_members(self) -> list[MemberState]:
        return [m for m in self.members.values() if m.active]

    def latest_income(self) -> IncomeRecord | None:
        return self.incomes[max(self.incomes)] if self.incomes else None

    def income_before(self, year: int) -> IncomeRecord | None:
        earlier = [y for y in self.incomes if y < year]
        return self.incomes[max(earlier)] if earlier else None

    def income_up_to(self, year: int) -> IncomeRecord | None:
        return self.incomes.get(year) or self.income_before(year)

    def medical_costs_in(self, year: int) -> list[MedicalCost]:
        return [c for c in self.medical_costs if c.year == year]


def _as_medical_cost(item: MedicalCost | tuple[Any, ...]) -> MedicalCost:
    if isinstance(item, MedicalCost):
        cost = item
    elif isinstance(item, tuple) and len(item) in (2, 3, 4):
        cost = MedicalCost(item[0], _decimal(item[1], "medical cost"), *item[2:])
    else:
        raise ValueError(f"a medical cost is a MedicalCost or (year, cost[, member_id[, ref]]), got {item!r}")
    if isinstance(cost.year, bool) or not isinstance(cost.year, int) or not 2000 <= cost.year <= 2100:
        raise ValueError(f"medical cost year must be 2000 to 2100, got {cost.year!r}")
    if not isinstance(cost.amount, Decimal) or cost.amount < 0:
        raise ValueError(f"medical cost must be zero or more yuan, got {cost.amount!r}")
    return cost


def medical_costs_from_disbursements(events: Iterable[tuple[str, Mapping[str, Any]]],
                                     policy_codes: Iterable[str] | None = None,
                                     household_id: str | None = None) -> tuple[MedicalCost, ...]:
    """Self-paid medical costs from the funds service's disbursement events (other types are ignored).

    A ``DisbursementRequested`` on a policy of ``policy_codes`` (default: the shipped thresholds'
    ``medical.policy_codes``) with a ``cost_basis`` gives the member's self-paid cost of the year of
    its period. A later request for the same household, member and year replaces an earlier one
    (a corrected or repeated request states the same year's cost again), so costs are not counted twice."""
    codes = frozenset(policy_codes) if policy_codes is not None else default_thresholds().medical.policy_codes
    latest: dict[tuple[str | None, str | None, int], MedicalCost] = {}
    for event_type, d in events:
        if event_type != "DisbursementRequested" or d.get("basis", "policy") != "policy":
            continue
        if d.get("policy_code") not in codes or d.get("cost_basis") is None:
            continue
        if household_id is not None and d.get("household_id") != household_id:
            continue
        m = _PERIOD_YEAR.match(str(d.get("period", "")))
        if m is None:
            raise ValueError(f"disbursement {d.get('disbursement_id')}: period {d.get('period')!r} is not a period")
        year = int(m.group(1))
        member = d.get("member_id")
        latest[(d.get("household_id"), member, year)] = MedicalCost(year, _decimal(d["cost_basis"], "cost_basis"), member,
                                             d.get("disbursement_id"))
    return tuple(latest.values())


def fold_risk_facts(events: Iterable[tuple[str, Mapping[str, Any]]], *,
                    medical_costs: Iterable[MedicalCost | tuple[Any, ...]] = (),
                    reports: Iterable[CadreReport | Mapping[str, Any]] = ()) -> HouseholdRiskFacts:
    """Build ``HouseholdRiskFacts`` from a household's registry events, oldest first: (event_type, data)
    pairs with the data as published (dates as ISO strings or ``date``); other event types are ignored.

    ``medical_costs``: the household's self-paid medical costs (``medical_costs_from_disbursements``,
    or ``(year, cost)`` items from another source; do not give the same cost twice). ``reports``:
    cadres' risk reports (``CadreReport`` or mappings with report_id, kind, risk, note, reported_at)."""
    household_id = village = status = None
    object_type: str | None = None
    members: dict[str, MemberState] = {}
    incomes: dict[int, IncomeRecord] = {}
    conditions: list[ConditionsRecord] = []
    labour: list[LabourChange] = []
    for seq, (event_type, d) in enumerate(events):
        if event_type == "HouseholdRegistered":
            household_id, village = d["household_id"], d["village_code"]
            status = d.get("status") or "applicant"
        elif household_id is None:
            raise ValueError(f"{event_type} before HouseholdRegistered: the events do not start with the household")
        elif event_type == "MemberAdded":
            p = d.get("profile") or {}
            members[d["member_id"]] = MemberState(
                d["member_id"], d.get("birth_year"), d.get("relation"),
                _day(d["joined_on"]) if d.get("joined_on") else None,
                tuple(p["health"]) if p.get("health") is not None else None, p.get("labour_skill"),
                p.get("schooling_stage"), tuple(p["insurance"]) if p.get("insurance") is not None else None)
        elif event_type == "MemberUpdated":
            m = members.get(d["member_id"])
            changes = d.get("changes") or {}
            if m is None:
                continue  # an update of a member this stream never added: nothing to update
            updated = m
            if changes.get("health") is not None:
                updated = replace(updated, health=tuple(changes["health"]))
            if changes.get("insurance") is not None:
                updated = replace(updated, insurance=tuple(changes["insurance"]))
            if changes.get("schooling_stage") is not None:
                updated = replace(updated, schooling_stage=changes["schooling_stage"])
            skill = changes.get("labour_skill")
            if skill is not None and skill != m.labour_skill:
                updated = replace(updated, labour_skill=skill)
                if m.active:
                    labour.append(LabourChange(seq, m.member_id, "skill_changed", skill, m.labour_skill,
                                               m.birth_year, None))
            members[m.member_id] = updated
        elif event_type == "MemberRemoved":
            m = members.get(d["member_id"]) or MemberState(d["member_id"])
            removed_on = _day(d["removed_on"])
            members[m.member_id] = replace(m, active=False, removed_on=removed_on, removal_reason=d["reason"])
            if m.active:
                labour.append(LabourChange(seq, m.member_id, "removed", d["reason"], m.labour_skill, m.birth_year,
                                           removed_on))
        elif event_type == "IncomeAssessed":
            year = int(d["year"])
            incomes[year] = IncomeRecord(year, _decimal(d["per_capita_net_income"], "per_capita_net_income"),
                                         _decimal(d["net_income"], "net_income"), int(d["resident_members"]))
        elif event_type == "LivingConditionsAssessed":
            conditions.append(ConditionsRecord(_day(d["assessed_on"]), dict(d.get("conditions") or {}), seq))
        elif event_type == "HouseholdStatusChanged":
            status = d["to_status"]
        elif event_type == "MonitoringDesignated":
            object_type = d["object_type"]
        elif event_type == "MonitoringRiskEliminated":
            object_type = None
    if household_id is None or village is None or status is None:
        raise ValueError("no HouseholdRegistered event: cannot build household risk facts")
    conditions.sort(key=lambda c: (c.assessed_on, c.seq))
    return HouseholdRiskFacts(
        household_id, village, status, object_type, members, incomes, tuple(conditions), tuple(labour),
        tuple(_as_medical_cost(c) for c in medical_costs), tuple(CadreReport.parse(r) for r in reports))


# --- findings and rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule fired. ``evidence`` names the events' values and ids it fired on (JSON-safe);
    ``key`` identifies that evidence within the household (same evidence, same key);
    ``detail`` is a one-line summary for operators (ids only, no personal data)."""

    rule: str
    risk: str
    severity: str
    evidence: Mapping[str, Any] = field(hash=False)
    key: str
    detail: str = ""
    requires_verification: bool = False


Rule = Callable[[HouseholdRiskFacts, Thresholds, date], list[Finding]]


def _finding(settings: RuleSettings, key: str, detail: str, evidence: Mapping[str, Any],
             risk: str | None = None) -> Finding:
    risk = risk or settings.risk
    assert risk is not None, f"rule {settings.rule} has no risk"
    return Finding(settings.rule, risk, settings.severity, dict(evidence), f"{settings.rule}:{key}", detail,
                   settings.requires_verification)


def _current_income(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> IncomeRecord | None:
    latest = facts.latest_income()
    if latest is None or today.year - latest.year > th.income.stale_after_years:
        return None
    return latest


def _threshold_evidence(t: IncomeThreshold) -> dict[str, Any]:
    return {"threshold": _money(t.amount), "threshold_year": t.year, "threshold_province": t.province,
            "threshold_confirmed": t.confirmed}


def income_below_threshold(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """Per-capita net income of the latest assessed year is below that year's monitoring threshold
    for the household's province (exactly at the threshold is not below)."""
    income = _current_income(facts, th, today)
    if income is None:
        return []
    threshold = th.income_threshold(income.year, facts.province)
    if threshold is None or income.per_capita_net_income >= threshold.amount:
        return []
    return [_finding(
        th.rule("income_below_threshold"), str(income.year),
        f"per-capita net income {_money(income.per_capita_net_income)} in {income.year} is below the monitoring "
        f"threshold {_money(threshold.amount)}",
        {"year": income.year, "per_capita_net_income": _money(income.per_capita_net_income),
         "province": facts.province, **_threshold_evidence(threshold)})]


def income_drop(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """Per-capita net income of the latest assessed year fell by at least ``income.drop_ratio`` from
    the previous assessed year (at most ``income.drop_max_gap_years`` earlier)."""
    latest = _current_income(facts, th, today)
    if latest is None:
        return []
    previous = facts.income_before(latest.year)
    if previous is None or latest.year - previous.year > th.income.drop_max_gap_years:
        return []
    if previous.per_capita_net_income <= 0:
        return []
    drop = (previous.per_capita_net_income - latest.per_capita_net_income) / previous.per_capita_net_income
    if drop < th.income.drop_ratio:
        return []
    return [_finding(
        th.rule("income_drop"), f"{previous.year}-{latest.year}",
        f"per-capita net income fell {drop * 100:.1f} % from {_money(previous.per_capita_net_income)} in "
        f"{previous.year} to {_money(latest.per_capita_net_income)} in {latest.year}",
        {"year": latest.year, "per_capita_net_income": _money(latest.per_capita_net_income),
         "previous_year": previous.year, "previous_per_capita_net_income": _money(previous.per_capita_net_income),
         "drop_ratio": f"{drop.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}",
         "drop_ratio_threshold": str(th.income.drop_ratio)})]


def _large_medical_cost(facts: HouseholdRiskFacts, th: Thresholds, year: int, cost: Decimal
                        ) -> tuple[list[str], dict[str, Any]]:
    """Which criteria of large medical spending ``cost`` in ``year`` meets, and the values compared."""
    med = th.medical
    met: list[str] = []
    compared: dict[str, Any] = {}
    if med.self_paid_above is not None:
        compared["self_paid_above"] = _money(med.self_paid_above)
        if cost > med.self_paid_above:
            met.append("self_paid_above")
    income = facts.income_up_to(year)
    if income is not None:
        compared.update(income_year=income.year, net_income=_money(income.net_income),
                        resident_members=income.resident_members)
        if med.share_of_net_income_above is not None:
            compared["share_of_net_income_above"] = str(med.share_of_net_income_above)
            if income.net_income <= 0 or cost > med.share_of_net_income_above * income.net_income:
                met.append("share_of_net_income")
        threshold = th.income_threshold(year, facts.province)
        if med.below_threshold_after_cost and threshold is not None:
            after = (income.net_income - cost) / income.resident_members
            compared.update(per_capita_after_cost=_money(after), **_threshold_evidence(threshold))
            if after < threshold.amount:
                met.append("below_threshold_after_cost")
    return met, compared


def illness_with_medical_cost(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """A member with a configured health condition (serious or chronic illness, disability) and large
    self-paid medical spending by the household in the year of evaluation or the years just before it
    (``medical.lookback_years``; the most recent such year is reported). Risk: the first of
    ``medical.health_risks`` a member has (illness 01 before disability 03)."""
    med = th.medical
    for year in range(today.year, today.year - med.lookback_years - 1, -1):
        costs = facts.medical_costs_in(year)
        cost = sum((c.amount for c in costs), Decimal(0))
        if cost <= 0:
            continue
        met, compared = _large_medical_cost(facts, th, year, cost)
        if not met:
            continue
        ill = {m.member_id: m for m in facts.members.values() if m.in_household_during(year) and m.health
               and any(h in med.health_risks for h in m.health)}
        if not ill:
            continue
        named = {c.member_id for c in costs if c.member_id in ill}
        chosen = sorted(named or ill)
        risk = next(r for code, r in med.health_risks.items() if any(code in (ill[mid].health or ()) for mid in chosen))
        refs = sorted(c.ref for c in costs if c.ref)
        return [_finding(
            th.rule("illness_with_medical_cost"), str(year),
            f"self-paid medical cost {_money(cost)} in {year} ({', '.join(met)}) with a member ill or disabled",
            {"year": year, "self_paid_cost": _money(cost), "cost_refs": refs, "criteria": met, **compared,
             "member_ids": chosen, "health": {mid: sorted(ill[mid].health or ()) for mid in chosen}},
            risk=risk)]
    return []


def _working_age(th: Thresholds, birth_year: int | None, year: int) -> bool:
    if birth_year is None:
        return False
    low, high = th.labour.working_age
    return low <= year - birth_year <= high


def main_labourer_lost(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """The household has no labourer left (an active member of working age with a labour skill of
    ``labour.skills``) and its last one was lost: removed (death, moving out, ... of
    ``labour.removal_reasons``) or no longer able to work (labour skill changed to weak, lost, none).

    A household that never had a labourer in its history does not fire (no loss), nor one with an
    active working-age member whose labour skill is unknown (missing data)."""
    lab = th.labour
    active = facts.active_members()
    if any(m.labour_skill in lab.skills and _working_age(th, m.birth_year, today.year) for m in active):
        return []
    unknown = [m.member_id for m in active if m.labour_skill is None and _working_age(th, m.birth_year, today.year)]
    if unknown:
        return []
    losses = [c for c in facts.labour_changes
              if c.skill_before in lab.skills
              and ((c.kind == "removed" and c.cause in lab.removal_reasons)
                   or (c.kind == "skill_changed" and c.cause not in lab.skills))
              and _working_age(th, c.birth_year, c.on.year if c.on else today.year)]
    if not losses:
        return []
    last = max(losses, key=lambda c: c.seq)
    how = f"removed ({last.cause})" if last.kind == "removed" else f"labour skill now {last.cause}"
    return [_finding(
        th.rule("main_labourer_lost"), f"{last.member_id}:{last.kind}:{last.cause}:{last.on or 'undated'}",
        f"no labourer left: member {last.member_id} {how}" + (f" on {last.on}" if last.on else ""),
        {"member_id": last.member_id, "change": last.kind, "cause": last.cause, "on": last.on.isoformat()
         if last.on else None, "labour_skill_before": last.skill_before, "birth_year": last.birth_year,
         "active_members": len(active)})]


def child_out_of_school(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """An active member of compulsory school age (``school.compulsory_age``, inclusive, by birth year)
    whose schooling stage is not_in_school. Unknown birth year or stage does not fire."""
    low, high = th.compulsory_school_age
    children = sorted(
        (m for m in facts.active_members()
         if m.schooling_stage == NOT_IN_SCHOOL and m.birth_year is not None
         and low <= today.year - m.birth_year <= high), key=lambda m: m.member_id)
    if not children:
        return []
    ids = [m.member_id for m in children]
    return [_finding(
        th.rule("child_out_of_school"), f"{today.year}:{','.join(ids)}",
        f"{len(ids)} member(s) of compulsory school age not in school",
        {"year": today.year, "member_ids": ids, "ages": {m.member_id: today.year - m.birth_year for m in children},
         "compulsory_age": [low, high]})]


def housing_or_water_lost(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """A living-condition item of ``conditions.items`` (safe housing, safe drinking water) that an
    earlier assessment found secured is not secured in the latest one (absent from it: no finding)."""
    if not facts.conditions:
        return []
    latest = facts.conditions[-1]
    settings = th.rule("housing_or_water_lost")
    out = []
    for item, risk in th.condition_items.items():
        if latest.conditions.get(item) is not False:
            continue
        earlier = facts.conditions[:-1]
        secured = [i for i, c in enumerate(earlier) if c.conditions.get(item) is True]
        if not secured:
            continue
        last_secured = earlier[secured[-1]]
        lost = next(c for c in facts.conditions[secured[-1] + 1:] if c.conditions.get(item) is False)
        out.append(_finding(
            settings, f"{item}:{lost.assessed_on.isoformat()}",
            f"{item} secured on {last_secured.assessed_on} is not secured since {lost.assessed_on}",
            {"item": item, "secured_on": last_secured.assessed_on.isoformat(),
             "lost_on": lost.assessed_on.isoformat(), "latest_assessed_on": latest.assessed_on.isoformat()},
            risk=risk))
    return out


def uninsured_member(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """Active members whose insurance enrolments are known and do not include basic medical insurance."""
    ids = sorted(m.member_id for m in facts.active_members()
                 if m.insurance is not None and BASIC_MEDICAL_INSURANCE not in m.insurance)
    if not ids:
        return []
    return [_finding(th.rule("uninsured_member"), f"{today.year}:{','.join(ids)}",
                     f"{len(ids)} member(s) without basic medical insurance",
                     {"year": today.year, "member_ids": ids})]


def _report_findings(facts: HouseholdRiskFacts, th: Thresholds, kind: str, rule_id: str) -> list[Finding]:
    settings = th.rule(rule_id)
    out = []
    for report in facts.reports:
        if report.kind != kind:
            continue
        risk = report.risk or settings.risk
        label = RISK_CODES[risk]["en"] if risk in RISK_CODES else risk
        out.append(_finding(
            settings, report.report_id,
            f"cadre report {report.report_id}: {label}" + (f" - {report.note[:200]}" if report.note else ""),
            {"report_id": report.report_id, "kind": report.kind, "reported_risk": report.risk,
             "note": report.note, "reported_at": report.reported_at.isoformat()}, risk=risk))
    return out


def disaster_reported(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """One finding per disaster report (risk: the report's 02xx code, else the rule's)."""
    return _report_findings(facts, th, "disaster", "disaster_reported")


def manual_report(facts: HouseholdRiskFacts, th: Thresholds, today: date) -> list[Finding]:
    """One finding per other report (risk: the report's code, else the rule's, 99 other)."""
    return _report_findings(facts, th, "other", "manual_report")


RULES: dict[str, Rule] = {
    "income_below_threshold": income_below_threshold,
    "income_drop": income_drop,
    "illness_with_medical_cost": illness_with_medical_cost,
    "main_labourer_lost": main_labourer_lost,
    "child_out_of_school": child_out_of_school,
    "housing_or_water_lost": housing_or_water_lost,
    "uninsured_member": uninsured_member,
    "disaster_reported": disaster_reported,
    "manual_report": manual_report,
}


def in_scope(facts: HouseholdRiskFacts, th: Thresholds) -> bool:
    """Whether the household's register status is one the rules are evaluated for."""
    return facts.status in th.applies_to_statuses


def evaluate(facts: HouseholdRiskFacts, thresholds: Thresholds, today: date) -> list[Finding]:
    """Every finding of the enabled rules for a household in scope (``applies_to_statuses``; [] for
    others), in rule order. ``today`` is the China date of evaluation."""
    if not isinstance(today, date) or isinstance(today, datetime):
        raise ValueError("today must be a date (the China date of evaluation)")
    th = thresholds
    if not in_scope(facts, th):
        return []
    findings: list[Finding] = []
    for rule_id, rule in RULES.items():
        if th.rule(rule_id).enabled:
            findings.extend(rule(facts, th, today))
    return findings


def most_severe(findings: Iterable[Finding]) -> dict[str, Finding]:
    """One finding per risk (the most severe; on a tie the first): what to raise as alerts."""
    out: dict[str, Finding] = {}
    for f in findings:
        if f.risk not in out or _SEVERITY_RANK[f.severity] > _SEVERITY_RANK[out[f.risk].severity]:
            out[f.risk] = f
    return out


def finding_id(household_id: str, finding: Finding) -> str:
    """A stable id of a finding for a household (uuid5 of household id and finding key): the application
    records it when it raises an alert so that the same evidence does not raise a second alert."""
    return str(uuid.uuid5(_FINDING_NAMESPACE, f"{household_id}|{finding.key}"))


def suggested_object_type(facts: HouseholdRiskFacts, finding: Finding) -> str:
    """Monitoring object type to suggest for a finding: a lifted-out household is unstable_lifted_out;
    another household is sudden_hardship for a disaster or accident, marginal otherwise."""
    if facts.status == "lifted_out":
        return "unstable_lifted_out"
    if finding.risk in DISASTER_RISKS or finding.risk == "05":
        return "sudden_hardship"
    return "marginal"
