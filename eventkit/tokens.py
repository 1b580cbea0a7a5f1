"""Tokens of the gateway: JWT access tokens, opaque refresh tokens, internal identity tokens. Pure, stdlib only.

JWTs (RFC 7519) are compact JWS (RFC 7515) signed with HMAC-SHA256 (``HS256``,
RFC 7518 §3.2), with the header ``{"alg": "HS256", "typ": "JWT", "kid": ...}``.
Verification (``decode``, ``verify_token``) accepts HS256 only: ``none`` and
every other algorithm are refused whatever the token says, so a token cannot
choose how it is checked. It also refuses a ``crit`` header, duplicate JSON
members (RFC 7519 §4), non-canonical base64url and tokens over 8 KiB; compares
signatures in constant time; and checks ``iss``, ``aud``, ``exp``, ``nbf`` and
``iat`` with a leeway of 30 seconds for clock skew between hosts.

Keys (``Keyring``): each key has an id (``kid``, in the token header) and at
least 32 random bytes (RFC 7518 §3.2: a key as long as the hash output). New
tokens are signed with the ``current`` key; every key of the ring verifies. To
rotate, add the new key and make it current; drop the old key once the longest
lifetime of the tokens it signed has passed (15 minutes for access tokens).

Access tokens (``issue_access_token``, audience ``tpa-api``, 15 minutes):
    ``iss``, ``sub`` (user or client id), ``aud``, ``iat``, ``nbf``, ``exp``,
    ``jti`` (random, for revocation lists), ``principal_type``, ``roles``,
    ``level``, ``jurisdiction``, ``scopes`` and, for a login session, ``sid``
    (the session id its refresh token belongs to, for logout).
    ``principal_from_claims`` turns verified claims back into a ``Principal``.

Refresh tokens (``issue_refresh_token``): opaque, not JWTs. A refresh token is
    ``rt_`` and 32 random bytes (base64url); the gateway stores only its SHA-256
    (``RefreshToken.token_hash``, a lookup key) with the session id and the
    session's end. Opaque tokens can be revoked at once (logout, deactivation,
    role change) by deleting or marking the row, carry no readable claims, and
    their use is rotated: ``rotate_refresh_token`` checks a token and issues its
    successor in the same session (the old one is then marked used). A used
    token presented again means it was stolen: ``refresh_token_reused`` tells
    the gateway to revoke the whole session. A session ends 8 hours after login
    whatever the refreshes (its successors keep the first token's expiry).
    Refresh tokens are for users only; client systems authenticate again with
    their credentials (RFC 6749 §4.4.3).

Internal identity tokens (``internal_token_for``, ``verify_internal_token``):
    what the gateway forwards to the services in ``X-TPA-Identity`` instead of
    the asserted ``X-TPA-Actor``/``Role``/``Level``/``Jurisdiction`` headers
    (ADR 0010): a JWT with audience ``tpa-internal``, a 60-second lifetime
    (checked on verification too) and the principal's claims, signed with a
    separate keyring that only the gateway and the services hold, so a
    client's access token is never accepted as an internal one and a service
    compromised through its key cannot mint tokens for the public API.

Errors are ``TokenError`` (a ``DomainError`` with HTTP status 401) with codes
``invalid_token`` (malformed, bad signature, unsupported algorithm, unknown key,
missing or inconsistent claims; ``details['reason']`` says which),
``token_expired``, ``token_not_yet_valid``, ``invalid_audience``,
``invalid_issuer``, ``token_revoked`` and ``refresh_token_reused``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Mapping

from eventkit.errors import DomainError

from .principal import Principal, b64url_decode, b64url_encode

ALGORITHM = "HS256"
TOKEN_TYPE = "JWT"
API_AUDIENCE = "tpa-api"
INTERNAL_AUDIENCE = "tpa-internal"
DEFAULT_ISSUER = "tpa-gateway"
ACCESS_TOKEN_LIFETIME = timedelta(minutes=15)
MAX_ACCESS_TOKEN_LIFETIME = timedelta(hours=1)
REFRESH_TOKEN_LIFETIME = timedelta(hours=8)
INTERNAL_TOKEN_LIFETIME = timedelta(seconds=60)
LEEWAY = timedelta(seconds=30)
MAX_TOKEN_LENGTH = 8192
MIN_KEY_BYTES = 32
INTERNAL_IDENTITY_HEADER = "X-TPA-Identity"
REFRESH_TOKEN_PREFIX = "rt_"
_REFRESH_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_REFRESH = re.compile(r"^rt_[A-Za-z0-9_-]{43}$")


class TokenError(DomainError):
    """A token was refused (HTTP 401). ``code`` is for the client; ``details['reason']`` for the logs."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(code, message, 401, **details)


