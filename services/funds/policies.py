"""The policy catalogue: entitlements with dated standards, loaded from YAML and validated.

A catalogue file (``policies/*.yaml``) holds ``policies:``, a list of::

    - code: edu_boarding_junior
      name: Boarding living allowance, junior school
      label_zh: 初中寄宿生生活补助
      group: edu_boarding          # optional (default: the code): one entitlement per beneficiary and
                                   #   period within a group (e.g. the four minimum-living tiers)
      paid_to: member              # member | household
      unit: per_year               # per_year | per_month | once: what the amount is per
      period: year                 # year | semester (per_year), month (per_month), once (once)
      kind: fixed                  # fixed (an amount) | banded (reimbursement of a cost, by bands)
      statuses: [identified, returned_to_poverty, lifted_out, monitoring_object]
      stages: [junior]             # optional: schooling stages the member must be in
      channels: [student_aid_card] # optional: payment channels allowed
      versions:                    # ordered; a version is in force from effective_from to until (inclusive)
        - {effective_from: 2016-01-01, amount: "1250.00"}

Standards are versioned: a new version takes effect from its date and never
changes what earlier periods were entitled to. A payment's standard is the one
in force on its *reference date*, the first day of its period (the year a one-off
entitlement belongs to), whenever it is requested or paid. A semester is half of
a per-year standard. Eligibility (statuses, stages) is not versioned.

``statuses`` are household status codes of the registry plus ``monitoring_object``
(the household is a designated monitoring object on the date, whatever its status).

``load_catalogue`` refuses anything it does not understand (unknown keys or codes,
versions out of order or overlapping, amounts not positive, a group whose policies
disagree on beneficiary or period) with a ``CatalogueError`` naming the file and
the field; the service must not start with an invalid catalogue.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from eventkit.errors import DomainError

CATALOGUE_DIR = Path(__file__).parent / "policies"
CENT = Decimal("0.01")
# The registry's code lists (GET /code-lists): household statuses and schooling stages.
HOUSEHOLD_STATUSES = frozenset({"applicant", "identified", "lifted_out", "returned_to_poverty",
                                "wrongly_identified_removed", "natural_decrease"})
CLOSED_STATUSES = frozenset({"wrongly_identified_removed", "natural_decrease"})
MONITORING_OBJECT = "monitoring_object"
SCHOOLING_STAGES = frozenset({"not_in_school", "preschool", "primary", "junior", "senior", "secondary_vocational",
                              "higher_vocational", "undergraduate", "postgraduate"})
PAYMENT_CHANNELS = ("one_card", "student_aid_card", "bank_transfer")
UNIT_PERIODS = {"per_year": ("year", "semester"), "per_month": ("month",), "once": ("once",)}
_PERIOD = re.compile(r"^([0-9]{4})(?:-(0[1-9]|1[0-2])|-S([12]))?$")
_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
_POLICY_KEYS = {"code", "name", "label_zh", "group", "paid_to", "unit", "period", "kind", "statuses", "stages",
                "channels", "versions", "description"}
_POLICY_REQUIRED = {"code", "name", "paid_to", "unit", "period", "statuses", "versions"}
_VERSION_KEYS = {"effective_from", "until", "amount", "threshold", "bands", "cap"}


class CatalogueError(ValueError):
    """An invalid policy catalogue: ``source`` is the file, ``field`` the offending path."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source = source
        self.field = field
        self.message = message


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# --- periods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A payment period: ``YYYY`` (year), ``YYYY-S1``/``YYYY-S2`` (calendar half), ``YYYY-MM`` (month)."""

    text: str
    form: str  # year | semester | month
    start: date
    end: date  # inclusive

    def overlaps(self, other: Period) -> bool:
        return self.start <= other.end and other.start <= self.end


def parse_period(text: Any) -> Period:
    """Parse a period string; raises ``DomainError`` ``invalid_period`` (422)."""
    m = _PERIOD.match(text) if isinstance(text, str) else None
    if m is None or not 2000 <= int(m.group(1)) <= 2100:
        raise DomainError("invalid_period", f"period {text!r} is not YYYY, YYYY-S1, YYYY-S2 or YYYY-MM "
                          "(year 2000 to 2100)", field="period")
    year = int(m.group(1))
    if m.group(2):
        month = int(m.group(2))
        nxt = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        return Period(text, "month", date(year, month, 1), nxt - timedelta(days=1))
    if m.group(3):
        first = m.group(3) == "1"
        return Period(text, "semester", date(year, 1 if first else 7, 1), date(year, 6, 30) if first
                      else date(year, 12, 31))
    return Period(text, "year", date(year, 1, 1), date(year, 12, 31))


