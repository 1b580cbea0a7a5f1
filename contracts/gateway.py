"""Events published by the gateway: users, client systems and the audit of access.

Users (topic ``tpa.gateway.user.v1``, one stream per user, stream id = the user
id): ``UserCreated`` -> ``UserPasswordSet`` (creation and every later change or
reset) -> ``UserLockedOut`` / ``UserUnlocked`` (too many failed logins) ->
``UserRolesChanged`` (a move to another post) -> ``UserDeactivated`` (final).
A user has one level and one jurisdiction (the region its roles apply to, as a
12-digit division code) and one or more roles.

Client systems (``tpa.gateway.client.v1``, one stream per client, stream id =
the client id): other departments' systems calling the platform with client
credentials. ``ClientRegistered`` (department, scopes, jurisdiction) ->
``ClientSecretRotated`` (at registration and at every rotation) -> ``ClientRevoked``.

Access audit (``tpa.gateway.access.v1``, one stream per access record, stream
id = the access id): ``PersonalDataAccessed`` for every response that disclosed
personal data (names, ID numbers, phones from the registry's vault), and
``AccessDenied`` when an authenticated principal was refused by authorisation
(role, scope or jurisdiction). Failed logins and invalid tokens are not
recorded here: they come from unauthenticated callers and would let anyone
flood the topic.

Secrets never appear in events: password hashes and client secret hashes live
only in the gateway's credential table, keyed by user id and by secret id; the
events only say that a password was set or a secret rotated. No event carries
real names, ID numbers or phone numbers: usernames are login names given by an
administrator (staff numbers or neutral handles, never ID or phone numbers: a
username starts with a letter), and access records refer to the people whose
data was disclosed only by household or member ids or keyed hashes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from contracts.base import EventModel, topic_name
from contracts.registry import HMAC_PATTERN, UUID_PATTERN

USER = "user"
USER_TOPIC = topic_name("gateway", USER)
CLIENT = "client"
CLIENT_TOPIC = topic_name("gateway", CLIENT)
ACCESS = "access"
ACCESS_TOPIC = topic_name("gateway", ACCESS)

Role = Literal[
    "operator", "auditor", "cadre", "village_committee", "resident_team", "information_officer",
    "township_reviewer", "county_office", "administrator",
]
Level = Literal["village", "township", "county", "city", "province"]
Department = Literal["education", "health_insurance", "civil_affairs", "statistics", "other"]
Scope = Literal[
    "comparison:education", "comparison:health_insurance", "comparison:civil_affairs", "status:read",
    "inbound:subsidies", "inbound:comparison_results", "inbound:deaths", "reconciliation:national",
]
PrincipalType = Literal["user", "client"]

ROLES: tuple[str, ...] = get_args(Role)
LEVELS: tuple[str, ...] = get_args(Level)
DEPARTMENTS: tuple[str, ...] = get_args(Department)
SCOPES: tuple[str, ...] = get_args(Scope)
PRINCIPAL_TYPES: tuple[str, ...] = get_args(PrincipalType)

REGION_PATTERN = r"^[1-9][0-9]{11}$"
"""A division code in its 12-digit form (6-digit codes are extended with six zeros before recording)."""
USERNAME_PATTERN = r"^[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*$"
RECORD_REF_PATTERN = f"(?:{UUID_PATTERN[1:-1]})|(?:{HMAC_PATTERN[1:-1]})"
"""A household or member id (UUID) or a keyed hash (64 hex digits): never an ID number or a name."""
MAX_RECORDS = 1000
RecordRef = Annotated[str, Field(pattern=f"^(?:{RECORD_REF_PATTERN})$")]


# --- users ---------------------------------------------------------------------------------

class _UserEvent(EventModel):
    topic: ClassVar[str] = USER_TOPIC
    stream_type: ClassVar[str] = USER
    schema_version: ClassVar[int] = 1

    user_id: str = Field(min_length=1, max_length=64, description="User id; equals the stream id.")


class UserCreated(_UserEvent):
    """A user account was created by an administrator (no password yet: ``UserPasswordSet`` follows)."""

    event_type: ClassVar[str] = "UserCreated"

    username: str = Field(min_length=3, max_length=32, pattern=USERNAME_PATTERN, description=(
        "Login name, lower case, unique among users; not the person's real name, never an ID or phone number."))
    roles: list[Role] = Field(min_length=1, description="Roles, sorted, without duplicates.")
    level: Level
    jurisdiction: str = Field(pattern=REGION_PATTERN, description=(
        "12-digit code of the region the user's roles apply to; its level is the user's level."))
    created_by: str = Field(min_length=1, description="User id of the administrator.")
    created_at: datetime


class UserPasswordSet(_UserEvent):
    """The user's password was set (creation, change or reset).

    The event carries no hash: the password hash lives only in the gateway's
    credential table (one row per user id), written together with this event."""

    event_type: ClassVar[str] = "UserPasswordSet"

    set_by: str = Field(min_length=1, description="The user id itself (a change) or an administrator's (a reset).")
    temporary: bool = Field(description=(
        "Set by someone else than the user: the user must choose a new password at the next login."))
    set_at: datetime


class UserLockedOut(_UserEvent):
    """Too many failed logins in a short time: logins are refused until ``until`` (or an unlock)."""

    event_type: ClassVar[str] = "UserLockedOut"

    failures: int = Field(ge=1, description="Failed logins counted in the window that triggered the lockout.")
    locked_at: datetime
    until: datetime


class UserUnlocked(_UserEvent):
    """An administrator lifted a lockout before it expired (an expired lockout needs no event)."""

    event_type: ClassVar[str] = "UserUnlocked"

    unlocked_by: str = Field(min_length=1)
    unlocked_at: datetime


class UserRolesChanged(_UserEvent):
    """The user's roles, level and jurisdiction after a change (a move to another post changes them together)."""

    event_type: ClassVar[str] = "UserRolesChanged"

    roles: list[Role] = Field(min_length=1, description="Roles after the change, sorted, without duplicates.")
    level: Level
    jurisdiction: str = Field(pattern=REGION_PATTERN)
    previous_roles: list[Role] = Field(description="Roles before the change.")
    changed_by: str = Field(min_length=1)
    changed_at: datetime


