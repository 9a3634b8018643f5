"""Operator actions behind the command line: tenants, users, memberships, clients.

They run on the owner connection, whose RLS policies let the operator see across
tenants; the application role never can.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from stockade.access.policy import Policy
from stockade.audit.trail import record_event
from stockade.db import Scope, scoped_transaction
from stockade.identity.passwords import (
    HISTORY_DEPTH,
    check_new_password,
    hash_password,
)
from stockade.identity.provider import secret_digest

_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Printable characters only: an address with control characters is a mistake or a trick.
EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


class AdminError(ValueError):
    """An operator request is invalid; the message names what to change."""


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    client_secret: str | None

    def __repr__(self) -> str:
        return f"RegisteredClient(client_id={self.client_id!r})"


def create_tenant(owner: Engine, name: str, plan: str = "free") -> uuid.UUID:
    if not _TENANT_NAME.match(name):
        raise AdminError(
            f"invalid tenant name {name!r}: use 1-63 lowercase letters, digits and hyphens"
        )
    tenant_id = uuid.uuid4()
    try:
        with owner.begin() as conn:
            conn.execute(
                text("insert into tenants (id, name, plan) values (:id, :name, :plan)"),
                {"id": tenant_id, "name": name, "plan": plan},
            )
    except IntegrityError:
        raise AdminError(f"tenant {name!r} already exists") from None
    return tenant_id


def tenant_id_by_name(owner: Engine, name: str) -> uuid.UUID:
    with owner.begin() as conn:
        row = conn.execute(
            text("select id from tenants where name = :name"), {"name": name}
        ).first()
    if row is None:
        raise AdminError(f"tenant {name!r} not found; create it with 'stockade tenant create'")
    tenant_id: uuid.UUID = row[0]
    return tenant_id


def set_require_dpop(owner: Engine, name: str, *, required: bool) -> None:
    """Make a tenant accept only DPoP-bound tokens, or unbound ones again.

    Unbound access tokens of the tenant stop on their next request, since each request
    reads the flag. Turning it on also revokes every unbound token family, so a stolen
    unbound refresh token cannot be upgraded to a bound one with the thief's key.
    """
    with owner.begin() as conn:
        row = conn.execute(
            text("update tenants set require_dpop = :required where name = :name returning id"),
            {"required": required, "name": name},
        ).first()
        if row is not None and required:
            conn.execute(
                text(
                    "update token_families set revoked_at = now(), revoked_reason = 'dpop required'"
                    " where tenant_id = :tenant and dpop_jkt is null and revoked_at is null"
                ),
                {"tenant": row[0]},
            )
    if row is None:
        raise AdminError(f"tenant {name!r} not found; create it with 'stockade tenant create'")


def add_user(
    owner: Engine,
    policy: Policy,
    *,
    email: str,
    tenant: str,
    role: str,
    password: str | None,
) -> tuple[uuid.UUID, bool]:
    """Create the user if new, or change their password, and grant ``role`` in ``tenant``.

    Return the user id and whether the user was created.
    """
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise AdminError(f"invalid e-mail address {email!r}")
    try:
        policy.check_role(role)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    tenant_id = tenant_id_by_name(owner, tenant)

    # Scoped to the tenant so that the grant lands in the tenant's audit trail.
    with scoped_transaction(owner, Scope(tenant_id=tenant_id)) as conn:
        row = conn.execute(
            text("select id from users where email = :email"), {"email": email}
        ).first()
        if row is None:
            if password is None:
                raise AdminError(f"user {email} is new: give a password with --password-stdin")
            check_new_password(password, email=email, previous_hashes=[])
            user_id = uuid.uuid4()
            conn.execute(
                text("insert into users (id, email, password_hash) values (:id, :email, :hash)"),
                {"id": user_id, "email": email, "hash": hash_password(password)},
            )
        else:
            user_id = row[0]
            if password is not None:
                _change_password(conn, user_id, email, password)
        created = row is None
        conn.execute(
            text(
                "insert into memberships (tenant_id, user_id, role) values (:tenant, :user, :role)"
                " on conflict do nothing"
            ),
            {"tenant": tenant_id, "user": user_id, "role": role},
        )
        # NOTE: the operator grants directly, without a second admin's approval: the
        # operator owns the database, so an approval could not bind them anyway.
        record_event(
            conn,
            tenant_id=tenant_id,
            action="member:granted-by-operator",
            subject=str(user_id),
            data={"role": role, "new_user": created},
        )
    return user_id, created


def set_password(owner: Engine, email: str, password: str) -> None:
    email = email.strip().lower()
    with owner.begin() as conn:
        row = conn.execute(
            text("select id from users where email = :email"), {"email": email}
        ).first()
        if row is None:
            raise AdminError(f"user {email} not found")
        _change_password(conn, row[0], email, password)


def _change_password(conn: object, user_id: uuid.UUID, email: str, password: str) -> None:
    """Apply the rules, keep the old hash in the history, and trim it to the last five."""
    current = conn.execute(  # type: ignore[attr-defined]
        text("select password_hash from users where id = :id"), {"id": user_id}
    ).scalar_one()
    history = (
        conn.execute(  # type: ignore[attr-defined]
            text(
                "select password_hash from password_history where user_id = :id"
                " order by retired_at desc, id desc limit :depth"
            ),
            {"id": user_id, "depth": HISTORY_DEPTH - 1},
        )
        .scalars()
        .all()
    )
    check_new_password(password, email=email, previous_hashes=[current, *history])
    conn.execute(  # type: ignore[attr-defined]
        text("insert into password_history (user_id, password_hash) values (:id, :hash)"),
        {"id": user_id, "hash": current},
    )
    conn.execute(  # type: ignore[attr-defined]
        text(
            "delete from password_history where user_id = :id and id not in ("
            " select id from password_history where user_id = :id"
            " order by retired_at desc, id desc limit :depth)"
        ),
        {"id": user_id, "depth": HISTORY_DEPTH - 1},
    )
    conn.execute(  # type: ignore[attr-defined]
        text("update users set password_hash = :hash, password_changed_at = now() where id = :id"),
        {"id": user_id, "hash": hash_password(password)},
    )


def create_client(
    owner: Engine, name: str, redirect_uris: list[str], *, public: bool
) -> RegisteredClient:
    if not name.strip():
        raise AdminError("the client name is empty")
    for uri in redirect_uris:
        _check_redirect_uri(uri)
    client_id = secrets.token_urlsafe(16)
    secret = None if public else secrets.token_urlsafe(32)
    with owner.begin() as conn:
        conn.execute(
            text(
                "insert into oauth_clients (client_id, name, secret_hash, redirect_uris, is_public)"
                " values (:id, :name, :hash, :uris, :public)"
            ),
            {
                "id": client_id,
                "name": name.strip(),
                "hash": secret_digest(secret) if secret else None,
                "uris": redirect_uris,
                "public": public,
            },
        )
    return RegisteredClient(client_id, secret)


def _check_redirect_uri(uri: str) -> None:
    """Accept https URIs, and http only on loopback (RFC 8252 section 7.3)."""
    if "#" in uri:
        raise AdminError(f"redirect URI {uri!r} must not contain a fragment")
    loopback = re.match(r"^http://(127\.0\.0\.1|\[::1\]|localhost)(:\d+)?(/|$)", uri)
    if not (uri.startswith("https://") or loopback):
        raise AdminError(f"redirect URI {uri!r} must use https, or http on a loopback address")


def set_disabled(owner: Engine, email: str, *, disabled: bool) -> None:
    """Disable a user, which stops their tokens on the next request, or enable them again."""
    email = email.strip().lower()
    with owner.begin() as conn:
        row = conn.execute(
            text(
                "update users set disabled_at = case when :disabled then now() end,"
                " tokens_not_before = case when :disabled then now() else tokens_not_before end"
                " where email = :email returning id"
            ),
            {"email": email, "disabled": disabled},
        ).first()
        if row is None:
            raise AdminError(f"user {email} not found")
        if disabled:
            conn.execute(text("delete from browser_sessions where user_id = :id"), {"id": row[0]})


def reset_mfa(owner: Engine, email: str) -> None:
    """Remove a user's authenticator and recovery codes, and sign them out everywhere.

    For a user who lost their phone and codes; at the next sign-in a privileged member
    is sent to enrolment again.
    """
    email = email.strip().lower()
    with owner.begin() as conn:
        row = conn.execute(
            text("update users set tokens_not_before = now() where email = :email returning id"),
            {"email": email},
        ).first()
        if row is None:
            raise AdminError(f"user {email} not found")
        for table in ("mfa_totp", "mfa_recovery_codes", "browser_sessions"):
            conn.execute(
                text(f"delete from {table} where user_id = :id"),  # noqa: S608 - fixed names
                {"id": row[0]},
            )
