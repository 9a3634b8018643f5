"""Token families and the per-request check that revocation takes effect at once.

Access tokens are JWTs that live up to 60 minutes. Each names its family (`sid`), and
every request checks, in the request's own transaction, that the family is live, the
user is still a member and not disabled, and the family began after the user's
``tokens_not_before``. That comparison uses microsecond timestamps, unlike the whole
seconds of ``iat``, so a sign-in right after a revocation is not caught by it.
Sign-out, "sign out everywhere", removing a member and disabling a user therefore stop
tokens on their next request. The same check refuses an unbound token once its tenant
requires DPoP.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from stockade.access.guard import Principal
from stockade.db import Scope, scoped_transaction
from stockade.errors import Unauthorized
from stockade.identity import dpop

_ACTIVE = text(
    "select"
    " (select f.revoked_at is null and f.created_at >= u.tokens_not_before"
    "  and u.disabled_at is null"
    "  from token_families f join users u on u.id = f.user_id"
    "  where f.id = :family and f.tenant_id = :tenant and f.user_id = :user),"
    " exists (select 1 from memberships m where m.tenant_id = :tenant and m.user_id = :user),"
    " (select t.require_dpop from tenants t where t.id = :tenant)"
)


def open_family(
    conn: Connection,
    *,
    family_id: uuid.UUID,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    client_id: str,
    browser_session: bytes | None,
    dpop_jkt: str | None = None,
) -> None:
    """Start a token family; with ``dpop_jkt`` its refresh tokens are bound to that key."""
    conn.execute(
        text(
            "insert into token_families"
            " (id, tenant_id, user_id, client_id, browser_session, dpop_jkt)"
            " values (:id, :tenant, :user, :client, :session, :jkt)"
        ),
        {
            "id": family_id,
            "tenant": tenant_id,
            "user": user_id,
            "client": client_id,
            "session": browser_session,
            "jkt": dpop_jkt,
        },
    )


def family_dpop_key(conn: Connection, family_id: uuid.UUID) -> str | None:
    """Return the thumbprint of the DPoP key a family's refresh tokens are bound to."""
    jkt: str | None = conn.execute(
        text("select dpop_jkt from token_families where id = :family"), {"family": family_id}
    ).scalar()
    return jkt


def bind_family(conn: Connection, family_id: uuid.UUID, dpop_jkt: str) -> None:
    """Bind an unbound family's refresh tokens to a DPoP key; a bound family keeps its key."""
    conn.execute(
        text("update token_families set dpop_jkt = :jkt where id = :family and dpop_jkt is null"),
        {"family": family_id, "jkt": dpop_jkt},
    )


def family_is_live(conn: Connection, family_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Tell whether a refresh may continue the family: not revoked, user not disabled."""
    row = conn.execute(
        text(
            "select f.revoked_at is null and u.disabled_at is null"
            " and f.created_at >= u.tokens_not_before"
            " from token_families f join users u on u.id = f.user_id"
            " where f.id = :family and f.user_id = :user"
        ),
        {"family": family_id, "user": user_id},
    ).first()
    return bool(row and row[0])


def assert_active(conn: Connection, principal: Principal) -> None:
    """Raise ``Unauthorized`` unless the principal's token is still live and its tenant
    accepts a token of its kind (bound or unbound)."""
    if principal.family_id is None:
        raise Unauthorized("the access token names no session")
    row = conn.execute(
        _ACTIVE,
        {
            "family": principal.family_id,
            "tenant": principal.tenant_id,
            "user": principal.user_id,
        },
    ).one()
    *live, dpop_required = row
    # Requiring DPoP also revokes unbound families, so check it first: the DPoP challenge
    # tells the client to retry with a proof, where "revoked" would not.
    if dpop_required and principal.dpop_jkt is None:
        raise dpop.unauthorized(
            "this tenant accepts only DPoP-bound access tokens", "invalid_token"
        )
    if not all(live):
        raise Unauthorized("the access token has been revoked")


def revoke_member(conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, reason: str) -> int:
    """Revoke every token family of one member of one tenant; return how many."""
    result = conn.execute(
        text(
            "update token_families set revoked_at = now(), revoked_reason = :reason"
            " where tenant_id = :tenant and user_id = :user and revoked_at is null"
        ),
        {"tenant": tenant_id, "user": user_id, "reason": reason},
    )
    conn.execute(
        text(
            "update refresh_tokens set revoked_at = now()"
            " where tenant_id = :tenant and user_id = :user and revoked_at is null"
        ),
        {"tenant": tenant_id, "user": user_id},
    )
    return result.rowcount


def revoke_browser_session(engine: Engine, user_id: uuid.UUID, session_hash: bytes) -> None:
    """Revoke the families that one browser sign-in started, in every tenant."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        conn.execute(
            text(
                "update token_families set revoked_at = now(), revoked_reason = 'sign-out'"
                " where user_id = :user and browser_session = :session and revoked_at is null"
            ),
            {"user": user_id, "session": session_hash},
        )


def sign_out_everywhere(engine: Engine, user_id: uuid.UUID) -> datetime:
    """Refuse every token issued so far to the user, and end their browser sessions."""
    with scoped_transaction(engine, Scope(user_id=user_id)) as conn:
        moment: datetime = conn.execute(
            text("update users set tokens_not_before = now() where id = :user returning now()"),
            {"user": user_id},
        ).scalar_one()
        conn.execute(
            text(
                "update token_families set revoked_at = now(),"
                " revoked_reason = 'sign-out-everywhere'"
                " where user_id = :user and revoked_at is null"
            ),
            {"user": user_id},
        )
        conn.execute(text("delete from browser_sessions where user_id = :user"), {"user": user_id})
    return moment
