"""SQL for the identity tables. Every statement is parameterised.

Authorization codes and refresh tokens are opaque strings ``<tenant hex>.<secret>``: the
prefix names the tenant whose rows to search, and the row is found by the SHA-256 of the
whole string, so a forged prefix only searches a tenant where the hash is absent.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from stockade.db import Scope, scoped_transaction


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_tenant_token(tenant_id: uuid.UUID) -> str:
    return f"{tenant_id.hex}.{secrets.token_urlsafe(32)}"


def tenant_of_token(token: str) -> uuid.UUID | None:
    prefix, _, secret = token.partition(".")
    if not secret or len(prefix) != 32:
        return None
    try:
        return uuid.UUID(hex=prefix)
    except ValueError:
        return None


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    password_hash: str


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    secret_hash: bytes | None
    redirect_uris: tuple[str, ...]
    is_public: bool


@dataclass(frozen=True)
class TenantChoice:
    tenant_id: uuid.UUID
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Grant:
    """The user, tenant, client and scope behind a code or refresh token."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    client_id: str
    scope: str
    amr: tuple[str, ...]
    authenticated_at: datetime
    family_id: uuid.UUID | None = None
    redirect_uri: str | None = None
    nonce: str | None = None
    code_challenge: str | None = None
    browser_session: bytes | None = None
    from_code: bool = False


# Users and sessions


def find_user_by_email(engine: Engine, email: str) -> User | None:
    """Find an enabled user for sign-in; a disabled user is treated as unknown."""
    scope = Scope(login_email=email.lower())
    with scoped_transaction(engine, scope) as conn:
        row = conn.execute(
            text(
                "select id, email, password_hash from users"
                " where email = :email and disabled_at is null"
            ),
            {"email": email.lower()},
        ).first()
    return User(*row) if row else None


def find_user(conn: Connection, user_id: uuid.UUID) -> User | None:
    row = conn.execute(
        text("select id, email, password_hash from users where id = :id"), {"id": user_id}
    ).first()
    return User(*row) if row else None


def replace_password_hash(engine: Engine, user_id: uuid.UUID, password_hash: str) -> None:
    """Store a fresh hash of the same password, after the hashing parameters changed."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        conn.execute(
            text("update users set password_hash = :hash where id = :id"),
            {"hash": password_hash, "id": user_id},
        )


def create_browser_session(
    engine: Engine, user_id: uuid.UUID, amr: list[str], hours: int, *, mfa_pending: bool = False
) -> str:
    raw = secrets.token_urlsafe(32)
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        conn.execute(
            text(
                "insert into browser_sessions (id_hash, user_id, amr, expires_at, mfa_pending)"
                " values (:hash, :user, :amr, now() + make_interval(hours => :hours), :pending)"
            ),
            {
                "hash": token_hash(raw),
                "user": user_id,
                "amr": amr,
                "hours": hours,
                "pending": mfa_pending,
            },
        )
    return raw


def browser_session(
    engine: Engine, raw: str, *, pending: bool = False
) -> tuple[uuid.UUID, tuple[str, ...], datetime] | None:
    """Find a live session: a complete one, or with ``pending`` one awaiting its MFA step."""
    with scoped_transaction(engine, Scope()) as conn:
        row = conn.execute(
            text(
                "select user_id, amr, authenticated_at from browser_sessions"
                " where id_hash = :hash and expires_at > now() and mfa_pending = :pending"
            ),
            {"hash": token_hash(raw), "pending": pending},
        ).first()
    return (row[0], tuple(row[1]), row[2]) if row else None


def complete_second_factor(engine: Engine, raw: str, amr: list[str]) -> None:
    """Mark the session complete and store the methods it used (``amr``)."""
    with scoped_transaction(engine, Scope()) as conn:
        conn.execute(
            text(
                "update browser_sessions set mfa_pending = false, amr = :amr,"
                " authenticated_at = now(), mfa_failures = 0 where id_hash = :hash"
            ),
            {"hash": token_hash(raw), "amr": amr},
        )


def require_second_factor(engine: Engine, raw: str) -> None:
    """Send a password-only session back through the MFA step (step-up)."""
    with scoped_transaction(engine, Scope()) as conn:
        conn.execute(
            text("update browser_sessions set mfa_pending = true where id_hash = :hash"),
            {"hash": token_hash(raw)},
        )


def count_second_factor_failure(engine: Engine, raw: str, limit: int) -> bool:
    """Count a wrong code; at ``limit`` the session ends. Return whether it goes on."""
    with scoped_transaction(engine, Scope()) as conn:
        failures = conn.execute(
            text(
                "update browser_sessions set mfa_failures = mfa_failures + 1"
                " where id_hash = :hash returning mfa_failures"
            ),
            {"hash": token_hash(raw)},
        ).scalar()
        if failures is None or failures >= limit:
            conn.execute(
                text("delete from browser_sessions where id_hash = :hash"),
                {"hash": token_hash(raw)},
            )
            return False
    return True


def end_browser_session(engine: Engine, raw: str) -> None:
    with scoped_transaction(engine, Scope()) as conn:
        conn.execute(
            text("delete from browser_sessions where id_hash = :hash"), {"hash": token_hash(raw)}
        )


def tenant_choices(engine: Engine, user_id: uuid.UUID) -> list[TenantChoice]:
    """List the tenants a user belongs to, with their roles there."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        rows = conn.execute(
            text(
                "select t.id, t.name, array_agg(m.role order by m.role)"
                " from memberships m join tenants t on t.id = m.tenant_id"
                " where m.user_id = :user group by t.id, t.name order by t.name"
            ),
            {"user": user_id},
        ).all()
    return [TenantChoice(row[0], row[1], tuple(row[2])) for row in rows]


