"""Identity core of the gateway: passwords, users, client systems, principals and authorisation.

Pure domain code (no I/O; stdlib cryptography only). The gateway's application
layer loads the aggregates from the event store, keeps secrets in its
credential table and calls these functions; nothing here touches either.

Passwords
    ``hash_password`` derives a key with scrypt (RFC 7914) with N = 2**15,
    r = 8, p = 1 (32 MiB of memory and about 0.1 s per hash on one server
    core: the interactive-login parameters of the scrypt paper and Go's
    x/crypto; OWASP's current table asks for more, e.g. N = 2**17, which
    ``SCRYPT_PARAMS`` can be raised to), a 32-byte random salt and a 64-byte
    output, encoded as ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (salt and hash in
    base64url without padding). The parameters travel with each hash, so they
    can be raised later: ``needs_rehash`` tells the login flow to re-hash a password that was stored
    with other parameters once it has been verified. Passwords are normalised to
    Unicode NFKC before hashing (NIST SP 800-63B §5.1.1.2), so the same password
    typed on different keyboards or input methods matches. ``verify_password``
    compares in constant time; ``dummy_verify`` spends the same time for an
    unknown username, so that response times do not reveal which usernames exist.

Password policy (``password_problems``, ``check_password``): 12 to 128
    characters; at least two of the classes lower-case letter, upper-case letter,
    digit and other (symbols, spaces, other scripts); at least 5 different
    characters; not a common password, a keyboard or alphabet run or a common
    word decorated with digits and symbols (``Password2024!``); not containing
    the username; and, on a change, not the previous password. Each rule has its
    own code (``password_too_short``, ``password_too_long``,
    ``password_invalid_characters``, ``password_single_class``,
    ``password_repetitive``, ``password_common``, ``password_contains_username``,
    ``password_reused``); ``check_password`` raises the first one as a
    ``DomainError`` (422) and lists all of them in ``details['violations']``.

Users (``User``, stream type ``user``)
    Created by an administrator with a username (``normalise_username``: lower
    case, 3-32 characters, a letter first, then letters, digits and single
    ``.``/``_``/``-`` separators; a few names are reserved), one or more roles
    of ``ROLES``, a level and a jurisdiction: a region code whose level is the
    user's level. Each role may be held at some levels only (``ROLE_LEVELS``);
    ``administrator`` and ``auditor`` are held alone (segregation of duties:
    who grants rights and who checks their use do not also use them).
    ``set_password`` checks the policy, records ``UserPasswordSet`` (no hash)
    and returns the hash for the caller to store. Logins: five failures within
    15 minutes (``LockoutPolicy``) lock the account for 15 minutes
    (``UserLockedOut``); the failure times themselves are not events (a
    password-guessing attack would otherwise write to the event log): the
    caller keeps them next to the credential and passes them in, and failures
    before the last password change, lockout or unlock never count. An
    administrator may ``unlock`` early, ``change_roles`` (roles, level and
    jurisdiction together) and ``deactivate`` (final), but not on their own account.

Client systems (``Client``, stream type ``client``)
    Other departments' systems (education, health insurance, civil affairs,
    statistics, other) registered with scopes of ``SCOPES`` and a jurisdiction.
    A ``comparison:<department>`` scope is only for that department's systems.
    Registration and each rotation issue a secret (``IssuedSecret``): 32 random
    bytes, base64url, shown once. Its hash is ``sha256$<base64url digest>``: a
    slow KDF protects guessable passwords, while a 256-bit random secret cannot
    be guessed, so one SHA-256 is as safe and keeps client authentication cheap.
    The aggregate records only the secret's id. A rotation may keep the previous
    secret valid for a grace period (at most 7 days) so the department can switch
    without an outage. ``revoke`` is final.

Principals and authorisation
    A ``Principal`` is who is calling: a user (roles, level, jurisdiction) or a
    client (scopes, jurisdiction). ``covers(jurisdiction, code)`` is the prefix
    rule of the workflow's reviewers: a jurisdiction covers every region whose
    code starts with its prefix (province ``62``, city ``6201``, county
    ``620102``, township ``620102001``, a village only itself). ``allowed`` and
    ``require`` apply the matrix ``ROLE_ACTIONS`` (users) or the scopes
    (clients) to one of the ``ACTIONS``, optionally with the region the request
    is about. Finer rules stay with the services (which step a role decides,
    at which level).

Access audit
    ``personal_data_accessed`` and ``access_denied`` build the events of the
    access stream (one stream per record, a fresh access id each): who saw
    whose records (by household or member id or keyed hash, never an ID number
    or a name), through which route and for what stated purpose.

Commands take ``now`` (timezone-aware) and raise ``DomainError`` (401 invalid
client credentials, 403 refused, 404 unknown, 409 state conflict, 422 invalid
input, 429 account locked) or record events.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from contracts import gateway as ev
from contracts.base import EventModel
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError
from eventkit.principal import (  # noqa: F401  (re-exported: the gateway's identity API)
    ACTIONS, CLIENT_ACTIONS, DEPARTMENT_SCOPES, EXCLUSIVE_ROLES, ROLE_ACTIONS, ROLE_LEVELS, Principal, _ID,
    _assignment, _known_action, _roles, allowed, b64url_decode, b64url_encode, covers, jurisdiction_prefix, region_code,
    region_level, require)
from eventkit.regioncodes import level_of

ROLES: tuple[str, ...] = ev.ROLES
LEVELS: tuple[str, ...] = ev.LEVELS
DEPARTMENTS: tuple[str, ...] = ev.DEPARTMENTS
SCOPES: tuple[str, ...] = ev.SCOPES
PRINCIPAL_TYPES: tuple[str, ...] = ev.PRINCIPAL_TYPES
MAX_TEXT = 2000


# =============================================================================================
# Passwords
# =============================================================================================

@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters: CPU/memory cost ``n`` (a power of two), block size ``r``, parallelism ``p``."""

    n: int
    r: int
    p: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and MIN_SCRYPT_N <= self.n <= MAX_SCRYPT_N and self.n & (self.n - 1) == 0):
            raise ValueError(f"scrypt n must be a power of two from {MIN_SCRYPT_N} to {MAX_SCRYPT_N}")
        if not (isinstance(self.r, int) and 1 <= self.r <= 32 and isinstance(self.p, int) and 1 <= self.p <= 16):
            raise ValueError("scrypt r must be 1..32 and p 1..16")
        if self.memory > MAX_SCRYPT_MEMORY:
            raise ValueError(f"scrypt n*r needs more than {MAX_SCRYPT_MEMORY} bytes")

    @property
    def memory(self) -> int:
        """Bytes of memory one derivation needs (128 * r * n, plus the small p-dependent part)."""
        return 128 * self.r * (self.n + self.p + 2)


