"""Principals, jurisdictions and the authorisation matrix, shared by the gateway and the services.

The gateway authenticates callers and forwards a ``Principal`` to the services
in a signed internal token (``eventkit.tokens``); a service checks finer rules
(which step a role decides, which records a jurisdiction covers) with the same
``covers`` and ``allowed`` the gateway uses. Pure: no I/O.

Jurisdictions
    ``covers(jurisdiction, code)`` is a prefix rule: a jurisdiction covers every
    region whose code starts with its prefix (province ``62``, city ``6201``,
    county ``620102``, township ``620102001``, a village only itself).

Roles and actions
    ``ROLE_ACTIONS`` maps each role to the ``ACTIONS`` it may take; client
    systems may take exactly the actions their scopes name. ``ROLE_LEVELS``
    says at which levels a role exists; ``administrator`` and ``auditor`` are
    held alone (segregation of duties).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from contracts import gateway as ev
from eventkit.errors import DomainError
from eventkit.regioncodes import RegionError, code_prefix, level_of, normalise

ROLES: tuple[str, ...] = ev.ROLES
LEVELS: tuple[str, ...] = ev.LEVELS
SCOPES: tuple[str, ...] = ev.SCOPES
PRINCIPAL_TYPES: tuple[str, ...] = ev.PRINCIPAL_TYPES

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


_B64 = re.compile(r"[A-Za-z0-9_-]+")


def b64url_encode(raw: bytes) -> str:
    """base64url without padding (RFC 4648 §5; RFC 7515 §2)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding: the alphabet only, and only the canonical encoding (so that
    one value has exactly one spelling). ``ValueError`` otherwise."""
    if not isinstance(text, str) or not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw



# =============================================================================================
# Regions and jurisdictions
# =============================================================================================

def region_code(code: Any, field_name: str = "jurisdiction") -> str:
    """The 12-digit form of a 6- or 12-digit division code; ``DomainError`` ``invalid_jurisdiction`` otherwise."""
    try:
        if not isinstance(code, str) or len(code.strip()) not in (6, 12):
            raise RegionError("region_code_format", f"{code!r} is not a 6- or 12-digit region code")
        return normalise(code)
    except RegionError as exc:
        raise DomainError("invalid_jurisdiction", f"{field_name} {code!r} is not a valid region code: {exc}",
                          field=field_name) from None


def region_level(code: str) -> str:
    """village, township, county, city or province."""
    return level_of(region_code(code))


def jurisdiction_prefix(code: str) -> str:
    """The prefix a region's code shares with all its descendants (see ``services.registry.regions.code_prefix``)."""
    return code_prefix(region_code(code))


def covers(jurisdiction: str, code: Any) -> bool:
    """Whether the region ``code`` lies within ``jurisdiction``: a 12-digit code, a 6-digit GB/T 2260
    code, or a level's prefix as the query APIs take it (2 digits a province, 4 a city, 9 a
    township). A malformed ``code`` is covered by nothing; a malformed jurisdiction raises
    ``DomainError`` (``invalid_jurisdiction``)."""
    prefix = jurisdiction_prefix(jurisdiction)
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) in (2, 4, 9):
        code = code.ljust(12, "0")
    try:
        target = region_code(code, "code")
    except DomainError:
        return False
    return target.startswith(prefix)


# =============================================================================================
# Roles, scopes and the authorisation matrix
# =============================================================================================

ROLE_LEVELS: Mapping[str, frozenset[str]] = MappingProxyType({
    "cadre": frozenset({"village", "township"}),
    "village_committee": frozenset({"village"}),
    "resident_team": frozenset({"village"}),
    "information_officer": frozenset({"village", "township", "county"}),
    "township_reviewer": frozenset({"township"}),
    "county_office": frozenset({"county"}),
    "operator": frozenset({"township", "county", "city", "province"}),
    "auditor": frozenset({"county", "city", "province"}),
    "administrator": frozenset({"county", "city", "province"}),
})
"""The levels at which each role exists."""
EXCLUSIVE_ROLES: frozenset[str] = frozenset({"administrator", "auditor"})
"""Roles that cannot be combined with any other role."""