def _invalid(reason: str, message: str = "the token is not valid") -> TokenError:
    return TokenError("invalid_token", message, reason=reason)


# --- encoding -------------------------------------------------------------------------------

def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting is an attack, not a crash
        raise _invalid(f"malformed_{what}", f"the token's {what} is not a JSON object") from exc
    if not isinstance(value, dict):
        raise _invalid(f"malformed_{what}", f"the token's {what} is not a JSON object")
    return value


# --- keys -------------------------------------------------------------------------------------

def generate_key() -> bytes:
    """A new random HS256 key (32 bytes)."""
    return secrets.token_bytes(MIN_KEY_BYTES)


@dataclass(frozen=True)
class Keyring:
    """Signing keys by key id; ``current`` signs, all verify. Keys are hidden from ``repr``."""

    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping) or not self.keys:
            raise ValueError("a keyring needs at least one key")
        copied: dict[str, bytes] = {}
        for kid, key in self.keys.items():
            if not isinstance(kid, str) or not _KID.fullmatch(kid):
                raise ValueError(f"key id {kid!r} must be 1-64 letters, digits, '.', '_' or '-'")
            if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"key {kid!r} must be at least {MIN_KEY_BYTES} bytes")
            copied[kid] = bytes(key)
        if self.current not in copied:
            raise ValueError(f"the current key {self.current!r} is not in the keyring")
        object.__setattr__(self, "keys", MappingProxyType(copied))

    def signing_key(self) -> tuple[str, bytes]:
        return self.current, self.keys[self.current]

    def key(self, kid: Any) -> bytes | None:
        return self.keys.get(kid) if isinstance(kid, str) else None

    def shares_key_with(self, other: Keyring) -> bool:
        """Whether any secret is in both rings (the API and internal keyrings must not share one)."""
        mine = set(self.keys.values())
        return any(key in mine for key in other.keys.values())


# --- signing and verifying ----------------------------------------------------------------------