MIN_SCRYPT_N = 2 ** 10
MAX_SCRYPT_N = 2 ** 20
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
SCRYPT_PARAMS = ScryptParams(n=2 ** 15, r=8, p=1)
SALT_BYTES = 32
HASH_BYTES = 64
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
MIN_DISTINCT_CHARACTERS = 5
_SCRYPT_PREFIX = "scrypt"
_COST = re.compile(r"[1-9][0-9]{0,7}")

# Common passwords (compared case-insensitively), and common words that, decorated with digits and
# symbols at either end ("Password2024!", "@Admin123456"), still make a common password.
COMMON_PASSWORDS: frozenset[str] = frozenset({
    "1qaz2wsx3edc", "1qaz2wsx3edc4rfv", "zaq12wsxcde3", "1q2w3e4r5t6y", "q1w2e3r4t5y6", "qazwsxedcrfv",
    "123456qwerty", "qwerty123456", "123456abcdef", "abcdef123456", "abc123456789", "123456789abc",
    "a1b2c3d4e5f6", "aa123456789a", "password1234", "password123!", "p@ssw0rd1234", "p@ssword1234",
    "iloveyou1234", "woaini520520", "woaini1314520", "5201314woaini", "1314520woaini", "admin1234567",
    "administrator", "welcome12345", "changeme1234", "letmein12345", "qwer1234qwer", "asdf1234asdf",
})
COMMON_WORDS: frozenset[str] = frozenset({
    "password", "passw0rd", "p@ssw0rd", "p@ssword", "pass", "qwerty", "qwertyuiop", "asdfgh", "asdfghjkl",
    "zxcvbnm", "qazwsx", "qweasd", "admin", "administrator", "root", "welcome", "letmein", "iloveyou", "woaini",
    "changeme", "default", "secret", "test", "guest", "user", "system", "master", "dragon", "monkey",
    "sunshine", "princess", "football", "baseball", "superman", "shadow", "trustno", "china", "zhongguo",
    "beijing", "tpa", "fupin", "jingzhunfupin", "xiangcunzhenxing", "abc", "abcd", "abcde", "qwe", "asd",
})
_RUNS = ("abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm", "qwertyuiop", "asdfghjkl", "zxcvbnm",
         "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p", "0123456789012345678901234567890123456789")
_DECORATION = "0123456789!@#$%^&*()_+-=[]{};:'\",.<>/?\\|`~ "