def roles_in_tenant(conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
    rows = conn.execute(
        text(
            "select role from memberships where tenant_id = :tenant and user_id = :user"
            " order by role"
        ),
        {"tenant": tenant_id, "user": user_id},
    ).all()
    return [row[0] for row in rows]


# Tenants


def tenant_requires_dpop(conn: Connection, tenant_id: uuid.UUID) -> bool:
    """Tell whether the tenant accepts only DPoP-bound tokens."""
    required = conn.execute(
        text("select require_dpop from tenants where id = :tenant"), {"tenant": tenant_id}
    ).scalar()
    return bool(required)


# Clients


def find_client(engine: Engine, client_id: str) -> Client | None:
    with scoped_transaction(engine, Scope()) as conn:
        row = conn.execute(
            text(
                "select client_id, name, secret_hash, redirect_uris, is_public"
                " from oauth_clients where client_id = :id"
            ),
            {"id": client_id},
        ).first()
    if row is None:
        return None
    return Client(row[0], row[1], row[2], tuple(row[3]), row[4])


# Authorization codes


def store_code(conn: Connection, code: str, grant: Grant, lifetime_seconds: int) -> None:
    conn.execute(
        text(
            "insert into authorization_codes (code_hash, tenant_id, user_id, client_id,"
            " redirect_uri, scope, nonce, code_challenge, amr, authenticated_at, expires_at,"
            " browser_session)"
            " values (:hash, :tenant, :user, :client, :redirect, :scope, :nonce, :challenge,"
            " :amr, :auth_at, now() + make_interval(secs => :lifetime), :session)"
        ),
        {
            "hash": token_hash(code),
            "tenant": grant.tenant_id,
            "user": grant.user_id,
            "client": grant.client_id,
            "redirect": grant.redirect_uri,
            "scope": grant.scope,
            "nonce": grant.nonce,
            "challenge": grant.code_challenge,
            "amr": list(grant.amr),
            "auth_at": grant.authenticated_at,
            "lifetime": lifetime_seconds,
            "session": grant.browser_session,
        },
    )


def consume_code(conn: Connection, code: str, family_id: uuid.UUID) -> Grant | None:
    """Mark an unused, unexpired code as used and return it; one caller wins a race."""
    row = conn.execute(
        text(
            "update authorization_codes set used_at = now(), family_id = :family"
            " where code_hash = :hash and used_at is null and expires_at > now()"
            " returning tenant_id, user_id, client_id, scope, amr, authenticated_at,"
            " redirect_uri, nonce, code_challenge, browser_session"
        ),
        {"hash": token_hash(code), "family": family_id},
    ).first()
    if row is None:
        return None
    return Grant(
        tenant_id=row[0],
        user_id=row[1],
        client_id=row[2],
        scope=row[3],
        amr=tuple(row[4]),
        authenticated_at=row[5],
        family_id=family_id,
        redirect_uri=row[6],
        nonce=row[7],
        code_challenge=row[8],
        browser_session=row[9],
        from_code=True,
    )


def family_of_used_code(conn: Connection, code: str) -> uuid.UUID | None:
    row = conn.execute(
        text("select family_id from authorization_codes where code_hash = :hash"),
        {"hash": token_hash(code)},
    ).first()
    return row[0] if row else None


# Refresh tokens


def store_refresh_token(conn: Connection, token: str, grant: Grant, days: int) -> None:
    conn.execute(
        text(
            "insert into refresh_tokens (token_hash, family_id, tenant_id, user_id, client_id,"
            " scope, amr, authenticated_at, expires_at) values (:hash, :family, :tenant, :user,"
            " :client, :scope, :amr, :auth_at, now() + make_interval(days => :days))"
        ),
        {
            "hash": token_hash(token),
            "family": grant.family_id,
            "tenant": grant.tenant_id,
            "user": grant.user_id,
            "client": grant.client_id,
            "scope": grant.scope,
            "amr": list(grant.amr),
            "auth_at": grant.authenticated_at,
            "days": days,
        },
    )


def use_refresh_token(conn: Connection, token: str) -> Grant | None:
    """Mark a live refresh token as used and return its grant; one caller wins a race.

    The conditional UPDATE is the check and the use in one statement: two concurrent
    refreshes with one token cannot both see it unused.
    """
    row = conn.execute(
        text(
            "update refresh_tokens set used_at = now()"
            " where token_hash = :hash and used_at is null and revoked_at is null"
            " and expires_at > now()"
            " returning tenant_id, user_id, client_id, scope, amr, authenticated_at, family_id"
        ),
        {"hash": token_hash(token)},
    ).first()
    if row is None:
        return None
    return Grant(
        tenant_id=row[0],
        user_id=row[1],
        client_id=row[2],
        scope=row[3],
        amr=tuple(row[4]),
        authenticated_at=row[5],
        family_id=row[6],
    )


def refresh_token_family(conn: Connection, token: str) -> tuple[uuid.UUID, str, bool] | None:
    """Return a refresh token's family, client, and whether it was used before."""
    row = conn.execute(
        text(
            "select family_id, client_id, used_at is not null from refresh_tokens"
            " where token_hash = :hash"
        ),
        {"hash": token_hash(token)},
    ).first()
    return (row[0], row[1], row[2]) if row else None


def revoke_family(conn: Connection, family_id: uuid.UUID) -> int:
    conn.execute(
        text(
            "update token_families set revoked_at = now(), revoked_reason = 'reuse'"
            " where id = :family and revoked_at is null"
        ),
        {"family": family_id},
    )
    result = conn.execute(
        text(
            "update refresh_tokens set revoked_at = now()"
            " where family_id = :family and revoked_at is null"
        ),
        {"family": family_id},
    )
    return result.rowcount