ACTIONS: Mapping[str, str] = MappingProxyType({
    "household:read": "Read households (masked), search them, read village and region statistics.",
    "household:read_personal": "Read names, ID numbers and phones from the vault (recorded as PersonalDataAccessed).",
    "household:write": "Register households and members, record facts, request data changes.",
    "case:read": "Read review cases, notices and the inbox.",
    "case:open": "Open review cases.",
    "case:decide": "Decide, escalate and resolve case steps and objections (the workflow checks the step's "
                   "role and level).",
    "attendance:record": "Record visits, contacts and resident-team days.",
    "alerts:read": "Read return-risk alerts and dashboards.",
    "alerts:manage": "Acknowledge, verify, resolve alerts; manage webhooks.",
    "funds:read": "Read allocations, projects, disbursements and the ledger.",
    "funds:declare": "Declare projects and record their progress.",
    "funds:review": "Review declared projects.",
    "funds:request": "Request disbursements.",
    "funds:manage": "Manage allocations; approve, accept, cancel projects; approve disbursements.",
    "funds:pay": "Record payments, failures and reversals; reconcile bank statements.",
    "audit:read": "Read the access log and event history.",
    "users:manage": "Create users, set passwords, change roles, unlock, deactivate.",
    "clients:manage": "Register client systems, rotate their secrets, revoke them.",
    "comparison:education": "Exchange comparison data with the education department.",
    "comparison:health_insurance": "Exchange comparison data with the health insurance department.",
    "comparison:civil_affairs": "Exchange comparison data with the civil affairs department.",
    "status:read": "Look up households' register status (by keyed hash or id).",
    "inbound:subsidies": "Send subsidy payments made by the department.",
    "inbound:comparison_results": "Send comparison results.",
    "inbound:deaths": "Send death registrations.",
    "reconciliation:national": "Reconcile the register with the national information system.",
})
"""Every action the gateway authorises, with what it allows."""

_READ = frozenset({"household:read", "case:read", "alerts:read", "funds:read"})
_FIELD = _READ | {"household:read_personal", "household:write", "case:decide"}
ROLE_ACTIONS: Mapping[str, frozenset[str]] = MappingProxyType({
    "operator": _READ | {"alerts:manage"},
    "auditor": _READ | {"audit:read"},
    "cadre": _FIELD | {"case:open", "attendance:record"},
    "village_committee": _FIELD | {"case:open", "funds:declare"},
    "resident_team": _FIELD | {"attendance:record"},
    "information_officer": _FIELD | {"case:open", "funds:request", "reconciliation:national"},
    "township_reviewer": _READ | {"household:read_personal", "case:decide", "funds:review", "alerts:manage"},
    "county_office": _READ | {"household:read_personal", "case:open", "case:decide", "alerts:manage",
                              "funds:manage", "funds:pay", "comparison:education", "comparison:health_insurance",
                              "comparison:civil_affairs"},
    "administrator": frozenset({"users:manage", "clients:manage", "audit:read"}),
})
"""What each role may do. Administrators see no household data; auditors see no personal data
(they see who accessed whose records, by id)."""
CLIENT_ACTIONS: frozenset[str] = frozenset(SCOPES)
"""Clients may do exactly what their scopes name (each scope is an action of the same name)."""
DEPARTMENT_SCOPES: Mapping[str, str] = MappingProxyType({
    "comparison:education": "education",
    "comparison:health_insurance": "health_insurance",
    "comparison:civil_affairs": "civil_affairs",
})
"""Scopes reserved to one department's systems."""


def _roles(values: Any, field_name: str = "roles") -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise DomainError("invalid_roles", f"{field_name} must be a list of roles", field=field_name)
    roles = list(values)
    if not roles:
        raise DomainError("invalid_roles", "at least one role is required", field=field_name)
    unknown = sorted({str(r) for r in roles if r not in ROLES})
    if unknown:
        raise DomainError("invalid_role", f"unknown role(s) {', '.join(unknown)}; expected {', '.join(ROLES)}",
                          field=field_name, unknown=unknown)
    result = tuple(sorted(set(roles)))
    exclusive = [r for r in result if r in EXCLUSIVE_ROLES]
    if exclusive and len(result) > 1:
        raise DomainError("incompatible_roles", f"{exclusive[0]} cannot be combined with other roles",
                          field=field_name, roles=list(result))
    return result


