"""Password rules: argon2id, at least 12 characters, a blocklist, no reuse of the last 5."""

from __future__ import annotations

import secrets

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text

from stockade.identity import admin
from stockade.identity.passwords import (
    PasswordRejected,
    check_new_password,
    hash_password,
    verify_password,
)
from stockade.runtime import Runtime
from tests.conftest import TEST_PASSWORD, Factory
from tests.identity.test_oidc_client import REDIRECT_URI, authlib_session, browser_sign_in


def test_hash_is_argon2id_and_verifies() -> None:
    hashed = hash_password("a sturdy passphrase here")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "a sturdy passphrase here")
    assert not verify_password(hashed, "a sturdy passphrase hers")


def test_garbage_hash_does_not_verify() -> None:
    assert not verify_password("not-a-hash", "anything at all")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-pass1", "at least 12"),
        ("x" * 257, "at most 256"),
        ("password1234", "too common"),
        ("iloveyou2024!!", "too common"),
        ("qwertyuiopasdf", "too common"),
        ("abcabcabcabcabc", "too common"),
        ("zzzzzzzzzzzzzz", "too common"),
        ("jane.doe-secret-2024", "too common"),
    ],
)
def test_weak_passwords_are_rejected(password: str, reason: str) -> None:
    with pytest.raises(PasswordRejected, match=reason):
        check_new_password(password, email="jane.doe@example.test", previous_hashes=[])


def test_message_never_contains_the_password() -> None:
    with pytest.raises(PasswordRejected) as caught:
        check_new_password("password1234", email="a@example.test", previous_hashes=[])
    assert "password1234" not in str(caught.value)


def test_strong_passphrase_is_accepted() -> None:
    check_new_password("violet tractor umbrella 88", email="a@example.test", previous_hashes=[])


def test_last_five_passwords_cannot_return(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    owner = runtime.db.owner
    passwords = [f"harbor lantern {word} 2031" for word in ("one", "two", "three", "four", "five")]
    for password in passwords:
        admin.set_password(owner, member.email, password)

    for reused in passwords:
        with pytest.raises(PasswordRejected, match="last 5"):
            admin.set_password(owner, member.email, reused)

    admin.set_password(owner, member.email, "harbor lantern six 2031")
    # "one" is now the sixth most recent password, so it may come back.
    admin.set_password(owner, member.email, passwords[0])


def test_history_keeps_four_old_hashes(runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    for word in ("red", "green", "blue", "cyan", "pink", "gold", "teal"):
        admin.set_password(runtime.db.owner, member.email, f"meadow kettle {word} 77")
    with runtime.db.owner.begin() as conn:
        kept = conn.execute(
            text("select count(*) from password_history where user_id = :u"), {"u": member.user_id}
        ).scalar_one()
    assert kept == 4


def test_sign_in_upgrades_weak_hash(live_server: str, runtime: Runtime, factory: Factory) -> None:
    member = factory.member()
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(TEST_PASSWORD)
    with runtime.db.owner.begin() as conn:
        conn.execute(
            text("update users set password_hash = :h where id = :u"),
            {"h": weak, "u": member.user_id},
        )
    registered = factory.client(REDIRECT_URI, public=True)
    url, _ = authlib_session(registered.client_id).create_authorization_url(
        f"{live_server}/oauth/authorize", code_verifier=secrets.token_urlsafe(48)
    )

    browser_sign_in(live_server, url, member.email, TEST_PASSWORD)

    with runtime.db.owner.begin() as conn:
        stored = conn.execute(
            text("select password_hash from users where id = :u"), {"u": member.user_id}
        ).scalar_one()
    assert stored != weak
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