# --- policies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    start: Decimal  # lower bound of the cost above the threshold
    rate: Decimal


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    effective_from: date
    until: date | None = None
    amount: Decimal | None = None        # fixed policies: per unit
    threshold: Decimal | None = None     # banded: cost above which reimbursement starts
    bands: tuple[Band, ...] = ()
    cap: Decimal | None = None           # banded: most paid per period

    def in_force(self, on: date) -> bool:
        return self.effective_from <= on and (self.until is None or on <= self.until)

    def reimbursement(self, cost: Decimal) -> Decimal:
        """Banded standard: each band's rate applied to the part of the cost above the threshold in it."""
        assert self.threshold is not None
        excess = max(Decimal(0), cost - self.threshold)
        total = Decimal(0)
        for i, band in enumerate(self.bands):
            upper = self.bands[i + 1].start if i + 1 < len(self.bands) else None
            part = (min(excess, upper) if upper is not None else excess) - band.start
            if part > 0:
                total += part * band.rate
        total = cents(total)
        return min(total, self.cap) if self.cap is not None else total


@dataclass(frozen=True)
class Standard:
    """The standard of one payment: the version in force on the reference date and the amount."""

    policy_code: str
    version: int
    reference_date: date
    amount: Decimal


@dataclass(frozen=True)
class Policy:
    code: str
    name: str
    group: str
    paid_to: str              # member | household
    unit: str                 # per_year | per_month | once
    period: str               # year | semester | month | once
    kind: str                 # fixed | banded
    statuses: frozenset[str]
    versions: tuple[PolicyVersion, ...]
    stages: frozenset[str] | None = None
    channels: tuple[str, ...] | None = None
    label_zh: str | None = None
    description: str | None = None
    source: str = "<memory>"

    def version_on(self, on: date) -> PolicyVersion | None:
        """The version in force on ``on`` (None: the policy was not in force)."""
        for v in self.versions:
            if v.in_force(on):
                return v
        return None

    def check_period(self, text: Any) -> Period:
        """Parse ``text`` and check it has this policy's period form (``once``: a year)."""
        period = parse_period(text)
        wanted = "year" if self.period == "once" else self.period
        if period.form != wanted:
            example = {"year": "2025", "semester": "2025-S1", "month": "2025-03"}[wanted]
            raise DomainError("invalid_period", f"policy {self.code} is paid per {self.period}: the period must "
                              f"look like {example!r}, not {period.text!r}", field="period", expected=wanted)
        return period

    def standard_for(self, period: Period, cost_basis: Decimal | None = None) -> Standard:
        """The standard of a payment for ``period``; raises ``DomainError`` when none applies."""
        version = self.version_on(period.start)
        if version is None:
            raise DomainError("policy_not_in_force", f"policy {self.code} has no standard in force on "
                              f"{period.start.isoformat()} (period {period.text})", 409, rule="policy_in_force",
                              policy_code=self.code, reference_date=period.start.isoformat())
        if self.kind == "banded":
            if cost_basis is None:
                raise DomainError("missing_field", f"policy {self.code} reimburses a cost: cost_basis is required",
                                  field="cost_basis")
            amount = version.reimbursement(cost_basis)
        else:
            assert version.amount is not None
            amount = cents(version.amount / 2) if period.form == "semester" else version.amount
        return Standard(self.code, version.version, period.start, amount)