class UserDeactivated(_UserEvent):
    """The account is closed for good: no login, no token refresh (a returning person gets a new account)."""

    event_type: ClassVar[str] = "UserDeactivated"

    reason: str = Field(min_length=1, max_length=2000)
    deactivated_by: str = Field(min_length=1)
    deactivated_at: datetime


USER_EVENTS: tuple[type[EventModel], ...] = (
    UserCreated, UserPasswordSet, UserLockedOut, UserUnlocked, UserRolesChanged, UserDeactivated,
)


# --- client systems ----------------------------------------------------------------------------

class _ClientEvent(EventModel):
    topic: ClassVar[str] = CLIENT_TOPIC
    stream_type: ClassVar[str] = CLIENT
    schema_version: ClassVar[int] = 1

    client_id: str = Field(min_length=1, max_length=64, description="Client id; equals the stream id.")


class ClientRegistered(_ClientEvent):
    """Another department's system was registered with the scopes it may use (its first secret follows)."""

    event_type: ClassVar[str] = "ClientRegistered"

    name: str = Field(min_length=1, max_length=200,
                      description="Name of the system, e.g. the province's student aid system.")
    department: Department
    scopes: list[Scope] = Field(min_length=1, description="Scopes, sorted, without duplicates.")
    jurisdiction: str = Field(pattern=REGION_PATTERN, description="12-digit code of the region the client may see.")
    registered_by: str = Field(min_length=1, description="User id of the administrator.")
    registered_at: datetime


class ClientSecretRotated(_ClientEvent):
    """A new client secret was issued (at registration, and at each rotation).

    The event names the secret by id only: the secret was shown once to the
    administrator and its hash lives in the gateway's credential table under
    ``secret_id``. The previous secret stays valid until ``previous_valid_until``
    (a grace period for the department to switch), or stops at once when that is
    ``rotated_at`` or absent."""

    event_type: ClassVar[str] = "ClientSecretRotated"

    secret_id: str = Field(min_length=1, max_length=64)
    previous_secret_id: str | None = Field(default=None, description="The secret this one replaces, if any.")
    previous_valid_until: datetime | None = Field(default=None, description=(
        "End of the previous secret's grace period; absent when it stopped at once or there was none."))
    rotated_by: str = Field(min_length=1)
    rotated_at: datetime


class ClientRevoked(_ClientEvent):
    """The client may no longer authenticate; its secrets and tokens are void (final)."""

    event_type: ClassVar[str] = "ClientRevoked"

    reason: str = Field(min_length=1, max_length=2000)
    revoked_by: str = Field(min_length=1)
    revoked_at: datetime


CLIENT_EVENTS: tuple[type[EventModel], ...] = (ClientRegistered, ClientSecretRotated, ClientRevoked)


# --- access audit ---------------------------------------------------------------------------

class _AccessEvent(EventModel):
    topic: ClassVar[str] = ACCESS_TOPIC
    stream_type: ClassVar[str] = ACCESS
    schema_version: ClassVar[int] = 1

    access_id: str = Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"},
                           description="Access record id; equals the stream id.")
    principal_type: PrincipalType
    principal_id: str = Field(min_length=1, max_length=64, description="User id or client id.")
    route: str = Field(min_length=1, max_length=300, description=(
        "Method and route template, e.g. 'GET /api/v1/households/{household_id}' (never the URL with its query)."))


class PersonalDataAccessed(_AccessEvent):
    """A response disclosed personal data (names, ID numbers, phones) to a principal.

    ``records`` names what was disclosed by household or member ids or keyed
    hashes only; a disclosure of more than 1000 records is recorded as several events."""

    event_type: ClassVar[str] = "PersonalDataAccessed"

    purpose: str = Field(min_length=1, max_length=500, description="Why the data was needed, as stated by the caller.")
    records: list[RecordRef] = Field(min_length=1, max_length=MAX_RECORDS, description=(
        "Household or member ids, or keyed hashes (64 hex digits), of the records disclosed."))
    count: int = Field(ge=1, description="Number of people whose personal data was disclosed.")
    accessed_at: datetime


class AccessDenied(_AccessEvent):
    """An authenticated principal was refused by authorisation (role, scope or jurisdiction)."""

    event_type: ClassVar[str] = "AccessDenied"

    action: str | None = Field(default=None, max_length=100, description="The action asked for, e.g. household:read.")
    reason: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=100, description=(
        "Code of the refusal, e.g. forbidden, outside_jurisdiction, client_revoked."))
    denied_at: datetime


ACCESS_EVENTS: tuple[type[EventModel], ...] = (PersonalDataAccessed, AccessDenied)
