"""Ticket queries. Each runs inside a tenant-scoped transaction and also filters by the
tenant id itself, so a query that lost its RLS policy would still not cross tenants."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    MetaData,
    String,
    Table,
    Uuid,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

tickets = Table(
    "tickets",
    MetaData(),
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("tenant_id", Uuid, nullable=False),
    Column("title", String, nullable=False),
    Column("body", String, nullable=False),
    Column("status", String, nullable=False),
    Column("created_by", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
_PUBLIC = [column for column in tickets.columns if column.name != "tenant_id"]


def list_tickets(
    conn: Connection, tenant_id: uuid.UUID, *, limit: int, status: str | None
) -> list[dict[str, Any]]:
    query = select(*_PUBLIC).where(tickets.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(tickets.c.status == status)
    query = query.order_by(tickets.c.created_at.desc(), tickets.c.id).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


def get_ticket(
    conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID
) -> dict[str, Any] | None:
    query = select(*_PUBLIC).where(tickets.c.tenant_id == tenant_id, tickets.c.id == ticket_id)
    row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def create_ticket(
    conn: Connection, tenant_id: uuid.UUID, author: uuid.UUID | None, fields: dict[str, Any]
) -> dict[str, Any]:
    statement = (
        insert(tickets).values(tenant_id=tenant_id, created_by=author, **fields).returning(*_PUBLIC)
    )
    return dict(conn.execute(statement).one()._mapping)


def update_ticket(
    conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Apply ``changes`` (a subset of title, body, status); None when no such ticket."""
    statement = (
        update(tickets)
        .where(tickets.c.tenant_id == tenant_id, tickets.c.id == ticket_id)
        .values(**changes, updated_at=func.now())
        .returning(*_PUBLIC)
    )
    row = conn.execute(statement).first()
    return dict(row._mapping) if row else None


def delete_ticket(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> bool:
    statement = delete(tickets).where(tickets.c.tenant_id == tenant_id, tickets.c.id == ticket_id)
    return conn.execute(statement).rowcount == 1
