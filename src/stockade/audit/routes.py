"""``/api/v1/audit/events``: a tenant's audit events, newest first, for ``audit:read``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from stockade.access.guard import Principal, require
from stockade.audit import trail
from stockade.db import scoped_transaction

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class Event(BaseModel):
    seq: int
    occurred_at: datetime
    action: str
    actor_user_id: uuid.UUID | None
    subject: str | None
    client_address: str | None
    request_id: str | None
    trace_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class EventPage(BaseModel):
    items: list[Event]
    # The ``before`` value that reads the next, older page, or null on the last page.
    next_before: int | None


@router.get("/events", response_model=EventPage)
def list_events(
    request: Request,
    principal: Principal = require("audit:read"),
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, description="Return events with a lower seq")] = None,
) -> dict[str, object]:
    with scoped_transaction(request.app.state.db.app, principal.scope()) as conn:
        events = trail.list_events(conn, principal.tenant_id, limit=limit, before=before)
    # A second check behind RLS: every row must belong to the caller's tenant.
    events = [event for event in events if event.tenant_id == principal.tenant_id]
    next_before = events[-1].seq if len(events) == limit and events[-1].seq > 1 else None
    return {"items": [_item(event) for event in events], "next_before": next_before}


def _item(event: trail.AuditEvent) -> dict[str, object]:
    return {
        "seq": event.seq,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "actor_user_id": event.actor_user_id,
        "subject": event.subject,
        "client_address": event.client_address,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "data": dict(event.data),
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
    }
