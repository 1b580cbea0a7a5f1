"""Case types: declarative review procedures loaded from YAML and validated.

A case type file (``casetypes/<id>.yaml``) looks like::

    id: identification
    name: Identification of poor households
    label_zh: 贫困户识别
    version: 1
    status_effect: identified          # register effect of approval, or null
    opens_for:                         # optional: household statuses a case may be opened for,
      applicant: identified            #   each with the effect approval has for it
      lifted_out: returned_to_poverty  #   (re-identification of a returned household)
    steps:
      - id: group_appraisal
        name: Village-group democratic appraisal
        kind: decision                 # decision | notice | comparison | escalation
        role: village_committee
        level: village                 # village | township | county
        time_limit_days: 10            # optional: overdue after this many days
      - id: first_notice
        kind: notice
        min_days: 7                    # notices only; default 7, at least 1
        returns_to: [group_appraisal]  # optional: allowed return targets (earlier steps)
        ...

Provinces differ, so procedures are configuration. ``load_case_types`` refuses
anything it does not understand (unknown keys, roles, levels, kinds, duplicate
or dangling step ids) with a ``DefinitionError`` naming the file and the field;
the service must not start with an invalid definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KINDS: frozenset[str] = frozenset({"decision", "notice", "comparison", "escalation"})
LEVELS: tuple[str, ...] = ("village", "township", "county")
ROLES: frozenset[str] = frozenset({
    "cadre",                # assistance cadre (resident or paired cadre)
    "village_committee",    # village committee / village democratic appraisal
    "resident_team",        # resident village work team
    "information_officer",  # data entry and cleaning (village or county)
    "township_reviewer",
    "county_office",        # county poverty alleviation / rural revitalisation office
})
# Household statuses of the register (the registry's code list) a case type may open for.
HOUSEHOLD_STATUSES: frozenset[str] = frozenset({
    "applicant", "identified", "lifted_out", "returned_to_poverty", "wrongly_identified_removed",
    "natural_decrease",
})
CLOSED_STATUSES: frozenset[str] = frozenset({"wrongly_identified_removed", "natural_decrease"})
STATUS_EFFECTS: frozenset[str] = frozenset({
    "identified", "lifted_out", "returned_to_poverty", "wrongly_identified_removed",
    "monitoring_designated", "risk_eliminated",
})
DEFAULT_NOTICE_DAYS = 7
CASETYPES_DIR = Path(__file__).parent / "casetypes"

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_KEYS = {"id", "name", "label_zh", "version", "status_effect", "opens_for", "description", "steps"}
_TYPE_REQUIRED = {"id", "name", "version", "status_effect", "steps"}
_STEP_KEYS = {"id", "name", "label_zh", "kind", "role", "level", "min_days", "time_limit_days", "returns_to",
              "description"}
_STEP_REQUIRED = {"id", "name", "kind", "role", "level"}


class DefinitionError(ValueError):
    """An invalid case type definition: ``source`` is the file, ``field`` the offending path."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source = source
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Step:
    id: str
    name: str
    kind: str
    role: str
    level: str
    label_zh: str | None = None
    min_days: int | None = None          # notices only
    time_limit_days: int | None = None
    returns_to: tuple[str, ...] | None = None  # None: any earlier step
    description: str | None = None


@dataclass(frozen=True)
class CaseType:
    id: str
    name: str
    version: int
    status_effect: str | None
    steps: tuple[Step, ...]
    label_zh: str | None = None
    description: str | None = None
    source: str = "<memory>"
    opens_for: tuple[tuple[str, str | None], ...] | None = None  # (household status, effect); None: any open status

    def may_open_for(self, status: str) -> bool:
        if status in CLOSED_STATUSES:
            return False
        return self.opens_for is None or any(s == status for s, _ in self.opens_for)

    def effect_for(self, status: str | None) -> str | None:
        """Register effect of approving a case opened for a household of ``status``."""
        if self.opens_for is not None and status is not None:
            for s, effect in self.opens_for:
                if s == status:
                    return effect
        return self.status_effect

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def index(self, step_id: str) -> int:
        for i, s in enumerate(self.steps):
            if s.id == step_id:
                return i
        raise KeyError(step_id)

    def has_step(self, step_id: str) -> bool:
        return any(s.id == step_id for s in self.steps)

    @property
    def first_step(self) -> Step:
        return self.steps[0]

    def next_step(self, step_id: str) -> Step | None:
        i = self.index(step_id)
        return self.steps[i + 1] if i + 1 < len(self.steps) else None

    def return_targets(self, step_id: str) -> tuple[str, ...]:
        """Steps a decision on ``step_id`` may return to (all earlier steps unless restricted)."""
        i = self.index(step_id)
        step = self.steps[i]
        if step.returns_to is not None:
            return step.returns_to
        return tuple(s.id for s in self.steps[:i])


