"""Grant approvals: a privileged role is granted only when a second admin approves.

The database enforces the rule too: a decision by the requester, or by the member who
would receive the role, violates a check constraint on ``grant_requests``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from stockade.access.policy import Policy

_COLUMNS = "id, user_id, role, requested_by, status, decided_by, decided_at, created_at"


@dataclass(frozen=True)
class GrantRequest:
    id: uuid.UUID
    user_id: uuid.UUID
    role: str
    requested_by: uuid.UUID
    status: str
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class SelfApproval(Exception):
    """The decider asked for the grant, or would receive it."""


def needs_approval(policy: Policy, role: str) -> bool:
    return role in policy.privileged_roles


def request_grant(
    conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, requested_by: uuid.UUID
) -> GrantRequest:
    """Open a pending request, or return the one already pending for that member and role."""
    row = conn.execute(
        text(
            "insert into grant_requests (tenant_id, user_id, role, requested_by)"
            " values (:tenant, :user, :role, :by)"
            " on conflict (tenant_id, user_id, role) where status = 'pending' do nothing"
            " returning id"
        ),
        {"tenant": tenant_id, "user": user_id, "role": role, "by": requested_by},
    ).first()
    if row is None:
        row = conn.execute(
            text(
                "select id from grant_requests where tenant_id = :tenant and user_id = :user"
                " and role = :role and status = 'pending'"
            ),
            {"tenant": tenant_id, "user": user_id, "role": role},
        ).one()
    found = find_request(conn, tenant_id, row[0])
    assert found is not None
    return found


def find_request(
    conn: Connection, tenant_id: uuid.UUID, request_id: uuid.UUID
) -> GrantRequest | None:
    row = conn.execute(
        text(f"select {_COLUMNS} from grant_requests where tenant_id = :tenant and id = :id"),  # noqa: S608 - constant columns
        {"tenant": tenant_id, "id": request_id},
    ).first()
    return GrantRequest(*row) if row else None


def list_requests(conn: Connection, tenant_id: uuid.UUID, status: str | None) -> list[GrantRequest]:
    rows = conn.execute(
        text(
            f"select {_COLUMNS} from grant_requests where tenant_id = :tenant"  # noqa: S608
            " and (cast(:status as text) is null or status = :status)"
            " order by created_at desc limit 200"
        ),
        {"tenant": tenant_id, "status": status},
    ).all()
    return [GrantRequest(*row) for row in rows]


def decide(
    conn: Connection,
    tenant_id: uuid.UUID,
    request_id: uuid.UUID,
    decider: uuid.UUID,
    *,
    approve: bool,
) -> GrantRequest | None:
    """Approve or reject a pending request; None when there is no such pending request.

    Raises ``SelfApproval`` when the decider asked for the grant or would receive it.
    """
    pending = find_request(conn, tenant_id, request_id)
    if pending is None or pending.status != "pending":
        return None
    if decider in (pending.requested_by, pending.user_id):
        raise SelfApproval("a grant is decided by an admin other than its requester and grantee")
    decided = conn.execute(
        text(
            "update grant_requests set status = :status, decided_by = :decider,"
            " decided_at = now() where tenant_id = :tenant and id = :id and status = 'pending'"
            " returning id"
        ),
        {
            "status": "approved" if approve else "rejected",
            "decider": decider,
            "tenant": tenant_id,
            "id": request_id,
        },
    ).first()
    if decided is None:
        return None  # another admin decided it first
    if approve:
        conn.execute(
            text(
                "insert into memberships (tenant_id, user_id, role) values (:tenant, :user, :role)"
                " on conflict do nothing"
            ),
            {"tenant": tenant_id, "user": pending.user_id, "role": pending.role},
        )
    return find_request(conn, tenant_id, request_id)


def cancel_requests(conn: Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    conn.execute(
        text(
            "update grant_requests set status = 'cancelled', decided_at = now()"
            " where tenant_id = :tenant and user_id = :user and status = 'pending'"
        ),
        {"tenant": tenant_id, "user": user_id},
    )
