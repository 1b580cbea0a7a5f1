"""Gateway identity core: passwords, users, client systems, authorisation, tokens. Pure code, no infrastructure."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from contracts.topics import EVENT_MODELS
from eventkit.errors import DomainError
from eventkit.events import RecordedEvent
from services.gateway import identity as idn
from eventkit import tokens as tk
from services.gateway.identity import (
    ACTIONS,
    CLIENT_ACTIONS,
    ROLE_ACTIONS,
    ROLE_LEVELS,
    ROLES,
    SCOPES,
    Client,
    LockoutPolicy,
    Principal,
    ScryptParams,
    User,
    allowed,
    covers,
    require,
)
from eventkit.tokens import Keyring, TokenError
from tests.domain_helpers import raises

NOW = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
FAST = ScryptParams(n=2 ** 10, r=8, p=1)  # cheap hashes for tests that are not about the cost
PROVINCE = "620000000000"
CITY = "620100000000"
COUNTY = "620102000000"
OTHER_COUNTY = "620103000000"
TOWNSHIP = "620102001000"
VILLAGE = "620102001001"
OTHER_VILLAGE = "620103002004"  # a village of the other county
GOOD_PASSWORD = "Gansu-Lanzhou-2025"


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return NOW + timedelta(minutes=minutes, seconds=seconds)


def new_user(user_id: str = "u-17", *, username: str = "gs0102-017", roles: tuple[str, ...] = ("cadre",),
             level: str = "village", jurisdiction: str = VILLAGE, password: str | None = GOOD_PASSWORD) -> User:
    """A user created (and given a password) an hour before ``NOW``."""
    user = User(user_id)
    user.create(username=username, roles=list(roles), level=level, jurisdiction=jurisdiction,
                created_by="u-admin", now=at(-60))
    if password is not None:
        user.set_password(password, set_by="u-admin", now=at(-60), params=FAST)
    return user


def new_client(client_id: str = "edu-aid", *, department: str = "education",
               scopes: tuple[str, ...] = ("comparison:education", "status:read"),
               jurisdiction: str = PROVINCE) -> tuple[Client, idn.IssuedSecret]:
    client = Client(client_id)
    issued = client.register(name="省学生资助管理系统", department=department, scopes=list(scopes),
                             jurisdiction=jurisdiction, registered_by="u-admin", now=NOW)
    return client, issued


def replayed(agg: Any) -> Any:
    """A fresh aggregate of the same class folded from the pending events (as the repository would)."""
    fresh = type(agg)(agg.id)
    for i, e in enumerate(agg.pending, start=1):
        fresh.replay(RecordedEvent(global_position=i, event_id=e.event_id, stream_id=agg.id,
                                   stream_type=agg.stream_type, version=i, event_type=e.event_type,
                                   schema_version=e.schema_version, data=json.loads(json.dumps(e.data)),
                                   metadata={}, occurred_at=NOW, recorded_at=NOW))
    return fresh


def state(agg: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(agg).items() if k not in ("pending", "version")}


def types_of(agg: Any) -> list[str]:
    return [e.event_type for e in agg.pending]


# =============================================================================================
# Password hashing
# =============================================================================================

def test_hash_password_uses_documented_scrypt_format_and_parameters() -> None:
    stored = idn.hash_password(GOOD_PASSWORD)
    prefix, n, r, p, salt, digest = stored.split("$")
    assert (prefix, n, r, p) == ("scrypt", str(2 ** 15), "8", "1")
    assert len(base64.urlsafe_b64decode(salt + "=")) == 32
    assert len(base64.urlsafe_b64decode(digest + "==")) == 64
    assert "=" not in stored
    # the documented derivation, recomputed independently
    raw_salt = base64.urlsafe_b64decode(salt + "=")
    expected = hashlib.scrypt(GOOD_PASSWORD.encode(), salt=raw_salt, n=2 ** 15, r=8, p=1, dklen=64,
                              maxmem=64 * 1024 * 1024)
    assert base64.urlsafe_b64decode(digest + "==") == expected
    assert idn.verify_password(GOOD_PASSWORD, stored)
    assert not idn.verify_password(GOOD_PASSWORD + "x", stored)
    assert not idn.needs_rehash(stored)
    assert idn.hash_password(GOOD_PASSWORD, FAST) != idn.hash_password(GOOD_PASSWORD, FAST)  # random salt


def test_verify_password_normalises_unicode_and_refuses_non_strings() -> None:
    stored = idn.hash_password("Ｇａｎｓｕ－２０２５－ｐｗ", FAST)  # full-width forms
    assert idn.verify_password("Gansu-2025-pw", stored)
    assert not idn.verify_password(None, stored)
    assert not idn.verify_password("", stored)
    assert not idn.verify_password(b"Gansu-2025-pw", stored)
    assert not idn.verify_password("x" * 10_000, stored)
    with pytest.raises(ValueError):
        idn.hash_password("")


@pytest.mark.parametrize("stored", [
    "",
    "bcrypt$2b$12$abc",
    "scrypt$1000$8$1$" + "A" * 43 + "$" + "A" * 86,            # n not a power of two
    "scrypt$2097152$8$1$" + "A" * 43 + "$" + "A" * 86,         # n above the bound (DoS guard)
    "scrypt$1024$0$1$" + "A" * 43 + "$" + "A" * 86,            # r out of bounds
    "scrypt$1024$8$1$" + "A" * 10 + "$" + "A" * 86,            # salt too short
    "scrypt$1024$8$1$" + "A" * 43 + "=$" + "A" * 86,           # padding is not part of the format
    "scrypt$1024$8$1$" + "A" * 43 + "$" + "A+" * 43,           # not base64url
    "scrypt$-1024$8$1$" + "A" * 43 + "$" + "A" * 86,
    "scrypt$1024$8$1$" + "A" * 43,
])
def test_malformed_stored_hashes_are_errors_not_wrong_passwords(stored: str) -> None:
    with pytest.raises(ValueError):
        idn.verify_password(GOOD_PASSWORD, stored)
    assert idn.needs_rehash(stored)


def test_needs_rehash_when_parameters_change() -> None:
    weak = idn.hash_password(GOOD_PASSWORD, FAST)
    assert idn.needs_rehash(weak)
    assert not idn.needs_rehash(weak, FAST)
    assert idn.needs_rehash(weak, ScryptParams(2 ** 10, 8, 2))
    with pytest.raises(ValueError):
        ScryptParams(2 ** 21, 8, 1)
    with pytest.raises(ValueError):
        ScryptParams(2 ** 20, 32, 1)  # 4 GiB of memory


def test_dummy_verify_is_always_false() -> None:
    assert idn.dummy_verify(GOOD_PASSWORD) is False
    assert idn.dummy_verify(None) is False


# =============================================================================================
# Password policy
# =============================================================================================

@pytest.mark.parametrize("password, code", [
    ("Short1!x", "password_too_short"),
    ("Ab1-" * 33, "password_too_long"),
    ("Good\x00Password12", "password_invalid_characters"),
    ("horsebatterystaple", "password_single_class"),
    ("我的密码是一句很长的中文句子", "password_single_class"),
    ("aaaaaaaaaaa1", "password_repetitive"),
    ("abababab1212", "password_repetitive"),
    ("Password2024!", "password_common"),
    ("P@ssw0rd1234", "password_common"),
    ("1qaz2wsx3edc", "password_common"),
    ("Abcdefghijkl", "password_common"),
    ("Qwertyuiop12", "password_common"),
    ("!!Woaini1314!!", "password_common"),
    ("Fupin@20252025", "password_common"),
    ("my-GS0102-017-pass", "password_contains_username"),
])
def test_password_policy_codes(password: str, code: str) -> None:
    assert code in idn.password_problems(password, "gs0102-017")
    with pytest.raises(DomainError) as info:
        idn.check_password(password, "gs0102-017")
    assert info.value.status == 422
    assert info.value.code == idn.password_problems(password, "gs0102-017")[0]
    assert code in info.value.details["violations"]


@pytest.mark.parametrize("password", [
    GOOD_PASSWORD, "correct horse battery", "蓝天白云Gansu2025", "Tq8#vW2!mZ4p", "z" * 11 + "Ab1x",
])
def test_password_policy_accepts_reasonable_passwords(password: str) -> None:
    assert idn.password_problems(password, "gs0102-017") == []
    idn.check_password(password, "gs0102-017")


def test_password_policy_lists_every_violation_and_refuses_reuse() -> None:
    assert idn.password_problems("aaaa") == ["password_too_short", "password_single_class", "password_repetitive"]
    assert idn.password_problems(None) == ["password_too_short"]
    previous = idn.hash_password(GOOD_PASSWORD, FAST)
    assert idn.password_problems(GOOD_PASSWORD, previous_hash=previous) == ["password_reused"]
    assert idn.password_problems("Another-Pass-2025", previous_hash=previous) == []


# =============================================================================================
# Usernames and regions
# =============================================================================================

def test_usernames_are_normalised_and_checked() -> None:
    assert idn.normalise_username("  GS0102.Zhao_Li-2 ") == "gs0102.zhao_li-2"
    for bad in ("ab", "1abc", "13800138000", "62010219900101123x", "a..b", "abc_", "-abc", "名字名字",
                "a" * 33, "has space", None, 12345):
        with raises("invalid_username", 422):
            idn.normalise_username(bad)
    with raises("username_reserved", 422):
        idn.normalise_username("Admin")


def test_covers_uses_the_region_prefix_rule() -> None:
    assert covers(COUNTY, VILLAGE)
    assert covers("620102", VILLAGE)                # 6-digit county code
    assert covers(TOWNSHIP, VILLAGE)
    assert covers(PROVINCE, OTHER_VILLAGE)
    assert covers(CITY, OTHER_COUNTY)               # any region, not only villages
    assert covers(VILLAGE, VILLAGE)
    assert not covers(COUNTY, OTHER_VILLAGE)
    assert not covers(VILLAGE, "620102001002")
    assert not covers(TOWNSHIP, COUNTY)             # a parent is not within its child
    assert not covers(COUNTY, "6201020010")         # malformed codes are covered by nothing
    assert not covers(COUNTY, None)
    assert not covers(COUNTY, "620102001a01")
    assert covers("441900003000", "441900003001")   # township of a city without counties (Dongguan)
    assert not covers("441900003000", "441900004001")
    with raises("invalid_jurisdiction", 422):
        covers("62", VILLAGE)
    with raises("invalid_jurisdiction", 422):
        covers("000000000000", VILLAGE)
    assert idn.region_level("620102") == "county"
    assert idn.region_code(" 620102 ") == COUNTY


# =============================================================================================
# Users
# =============================================================================================

def test_create_user_records_a_normalised_account() -> None:
    user = User("u-9")
    user.create(username=" GS0102-009 ", roles=["information_officer", "cadre", "cadre"], level="township",
                jurisdiction=TOWNSHIP, created_by="u-admin", now=NOW)
    assert types_of(user) == ["UserCreated"]
    data = user.pending[0].data
    assert data == {"user_id": "u-9", "username": "gs0102-009", "roles": ["cadre", "information_officer"],
                    "level": "township", "jurisdiction": TOWNSHIP, "created_by": "u-admin",
                    "created_at": "2025-03-01T08:00:00Z"}
    county = User("u-10")
    county.create(username="county-co", roles=["county_office"], level="county", jurisdiction="620102",
                  created_by="u-admin", now=NOW)
    assert county.jurisdiction == COUNTY
    assert user.active and not user.has_password
    with raises("user_exists", 409):
        user.create(username="other", roles=["cadre"], level="village", jurisdiction=VILLAGE, created_by="u-a",
                    now=NOW)


@pytest.mark.parametrize("kwargs, code", [
    ({"roles": ["mayor"]}, "invalid_role"),
    ({"roles": []}, "invalid_roles"),
    ({"roles": "cadre"}, "invalid_roles"),
    ({"roles": ["administrator", "county_office"], "level": "county", "jurisdiction": COUNTY}, "incompatible_roles"),
    ({"roles": ["auditor", "operator"], "level": "county", "jurisdiction": COUNTY}, "incompatible_roles"),
    ({"roles": ["township_reviewer"], "level": "county", "jurisdiction": COUNTY}, "role_level_mismatch"),
    ({"roles": ["village_committee"], "level": "township", "jurisdiction": TOWNSHIP}, "role_level_mismatch"),
    ({"roles": ["administrator"], "level": "village", "jurisdiction": VILLAGE}, "role_level_mismatch"),
    ({"level": "county", "jurisdiction": VILLAGE}, "jurisdiction_level_mismatch"),
    ({"level": "village", "jurisdiction": COUNTY}, "jurisdiction_level_mismatch"),
    ({"level": "hamlet"}, "invalid_level"),
    ({"jurisdiction": "62010200100"}, "invalid_jurisdiction"),
    ({"jurisdiction": "620102001a01"}, "invalid_jurisdiction"),
    ({"username": "admin"}, "username_reserved"),
    ({"username": "13800138000"}, "invalid_username"),
    ({"created_by": " "}, "missing_field"),
])
def test_create_user_refuses_inconsistent_accounts(kwargs: dict[str, Any], code: str) -> None:
    args: dict[str, Any] = {"username": "gs0102-017", "roles": ["cadre"], "level": "village",
                            "jurisdiction": VILLAGE, "created_by": "u-admin", "now": NOW, **kwargs}
    user = User("u-17")
    with raises(code, 422):
        user.create(**args)
    assert not user.pending


def test_create_user_checks_id_and_time() -> None:
    with raises("invalid_user_id", 422):
        User("bad id").create(username="abc", roles=["cadre"], level="village", jurisdiction=VILLAGE,
                              created_by="u-a", now=NOW)
    with pytest.raises(ValueError):
        User("u-1").create(username="abc", roles=["cadre"], level="village", jurisdiction=VILLAGE,
                           created_by="u-a", now=datetime(2025, 3, 1))


def test_every_role_can_be_held_at_its_levels() -> None:
    codes = {"village": VILLAGE, "township": TOWNSHIP, "county": COUNTY, "city": CITY, "province": PROVINCE}
    assert set(ROLE_LEVELS) == set(ROLES)
    for role, levels in ROLE_LEVELS.items():
        for level in levels:
            user = User(f"u-{role}-{level}".replace("_", "-"))
            user.create(username=f"{role}.{level}".replace("_", "-"), roles=[role], level=level,
                        jurisdiction=codes[level], created_by="u-admin", now=NOW)
            assert user.principal().roles == (role,)


def test_set_password_records_no_hash_and_returns_it() -> None:
    user = new_user(password=None)
    hashed = user.set_password(GOOD_PASSWORD, set_by="u-admin", now=NOW, params=FAST)
    event = user.pending[-1]
    assert event.event_type == "UserPasswordSet"
    assert event.data == {"user_id": "u-17", "set_by": "u-admin", "temporary": True,
                          "set_at": "2025-03-01T08:00:00Z"}
    assert hashed not in json.dumps(event.data) and GOOD_PASSWORD not in json.dumps([e.data for e in user.pending])
    assert idn.verify_password(GOOD_PASSWORD, hashed)
    assert user.must_change_password
    own = user.set_password("My-Own-Choice-77", set_by="u-17", now=at(5), previous_hash=hashed, params=FAST)
    assert user.pending[-1].data["temporary"] is False and not user.must_change_password
    assert idn.verify_password("My-Own-Choice-77", own)
    with raises("password_reused", 422):
        user.set_password("My-Own-Choice-77", set_by="u-17", now=at(6), previous_hash=own, params=FAST)
    with raises("password_contains_username", 422, violations=["password_contains_username"]):
        user.set_password("Gs0102-017-Secret", set_by="u-17", now=at(6), params=FAST)
    with raises("password_too_short", 422):
        user.set_password("Ab1!", set_by="u-17", now=at(6), params=FAST)
    with raises("missing_field", 422):
        user.set_password(GOOD_PASSWORD, set_by="", now=at(6), params=FAST)
    with raises("user_not_found", 404):
        User("u-404").set_password(GOOD_PASSWORD, set_by="u-admin", now=NOW, params=FAST)


def test_set_password_uses_the_default_cost() -> None:
    hashed = new_user(password=None).set_password(GOOD_PASSWORD, set_by="u-admin", now=NOW)
    assert hashed.startswith("scrypt$32768$8$1$") and not idn.needs_rehash(hashed)


def test_login_before_a_password_is_set_is_refused() -> None:
    user = new_user(password=None)
    with raises("password_not_set", 403):
        user.check_login_allowed(NOW)
    with raises("user_not_found", 404):
        User("u-404").check_login_allowed(NOW)


def test_five_failures_within_fifteen_minutes_lock_the_account_for_fifteen_minutes() -> None:
    user = new_user()
    stored: tuple[datetime, ...] = ()
    for minute in range(4):
        result = user.record_login_failure(at(minute), stored)
        assert not result.locked
        stored = result.failures
    assert stored == tuple(at(m) for m in range(4))
    assert types_of(user) == ["UserCreated", "UserPasswordSet"]
    result = user.record_login_failure(at(10), stored)
    assert result.locked and result.locked_until == at(25) and result.failures == ()
    assert types_of(user)[-1] == "UserLockedOut"
    assert user.pending[-1].data == {"user_id": "u-17", "failures": 5, "locked_at": "2025-03-01T08:10:00Z",
                                     "until": "2025-03-01T08:25:00Z"}
    with raises("account_locked", 429, until="2025-03-01T08:25:00+00:00", retry_after_s=600):
        user.check_login_allowed(at(15))
    with raises("account_locked", 429, retry_after_s=1):
        user.record_login_success(at(24, 59.5))
    with raises("account_locked", 429):
        user.record_login_failure(at(24), ())
    assert user.is_locked(at(24, 59)) and not user.is_locked(at(25))
    # the lockout expires by itself, without an event
    assert user.record_login_success(at(25)) == idn.LoginSuccess(must_change_password=True)
    # failures from before the lockout never count again, even if the caller kept them
    result = user.record_login_failure(at(26), tuple(at(m) for m in range(10)) + (at(9),))
    assert result.failures == (at(26),)
    assert state(replayed(user)) == state(user)


def test_failures_outside_the_window_do_not_lock() -> None:
    user = new_user()
    stored: tuple[datetime, ...] = ()
    for minute in (0, 4, 8, 12, 16, 20, 24):  # never five within 15 minutes
        result = user.record_login_failure(at(minute), stored)
        assert not result.locked
        stored = result.failures
    assert stored == (at(12), at(16), at(20), at(24))
    assert "UserLockedOut" not in types_of(user)
    assert user.record_login_success(at(25)).failures == ()
    # a stricter policy
    strict = LockoutPolicy(max_failures=2, window=timedelta(minutes=5), duration=timedelta(hours=1))
    result = user.record_login_failure(at(30), [at(28)], strict)
    assert result.locked_until == at(90)
    with pytest.raises(ValueError):
        LockoutPolicy(max_failures=0)


def test_a_new_password_resets_the_failure_count() -> None:
    user = new_user()
    stored = user.record_login_failure(at(1), [at(0), at(0, 30), at(0, 40)]).failures
    assert len(stored) == 4
    user.set_password("Fresh-Start-2025", set_by="u-17", now=at(2), params=FAST)
    assert user.record_login_failure(at(3), stored).failures == (at(3),)


def test_unlock_lifts_a_running_lockout() -> None:
    user = new_user()
    user.record_login_failure(at(4), [at(0), at(1), at(2), at(3)])
    with raises("self_change", 403):
        user.unlock(unlocked_by="u-17", now=at(5))
    user.unlock(unlocked_by="u-admin", now=at(5))
    assert types_of(user)[-1] == "UserUnlocked" and not user.is_locked(at(5))
    user.check_login_allowed(at(5))
    # failures before the unlock do not count
    assert user.record_login_failure(at(6), [at(1), at(2), at(3), at(4)]).failures == (at(6),)
    with raises("not_locked", 409):
        user.unlock(unlocked_by="u-admin", now=at(7))
    assert user.lockouts == 1
    assert state(replayed(user)) == state(user)


def test_change_roles_moves_a_user_to_another_post() -> None:
    user = new_user(roles=("cadre", "village_committee"))
    user.change_roles(roles=["county_office"], level="county", jurisdiction="620102", changed_by="u-admin", now=at(1))
    assert user.pending[-1].data == {
        "user_id": "u-17", "roles": ["county_office"], "level": "county", "jurisdiction": COUNTY,
        "previous_roles": ["cadre", "village_committee"], "changed_by": "u-admin",
        "changed_at": "2025-03-01T08:01:00Z"}
    assert user.principal() == Principal("user", "u-17", ("county_office",), "county", COUNTY)
    user.change_roles(roles=["county_office", "information_officer"], changed_by="u-admin", now=at(2))
    assert user.level == "county" and user.roles == ("county_office", "information_officer")
    with raises("no_change", 409):
        user.change_roles(roles=["information_officer", "county_office"], changed_by="u-admin", now=at(3))
    with raises("role_level_mismatch", 422):
        user.change_roles(roles=["village_committee"], changed_by="u-admin", now=at(3))
    with raises("jurisdiction_level_mismatch", 422):
        user.change_roles(roles=["county_office"], jurisdiction=VILLAGE, changed_by="u-admin", now=at(3))
    with raises("self_change", 403):
        user.change_roles(roles=["county_office"], changed_by="u-17", now=at(3))
    assert state(replayed(user)) == state(user)


def test_deactivation_is_final() -> None:
    user = new_user()
    with raises("self_change", 403):
        user.deactivate(reason="leaving", deactivated_by="u-17", now=at(1))
    with raises("missing_field", 422):
        user.deactivate(reason=" ", deactivated_by="u-admin", now=at(1))
    user.deactivate(reason="调离扶贫岗位", deactivated_by="u-admin", now=at(1))
    assert types_of(user)[-1] == "UserDeactivated" and not user.active
    with raises("user_deactivated", 403):
        user.check_login_allowed(at(2))
    with raises("user_deactivated", 403):
        user.record_login_success(at(2))
    for command in (
        lambda: user.set_password(GOOD_PASSWORD, set_by="u-admin", now=at(2), params=FAST),
        lambda: user.unlock(unlocked_by="u-admin", now=at(2)),
        lambda: user.change_roles(roles=["resident_team"], changed_by="u-admin", now=at(2)),
        lambda: user.deactivate(reason="again", deactivated_by="u-admin", now=at(2)),
        user.principal,
    ):
        with raises("user_deactivated", 409):
            command()
    restored = replayed(user)
    assert state(restored) == state(user) and restored.deactivation_reason == "调离扶贫岗位"


def test_user_events_are_catalogued_contracts() -> None:
    user = new_user()
    user.record_login_failure(at(4), [at(0), at(1), at(2), at(3)])
    user.unlock(unlocked_by="u-admin", now=at(5))
    user.change_roles(roles=["resident_team"], changed_by="u-admin", now=at(6))
    user.deactivate(reason="x", deactivated_by="u-admin", now=at(7))
    for event in user.pending:
        model = EVENT_MODELS[(event.event_type, event.schema_version)]
        assert model.stream_type == "user" and model.topic == "tpa.gateway.user.v1"
        model.model_validate(event.data)


# =============================================================================================
# Client systems
# =============================================================================================

def test_register_client_issues_its_first_secret_once() -> None:
    client, issued = new_client()
    assert types_of(client) == ["ClientRegistered", "ClientSecretRotated"]
    assert client.pending[0].data == {
        "client_id": "edu-aid", "name": "省学生资助管理系统", "department": "education",
        "scopes": ["comparison:education", "status:read"], "jurisdiction": PROVINCE, "registered_by": "u-admin",
        "registered_at": "2025-03-01T08:00:00Z"}
    rotated = client.pending[1].data
    assert rotated["secret_id"] == issued.secret_id and rotated["previous_secret_id"] is None
    assert len(base64.urlsafe_b64decode(issued.secret + "=")) == 32
    everything = json.dumps([e.data for e in client.pending])
    assert issued.secret not in everything and issued.secret_hash not in everything
    assert issued.secret not in repr(issued) and issued.secret_hash not in repr(issued)
    assert idn.verify_client_secret(issued.secret, issued.secret_hash)
    assert not idn.verify_client_secret(issued.secret + "x", issued.secret_hash)
    assert client.authenticate(issued.secret, {issued.secret_id: issued.secret_hash}, at(1)) == issued.secret_id
    with raises("invalid_client", 401):
        client.authenticate("guess", {issued.secret_id: issued.secret_hash}, at(1))
    with raises("invalid_client", 401):
        client.authenticate(issued.secret, {}, at(1))
    with raises("invalid_client", 401):
        Client("nobody").authenticate(issued.secret, {issued.secret_id: issued.secret_hash}, at(1))
    with raises("client_exists", 409):
        client.register(name="again", department="education", scopes=["status:read"], jurisdiction=PROVINCE,
                        registered_by="u-admin", now=at(1))
    assert state(replayed(client)) == state(client)


@pytest.mark.parametrize("kwargs, code", [
    ({"department": "police"}, "invalid_department"),
    ({"scopes": []}, "invalid_scopes"),
    ({"scopes": "status:read"}, "invalid_scopes"),
    ({"scopes": ["status:write"]}, "invalid_scope"),
    ({"scopes": ["comparison:health_insurance"]}, "scope_department_mismatch"),
    ({"department": "other", "scopes": ["comparison:civil_affairs"]}, "scope_department_mismatch"),
    ({"jurisdiction": "62"}, "invalid_jurisdiction"),
    ({"name": ""}, "missing_field"),
])
def test_register_client_refuses_invalid_registrations(kwargs: dict[str, Any], code: str) -> None:
    args: dict[str, Any] = {"name": "系统", "department": "education", "scopes": ["comparison:education"],
                            "jurisdiction": PROVINCE, "registered_by": "u-admin", "now": NOW, **kwargs}
    client = Client("edu-aid")
    with raises(code, 422):
        client.register(**args)
    assert not client.pending


def test_client_secret_rotation_without_grace_ends_the_old_secret_at_once() -> None:
    client, first = new_client()
    stored = {first.secret_id: first.secret_hash}
    second = client.rotate_secret(rotated_by="u-admin", now=at(10))
    stored[second.secret_id] = second.secret_hash
    assert client.pending[-1].data["previous_secret_id"] == first.secret_id
    assert client.pending[-1].data["previous_valid_until"] is None
    assert client.valid_secret_ids(at(10)) == (second.secret_id,)
    assert client.authenticate(second.secret, stored, at(10)) == second.secret_id
    with raises("invalid_client", 401):
        client.authenticate(first.secret, stored, at(10))
    assert second.secret != first.secret and second.secret_id != first.secret_id


def test_client_secret_rotation_with_grace_keeps_the_old_secret_for_a_while() -> None:
    client, first = new_client()
    second = client.rotate_secret(rotated_by="u-admin", now=at(0), grace=timedelta(days=1))
    stored = {first.secret_id: first.secret_hash, second.secret_id: second.secret_hash}
    assert client.pending[-1].data["previous_valid_until"] == "2025-03-02T08:00:00Z"
    assert client.authenticate(first.secret, stored, at(60 * 24 - 1)) == first.secret_id
    assert client.authenticate(second.secret, stored, at(60 * 24 - 1)) == second.secret_id
    with raises("invalid_client", 401):
        client.authenticate(first.secret, stored, at(60 * 24))
    # a further rotation ends the grace of the older secret at once
    third = client.rotate_secret(rotated_by="u-admin", now=at(1), grace=timedelta(hours=2))
    stored[third.secret_id] = third.secret_hash
    assert client.valid_secret_ids(at(2)) == (third.secret_id, second.secret_id)
    with raises("invalid_client", 401):
        client.authenticate(first.secret, stored, at(2))
    for grace in (timedelta(days=8), timedelta(seconds=-1), 3600):
        with raises("invalid_grace", 422):
            client.rotate_secret(rotated_by="u-admin", now=at(3), grace=grace)  # type: ignore[arg-type]
    assert state(replayed(client)) == state(client)


def test_revoked_clients_cannot_authenticate_or_rotate() -> None:
    client, issued = new_client()
    client.revoke(reason="系统下线", revoked_by="u-admin", now=at(1))
    assert types_of(client)[-1] == "ClientRevoked" and client.valid_secret_ids(at(1)) == ()
    with raises("client_revoked", 401):
        client.authenticate(issued.secret, {issued.secret_id: issued.secret_hash}, at(2))
    with raises("client_revoked", 409):
        client.rotate_secret(rotated_by="u-admin", now=at(2))
    with raises("client_revoked", 409):
        client.revoke(reason="again", revoked_by="u-admin", now=at(2))
    with raises("client_revoked", 409):
        client.principal()
    with raises("client_not_found", 404):
        Client("nobody").rotate_secret(rotated_by="u-admin", now=at(2))
    restored = replayed(client)
    assert state(restored) == state(client) and restored.revocation_reason == "系统下线"
    for event in client.pending:
        EVENT_MODELS[(event.event_type, event.schema_version)].model_validate(event.data)


def test_client_ids_are_checked() -> None:
    with raises("invalid_client_id", 422):
        Client("edu aid").register(name="x", department="education", scopes=["status:read"],
                                   jurisdiction=PROVINCE, registered_by="u-admin", now=NOW)


def test_client_secret_hashes_are_checked() -> None:
    with pytest.raises(ValueError):
        idn.hash_client_secret("")
    for stored in ("", "sha512$abc", "sha256$" + "A" * 10, "sha256$" + "A" * 42 + "=", None):
        with pytest.raises(ValueError):
            idn.verify_client_secret("secret", stored)  # type: ignore[arg-type]
    good = idn.hash_client_secret("secret")
    assert not idn.verify_client_secret(None, good)
    assert not idn.verify_client_secret("x" * 1000, good)


def test_client_principal_has_scopes_and_the_level_of_its_jurisdiction() -> None:
    client, _ = new_client(department="civil_affairs", scopes=("inbound:deaths", "comparison:civil_affairs"),
                           jurisdiction="620100")
    principal = client.principal()
    assert principal == Principal("client", "edu-aid", (), "city", CITY,
                                  ("comparison:civil_affairs", "inbound:deaths"))
    assert principal.subject == "client:edu-aid"


# =============================================================================================
# Principals and authorisation
# =============================================================================================

def user_principal(role: str, level: str, jurisdiction: str, user_id: str = "u-1") -> Principal:
    return Principal("user", user_id, (role,), level, jurisdiction)


def test_authorisation_matrix_is_consistent() -> None:
    assert set(ROLE_ACTIONS) == set(ROLES)
    for actions in ROLE_ACTIONS.values():
        assert actions <= set(ACTIONS)
    assert CLIENT_ACTIONS == set(SCOPES) and CLIENT_ACTIONS <= set(ACTIONS)
    assert all(scope in ACTIONS for scope in SCOPES)
    # no user role takes a client's inbound or status actions; information officers reconcile the
    # register with the national system (they correct whichever side is wrong)
    inbound = {a for a in ACTIONS if a.startswith(("inbound:", "status:"))}
    assert all(not (actions & inbound) for actions in ROLE_ACTIONS.values())
    assert {r for r, actions in ROLE_ACTIONS.items() if "reconciliation:national" in actions} == {
        "information_officer"}
    # the workflow's reviewer roles and levels exist at the gateway
    from services.workflow.definitions import LEVELS as WORKFLOW_LEVELS
    from services.workflow.definitions import ROLES as WORKFLOW_ROLES
    from services.workflow.definitions import load_case_types
    assert WORKFLOW_ROLES <= set(ROLES) and set(WORKFLOW_LEVELS) <= set(idn.LEVELS)
    # every step of every shipped case type can be decided by some gateway user
    for case_type in load_case_types().values():
        for step in case_type.steps:
            assert step.level in ROLE_LEVELS[step.role], (case_type.id, step.id)
            assert "case:decide" in ROLE_ACTIONS[step.role]
    with pytest.raises(TypeError):
        ROLE_ACTIONS["cadre"] = frozenset()  # type: ignore[index]


@pytest.mark.parametrize("role, level, code, yes, no", [
    ("cadre", "village", VILLAGE, {"household:read", "household:read_personal", "household:write", "case:open",
                                   "case:decide", "attendance:record"},
     {"funds:pay", "users:manage", "audit:read", "alerts:manage"}),
    ("village_committee", "village", VILLAGE, {"funds:declare", "case:decide"}, {"funds:manage", "funds:review"}),
    ("information_officer", "county", COUNTY, {"funds:request", "household:write"}, {"funds:manage", "funds:pay"}),
    ("township_reviewer", "township", TOWNSHIP, {"funds:review", "case:decide", "alerts:manage"},
     {"household:write", "case:open"}),
    ("county_office", "county", COUNTY, {"funds:manage", "funds:pay", "comparison:education",
                                         "household:read_personal"}, {"household:write", "users:manage"}),
    ("operator", "city", CITY, {"alerts:manage", "household:read"}, {"household:read_personal", "case:decide"}),
    ("auditor", "province", PROVINCE, {"audit:read", "funds:read"}, {"household:read_personal", "funds:pay"}),
    ("administrator", "county", COUNTY, {"users:manage", "clients:manage", "audit:read"},
     {"household:read", "household:read_personal", "case:read"}),
])
def test_roles_allow_their_actions_only(role: str, level: str, code: str, yes: set[str], no: set[str]) -> None:
    principal = user_principal(role, level, code)
    assert all(allowed(principal, action) for action in yes)
    assert not any(allowed(principal, action) for action in no)
    assert principal.actions() == ROLE_ACTIONS[role]


def test_a_county_user_does_not_cover_another_countys_village() -> None:
    co = user_principal("county_office", "county", COUNTY)
    assert co.covers(VILLAGE) and not co.covers(OTHER_VILLAGE)
    assert allowed(co, "household:read_personal", region_code=VILLAGE)
    assert not allowed(co, "household:read_personal", region_code=OTHER_VILLAGE)
    require(co, "household:read", region_code=VILLAGE)
    with raises("outside_jurisdiction", 403, action="household:read", region_code=OTHER_VILLAGE):
        require(co, "household:read", region_code=OTHER_VILLAGE)
    with raises("forbidden", 403, action="funds:declare"):
        require(co, "funds:declare", region_code=VILLAGE)
    assert not allowed(co, "household:read", region_code="not-a-code")


def test_administrators_manage_users_within_their_jurisdiction() -> None:
    admin = user_principal("administrator", "county", COUNTY, "u-admin")
    assert allowed(admin, "users:manage", region_code=TOWNSHIP)
    assert allowed(admin, "users:manage", region_code=COUNTY)
    assert not allowed(admin, "users:manage", region_code=CITY)
    assert not allowed(admin, "users:manage", region_code=OTHER_COUNTY)


def test_clients_may_do_what_their_scopes_name() -> None:
    client, _ = new_client(scopes=("comparison:education", "status:read"))
    principal = client.principal()
    assert allowed(principal, "status:read", region_code=VILLAGE)
    assert allowed(principal, "comparison:education")
    assert not allowed(principal, "inbound:subsidies")
    assert not allowed(principal, "household:read")
    assert not allowed(principal, "household:read_personal")
    with raises("forbidden", 403):
        require(principal, "comparison:health_insurance")
    with raises("outside_jurisdiction", 403):
        require(principal, "status:read", region_code="630102001001")  # another province


def test_unknown_actions_are_programming_errors() -> None:
    principal = user_principal("cadre", "village", VILLAGE)
    with pytest.raises(ValueError):
        allowed(principal, "household:delete")
    with pytest.raises(ValueError):
        require(principal, "households:read")


@pytest.mark.parametrize("args", [
    ("robot", "u-1", ("cadre",), "village", VILLAGE, ()),
    ("user", "", ("cadre",), "village", VILLAGE, ()),
    ("user", "u 1", ("cadre",), "village", VILLAGE, ()),
    ("user", "u-1", ("mayor",), "village", VILLAGE, ()),
    ("user", "u-1", (), "village", VILLAGE, ()),
    ("user", "u-1", ("cadre",), "county", VILLAGE, ()),
    ("user", "u-1", ("county_office",), "village", VILLAGE, ()),
    ("user", "u-1", ("cadre",), "village", VILLAGE, ("status:read",)),
    ("client", "c-1", ("cadre",), "province", PROVINCE, ("status:read",)),
    ("client", "c-1", (), "province", PROVINCE, ()),
    ("client", "c-1", (), "province", PROVINCE, ("status:write",)),
    ("client", "c-1", (), "province", "62", ("status:read",)),
])
def test_principals_are_validated(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        Principal(*args)


def test_principal_normalises_roles_scopes_and_jurisdiction() -> None:
    p = Principal("user", "u-1", ["information_officer", "county_office", "county_office"],  # type: ignore[arg-type]
                  "county", "620102")
    assert p.roles == ("county_office", "information_officer") and p.jurisdiction == COUNTY
    assert p.subject == "user:u-1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.id = "u-2"  # type: ignore[misc]


# =============================================================================================
# Access audit
# =============================================================================================

HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
MEMBER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
KEYED = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"


def test_personal_data_access_records_name_ids_only() -> None:
    co = user_principal("county_office", "county", COUNTY, "u-co")
    event = idn.personal_data_accessed(co, route="GET /api/v1/households/{household_id}", purpose=" 入户核实 ",
                                       records=[HOUSEHOLD, MEMBER, HOUSEHOLD, KEYED], count=4, now=NOW)
    assert event.records == [HOUSEHOLD, MEMBER, KEYED] and event.purpose == "入户核实"
    assert (event.principal_type, event.principal_id, event.count) == ("user", "u-co", 4)
    assert str(event.access_id) and event.accessed_at == NOW
    assert EVENT_MODELS[(event.event_type, event.schema_version)] is type(event)
    assert event.stream_type == "access" and event.topic == "tpa.gateway.access.v1"
    other = idn.personal_data_accessed(co, route="GET /x", purpose="p", records=[HOUSEHOLD], count=1, now=NOW)
    assert other.access_id != event.access_id
    fixed = idn.personal_data_accessed(co, route="GET /x", purpose="p", records=[HOUSEHOLD], count=1, now=NOW,
                                       access_id=HOUSEHOLD)
    assert fixed.access_id == HOUSEHOLD


@pytest.mark.parametrize("kwargs, code", [
    ({"purpose": " "}, "purpose_required"),
    ({"purpose": None}, "purpose_required"),
    ({"records": ["620102199001011234"]}, "invalid_record_ref"),   # an ID number
    ({"records": ["张三"]}, "invalid_record_ref"),                 # a name
    ({"records": [HOUSEHOLD.upper()]}, "invalid_record_ref"),
    ({"records": HOUSEHOLD}, "invalid_record_ref"),
    ({"records": []}, "missing_field"),
    ({"records": [f"00000000-0000-4000-8000-{i:012d}" for i in range(1001)]}, "too_many_records"),
    ({"count": 0}, "invalid_count"),
    ({"count": True}, "invalid_count"),
    ({"route": ""}, "missing_field"),
])
def test_personal_data_access_records_are_checked(kwargs: dict[str, Any], code: str) -> None:
    args: dict[str, Any] = {"route": "GET /api/v1/households/{household_id}", "purpose": "入户核实",
                            "records": [HOUSEHOLD], "count": 1, "now": NOW, **kwargs}
    with raises(code, 422):
        idn.personal_data_accessed(user_principal("cadre", "village", VILLAGE), **args)


def test_refusals_become_access_denied_records() -> None:
    client, _ = new_client()
    principal = client.principal()
    with pytest.raises(DomainError) as info:
        require(principal, "household:read_personal", region_code=VILLAGE)
    event = idn.access_denied(principal, route="GET /api/v1/households/{household_id}", reason=info.value.code,
                              action="household:read_personal", now=NOW)
    assert (event.principal_type, event.principal_id, event.reason, event.action) == (
        "client", "edu-aid", "forbidden", "household:read_personal")
    assert EVENT_MODELS[(event.event_type, event.schema_version)] is type(event)
    with pytest.raises(ValueError):
        idn.access_denied(principal, route="GET /x", reason="forbidden", action="household:delete", now=NOW)
    with pytest.raises(ValueError):
        idn.access_denied(principal, route="GET /x", reason="Not A Code", now=NOW)


# =============================================================================================
# JWT access tokens
# =============================================================================================

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 140))
INTERNAL_KEY = bytes(range(200, 232))
RING = Keyring({"k1": KEY1}, "k1")
INTERNAL = Keyring({"i1": INTERNAL_KEY}, "i1")
CO = Principal("user", "u-co", ("county_office",), "county", COUNTY)


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: Any, claims: Any, key: bytes | None = KEY1, raw_claims: bytes | None = None) -> str:
    """A token built by hand (for attacks and edge cases)."""
    signing_input = f"{b64(header)}.{b64(raw_claims if raw_claims is not None else claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}" if key else f"{signing_input}."


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, c, _ = token.split(".")
    return (json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4))),
            json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))))


def claims_for(**overrides: Any) -> dict[str, Any]:
    ts = int(NOW.timestamp())
    claims = {"iss": "tpa-gateway", "sub": "u-co", "aud": "tpa-api", "iat": ts, "nbf": ts, "exp": ts + 900,
              "jti": "j-1", **tk.principal_claims(CO)}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def token_error(code: str, reason: str | None = None, **details: Any):
    if reason is not None:
        details["reason"] = reason
    return raises(code, 401, **details)


def test_access_token_round_trip() -> None:
    issued = tk.issue_access_token(CO, RING, now=NOW, session_id="s-1")
    header, claims = parts(issued.token)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "principal_type", "roles", "level",
                           "jurisdiction", "scopes", "sid"}
    assert claims["iss"] == "tpa-gateway" and claims["aud"] == "tpa-api" and claims["sub"] == "u-co"
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"] == int(NOW.timestamp())
    assert claims["roles"] == ["county_office"] and claims["jurisdiction"] == COUNTY and claims["sid"] == "s-1"
    assert issued.expires_at == at(15) and issued.expires_in == 900 and issued.jti == claims["jti"]
    assert issued.token not in repr(issued)
    principal, verified = tk.verify_access_token(issued.token, RING, now=at(1))
    assert principal == CO and verified == claims
    assert tk.issue_access_token(CO, RING, now=NOW).jti != issued.jti
    assert "sid" not in parts(tk.issue_access_token(CO, RING, now=NOW).token)[1]
    client, _ = new_client()
    principal, _ = tk.verify_access_token(tk.issue_access_token(client.principal(), RING, now=NOW).token, RING,
                                          now=NOW)
    assert principal == client.principal()


def test_hs256_signature_matches_rfc7515_appendix_a1() -> None:
    # RFC 7515 A.1: the JWS signing input and key of the example, and its signature
    key = tk.b64url_decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
    signing_input = ("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0"
                     "dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ")
    signature = tk.b64url_encode(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    assert signature == "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    # its header names no key: this gateway always does, so the token is refused
    with token_error("invalid_token", "unknown_key"):
        tk.decode(f"{signing_input}.{signature}", Keyring({"k": key}, "k"))


def test_expiry_allows_thirty_seconds_of_clock_skew() -> None:
    token = tk.issue_access_token(CO, RING, now=NOW).token
    tk.verify_token(token, RING, audience="tpa-api", now=at(15, 29))
    with token_error("token_expired", expired_at="2025-03-01T08:15:00+00:00"):
        tk.verify_token(token, RING, audience="tpa-api", now=at(15, 30))
    with token_error("token_expired"):
        tk.verify_token(token, RING, audience="tpa-api", now=at(15), leeway=timedelta(0))
    tk.verify_token(token, RING, audience="tpa-api", now=at(0, -29))
    with token_error("token_not_yet_valid"):
        tk.verify_token(token, RING, audience="tpa-api", now=at(0, -31))
    future = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims_for(nbf=int(NOW.timestamp()) + 120))
    with token_error("token_not_yet_valid"):
        tk.verify_token(future, RING, audience="tpa-api", now=NOW)
    with pytest.raises(ValueError):
        tk.verify_token(token, RING, audience="tpa-api", now=datetime(2025, 3, 1, 8))


def test_tampered_tokens_are_refused() -> None:
    token = tk.issue_access_token(CO, RING, now=NOW).token
    header, claims = token.split(".")[:2]
    signature = token.split(".")[2]
    # a claim changed without re-signing
    _, body = parts(token)
    body["roles"] = ["administrator"]
    with token_error("invalid_token", "bad_signature"):
        tk.decode(f"{header}.{b64(body)}.{signature}", RING)
    # another signature
    other = "A" * len(signature) if signature[0] != "A" else "B" * len(signature)
    with token_error("invalid_token"):
        tk.decode(f"{header}.{claims}.{other}", RING)
    # signed with a key of the same id that is not ours
    with token_error("invalid_token", "bad_signature"):
        tk.decode(forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims_for(), key=KEY2), RING)
    # a non-canonical spelling of the same signature bytes
    raw = tk.b64url_decode(signature)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = next(signature[:-1] + c for c in alphabet if c != signature[-1]
                and base64.urlsafe_b64decode(signature[:-1] + c + "=") == raw)
    with token_error("invalid_token", "malformed"):
        tk.decode(f"{header}.{claims}.{twin}", RING)


@pytest.mark.parametrize("header", [
    {"alg": "none", "typ": "JWT", "kid": "k1"},
    {"alg": "None", "typ": "JWT", "kid": "k1"},
    {"alg": "HS512", "typ": "JWT", "kid": "k1"},
    {"alg": "RS256", "typ": "JWT", "kid": "k1"},
    {"alg": "hs256", "typ": "JWT", "kid": "k1"},
    {"typ": "JWT", "kid": "k1"},
    {"alg": ["HS256"], "typ": "JWT", "kid": "k1"},
])
def test_only_hs256_is_accepted(header: dict[str, Any]) -> None:
    with token_error("invalid_token", "unsupported_algorithm"):
        tk.decode(forge(header, claims_for()), RING)
    if header.get("alg") in ("none", "None"):
        with token_error("invalid_token", "malformed"):  # the unsigned form: an empty signature
            tk.decode(forge(header, claims_for(), key=None), RING)


@pytest.mark.parametrize("header, reason", [
    ({"alg": "HS256", "typ": "JWT"}, "unknown_key"),
    ({"alg": "HS256", "typ": "JWT", "kid": "k9"}, "unknown_key"),
    ({"alg": "HS256", "typ": "JWT", "kid": 1}, "unknown_key"),
    ({"alg": "HS256", "typ": "JWE", "kid": "k1"}, "unsupported_type"),
    ({"alg": "HS256", "typ": "JWT", "kid": "k1", "crit": ["exp"]}, "unsupported_header"),
])
def test_headers_are_checked(header: dict[str, Any], reason: str) -> None:
    with token_error("invalid_token", reason):
        tk.decode(forge(header, claims_for()), RING)
    tk.decode(forge({"alg": "HS256", "typ": "jwt", "kid": "k1"}, claims_for()), RING)  # typ is case-insensitive
    tk.decode(forge({"alg": "HS256", "kid": "k1"}, claims_for()), RING)                # and optional


@pytest.mark.parametrize("token, reason", [
    (None, "missing"),
    ("", "missing"),
    (b"abc.def.ghi", "missing"),
    ("abc.def", "malformed"),
    ("a.b.c.d", "malformed"),
    ("..", "malformed"),
    ("abc=.def.ghi", "malformed"),
    ("ab+c.def.ghi", "malformed"),
    ("a" * 9000, "too_long"),
])
def test_malformed_tokens_are_refused(token: Any, reason: str) -> None:
    with token_error("invalid_token", reason):
        tk.decode(token, RING)


def test_malformed_json_is_refused_even_when_signed() -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    with token_error("invalid_token", "malformed_claims"):
        tk.decode(forge(header, None, raw_claims=b"[1, 2]"), RING)
    with token_error("invalid_token", "malformed_claims"):
        tk.decode(forge(header, None, raw_claims=b'{"sub": "a", "sub": "b"}'), RING)  # RFC 7519 section 4
    with token_error("invalid_token", "malformed_claims"):
        tk.decode(forge(header, None, raw_claims=b'{"exp": NaN}'), RING)
    with token_error("invalid_token", "malformed_claims"):
        tk.decode(forge(header, None, raw_claims=b"\xff\xfe"), RING)
    for raw_header in (b"not json", b'"HS256"'):
        with token_error("invalid_token", "malformed_header"):
            tk.decode(f"{b64(raw_header)}.{b64(claims_for())}.{b64(b'x' * 32)}", RING)
    # nesting deep enough to exhaust the JSON parser's recursion, checked before any signature
    deep = f"{b64(b'[' * 2500 + b']' * 2500)}.{b64(claims_for())}.{b64(b'x' * 32)}"
    assert len(deep) < tk.MAX_TOKEN_LENGTH
    with token_error("invalid_token", "malformed_header"):
        tk.decode(deep, RING)


@pytest.mark.parametrize("overrides, code, reason", [
    ({"aud": "other-api"}, "invalid_audience", None),
    ({"aud": ["other-api", "tpa-internal"]}, "invalid_audience", None),
    ({"aud": None}, "invalid_audience", None),
    ({"aud": 7}, "invalid_audience", None),
    ({"iss": "someone-else"}, "invalid_issuer", None),
    ({"iss": None}, "invalid_issuer", None),
    ({"exp": None}, "invalid_token", "missing_exp"),
    ({"exp": True}, "invalid_token", "missing_exp"),
    ({"exp": "1740816900"}, "invalid_token", "missing_exp"),
    ({"nbf": None}, "invalid_token", "missing_nbf"),
    ({"iat": None}, "invalid_token", "missing_iat"),
    ({"sub": None}, "invalid_token", "missing_sub"),
    ({"sub": ""}, "invalid_token", "missing_sub"),
    ({"jti": None}, "invalid_token", "missing_jti"),
])
def test_registered_claims_are_checked(overrides: dict[str, Any], code: str, reason: str | None) -> None:
    token = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims_for(**overrides))
    with token_error(code, reason):
        tk.verify_token(token, RING, audience="tpa-api", now=NOW)


def test_audience_may_be_a_list() -> None:
    token = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims_for(aud=["reports", "tpa-api"]))
    assert tk.verify_token(token, RING, audience="tpa-api", now=NOW)["sub"] == "u-co"


def test_signed_tokens_with_an_invalid_principal_are_refused() -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    for overrides in ({"roles": ["mayor"]}, {"roles": "county_office"}, {"level": "village"},
                      {"principal_type": None}, {"jurisdiction": "62"}, {"scopes": ["status:read"]},
                      {"principal_type": "client"}):
        with token_error("invalid_token", "invalid_claims"):
            tk.verify_access_token(forge(header, claims_for(**overrides)), RING, now=NOW)


def test_access_tokens_live_at_most_an_hour() -> None:
    with pytest.raises(ValueError):
        tk.issue_access_token(CO, RING, now=NOW, lifetime=timedelta(hours=2))
    with pytest.raises(ValueError):
        tk.issue_access_token(CO, RING, now=NOW, lifetime=timedelta(0))
    long_lived = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims_for(exp=int(NOW.timestamp()) + 7200))
    with token_error("invalid_token", "lifetime_too_long"):
        tk.verify_access_token(long_lived, RING, now=NOW)
    backwards = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"},
                      claims_for(iat=int(NOW.timestamp()) + 10, exp=int(NOW.timestamp()) + 5))
    with token_error("invalid_token", "inconsistent_times"):
        tk.verify_token(backwards, RING, audience="tpa-api", now=NOW)
    short = tk.issue_access_token(CO, RING, now=NOW, lifetime=timedelta(minutes=5))
    assert short.expires_in == 300


def test_key_rotation_by_key_id() -> None:
    old = tk.issue_access_token(CO, RING, now=NOW).token
    rotated = Keyring({"k1": KEY1, "k2": KEY2}, "k2")
    new = tk.issue_access_token(CO, rotated, now=NOW).token
    assert parts(new)[0]["kid"] == "k2"
    for token in (old, new):
        assert tk.verify_access_token(token, rotated, now=NOW)[0] == CO
    with token_error("invalid_token", "unknown_key"):
        tk.verify_access_token(new, RING, now=NOW)
    retired = Keyring({"k2": KEY2}, "k2")
    with token_error("invalid_token", "unknown_key"):
        tk.verify_access_token(old, retired, now=NOW)
    # a token that claims the new key id but was signed with the old key
    with token_error("invalid_token", "bad_signature"):
        tk.decode(forge({"alg": "HS256", "typ": "JWT", "kid": "k2"}, claims_for(), key=KEY1), rotated)


def test_keyrings_are_validated_and_keep_keys_out_of_repr() -> None:
    for keys, current in (({}, "k1"), ({"k1": b"short"}, "k1"), ({"k1": KEY1}, "k2"), ({"bad id": KEY1}, "bad id"),
                          ({"k1": "a string of more than thirty-two characters"}, "k1")):
        with pytest.raises(ValueError):
            Keyring(keys, current)  # type: ignore[arg-type]
    ring = Keyring({"k1": bytearray(KEY1)}, "k1")
    assert ring.key("k1") == KEY1 and ring.key(None) is None and ring.signing_key() == ("k1", KEY1)
    assert repr(KEY1) not in repr(ring) and "k1" in repr(ring)
    with pytest.raises(TypeError):
        ring.keys["k2"] = KEY2  # type: ignore[index]
    assert len(tk.generate_key()) == 32 and tk.generate_key() != tk.generate_key()
    assert not RING.shares_key_with(INTERNAL)
    assert RING.shares_key_with(Keyring({"other-id": KEY1}, "other-id"))


def test_tokens_are_issued_to_principals_only() -> None:
    with pytest.raises(TypeError):
        tk.issue_access_token({"sub": "u-co"}, RING, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tk.issue_access_token(CO, RING, now=datetime(2025, 3, 1, 8))


def test_token_errors_are_domain_errors_with_status_401() -> None:
    with pytest.raises(TokenError) as info:
        tk.decode("x.y.z", RING)
    assert isinstance(info.value, DomainError) and info.value.status == 401


# =============================================================================================
# Refresh tokens
# =============================================================================================

def test_refresh_tokens_are_opaque_and_stored_as_hashes() -> None:
    issued = tk.issue_refresh_token(CO, now=NOW)
    record = issued.record
    assert issued.token.startswith("rt_") and len(issued.token) == 46
    assert record.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert record.subject == "user:u-co" and record.expires_at == NOW + timedelta(hours=8)
    assert record.issued_at == NOW and record.used_at is None and record.revoked_at is None
    assert issued.token not in repr(issued)
    assert tk.verify_refresh_token(issued.token, record, now=at(60)) == record
    client, _ = new_client()
    with pytest.raises(ValueError):
        tk.issue_refresh_token(client.principal(), now=NOW)
    with pytest.raises(ValueError):
        tk.issue_refresh_token(CO, now=NOW, lifetime=timedelta(days=2))


def test_refresh_token_rotation_keeps_the_session_and_detects_reuse() -> None:
    first = tk.issue_refresh_token(CO, now=NOW)
    second = tk.rotate_refresh_token(first.token, first.record, now=at(60))
    assert second.token != first.token
    assert second.record.session_id == first.record.session_id
    assert second.record.expires_at == first.record.expires_at  # the session ends 8 hours after login
    assert second.record.issued_at == at(60)
    used = dataclasses.replace(first.record, used_at=at(60))
    with token_error("refresh_token_reused", session_id=first.record.session_id):
        tk.rotate_refresh_token(first.token, used, now=at(61))
    revoked = dataclasses.replace(second.record, revoked_at=at(62))
    with token_error("token_revoked"):
        tk.verify_refresh_token(second.token, revoked, now=at(63))
    with token_error("token_expired"):
        tk.verify_refresh_token(second.token, second.record, now=NOW + timedelta(hours=8))
    other_session = tk.issue_refresh_token(CO, now=NOW)
    assert other_session.record.session_id != first.record.session_id


@pytest.mark.parametrize("token", [None, "", "rt_short", "xx_" + "A" * 43, "rt_" + "A" * 43])
def test_unknown_refresh_tokens_are_refused(token: Any) -> None:
    issued = tk.issue_refresh_token(CO, now=NOW)
    with token_error("invalid_token", "unknown_refresh_token"):
        tk.verify_refresh_token(token, issued.record, now=NOW)
    with token_error("invalid_token", "unknown_refresh_token"):
        tk.verify_refresh_token(issued.token, None, now=NOW)


# =============================================================================================
# Internal identity tokens
# =============================================================================================

def test_internal_token_round_trip() -> None:
    token = tk.internal_token_for(CO, INTERNAL, now=NOW)
    header, claims = parts(token)
    assert header["kid"] == "i1" and claims["aud"] == "tpa-internal" and claims["exp"] - claims["iat"] == 60
    assert tk.verify_internal_token(token, INTERNAL, now=at(0, 50)) == CO
    assert tk.verify_internal_token(token, INTERNAL, now=at(0, 89)) == CO     # 60 s + 30 s of skew
    with token_error("token_expired"):
        tk.verify_internal_token(token, INTERNAL, now=at(0, 90))
    assert tk.INTERNAL_IDENTITY_HEADER == "X-TPA-Identity"
    client, _ = new_client()
    assert tk.verify_internal_token(tk.internal_token_for(client.principal(), INTERNAL, now=NOW), INTERNAL,
                                    now=NOW) == client.principal()


def test_access_and_internal_tokens_are_not_interchangeable() -> None:
    access = tk.issue_access_token(CO, RING, now=NOW).token
    internal = tk.internal_token_for(CO, INTERNAL, now=NOW)
    with token_error("invalid_token", "unknown_key"):
        tk.verify_internal_token(access, INTERNAL, now=NOW)
    with token_error("invalid_token", "unknown_key"):
        tk.verify_access_token(internal, RING, now=NOW)
    # even with one keyring for both (a misconfiguration), the audiences keep them apart
    same = Keyring({"k1": KEY1}, "k1")
    with token_error("invalid_audience"):
        tk.verify_internal_token(tk.issue_access_token(CO, same, now=NOW).token, same, now=NOW)
    with token_error("invalid_audience"):
        tk.verify_access_token(tk.internal_token_for(CO, same, now=NOW), same, now=NOW)


def test_internal_tokens_live_at_most_sixty_seconds() -> None:
    with pytest.raises(ValueError):
        tk.internal_token_for(CO, INTERNAL, now=NOW, lifetime=timedelta(minutes=5))
    ts = int(NOW.timestamp())
    long_lived = forge({"alg": "HS256", "typ": "JWT", "kid": "i1"},
                       claims_for(aud="tpa-internal", exp=ts + 3600), key=INTERNAL_KEY)
    with token_error("invalid_token", "lifetime_too_long"):
        tk.verify_internal_token(long_lived, INTERNAL, now=NOW)
    with token_error("invalid_issuer"):
        tk.verify_internal_token(tk.internal_token_for(CO, INTERNAL, now=NOW, issuer="elsewhere"), INTERNAL, now=NOW)
