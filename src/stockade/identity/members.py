"""``/api/v1/members`` and ``/api/v1/approvals``: invite, change roles, remove, approve.

Granting a privileged role (``privileged_roles`` in the policy file) opens a request
that a second admin must approve. Removing a member or changing their roles revokes
their tokens at once, so the next request carries the new truth. Every change is an
audit event in the same transaction as the change itself.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, text

from stockade.access import approvals
from stockade.access.guard import Principal, require
from stockade.audit.trail import record_event
from stockade.db import Scope, scoped_transaction
from stockade.errors import Conflict, Forbidden, NotFound, Unprocessable
from stockade.identity import sessions, store
from stockade.identity.admin import EMAIL

router = APIRouter(prefix="/api/v1", tags=["members"])
# An invitation link is valid this long; after that an admin invites again.
INVITATION_DAYS = 7
# The password hash of an invited user until they accept: no password verifies against it.
UNUSABLE_PASSWORD = "!invited"  # noqa: S105 - a marker that no password matches

Roles = Annotated[list[str], Field(min_length=1, max_length=10)]


class Invite(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Annotated[str, Field(max_length=254)]
    roles: Roles


class RoleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: Roles


def _scope(principal: Principal, **extra: Any) -> Scope:
    base = principal.scope()
    return Scope(
        tenant_id=base.tenant_id,
        roles=base.roles,
        user_id=base.user_id,
        check=base.check,
        **extra,
    )


def _check_roles(request: Request, roles: list[str]) -> list[str]:
    policy = request.app.state.policy
    unknown = sorted(set(roles) - set(policy.roles))
    if unknown:
        raise Unprocessable(f"unknown roles {unknown}; roles are {sorted(policy.roles)}")
    return sorted(set(roles))


def _member_roles(conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
    return store.roles_in_tenant(conn, tenant_id, user_id)


def _pending_roles(conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
    return sorted(
        item.role
        for item in approvals.list_requests(conn, tenant_id, "pending")
        if item.user_id == user_id
    )


def _apply_roles(
    request: Request,
    conn: Connection,
    principal: Principal,
    user_id: uuid.UUID,
    wanted: list[str],
) -> dict[str, Any]:
    """Make the member's roles ``wanted``: removals and plain roles at once, privileged
    roles through a pending request. Return the member's state afterwards."""
    policy = request.app.state.policy
    tenant_id = principal.tenant_id
    current = set(_member_roles(conn, tenant_id, user_id))
    removed = current - set(wanted)
    added = set(wanted) - current
    _refuse_last_admin(conn, tenant_id, user_id, removed)
    joins_now = not current and any(not approvals.needs_approval(policy, r) for r in added)
    if joins_now:
        _check_seat(request, conn, tenant_id)

    for role in sorted(removed):
        conn.execute(
            text(
                "delete from memberships where tenant_id = :tenant and user_id = :user"
                " and role = :role"
            ),
            {"tenant": tenant_id, "user": user_id, "role": role},
        )
    pending = []
    for role in sorted(added):
        if approvals.needs_approval(policy, role):
            grant = approvals.request_grant(conn, tenant_id, user_id, role, principal.user_id)
            record_event(
                conn,
                tenant_id=tenant_id,
                action="grant:requested",
                actor_user_id=principal.user_id,
                subject=str(user_id),
                data={"role": role, "request_id": str(grant.id)},
            )
            pending.append({"id": str(grant.id), "role": role})
        else:
            conn.execute(
                text(
                    "insert into memberships (tenant_id, user_id, role)"
                    " values (:tenant, :user, :role) on conflict do nothing"
                ),
                {"tenant": tenant_id, "user": user_id, "role": role},
            )
    if removed or added - {item["role"] for item in pending}:
        # Tokens carry roles; new ones must be fetched to carry the change.
        sessions.revoke_member(conn, tenant_id, user_id, "roles changed")
        record_event(
            conn,
            tenant_id=tenant_id,
            action="member:roles-changed",
            actor_user_id=principal.user_id,
            subject=str(user_id),
            data={
                "added": sorted(added - {p["role"] for p in pending}),
                "removed": sorted(removed),
            },
        )
    return {
        "user_id": str(user_id),
        "roles": _member_roles(conn, tenant_id, user_id),
        "pending": pending,
    }