class Catalogue(Mapping[str, Policy]):
    """Policies by code."""

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self._policies = dict(policies)

    def __getitem__(self, code: str) -> Policy:
        return self._policies[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def policy(self, code: str) -> Policy:
        """The policy of ``code``; ``DomainError`` ``unknown_policy`` (422) if there is none."""
        if code not in self._policies:
            raise DomainError("unknown_policy", f"unknown policy {code!r}", field="policy_code")
        return self._policies[code]

    def standard(self, policy_code: str, on: date) -> PolicyVersion | None:
        """The version of ``policy_code`` in force on ``on``."""
        return self.policy(policy_code).version_on(on)


# --- loading ---------------------------------------------------------------------------


def _text(source: str, field: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(source, field, "must be a non-empty string")
    return value.strip()


def _code(source: str, field: str, value: Any) -> str:
    text = _text(source, field, value)
    assert text is not None
    if not _CODE.match(text):
        raise CatalogueError(source, field, f"{text!r} must be lower_snake_case")
    return text


def _one_of(source: str, field: str, value: Any, allowed: Any) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CatalogueError(source, field, f"unknown value {value!r}; expected one of {', '.join(sorted(allowed))}")
    return value


def _codes(source: str, field: str, value: Any, allowed: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise CatalogueError(source, field, "must be a non-empty list")
    return frozenset(_one_of(source, f"{field}[{i}]", v, allowed) for i, v in enumerate(value))


def _decimal(source: str, field: str, value: Any, *, positive: bool = True) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CatalogueError(source, field, f"must be an amount, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogueError(source, field, f"{value!r} is not a number") from exc
    if not amount.is_finite() or amount < 0 or (positive and amount == 0):
        raise CatalogueError(source, field, f"must be {'positive' if positive else 'zero or more'}, got {value!r}")
    return amount


def _date(source: str, field: str, value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise CatalogueError(source, field, f"must be a date (YYYY-MM-DD), got {value!r}") from exc


def _parse_version(source: str, at: str, raw: Any, number: int, kind: str) -> PolicyVersion:
    if not isinstance(raw, dict):
        raise CatalogueError(source, at, "a version must be a mapping")
    unknown = set(raw) - _VERSION_KEYS
    if unknown:
        raise CatalogueError(source, f"{at}.{sorted(unknown)[0]}", "unknown key")
    if "effective_from" not in raw:
        raise CatalogueError(source, f"{at}.effective_from", "is required")
    start = _date(source, f"{at}.effective_from", raw["effective_from"])
    until = _date(source, f"{at}.until", raw["until"]) if raw.get("until") is not None else None
    if until is not None and until < start:
        raise CatalogueError(source, f"{at}.until", f"{until} is before effective_from {start}")
    if kind == "fixed":
        if "amount" not in raw or set(raw) & {"threshold", "bands", "cap"}:
            raise CatalogueError(source, f"{at}.amount", "a fixed policy's version has an amount (and no bands)")
        return PolicyVersion(number, start, until, amount=cents(_decimal(source, f"{at}.amount", raw["amount"])))
    if "amount" in raw or "threshold" not in raw or not isinstance(raw.get("bands"), list) or not raw["bands"]:
        raise CatalogueError(source, f"{at}.bands", "a banded policy's version has a threshold and bands")
    bands: list[Band] = []
    for i, b in enumerate(raw["bands"]):
        where = f"{at}.bands[{i}]"
        if not isinstance(b, dict) or set(b) != {"from", "rate"}:
            raise CatalogueError(source, where, "a band is {from: amount, rate: fraction}")
        start_at = _decimal(source, f"{where}.from", b["from"], positive=False)
        rate = _decimal(source, f"{where}.rate", b["rate"])
        if rate > 1:
            raise CatalogueError(source, f"{where}.rate", f"must be at most 1, got {b['rate']!r}")
        if (i == 0 and start_at != 0) or (bands and start_at <= bands[-1].start):
            raise CatalogueError(source, f"{where}.from", "bands start at 0 and go up")
        bands.append(Band(start_at, rate))
    cap = cents(_decimal(source, f"{at}.cap", raw["cap"])) if raw.get("cap") is not None else None
    return PolicyVersion(number, start, until, threshold=_decimal(source, f"{at}.threshold", raw["threshold"],
                                                                   positive=False), bands=tuple(bands), cap=cap)


def parse_policy(raw: Any, source: str = "<memory>") -> Policy:
    """Validate one policy mapping (already parsed from YAML)."""
    if not isinstance(raw, dict):
        raise CatalogueError(source, "(policy)", "a policy must be a mapping")
    code = _code(source, "code", raw.get("code"))
    at = f"policies[{code}]"
    unknown = set(raw) - _POLICY_KEYS
    if unknown:
        raise CatalogueError(source, f"{at}.{sorted(unknown)[0]}",
                             f"unknown key; allowed keys are {', '.join(sorted(_POLICY_KEYS))}")
    missing = _POLICY_REQUIRED - set(raw)
    if missing:
        raise CatalogueError(source, f"{at}.{sorted(missing)[0]}", "is required")
    unit = _one_of(source, f"{at}.unit", raw["unit"], UNIT_PERIODS)
    period = _one_of(source, f"{at}.period", raw["period"], UNIT_PERIODS[unit])
    kind = _one_of(source, f"{at}.kind", raw.get("kind", "fixed"), ("fixed", "banded"))
    if kind == "banded" and period != "year":
        raise CatalogueError(source, f"{at}.period", "a banded (reimbursement) policy is paid per year")
    paid_to = _one_of(source, f"{at}.paid_to", raw["paid_to"], ("member", "household"))
    stages = _codes(source, f"{at}.stages", raw["stages"], SCHOOLING_STAGES) if raw.get("stages") else None
    if stages is not None and paid_to != "member":
        raise CatalogueError(source, f"{at}.stages", "only a policy paid to a member can require a schooling stage")
    channels = (tuple(sorted(_codes(source, f"{at}.channels", raw["channels"], PAYMENT_CHANNELS)))
                if raw.get("channels") else None)
    raw_versions = raw["versions"]
    if not isinstance(raw_versions, list) or not raw_versions:
        raise CatalogueError(source, f"{at}.versions", "a policy needs at least one version")
    versions: list[PolicyVersion] = []
    for i, rv in enumerate(raw_versions):
        v = _parse_version(source, f"{at}.versions[{i}]", rv, i + 1, kind)
        if versions:
            prev = versions[-1]
            if v.effective_from <= prev.effective_from:
                raise CatalogueError(source, f"{at}.versions[{i}].effective_from",
                                     f"{v.effective_from} is not after the previous version's {prev.effective_from}: "
                                     "versions are listed in date order")
            if prev.until is None:  # an open version ends the day before the next one starts
                versions[-1] = replace(prev, until=v.effective_from - timedelta(days=1))
            elif prev.until >= v.effective_from:
                raise CatalogueError(source, f"{at}.versions[{i}].effective_from",
                                     f"{v.effective_from} overlaps version {prev.version}, in force until "
                                     f"{prev.until}")
        versions.append(v)
    return Policy(
        code=code, name=_text(source, f"{at}.name", raw["name"]) or code,
        group=_code(source, f"{at}.group", raw.get("group", code)), paid_to=paid_to, unit=unit, period=period,
        kind=kind, statuses=_codes(source, f"{at}.statuses", raw["statuses"], HOUSEHOLD_STATUSES | {MONITORING_OBJECT}),
        versions=tuple(versions), stages=stages, channels=channels,
        label_zh=_text(source, f"{at}.label_zh", raw.get("label_zh"), optional=True),
        description=_text(source, f"{at}.description", raw.get("description"), optional=True), source=source)


def parse_catalogue(documents: Mapping[str, Any]) -> Catalogue:
    """Validate parsed catalogue documents (source name -> document) into one catalogue."""
    policies: dict[str, Policy] = {}
    for source, raw in documents.items():
        if not isinstance(raw, dict) or set(raw) != {"policies"} or not isinstance(raw["policies"], list):
            raise CatalogueError(source, "(document)", "a catalogue file is a mapping with one key, policies (a list)")
        for item in raw["policies"]:
            policy = parse_policy(item, source)
            if policy.code in policies:
                raise CatalogueError(source, f"policies[{policy.code}].code",
                                     f"policy {policy.code!r} is also defined in {policies[policy.code].source}")
            policies[policy.code] = policy
    groups: dict[str, Policy] = {}
    for policy in policies.values():
        first = groups.setdefault(policy.group, policy)
        if (first.paid_to, first.period) != (policy.paid_to, policy.period):
            raise CatalogueError(policy.source, f"policies[{policy.code}].group",
                                 f"group {policy.group!r} mixes beneficiaries or periods: {first.code} is paid to "
                                 f"{first.paid_to} per {first.period}, {policy.code} to {policy.paid_to} per "
                                 f"{policy.period}")
    if not policies:
        raise CatalogueError(", ".join(documents) or "(none)", "policies", "the catalogue has no policies")
    return Catalogue(policies)


def load_catalogue(folder: str | Path = CATALOGUE_DIR) -> Catalogue:
    """Load and validate every ``*.yaml`` file of ``folder``; raises ``CatalogueError`` on the first problem."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CatalogueError(str(folder), "(folder)", "no policy catalogue files (*.yaml) found")
    documents: dict[str, Any] = {}
    for path in files:
        try:
            documents[path.name] = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CatalogueError(path.name, "(document)", f"not valid YAML: {exc}") from exc
    return parse_catalogue(documents)


@lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The catalogue shipped in ``policies/`` (loaded on first use, then cached)."""
    return load_catalogue()