def normalise_password(password: str) -> str:
    """NFKC form of a password (full-width and half-width forms of a character become one)."""
    return unicodedata.normalize("NFKC", password)


def _character_class(ch: str) -> str:
    if "a" <= ch <= "z":
        return "lower"
    if "A" <= ch <= "Z":
        return "upper"
    if "0" <= ch <= "9":
        return "digit"
    return "other"


def _is_run(text: str) -> bool:
    """A piece of the alphabet, a keyboard row or counting, forwards or backwards."""
    return len(text) >= 4 and any(text in run or text in run[::-1] for run in _RUNS)


def password_problems(password: Any, username: str | None = None, *, previous_hash: str | None = None) -> list[str]:
    """Codes of every rule ``password`` breaks (empty when it is acceptable). See the module docstring."""
    if not isinstance(password, str):
        return ["password_too_short"]
    pw = normalise_password(password)
    problems: list[str] = []
    if len(pw) < MIN_PASSWORD_LENGTH:
        problems.append("password_too_short")
    if len(pw) > MAX_PASSWORD_LENGTH:
        problems.append("password_too_long")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in pw):
        problems.append("password_invalid_characters")
    if len({_character_class(ch) for ch in pw}) < 2:
        problems.append("password_single_class")
    if len(set(pw)) < MIN_DISTINCT_CHARACTERS:
        problems.append("password_repetitive")
    lower = pw.lower()
    core = lower.strip(_DECORATION)
    if lower in COMMON_PASSWORDS or core in COMMON_WORDS or _is_run(core) or _is_run(lower):
        problems.append("password_common")
    if username:
        name = username.strip().lower()
        if name and name in lower:
            problems.append("password_contains_username")
    if previous_hash and not problems and verify_password(password, previous_hash):
        problems.append("password_reused")
    return problems


_PROBLEM_MESSAGES = {
    "password_too_short": f"a password needs at least {MIN_PASSWORD_LENGTH} characters",
    "password_too_long": f"a password has at most {MAX_PASSWORD_LENGTH} characters",
    "password_invalid_characters": "a password cannot contain control or unassigned characters",
    "password_single_class": "a password needs characters of at least two kinds: lower-case letters, upper-case "
                             "letters, digits, others",
    "password_repetitive": f"a password needs at least {MIN_DISTINCT_CHARACTERS} different characters",
    "password_common": "this password is too common or too easy to guess",
    "password_contains_username": "a password cannot contain the username",
    "password_reused": "the new password must differ from the current one",
}


def check_password(password: Any, username: str | None = None, *, previous_hash: str | None = None) -> None:
    """Raise ``DomainError`` (422) with the first broken rule's code, listing all in ``violations``."""
    problems = password_problems(password, username, previous_hash=previous_hash)
    if problems:
        raise DomainError(problems[0], _PROBLEM_MESSAGES[problems[0]], 422, field="password", violations=problems)