def _check_seat(request: Request, conn: Connection, tenant_id: uuid.UUID) -> None:
    """Ask the plan, through the guard the app installs, for a seat for one more member."""
    guard = getattr(request.app.state, "seat_guard", None)
    if guard is not None:
        guard(conn, tenant_id=tenant_id)


def _refuse_last_admin(
    conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, removed: set[str]
) -> None:
    if "admin" not in removed:
        return
    others = conn.execute(
        text(
            "select count(*) from memberships where tenant_id = :tenant and role = 'admin'"
            " and user_id <> :user"
        ),
        {"tenant": tenant_id, "user": user_id},
    ).scalar_one()
    if others == 0:
        raise Conflict("the tenant's last admin cannot lose the admin role")


# Routes


@router.get("/members")
def list_members(
    request: Request, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        rows = conn.execute(
            text(
                "select u.id, u.email, array_agg(m.role order by m.role)"
                " from memberships m join users u on u.id = m.user_id"
                " where m.tenant_id = :tenant group by u.id, u.email order by u.email"
            ),
            {"tenant": principal.tenant_id},
        ).all()
    items = [{"user_id": str(r[0]), "email": r[1], "roles": list(r[2])} for r in rows]
    return {"items": items}


@router.post("/members", status_code=201)
def invite_member(
    request: Request, invite: Invite, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    email = invite.email.lower()
    if not EMAIL.match(email):
        raise Unprocessable(f"invalid e-mail address {email!r}")
    roles = _check_roles(request, invite.roles)
    scope = _scope(principal, login_email=email)
    invitation = None
    with scoped_transaction(request.app.state.db.app, scope) as conn:
        row = conn.execute(
            text("select id from users where email = :email"), {"email": email}
        ).first()
        user_id = row[0] if row else uuid.uuid4()
        if row is None:
            conn.execute(
                text("insert into users (id, email, password_hash) values (:id, :email, :hash)"),
                {"id": user_id, "email": email, "hash": UNUSABLE_PASSWORD},
            )
            invitation = _create_invitation(conn, principal, user_id)
        elif _member_roles(conn, principal.tenant_id, user_id):
            raise Conflict("this user is a member already; change their roles with PATCH")
        record_event(
            conn,
            tenant_id=principal.tenant_id,
            action="member:invited",
            actor_user_id=principal.user_id,
            subject=str(user_id),
            data={"roles": roles, "new_user": invitation is not None},
        )
        state = _apply_roles(request, conn, principal, user_id, roles)
    state["email"] = email
    if invitation:
        state["invitation_url"] = (
            f"{request.app.state.settings.issuer}/invitation?token={invitation}"
        )
    return state


def _create_invitation(conn: Connection, principal: Principal, user_id: uuid.UUID) -> str:
    token = store.new_tenant_token(principal.tenant_id)
    conn.execute(
        text(
            "insert into invitations (token_hash, tenant_id, user_id, invited_by, expires_at)"
            " values (:hash, :tenant, :user, :by, now() + make_interval(days => :days))"
        ),
        {
            "hash": store.token_hash(token),
            "tenant": principal.tenant_id,
            "user": user_id,
            "by": principal.user_id,
            "days": INVITATION_DAYS,
        },
    )
    return token


@router.patch("/members/{user_id}")
def change_roles(
    request: Request,
    user_id: uuid.UUID,
    change: RoleChange,
    principal: Principal = require("members:manage"),
) -> dict[str, Any]:
    roles = _check_roles(request, change.roles)
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        if not _member_roles(conn, principal.tenant_id, user_id):
            raise NotFound("no such member")
        return _apply_roles(request, conn, principal, user_id, roles)


@router.delete("/members/{user_id}", status_code=204)
def remove_member(
    request: Request, user_id: uuid.UUID, principal: Principal = require("members:manage")
) -> Response:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        roles = set(_member_roles(conn, principal.tenant_id, user_id))
        # An invitee whose only roles still wait for approval is removed by cancelling them.
        pending = _pending_roles(conn, principal.tenant_id, user_id)
        if not roles and not pending:
            raise NotFound("no such member")
        _refuse_last_admin(conn, principal.tenant_id, user_id, roles)
        conn.execute(
            text("delete from memberships where tenant_id = :tenant and user_id = :user"),
            {"tenant": principal.tenant_id, "user": user_id},
        )
        approvals.cancel_requests(conn, principal.tenant_id, user_id)
        revoked = sessions.revoke_member(conn, principal.tenant_id, user_id, "member removed")
        record_event(
            conn,
            tenant_id=principal.tenant_id,
            action="member:removed",
            actor_user_id=principal.user_id,
            subject=str(user_id),
            data={"roles": sorted(roles), "pending": pending, "families_revoked": revoked},
        )
    return Response(status_code=204)


@router.post("/members/{user_id}/revoke-tokens")
def revoke_member_tokens(
    request: Request, user_id: uuid.UUID, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        if not _member_roles(conn, principal.tenant_id, user_id):
            raise NotFound("no such member")
        revoked = sessions.revoke_member(conn, principal.tenant_id, user_id, "admin revocation")
        record_event(
            conn,
            tenant_id=principal.tenant_id,
            action="tokens:revoked",
            actor_user_id=principal.user_id,
            subject=str(user_id),
            data={"families_revoked": revoked},
        )
    return {"user_id": str(user_id), "families_revoked": revoked}


@router.get("/approvals")
def list_approvals(
    request: Request,
    status: str | None = "pending",
    principal: Principal = require("members:manage"),
) -> dict[str, Any]:
    if status not in (None, "pending", "approved", "rejected", "cancelled"):
        raise Unprocessable("status must be pending, approved, rejected or cancelled")
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        items = approvals.list_requests(conn, principal.tenant_id, status)
    return {"items": [item.as_dict() for item in items]}


@router.get("/approvals/{request_id}")
def read_approval(
    request: Request, request_id: uuid.UUID, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        item = approvals.find_request(conn, principal.tenant_id, request_id)
    if item is None:
        raise NotFound("no such approval request")
    return item.as_dict()


@router.post("/approvals/{request_id}/approve")
def approve(
    request: Request, request_id: uuid.UUID, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    return _decide(request, request_id, principal, approve=True)


@router.post("/approvals/{request_id}/reject")
def reject(
    request: Request, request_id: uuid.UUID, principal: Principal = require("members:manage")
) -> dict[str, Any]:
    return _decide(request, request_id, principal, approve=False)


def _decide(
    request: Request, request_id: uuid.UUID, principal: Principal, *, approve: bool
) -> dict[str, Any]:
    engine = request.app.state.db.app
    try:
        with scoped_transaction(engine, principal.scope()) as conn:
            pending = approvals.find_request(conn, principal.tenant_id, request_id)
            if (
                approve
                and pending
                and not _member_roles(conn, principal.tenant_id, pending.user_id)
            ):
                _check_seat(request, conn, principal.tenant_id)
            decided = approvals.decide(
                conn, principal.tenant_id, request_id, principal.user_id, approve=approve
            )
            if decided is None:
                raise NotFound("no such pending approval request")
            record_event(
                conn,
                tenant_id=principal.tenant_id,
                action="grant:approved" if approve else "grant:rejected",
                actor_user_id=principal.user_id,
                subject=str(decided.user_id),
                data={
                    "role": decided.role,
                    "request_id": str(decided.id),
                    "requested_by": str(decided.requested_by),
                },
            )
    except approvals.SelfApproval as exc:
        with scoped_transaction(engine, principal.scope()) as conn:
            record_event(
                conn,
                tenant_id=principal.tenant_id,
                action="grant:self-decision-refused",
                actor_user_id=principal.user_id,
                data={"request_id": str(request_id)},
            )
        raise Forbidden(str(exc)) from None
    return decided.as_dict()
