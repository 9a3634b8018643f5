"""Ticket queries. Each runs inside a tenant-scoped transaction and also filters by the
tenant id itself, so a query that lost its RLS policy would still not cross tenants."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, text

_COLUMNS = "id, title, body, status, created_by, created_at, updated_at"


def _as_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def list_tickets(
    conn: Connection, tenant_id: uuid.UUID, *, limit: int, status: str | None
) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            f"select {_COLUMNS} from tickets where tenant_id = :tenant"  # noqa: S608 - constant
            " and (cast(:status as text) is null or status = :status)"
            " order by created_at desc, id limit :limit"
        ),
        {"tenant": tenant_id, "status": status, "limit": limit},
    ).all()
    return [_as_dict(row) for row in rows]


def get_ticket(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(
        text(f"select {_COLUMNS} from tickets where tenant_id = :tenant and id = :id"),  # noqa: S608
        {"tenant": tenant_id, "id": ticket_id},
    ).first()
    return _as_dict(row) if row else None


def create_ticket(
    conn: Connection, tenant_id: uuid.UUID, author: uuid.UUID | None, fields: dict[str, Any]
) -> dict[str, Any]:
    row = conn.execute(
        text(
            "insert into tickets (tenant_id, title, body, status, created_by)"
            " values (:tenant, :title, :body, :status, :author)"
            f" returning {_COLUMNS}"
        ),
        {"tenant": tenant_id, "author": author, **fields},
    ).one()
    return _as_dict(row)


def update_ticket(
    conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID, changes: dict[str, Any]
) -> dict[str, Any] | None:
    # Each column keeps its value unless the change names it; no SQL is built from input.
    row = conn.execute(
        text(
            "update tickets set"
            " title = case when :set_title then :title else title end,"
            " body = case when :set_body then :body else body end,"
            " status = case when :set_status then :status else status end,"
            " updated_at = now()"
            f" where tenant_id = :tenant and id = :id returning {_COLUMNS}"
        ),
        {
            "tenant": tenant_id,
            "id": ticket_id,
            "set_title": "title" in changes,
            "title": changes.get("title"),
            "set_body": "body" in changes,
            "body": changes.get("body"),
            "set_status": "status" in changes,
            "status": changes.get("status"),
        },
    ).first()
    return _as_dict(row) if row else None


def delete_ticket(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> bool:
    result = conn.execute(
        text("delete from tickets where tenant_id = :tenant and id = :id"),
        {"tenant": tenant_id, "id": ticket_id},
    )
    return result.rowcount == 1