def _sign(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def encode(claims: Mapping[str, Any], keyring: Keyring) -> str:
    """A compact JWS of ``claims`` signed with the keyring's current key (no claim is added or checked)."""
    kid, key = keyring.signing_key()
    header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": kid}
    signing_input = f"{b64url_encode(_json_bytes(header))}.{b64url_encode(_json_bytes(claims))}"
    return f"{signing_input}.{b64url_encode(_sign(key, signing_input.encode('ascii')))}"


def decode(token: Any, keyring: Keyring) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a token whose algorithm is HS256 and whose signature verifies with the key
    its ``kid`` names. Claims are not checked here (see ``verify_token``)."""
    if not isinstance(token, str) or not token:
        raise _invalid("missing", "no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid("too_long", "the token is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _invalid("malformed", "the token is not a signed JWT (three base64url parts)")
    try:
        header_raw = b64url_decode(parts[0])
        payload_raw = b64url_decode(parts[1])
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise _invalid("malformed", "the token is not base64url") from exc
    header = _json_object(header_raw, "header")
    if header.get("alg") != ALGORITHM:
        raise _invalid("unsupported_algorithm", f"only {ALGORITHM} tokens are accepted")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != TOKEN_TYPE):
        raise _invalid("unsupported_type", "the token is not a JWT")
    if "crit" in header:
        raise _invalid("unsupported_header", "the token has critical header parameters")
    key = keyring.key(header.get("kid"))
    if key is None:
        raise _invalid("unknown_key", "the token was signed with an unknown key")
    expected = _sign(key, f"{parts[0]}.{parts[1]}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        raise _invalid("bad_signature")
    return header, _json_object(payload_raw, "claims")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(f"missing_{name}", f"the token has no valid {name} claim")
    return float(value)


def _timestamp(now: Any) -> float:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.timestamp()


def verify_token(token: Any, keyring: Keyring, *, audience: str, now: datetime, issuer: str = DEFAULT_ISSUER,
                 leeway: timedelta = LEEWAY, max_lifetime: timedelta | None = None) -> dict[str, Any]:
    """The claims of a valid token: signature (``decode``), issuer, audience (a string or a list
    containing ``audience``), ``exp``/``nbf``/``iat`` against ``now`` give or take ``leeway``,
    ``sub`` and ``jti`` present, and (when given) ``exp - iat`` at most ``max_lifetime``."""
    at = _timestamp(now)
    slack = leeway.total_seconds()
    _, claims = decode(token, keyring)
    exp, nbf, iat = (_numeric_date(claims, n) for n in ("exp", "nbf", "iat"))
    if claims.get("iss") != issuer:
        raise TokenError("invalid_issuer", "the token was not issued by this gateway")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in [a for a in audiences if isinstance(a, str)]:
        raise TokenError("invalid_audience", f"the token is not meant for {audience}")
    for name in ("sub", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise _invalid(f"missing_{name}", f"the token has no {name} claim")
    if at >= exp + slack:
        raise TokenError("token_expired", "the token has expired",
                         expired_at=datetime.fromtimestamp(exp, timezone.utc).isoformat())
    if at + slack < nbf or at + slack < iat:
        raise TokenError("token_not_yet_valid", "the token is not valid yet")
    if exp < iat or nbf > exp:
        raise _invalid("inconsistent_times", "the token's times are inconsistent")
    if max_lifetime is not None and exp - iat > max_lifetime.total_seconds():
        raise _invalid("lifetime_too_long", "the token lives longer than allowed")
    return claims


# --- principals in claims -------------------------------------------------------------------------

def principal_claims(principal: Principal) -> dict[str, Any]:
    """The claims that carry a principal (besides ``sub``, its id)."""
    return {"principal_type": principal.type, "roles": list(principal.roles), "level": principal.level,
            "jurisdiction": principal.jurisdiction, "scopes": list(principal.scopes)}


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The principal of verified claims; ``invalid_token`` (reason ``invalid_claims``) if they do not
    describe a valid one (unknown role or scope, level not matching the jurisdiction, ...)."""
    try:
        roles, scopes = claims["roles"], claims["scopes"]
        if not isinstance(roles, list) or not isinstance(scopes, list):
            raise TypeError("roles and scopes must be lists")
        return Principal(claims["principal_type"], claims["sub"], tuple(roles), claims["level"],
                         claims["jurisdiction"], tuple(scopes))
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid("invalid_claims", "the token does not describe a valid principal") from exc


# --- access tokens ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class IssuedToken:
    """A signed token (hidden from ``repr``) with its id and validity."""

    token: str = field(repr=False)
    jti: str
    issued_at: datetime
    expires_at: datetime

    @property
    def expires_in(self) -> int:
        """Seconds of validity (OAuth 2.0 ``expires_in``)."""
        return int((self.expires_at - self.issued_at).total_seconds())


def _issue(principal: Principal, keyring: Keyring, *, now: datetime, issuer: str, audience: str,
           lifetime: timedelta, extra: Mapping[str, Any] | None = None) -> IssuedToken:
    if not isinstance(principal, Principal):
        raise TypeError("principal must be a Principal")
    if lifetime <= timedelta(0):
        raise ValueError("a token lifetime must be positive")
    iat = int(_timestamp(now))
    exp = iat + max(1, int(lifetime.total_seconds()))
    jti = secrets.token_urlsafe(16)
    claims: dict[str, Any] = {"iss": issuer, "sub": principal.id, "aud": audience, "iat": iat, "nbf": iat,
                              "exp": exp, "jti": jti, **principal_claims(principal)}
    for key, value in (extra or {}).items():
        if value is not None:
            claims[key] = value
    return IssuedToken(encode(claims, keyring), jti, datetime.fromtimestamp(iat, timezone.utc),
                       datetime.fromtimestamp(exp, timezone.utc))


def issue_access_token(principal: Principal, keyring: Keyring, *, now: datetime, issuer: str = DEFAULT_ISSUER,
                       audience: str = API_AUDIENCE, lifetime: timedelta = ACCESS_TOKEN_LIFETIME,
                       session_id: str | None = None) -> IssuedToken:
    """A short-lived access token for the public API (15 minutes by default)."""
    if lifetime > MAX_ACCESS_TOKEN_LIFETIME:
        raise ValueError("access tokens live at most an hour")
    return _issue(principal, keyring, now=now, issuer=issuer, audience=audience, lifetime=lifetime,
                  extra={"sid": session_id})


def verify_access_token(token: Any, keyring: Keyring, *, now: datetime, issuer: str = DEFAULT_ISSUER,
                        audience: str = API_AUDIENCE, leeway: timedelta = LEEWAY) -> tuple[Principal, dict[str, Any]]:
    """The principal and the claims (``jti``, ``sid`` for revocation checks) of a valid access token
    (one living longer than an hour is refused even with a valid signature)."""
    claims = verify_token(token, keyring, audience=audience, now=now, issuer=issuer, leeway=leeway,
                          max_lifetime=MAX_ACCESS_TOKEN_LIFETIME)
    return principal_from_claims(claims), claims


# --- refresh tokens ----------------------------------------------------------------------------------

def hash_refresh_token(token: str) -> str:
    """SHA-256 (64 hex digits) of a refresh token: what the gateway stores and looks tokens up by."""
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RefreshToken:
    """What the gateway stores of a refresh token (never the token itself). ``session_id`` is shared by
    a login's successive tokens; ``expires_at`` is the session's end. Set ``used_at`` when the token is
    exchanged and ``revoked_at`` when its session is ended."""

    token_hash: str
    subject: str
    session_id: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class IssuedRefreshToken:
    """A new refresh token: ``token`` goes to the client once (hidden from ``repr``), ``record`` to storage."""

    token: str = field(repr=False)
    record: RefreshToken


def _new_refresh(subject: str, session_id: str, now: datetime, expires_at: datetime) -> IssuedRefreshToken:
    token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(_REFRESH_BYTES)
    return IssuedRefreshToken(token, RefreshToken(hash_refresh_token(token), subject, session_id, now, expires_at))


def issue_refresh_token(principal: Principal, *, now: datetime,
                        lifetime: timedelta = REFRESH_TOKEN_LIFETIME) -> IssuedRefreshToken:
    """The first refresh token of a new login session of a user (8 hours by default)."""
    _timestamp(now)
    if not isinstance(principal, Principal) or principal.type != "user":
        raise ValueError("refresh tokens are issued to users only")
    if not timedelta(0) < lifetime <= timedelta(days=1):
        raise ValueError("a session lasts more than nothing and at most a day")
    now = now.astimezone(timezone.utc)
    return _new_refresh(principal.subject, secrets.token_urlsafe(16), now, now + lifetime)


def verify_refresh_token(token: Any, record: RefreshToken | None, *, now: datetime) -> RefreshToken:
    """Check a presented refresh token against the record found by its hash (None when none was).

    ``invalid_token`` (unknown or malformed), ``token_revoked`` (its session was ended),
    ``refresh_token_reused`` (already exchanged: revoke the whole session) or ``token_expired``."""
    at = _timestamp(now)
    if not isinstance(token, str) or not _REFRESH.fullmatch(token) or record is None:
        raise _invalid("unknown_refresh_token")
    if not hmac.compare_digest(hash_refresh_token(token), record.token_hash):
        raise _invalid("unknown_refresh_token")
    if record.revoked_at is not None:
        raise TokenError("token_revoked", "the session was ended")
    if record.used_at is not None:
        raise TokenError("refresh_token_reused", "the refresh token was already used: the session is ended",
                         session_id=record.session_id)
    if at >= record.expires_at.timestamp():
        raise TokenError("token_expired", "the session has expired", expired_at=record.expires_at.isoformat())
    return record


def rotate_refresh_token(token: Any, record: RefreshToken | None, *, now: datetime) -> IssuedRefreshToken:
    """Exchange a valid refresh token for its successor in the same session (same end). The caller
    marks ``record`` used and stores the successor in one transaction."""
    valid = verify_refresh_token(token, record, now=now)
    return _new_refresh(valid.subject, valid.session_id, now.astimezone(timezone.utc), valid.expires_at)


# --- internal identity tokens ------------------------------------------------------------------------

ANONYMOUS = "anonymous"
"""The ``sub`` and ``principal_type`` of an internal token for a request nobody signed in to (a
public route: notice boards, objections, household cards). It proves the call came through the
gateway, and names no one."""


def internal_token_for(principal: Principal | None, keyring: Keyring, *, now: datetime,
                       issuer: str = DEFAULT_ISSUER, lifetime: timedelta = INTERNAL_TOKEN_LIFETIME) -> str:
    """The ``X-TPA-Identity`` token the gateway forwards to a service for one request (60 seconds,
    audience ``tpa-internal``, signed with the internal keyring); ``principal=None`` for an
    anonymous caller of a public route."""
    if lifetime > INTERNAL_TOKEN_LIFETIME:
        raise ValueError(f"internal tokens live at most {INTERNAL_TOKEN_LIFETIME.total_seconds():.0f} seconds")
    if principal is None:
        iat = int(_timestamp(now))
        claims = {"iss": issuer, "sub": ANONYMOUS, "aud": INTERNAL_AUDIENCE, "iat": iat, "nbf": iat,
                  "exp": iat + max(1, int(lifetime.total_seconds())), "jti": secrets.token_urlsafe(16),
                  "principal_type": ANONYMOUS}
        return encode(claims, keyring)
    return _issue(principal, keyring, now=now, issuer=issuer, audience=INTERNAL_AUDIENCE, lifetime=lifetime).token


def verify_internal_token(token: Any, keyring: Keyring, *, now: datetime, issuer: str = DEFAULT_ISSUER,
                          leeway: timedelta = LEEWAY, allow_anonymous: bool = False) -> Principal | None:
    """The principal of a valid ``X-TPA-Identity`` token (audience ``tpa-internal``, lifetime at most
    60 seconds, signed with the internal keyring). An anonymous token gives ``None`` when
    ``allow_anonymous``, and ``invalid_token`` otherwise."""
    claims = verify_token(token, keyring, audience=INTERNAL_AUDIENCE, now=now, issuer=issuer, leeway=leeway,
                          max_lifetime=INTERNAL_TOKEN_LIFETIME)
    if claims.get("principal_type") == ANONYMOUS and claims.get("sub") == ANONYMOUS:
        if allow_anonymous:
            return None
        raise _invalid("anonymous", "the token names no principal")
    return principal_from_claims(claims)


# --- keyrings from configuration ---------------------------------------------------------------------

def parse_keyring(text: Any, what: str = "keyring") -> Keyring:
    """A keyring from its configuration form ``kid=base64url-key[,kid=base64url-key...]``: the first
    key signs, all verify (list the new key first to rotate). ``ValueError`` names what is wrong
    without showing a key."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} is empty")
    keys: dict[str, bytes] = {}
    current = None
    for part in text.split(","):
        kid, sep, encoded = part.strip().partition("=")
        if not sep:
            raise ValueError(f"{what}: each entry is kid=base64url-key")
        try:
            key = b64url_decode(encoded.strip().rstrip("="))
        except ValueError:
            raise ValueError(f"{what}: key {kid!r} is not base64url") from None
        if kid in keys:
            raise ValueError(f"{what}: key id {kid!r} appears twice")
        keys[kid] = key
        current = current or kid
    return Keyring(keys, current)


def keyring_text(kid: str, key: bytes | None = None) -> str:
    """The configuration form of a one-key keyring (a new random key unless ``key`` is given)."""
    return f"{kid}={b64url_encode(key if key is not None else generate_key())}"