def _assignment(roles: Any, level: Any, jurisdiction: Any) -> tuple[tuple[str, ...], str, str]:
    """Check that roles, level and jurisdiction agree; the roles sorted and the 12-digit jurisdiction."""
    roles_t = _roles(roles)
    if level not in LEVELS:
        raise DomainError("invalid_level", f"level must be one of {', '.join(LEVELS)}", field="level")
    code = region_code(jurisdiction)
    actual = level_of(code)
    if actual != level:
        raise DomainError("jurisdiction_level_mismatch", f"jurisdiction {code} is a {actual}, not a {level}",
                          field="jurisdiction", jurisdiction_level=actual)
    for role in roles_t:
        if level not in ROLE_LEVELS[role]:
            raise DomainError("role_level_mismatch", f"role {role} exists at level(s) "
                              f"{', '.join(sorted(ROLE_LEVELS[role]))}, not {level}", field="roles", role=role,
                              allowed_levels=sorted(ROLE_LEVELS[role]))
    return roles_t, level, code


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (``roles``, no scopes) or a client system (``scopes``, no roles).

    ``jurisdiction`` is kept in its 12-digit form and ``level`` must be its level.
    Construction validates everything and raises ``ValueError`` otherwise (a
    principal is built from an aggregate or a verified token, never from input)."""

    type: str
    id: str
    roles: tuple[str, ...]
    level: str
    jurisdiction: str
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in PRINCIPAL_TYPES:
            raise ValueError(f"principal type must be one of {', '.join(PRINCIPAL_TYPES)}")
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ValueError("principal id must be 1-64 characters of letters, digits, '.', '_', '-'")
        roles = tuple(sorted(set(self.roles))) if not isinstance(self.roles, str) else (self.roles,)
        scopes = tuple(sorted(set(self.scopes))) if not isinstance(self.scopes, str) else (self.scopes,)
        try:
            jurisdiction = region_code(self.jurisdiction)
        except DomainError as exc:
            raise ValueError(str(exc)) from None
        if self.level != level_of(jurisdiction):
            raise ValueError(f"level {self.level!r} is not the level of jurisdiction {jurisdiction}")
        if self.type == "user":
            if scopes:
                raise ValueError("a user has roles, not scopes")
            try:
                _assignment(roles, self.level, jurisdiction)
            except DomainError as exc:
                raise ValueError(str(exc)) from None
        else:
            if roles:
                raise ValueError("a client has scopes, not roles")
            if not scopes or any(s not in SCOPES for s in scopes):
                raise ValueError(f"a client needs scopes among {', '.join(SCOPES)}")
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "scopes", scopes)
        object.__setattr__(self, "jurisdiction", jurisdiction)

    @property
    def subject(self) -> str:
        """``user:<id>`` or ``client:<id>``: the actor recorded in event metadata."""
        return f"{self.type}:{self.id}"

    def covers(self, code: Any) -> bool:
        """Whether the region ``code`` (a village code, or any region code) lies within the jurisdiction."""
        return covers(self.jurisdiction, code)

    def actions(self) -> frozenset[str]:
        """Every action the principal may take somewhere in its jurisdiction."""
        if self.type == "client":
            return frozenset(self.scopes) & CLIENT_ACTIONS
        return frozenset().union(*(ROLE_ACTIONS[r] for r in self.roles))


def _known_action(action: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")


def allowed(principal: Principal, action: str, *, region_code: Any = None) -> bool:
    """Whether ``principal`` may take ``action`` (one of ``ACTIONS``; anything else is a programming
    error and raises ``ValueError``), within ``region_code`` when one is given (a village code, or the
    jurisdiction of a user being managed)."""
    _known_action(action)
    if action not in principal.actions():
        return False
    return region_code is None or principal.covers(region_code)


def require(principal: Principal, action: str, *, region_code: Any = None) -> None:
    """Like ``allowed``, but raise ``DomainError`` 403: ``forbidden`` (not the principal's role or scope)
    or ``outside_jurisdiction``."""
    _known_action(action)
    if action not in principal.actions():
        raise DomainError("forbidden", f"{principal.subject} may not {action}", 403, action=action)
    if region_code is not None and not principal.covers(region_code):
        raise DomainError("outside_jurisdiction", f"jurisdiction {principal.jurisdiction} does not cover "
                          f"{region_code}", 403, action=action, region_code=str(region_code))