def _scrypt(password: str, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    return hashlib.scrypt(normalise_password(password).encode("utf-8"), salt=salt, n=params.n, r=params.r,
                          p=params.p, dklen=dklen, maxmem=params.memory + 1024 * 1024)


def hash_password(password: str, params: ScryptParams = SCRYPT_PARAMS) -> str:
    """``scrypt$n$r$p$salt$hash`` of a password (does not check the policy: see ``check_password``)."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, params, HASH_BYTES)
    return f"{_SCRYPT_PREFIX}${params.n}${params.r}${params.p}${b64url_encode(salt)}${b64url_encode(digest)}"


def parse_password_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """(params, salt, hash) of a stored hash; ``ValueError`` if it is malformed or its costs are out of bounds."""
    if not isinstance(stored, str):
        raise ValueError("a stored password hash must be a string")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCRYPT_PREFIX or not all(_COST.fullmatch(p) for p in parts[1:4]):
        raise ValueError("not a scrypt password hash")
    params = ScryptParams(int(parts[1]), int(parts[2]), int(parts[3]))
    salt, digest = b64url_decode(parts[4]), b64url_decode(parts[5])
    if not (16 <= len(salt) <= 64 and 32 <= len(digest) <= 128):
        raise ValueError("salt or hash length out of bounds")
    return params, salt, digest


def verify_password(password: Any, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (constant-time comparison).

    A malformed stored hash raises ``ValueError``: it is corrupt data, not a wrong password."""
    params, salt, digest = parse_password_hash(stored)
    if not isinstance(password, str) or not password or len(password) > 4 * MAX_PASSWORD_LENGTH:
        _scrypt("x", salt, params, len(digest))  # the same time as a real check
        return False
    return hmac.compare_digest(_scrypt(password, salt, params, len(digest)), digest)


def needs_rehash(stored: str, params: ScryptParams = SCRYPT_PARAMS) -> bool:
    """True when a (verified) password should be hashed again: other costs, other lengths, or unreadable."""
    try:
        have, salt, digest = parse_password_hash(stored)
    except ValueError:
        return True
    return have != params or len(salt) != SALT_BYTES or len(digest) != HASH_BYTES


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


def dummy_verify(password: Any) -> bool:
    """Spend the time of a password check for a username that does not exist; always False."""
    verify_password(password if isinstance(password, str) else "", _dummy_hash())
    return False


# =============================================================================================
# Users
# =============================================================================================

USERNAME_MIN = 3
USERNAME_MAX = 32
_USERNAME = re.compile(ev.USERNAME_PATTERN)
RESERVED_USERNAMES: frozenset[str] = frozenset({
    "admin", "administrator", "root", "system", "gateway", "anonymous", "guest", "tpa", "user", "client",
    "support", "security", "null", "none",
})


def normalise_username(username: Any) -> str:
    """The canonical form of a username (stripped, lower case); ``DomainError`` if it breaks the rules.

    Use it both when creating a user and when looking a username up at login."""
    if not isinstance(username, str):
        raise DomainError("invalid_username", "username is required", field="username")
    name = username.strip().lower()
    if not USERNAME_MIN <= len(name) <= USERNAME_MAX:
        raise DomainError("invalid_username", f"a username has {USERNAME_MIN} to {USERNAME_MAX} characters",
                          field="username")
    if not _USERNAME.fullmatch(name):
        raise DomainError("invalid_username", "a username starts with a letter and has letters, digits and "
                          "single '.', '_' or '-' between them", field="username")
    if name in RESERVED_USERNAMES:
        raise DomainError("username_reserved", f"username {name!r} is reserved", field="username")
    return name


@dataclass(frozen=True)
class LockoutPolicy:
    """``max_failures`` failed logins within ``window`` lock the account for ``duration``."""

    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    duration: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window <= timedelta(0) or self.duration <= timedelta(0):
            raise ValueError("a lockout policy needs at least one failure, a window and a duration")


LOCKOUT = LockoutPolicy()


@dataclass(frozen=True)
class LoginFailure:
    """What a failed login leaves: the failure times to store (empty after a lockout) and the lockout's end."""

    failures: tuple[datetime, ...]
    locked_until: datetime | None

    @property
    def locked(self) -> bool:
        return self.locked_until is not None


@dataclass(frozen=True)
class LoginSuccess:
    """A login was accepted: the stored failure times are cleared; a temporary password must be changed first."""

    must_change_password: bool
    failures: tuple[datetime, ...] = ()


def _aware(now: Any) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _at(value: Any) -> datetime:
    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).astimezone(timezone.utc)