def _text(source: str, field: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DefinitionError(source, field, "must be a non-empty string")
    return value.strip()


def _positive_int(source: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(source, field, f"must be a whole number >= 1, got {value!r}")
    return value


def _one_of(source: str, field: str, value: Any, allowed: Any) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise DefinitionError(source, field, f"unknown value {value!r}; expected one of {', '.join(sorted(allowed))}")
    return value


def _parse_step(source: str, at: str, raw: Any) -> Step:
    if not isinstance(raw, dict):
        raise DefinitionError(source, at, "a step must be a mapping")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise DefinitionError(source, f"{at}.{sorted(unknown)[0]}",
                              f"unknown key; allowed keys are {', '.join(sorted(_STEP_KEYS))}")
    missing = _STEP_REQUIRED - set(raw)
    if missing:
        raise DefinitionError(source, f"{at}.{sorted(missing)[0]}", "is required")
    step_id = _text(source, f"{at}.id", raw["id"])
    if not _ID.match(step_id):
        raise DefinitionError(source, f"{at}.id", f"{step_id!r} must be lower_snake_case")
    at = f"steps[{step_id}]"
    kind = _one_of(source, f"{at}.kind", raw["kind"], KINDS)
    min_days = None
    if kind == "notice":
        min_days = _positive_int(source, f"{at}.min_days", raw.get("min_days", DEFAULT_NOTICE_DAYS))
    elif "min_days" in raw:
        raise DefinitionError(source, f"{at}.min_days", "only notice steps have min_days")
    time_limit = raw.get("time_limit_days")
    if time_limit is not None:
        time_limit = _positive_int(source, f"{at}.time_limit_days", time_limit)
        if min_days is not None and time_limit < min_days:
            raise DefinitionError(source, f"{at}.time_limit_days",
                                  f"{time_limit} is shorter than the notice's min_days {min_days}")
    returns_to = raw.get("returns_to")
    if returns_to is not None:
        if not isinstance(returns_to, list) or not all(isinstance(t, str) for t in returns_to):
            raise DefinitionError(source, f"{at}.returns_to", "must be a list of step ids")
        returns_to = tuple(returns_to)
    return Step(
        id=step_id,
        name=_text(source, f"{at}.name", raw["name"]),
        kind=kind,
        role=_one_of(source, f"{at}.role", raw["role"], ROLES),
        level=_one_of(source, f"{at}.level", raw["level"], LEVELS),
        label_zh=_text(source, f"{at}.label_zh", raw.get("label_zh"), optional=True),
        min_days=min_days,
        time_limit_days=time_limit,
        returns_to=returns_to,
        description=_text(source, f"{at}.description", raw.get("description"), optional=True),
    )


def parse_case_type(raw: Any, source: str = "<memory>") -> CaseType:
    """Validate one case type document (already parsed from YAML)."""
    if not isinstance(raw, dict):
        raise DefinitionError(source, "(document)", "a case type must be a mapping")
    unknown = set(raw) - _TYPE_KEYS
    if unknown:
        raise DefinitionError(source, sorted(unknown)[0],
                              f"unknown key; allowed keys are {', '.join(sorted(_TYPE_KEYS))}")
    missing = _TYPE_REQUIRED - set(raw)
    if missing:
        raise DefinitionError(source, sorted(missing)[0], "is required")
    type_id = _text(source, "id", raw["id"])
    if not _ID.match(type_id):
        raise DefinitionError(source, "id", f"{type_id!r} must be lower_snake_case")
    effect = raw["status_effect"]
    if effect is not None:
        effect = _one_of(source, "status_effect", effect, STATUS_EFFECTS)
    opens_for = raw.get("opens_for")
    if opens_for is not None:
        if not isinstance(opens_for, dict) or not opens_for:
            raise DefinitionError(source, "opens_for", "must be a non-empty mapping of household status to effect")
        for status, status_effect in opens_for.items():
            _one_of(source, "opens_for", status, HOUSEHOLD_STATUSES - CLOSED_STATUSES)
            if status_effect is not None:
                _one_of(source, f"opens_for.{status}", status_effect, STATUS_EFFECTS)
        opens_for = tuple(opens_for.items())
    raw_steps = raw["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise DefinitionError(source, "steps", "a case type needs at least one step")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, raw_step in enumerate(raw_steps):
        step = _parse_step(source, f"steps[{i}]", raw_step)
        if step.id in seen:
            raise DefinitionError(source, f"steps[{i}].id", f"duplicate step id {step.id!r}")
        if step.returns_to is not None:
            for target in step.returns_to:
                if target not in seen:
                    why = "a later step or itself" if any(
                        isinstance(s, dict) and s.get("id") == target for s in raw_steps) else "an unknown step"
                    raise DefinitionError(source, f"steps[{step.id}].returns_to",
                                          f"{target!r} is {why}; a return goes to an earlier step")
        seen.add(step.id)
        steps.append(step)
    escalations = [i for i, s in enumerate(steps) if s.kind == "escalation"]
    if escalations:
        if len(escalations) != len(steps):
            raise DefinitionError(source, "steps", "escalation steps cannot be mixed with other kinds of step")
        for a, b in zip(steps, steps[1:]):
            if LEVELS.index(b.level) <= LEVELS.index(a.level):
                raise DefinitionError(source, f"steps[{b.id}].level",
                                      f"escalation must go up a level ({a.level} -> {b.level})")
    return CaseType(
        id=type_id,
        name=_text(source, "name", raw["name"]),
        version=_positive_int(source, "version", raw["version"]),
        status_effect=effect,
        steps=tuple(steps),
        label_zh=_text(source, "label_zh", raw.get("label_zh"), optional=True),
        description=_text(source, "description", raw.get("description"), optional=True),
        source=source,
        opens_for=opens_for,
    )


def load_case_types(folder: str | Path = CASETYPES_DIR) -> dict[str, CaseType]:
    """Load and validate every ``*.yaml`` file of ``folder``: case type id -> CaseType.

    Raises ``DefinitionError`` on the first problem (file and field named).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise DefinitionError(str(folder), "(folder)", "no case type definitions (*.yaml) found")
    out: dict[str, CaseType] = {}
    for path in files:
        source = path.name
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DefinitionError(source, "(document)", f"not valid YAML: {exc}") from exc
        case_type = parse_case_type(raw, source)
        if case_type.id in out:
            raise DefinitionError(source, "id", f"case type {case_type.id!r} is also defined in "
                                                f"{out[case_type.id].source}")
        out[case_type.id] = case_type
    return out
