"""``/api/v1/tickets``: list, create, read, change and delete a tenant's tickets."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from stockade.access.guard import Principal, require
from stockade.db import scoped_transaction
from stockade.errors import NotFound, Unprocessable
from stockade.tickets import store

router = APIRouter(prefix="/api/v1/tickets", tags=["tickets"])


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, so reject it here as bad input.
    if "\x00" in value:
        raise ValueError("text must not contain the NUL character")
    return value


Status = Literal["open", "pending", "closed"]
Title = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
Body = Annotated[str, Field(max_length=20_000), AfterValidator(_no_nul)]


class TicketIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Title
    body: Body = ""
    status: Status = "open"


class TicketChange(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Title | None = None
    body: Body | None = None
    status: Status | None = None


class Ticket(BaseModel):
    id: uuid.UUID
    title: str
    body: str
    status: Status
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class TicketList(BaseModel):
    items: list[Ticket]


@router.get("", response_model=TicketList)
def list_tickets(
    request: Request,
    principal: Principal = require("tickets:read"),
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    status: Status | None = None,
) -> dict[str, object]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        items = store.list_tickets(conn, principal.tenant_id, limit=limit, status=status)
    return {"items": items}


@router.post("", response_model=Ticket, status_code=201)
def create_ticket(
    request: Request, ticket: TicketIn, principal: Principal = require("tickets:write")
) -> dict[str, object]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        return store.create_ticket(
            conn, principal.tenant_id, principal.user_id, ticket.model_dump()
        )


@router.get("/{ticket_id}", response_model=Ticket)
def read_ticket(
    request: Request, ticket_id: uuid.UUID, principal: Principal = require("tickets:read")
) -> dict[str, object]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        ticket = store.get_ticket(conn, principal.tenant_id, ticket_id)
    if ticket is None:
        raise NotFound("no such ticket")
    return ticket


@router.patch("/{ticket_id}", response_model=Ticket)
def change_ticket(
    request: Request,
    ticket_id: uuid.UUID,
    change: TicketChange,
    principal: Principal = require("tickets:write"),
) -> dict[str, object]:
    changes = change.model_dump(exclude_unset=True)
    if not changes:
        raise Unprocessable("name at least one of title, body, status")
    if any(value is None for value in changes.values()):
        raise Unprocessable("title, body and status cannot be null")
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        ticket = store.update_ticket(conn, principal.tenant_id, ticket_id, changes)
    if ticket is None:
        raise NotFound("no such ticket")
    return ticket


@router.delete("/{ticket_id}", status_code=204)
def delete_ticket(
    request: Request, ticket_id: uuid.UUID, principal: Principal = require("tickets:write")
) -> Response:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        deleted = store.delete_ticket(conn, principal.tenant_id, ticket_id)
    if not deleted:
        raise NotFound("no such ticket")
    return Response(status_code=204)