def _required_text(value: Any, field_name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError("missing_field", f"{field_name} is required", field=field_name)
    text = value.strip()
    if len(text) > limit:
        raise DomainError("too_long", f"{field_name} is longer than {limit} characters", field=field_name)
    return text


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise DomainError(f"invalid_{what}_id", f"a {what} id has 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit", field=f"{what}_id")
    return value


class _IdentityAggregate(Aggregate):
    def _emit(self, model: type[EventModel], **data: Any) -> None:
        """Validate an event against its contract, then apply and record it."""
        event = model(**data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)


class User(_IdentityAggregate):
    """A person's account: roles, level and jurisdiction, password state, lockout, deactivation."""

    stream_type = ev.USER

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.username: str | None = None
        self.roles: tuple[str, ...] = ()
        self.level: str | None = None
        self.jurisdiction: str | None = None
        self.created_by: str | None = None
        self.created_at: datetime | None = None
        self.active = False
        self.has_password = False
        self.password_set_at: datetime | None = None
        self.password_temporary = False
        self.locked_until: datetime | None = None
        self.lockouts = 0
        self.failures_since: datetime | None = None  # failures at or before this instant never count
        self.deactivated_at: datetime | None = None
        self.deactivation_reason: str | None = None

    # -- queries ------------------------------------------------------------------------

    def is_locked(self, now: datetime) -> bool:
        return self.locked_until is not None and _aware(now) < self.locked_until

    @property
    def must_change_password(self) -> bool:
        return self.has_password and self.password_temporary

    def principal(self) -> Principal:
        """The user as a principal (for tokens and authorisation)."""
        self._require_active()
        assert self.level is not None and self.jurisdiction is not None
        return Principal("user", self.id, self.roles, self.level, self.jurisdiction)

    # -- guards -------------------------------------------------------------------------

    def _require_exists(self) -> None:
        if not self.exists:
            raise DomainError("user_not_found", f"user {self.id} does not exist", 404)

    def _require_active(self) -> None:
        self._require_exists()
        if not self.active:
            raise DomainError("user_deactivated", f"user {self.id} is deactivated", 409)

    def _not_self(self, actor: str, field_name: str, what: str) -> str:
        actor = _required_text(actor, field_name, 64)
        if actor == self.id:
            raise DomainError("self_change", f"users cannot {what} their own account", 403)
        return actor

    # -- commands -----------------------------------------------------------------------

    def create(self, *, username: str, roles: Sequence[str], level: str, jurisdiction: str, created_by: str,
               now: datetime) -> None:
        """Create the account (no password yet: ``set_password`` follows)."""
        now = _aware(now)
        if self.exists:
            raise DomainError("user_exists", f"user {self.id} already exists", 409)
        _check_id(self.id, "user")
        name = normalise_username(username)
        roles_t, level, code = _assignment(roles, level, jurisdiction)
        self._emit(ev.UserCreated, user_id=self.id, username=name, roles=list(roles_t), level=level,
                   jurisdiction=code, created_by=_required_text(created_by, "created_by", 64), created_at=now)

    def set_password(self, password: str, *, set_by: str, now: datetime, previous_hash: str | None = None,
                     params: ScryptParams = SCRYPT_PARAMS) -> str:
        """Check the policy, record ``UserPasswordSet`` and return the new hash for the caller to store.

        ``set_by`` is the user (a change: pass the current hash as ``previous_hash`` to refuse
        reusing it) or an administrator (a reset: the password is temporary until the user changes it)."""
        now = _aware(now)
        self._require_active()
        set_by = _required_text(set_by, "set_by", 64)
        check_password(password, self.username, previous_hash=previous_hash)
        hashed = hash_password(password, params)
        self._emit(ev.UserPasswordSet, user_id=self.id, set_by=set_by, temporary=set_by != self.id, set_at=now)
        return hashed

    def check_login_allowed(self, now: datetime) -> None:
        """Raise unless the user may try to log in now: ``user_not_found`` (404), ``user_deactivated``
        (403), ``account_locked`` (429, with ``until`` and ``retry_after_s``), ``password_not_set`` (403).
        The login API should answer unknown users and wrong passwords alike."""
        now = _aware(now)
        self._require_exists()
        if not self.active:
            raise DomainError("user_deactivated", f"user {self.id} is deactivated", 403)
        if self.is_locked(now):
            assert self.locked_until is not None
            wait = max(1, int((self.locked_until - now).total_seconds() + 0.999))
            raise DomainError("account_locked", "too many failed logins: try again later", 429,
                              until=self.locked_until.isoformat(), retry_after_s=wait)
        if not self.has_password:
            raise DomainError("password_not_set", f"user {self.id} has no password yet", 403)

    def record_login_failure(self, now: datetime, recent_failures: Iterable[datetime] = (),
                             policy: LockoutPolicy = LOCKOUT) -> LoginFailure:
        """A wrong password. ``recent_failures`` are the failure times the caller stored; those older
        than the policy's window or before the last password change, lockout or unlock are dropped.
        Reaching ``policy.max_failures`` records ``UserLockedOut``. Store the returned ``failures``."""
        now = _aware(now)
        self.check_login_allowed(now)
        since = now - policy.window
        if self.failures_since is not None and self.failures_since > since:
            since = self.failures_since
        kept = sorted(t for t in (_aware(t) for t in recent_failures) if since < t <= now)
        kept.append(now)
        if len(kept) >= policy.max_failures:
            until = now + policy.duration
            self._emit(ev.UserLockedOut, user_id=self.id, failures=len(kept), locked_at=now, until=until)
            return LoginFailure((), until)
        return LoginFailure(tuple(kept), None)

    def record_login_success(self, now: datetime) -> LoginSuccess:
        """A correct password: the stored failures are cleared (records no event)."""
        self.check_login_allowed(now)
        return LoginSuccess(self.must_change_password)

    def unlock(self, *, unlocked_by: str, now: datetime) -> None:
        """Lift a running lockout (an administrator; not on their own account)."""
        now = _aware(now)
        self._require_active()
        unlocked_by = self._not_self(unlocked_by, "unlocked_by", "unlock")
        if not self.is_locked(now):
            raise DomainError("not_locked", f"user {self.id} is not locked", 409)
        self._emit(ev.UserUnlocked, user_id=self.id, unlocked_by=unlocked_by, unlocked_at=now)

    def change_roles(self, *, roles: Sequence[str], changed_by: str, now: datetime, level: str | None = None,
                     jurisdiction: str | None = None) -> None:
        """Give the user new roles (and, for a move to another post, a new level and jurisdiction;
        unchanged when omitted). Not on one's own account."""
        now = _aware(now)
        self._require_active()
        changed_by = self._not_self(changed_by, "changed_by", "change the roles of")
        roles_t, level_v, code = _assignment(roles, level if level is not None else self.level,
                                             jurisdiction if jurisdiction is not None else self.jurisdiction)
        if (roles_t, level_v, code) == (self.roles, self.level, self.jurisdiction):
            raise DomainError("no_change", "the user already has these roles, level and jurisdiction", 409)
        self._emit(ev.UserRolesChanged, user_id=self.id, roles=list(roles_t), level=level_v, jurisdiction=code,
                   previous_roles=list(self.roles), changed_by=changed_by, changed_at=now)

    def deactivate(self, *, reason: str, deactivated_by: str, now: datetime) -> None:
        """Close the account for good (not one's own)."""
        now = _aware(now)
        self._require_active()
        deactivated_by = self._not_self(deactivated_by, "deactivated_by", "deactivate")
        self._emit(ev.UserDeactivated, user_id=self.id, reason=_required_text(reason, "reason"),
                   deactivated_by=deactivated_by, deactivated_at=now)

    # -- event handlers -------------------------------------------------------------------

    def when_UserCreated(self, d: dict[str, Any]) -> None:
        self.username = d["username"]
        self.roles = tuple(d["roles"])
        self.level = d["level"]
        self.jurisdiction = d["jurisdiction"]
        self.created_by = d["created_by"]
        self.created_at = _at(d["created_at"])
        self.active = True

    def when_UserPasswordSet(self, d: dict[str, Any]) -> None:
        self.has_password = True
        self.password_set_at = _at(d["set_at"])
        self.password_temporary = d["temporary"]
        self.failures_since = self.password_set_at

    def when_UserLockedOut(self, d: dict[str, Any]) -> None:
        self.locked_until = _at(d["until"])
        self.lockouts += 1
        self.failures_since = _at(d["locked_at"])

    def when_UserUnlocked(self, d: dict[str, Any]) -> None:
        self.locked_until = None
        self.failures_since = _at(d["unlocked_at"])

    def when_UserRolesChanged(self, d: dict[str, Any]) -> None:
        self.roles = tuple(d["roles"])
        self.level = d["level"]
        self.jurisdiction = d["jurisdiction"]

    def when_UserDeactivated(self, d: dict[str, Any]) -> None:
        self.active = False
        self.deactivated_at = _at(d["deactivated_at"])
        self.deactivation_reason = d["reason"]


# =============================================================================================
# Client systems
# =============================================================================================

SECRET_BYTES = 32
MAX_SECRET_GRACE = timedelta(days=7)
_SECRET_HASH_PREFIX = "sha256"


@dataclass(frozen=True)
class IssuedSecret:
    """A new client secret: give ``secret`` to the department once, store ``secret_hash`` under
    ``secret_id``, keep neither anywhere else (both are hidden from ``repr``)."""

    client_id: str
    secret_id: str
    secret: str = field(repr=False)
    secret_hash: str = field(repr=False)


def hash_client_secret(secret: str) -> str:
    """``sha256$<digest>`` of a client secret (one SHA-256 suffices for 256-bit random secrets)."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret must be a non-empty string")
    return f"{_SECRET_HASH_PREFIX}${b64url_encode(hashlib.sha256(secret.encode('utf-8')).digest())}"


def verify_client_secret(secret: Any, stored: str) -> bool:
    """Whether ``secret`` matches a stored ``sha256$...`` hash (constant-time); ``ValueError`` if malformed."""
    prefix, sep, encoded = stored.partition("$") if isinstance(stored, str) else ("", "", "")
    if prefix != _SECRET_HASH_PREFIX or not sep:
        raise ValueError("not a client secret hash")
    digest = b64url_decode(encoded)
    if len(digest) != 32:
        raise ValueError("not a client secret hash")
    if not isinstance(secret, str) or not secret or len(secret) > 512:
        return False
    return hmac.compare_digest(hashlib.sha256(secret.encode("utf-8")).digest(), digest)


def _scopes(values: Any, department: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise DomainError("invalid_scopes", "scopes must be a list", field="scopes")
    scopes = tuple(sorted(set(values)))
    if not scopes:
        raise DomainError("invalid_scopes", "at least one scope is required", field="scopes")
    unknown = sorted(str(s) for s in scopes if s not in SCOPES)
    if unknown:
        raise DomainError("invalid_scope", f"unknown scope(s) {', '.join(unknown)}; expected {', '.join(SCOPES)}",
                          field="scopes", unknown=unknown)
    for scope in scopes:
        owner = DEPARTMENT_SCOPES.get(scope)
        if owner is not None and owner != department:
            raise DomainError("scope_department_mismatch", f"scope {scope} is only for {owner} systems",
                              field="scopes", scope=scope)
    return scopes


class Client(_IdentityAggregate):
    """Another department's system calling with client credentials."""

    stream_type = ev.CLIENT

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.name: str | None = None
        self.department: str | None = None
        self.scopes: tuple[str, ...] = ()
        self.jurisdiction: str | None = None
        self.registered_by: str | None = None
        self.registered_at: datetime | None = None
        self.secret_id: str | None = None
        self.previous_secret_id: str | None = None
        self.previous_valid_until: datetime | None = None
        self.rotations = 0
        self.revoked = False
        self.revoked_at: datetime | None = None
        self.revocation_reason: str | None = None

    # -- queries ------------------------------------------------------------------------

    def valid_secret_ids(self, now: datetime) -> tuple[str, ...]:
        """The secrets that authenticate now: the current one, and the previous one during its grace period."""
        now = _aware(now)
        if not self.exists or self.revoked or self.secret_id is None:
            return ()
        ids = [self.secret_id]
        if self.previous_secret_id and self.previous_valid_until is not None and now < self.previous_valid_until:
            ids.append(self.previous_secret_id)
        return tuple(ids)

    def authenticate(self, secret: Any, stored_hashes: Mapping[str, str], now: datetime) -> str:
        """Check a presented secret against the stored hashes (secret id -> hash) of the valid secrets;
        return the matching secret id. ``invalid_client`` (401) for an unknown client or a wrong or
        expired secret, ``client_revoked`` (401) for a revoked client."""
        now = _aware(now)
        if not self.exists:
            raise DomainError("invalid_client", "unknown client or wrong secret", 401)
        if self.revoked:
            raise DomainError("client_revoked", f"client {self.id} is revoked", 401)
        matched = None
        for secret_id in self.valid_secret_ids(now):
            stored = stored_hashes.get(secret_id)
            if stored is not None and verify_client_secret(secret, stored) and matched is None:
                matched = secret_id
        if matched is None:
            raise DomainError("invalid_client", "unknown client or wrong secret", 401)
        return matched

    def principal(self) -> Principal:
        self._require_active()
        assert self.jurisdiction is not None
        return Principal("client", self.id, (), level_of(self.jurisdiction), self.jurisdiction, self.scopes)

    # -- guards -------------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self.exists:
            raise DomainError("client_not_found", f"client {self.id} does not exist", 404)
        if self.revoked:
            raise DomainError("client_revoked", f"client {self.id} is revoked", 409)

    def _issue(self, rotated_by: str, now: datetime, grace: timedelta) -> IssuedSecret:
        secret = secrets.token_urlsafe(SECRET_BYTES)
        secret_id = secrets.token_hex(8)
        previous = self.secret_id
        until = now + grace if previous is not None and grace > timedelta(0) else None
        self._emit(ev.ClientSecretRotated, client_id=self.id, secret_id=secret_id, previous_secret_id=previous,
                   previous_valid_until=until, rotated_by=rotated_by, rotated_at=now)
        return IssuedSecret(self.id, secret_id, secret, hash_client_secret(secret))

    # -- commands -----------------------------------------------------------------------

    def register(self, *, name: str, department: str, scopes: Sequence[str], jurisdiction: str,
                 registered_by: str, now: datetime) -> IssuedSecret:
        """Register the system and issue its first secret."""
        now = _aware(now)
        if self.exists:
            raise DomainError("client_exists", f"client {self.id} already exists", 409)
        _check_id(self.id, "client")
        if department not in DEPARTMENTS:
            raise DomainError("invalid_department", f"department must be one of {', '.join(DEPARTMENTS)}",
                              field="department")
        registered_by = _required_text(registered_by, "registered_by", 64)
        self._emit(ev.ClientRegistered, client_id=self.id, name=_required_text(name, "name", 200),
                   department=department, scopes=list(_scopes(scopes, department)),
                   jurisdiction=region_code(jurisdiction), registered_by=registered_by, registered_at=now)
        return self._issue(registered_by, now, timedelta(0))

    def rotate_secret(self, *, rotated_by: str, now: datetime, grace: timedelta = timedelta(0)) -> IssuedSecret:
        """Issue a new secret. The current one stays valid for ``grace`` (0 to 7 days; 0 ends it at
        once, as after a leak); an older secret still in its grace period ends now."""
        now = _aware(now)
        self._require_active()
        if not isinstance(grace, timedelta) or not timedelta(0) <= grace <= MAX_SECRET_GRACE:
            raise DomainError("invalid_grace", f"grace must be between 0 and {MAX_SECRET_GRACE.days} days",
                              field="grace")
        return self._issue(_required_text(rotated_by, "rotated_by", 64), now, grace)

    def revoke(self, *, reason: str, revoked_by: str, now: datetime) -> None:
        """Revoke the client for good: no secret authenticates it any more."""
        now = _aware(now)
        self._require_active()
        self._emit(ev.ClientRevoked, client_id=self.id, reason=_required_text(reason, "reason"),
                   revoked_by=_required_text(revoked_by, "revoked_by", 64), revoked_at=now)

    # -- event handlers -------------------------------------------------------------------

    def when_ClientRegistered(self, d: dict[str, Any]) -> None:
        self.name = d["name"]
        self.department = d["department"]
        self.scopes = tuple(d["scopes"])
        self.jurisdiction = d["jurisdiction"]
        self.registered_by = d["registered_by"]
        self.registered_at = _at(d["registered_at"])

    def when_ClientSecretRotated(self, d: dict[str, Any]) -> None:
        self.previous_secret_id = d.get("previous_secret_id")
        until = d.get("previous_valid_until")
        self.previous_valid_until = _at(until) if until else None
        self.secret_id = d["secret_id"]
        self.rotations += 1

    def when_ClientRevoked(self, d: dict[str, Any]) -> None:
        self.revoked = True
        self.revoked_at = _at(d["revoked_at"])
        self.revocation_reason = d["reason"]


# =============================================================================================
# Access audit
# =============================================================================================

_RECORD_REF = re.compile(f"^(?:{ev.RECORD_REF_PATTERN})$")


def _route(route: Any) -> str:
    return _required_text(route, "route", 300)


def personal_data_accessed(principal: Principal, *, route: str, purpose: str, records: Iterable[str], count: int,
                           now: datetime, access_id: str | None = None) -> ev.PersonalDataAccessed:
    """The audit event of a response that disclosed personal data (stream id: its ``access_id``).

    ``records`` are household or member ids or keyed hashes (duplicates dropped, order kept), at
    most 1000: a larger export is paged, one event per page. ``count`` is the number of people
    disclosed. A missing purpose is ``purpose_required``; anything that looks like an ID number or a
    name among the records is ``invalid_record_ref`` (422)."""
    now = _aware(now)
    if not isinstance(purpose, str) or not purpose.strip():
        raise DomainError("purpose_required", "reading personal data needs a stated purpose", field="purpose")
    if isinstance(records, str) or not isinstance(records, Iterable):
        raise DomainError("invalid_record_ref", "records must be a list of ids", field="records")
    refs = list(dict.fromkeys(records))
    if not refs:
        raise DomainError("missing_field", "at least one record is required", field="records")
    if not all(isinstance(r, str) and _RECORD_REF.fullmatch(r) for r in refs):
        raise DomainError("invalid_record_ref", "records are household or member ids or keyed hashes, never ID "
                          "numbers or names", field="records")
    if len(refs) > ev.MAX_RECORDS:
        raise DomainError("too_many_records", f"one access record names at most {ev.MAX_RECORDS} records",
                          field="records")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DomainError("invalid_count", "count is the number of people disclosed (at least 1)", field="count")
    return ev.PersonalDataAccessed(
        access_id=access_id or str(uuid.uuid4()), principal_type=principal.type, principal_id=principal.id,
        route=_route(route), purpose=_required_text(purpose, "purpose", 500), records=refs, count=count,
        accessed_at=now)


def access_denied(principal: Principal, *, route: str, reason: str, now: datetime, action: str | None = None,
                  access_id: str | None = None) -> ev.AccessDenied:
    """The audit event of an authenticated principal refused by authorisation (``reason``: the
    refusal's code, e.g. ``forbidden`` or ``outside_jurisdiction``)."""
    now = _aware(now)
    if action is not None:
        _known_action(action)
    return ev.AccessDenied(access_id=access_id or str(uuid.uuid4()), principal_type=principal.type,
                           principal_id=principal.id, route=_route(route), action=action, reason=reason,
                           denied_at=now)
