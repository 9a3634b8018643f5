"""The store of webhook events: each stored once by provider and event id, applied once.

A route stores an event with ``store_event`` and, in the same transaction, defers the
job that applies it, so an event is never stored without its job. The worker locks the
event's row with ``lock_open_event`` and marks it with ``finish_event`` in the
transaction that changes the tenant's state. A second delivery or a second job then
finds the row finished and changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, text

OPEN_STATUSES = ("pending", "unresolved")

_INSERT = text(
    "insert into payment_events (provider, event_id, event_type, provider_created_at,"
    " api_version, object_id, customer_id, body, status, outcome)"
    " values (:provider, :event_id, :event_type, :provider_created_at, :api_version,"
    " :object_id, :customer_id, :body, :status, :outcome)"
    # The only unique key besides the generated id is (provider, event_id).
    " on conflict do nothing"
)
_COLUMNS = "id, provider, event_id, event_type, body, status, customer_id, received_at"
_LOAD = text(
    f"select {_COLUMNS} from payment_events where provider = :provider and event_id = :event_id"  # noqa: S608 - fixed column list
)
_LOCK_OPEN = text(
    f"select {_COLUMNS} from payment_events where provider = :provider"  # noqa: S608 - fixed column list
    " and event_id = :event_id and status in ('pending', 'unresolved') for update"
)
_FINISH = text(
    "update payment_events set status = :status, outcome = :outcome, tenant_id = :tenant_id,"
    " processed_at = case when :status in ('pending', 'unresolved') then null else now() end"
    " where id = :id"
)
_OPEN_EVENTS = text(
    "select provider, event_id from payment_events"
    " where (status = 'pending' and received_at < now() - :pending_age)"
    " or (status = 'unresolved' and received_at > now() - :unresolved_window)"
    " order by received_at limit :limit"
)
_UNRESOLVED_FOR_CUSTOMER = text(
    "select provider, event_id from payment_events"
    " where status = 'unresolved' and customer_id = :customer order by received_at limit :limit"
)
_COUNT_REQUEUE = text(
    "update payment_events set requeued = requeued + 1"
    " where provider = :provider and event_id = :event_id"
)
_PAUSED = text("select paused from payment_webhook_control")
_PAUSED_SHARED = text("select paused from payment_webhook_control for share")
_SET_PAUSED = text(
    "update payment_webhook_control set paused = :paused, changed_at = now()"
    " where paused <> :paused"
)


@dataclass(frozen=True)
class IncomingEvent:
    """A verified event as a route stores it."""

    provider: str
    event_id: str
    event_type: str
    body: bytes
    provider_created_at: datetime | None = None
    api_version: str | None = None
    object_id: str | None = None
    customer_id: str | None = None
    # 'pending' to apply, or 'ignored' / 'rejected' to keep without applying.
    status: str = "pending"
    outcome: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    provider: str
    event_id: str
    event_type: str
    body: bytes
    status: str
    customer_id: str | None
    received_at: datetime

    @property
    def key(self) -> EventKey:
        return EventKey(self.provider, self.event_id)


@dataclass(frozen=True)
class EventKey:
    """The identity of an event in a job: the provider and the provider's event id."""

    provider: str
    event_id: str


def store_event(conn: Connection, event: IncomingEvent) -> bool:
    """Insert ``event`` unless its id is stored already; return True if it was new."""
    result = conn.execute(
        _INSERT,
        {
            "provider": event.provider,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "provider_created_at": event.provider_created_at,
            "api_version": event.api_version,
            "object_id": event.object_id,
            "customer_id": event.customer_id,
            "body": event.body,
            "status": event.status,
            "outcome": event.outcome,
        },
    )
    return result.rowcount == 1


def load_event(conn: Connection, key: EventKey) -> StoredEvent | None:
    row = conn.execute(_LOAD, {"provider": key.provider, "event_id": key.event_id}).first()
    return _stored(row) if row else None


def lock_open_event(conn: Connection, key: EventKey) -> StoredEvent | None:
    """Lock the event's row until the transaction ends; None if it is already finished."""
    row = conn.execute(_LOCK_OPEN, {"provider": key.provider, "event_id": key.event_id}).first()
    return _stored(row) if row else None


def finish_event(
    conn: Connection,
    event: StoredEvent,
    status: str,
    outcome: str,
    tenant_id: uuid.UUID | None = None,
) -> None:
    """Record what applying ``event`` did: 'processed', 'ignored', 'rejected' or 'unresolved'."""
    conn.execute(
        _FINISH,
        {"id": event.id, "status": status, "outcome": outcome[:500], "tenant_id": tenant_id},
    )


def open_events(
    conn: Connection,
    *,
    pending_age: timedelta,
    unresolved_window: timedelta,
    limit: int,
) -> list[EventKey]:
    """List events still to apply: pending for at least ``pending_age``, or unresolved."""
    rows = conn.execute(
        _OPEN_EVENTS,
        {"pending_age": pending_age, "unresolved_window": unresolved_window, "limit": limit},
    ).all()
    return [EventKey(provider, event_id) for provider, event_id in rows]


def unresolved_for_customer(conn: Connection, customer_id: str, *, limit: int) -> list[EventKey]:
    rows = conn.execute(_UNRESOLVED_FOR_CUSTOMER, {"customer": customer_id, "limit": limit}).all()
    return [EventKey(provider, event_id) for provider, event_id in rows]


def count_requeue(conn: Connection, key: EventKey) -> None:
    conn.execute(_COUNT_REQUEUE, {"provider": key.provider, "event_id": key.event_id})


def webhooks_paused(conn: Connection, *, hold: bool = False) -> bool:
    """Return whether processing is paused; with ``hold``, lock the flag until commit.

    ``set_paused`` waits for every transaction that locked the flag, so once a pause
    returns, no event is being applied.
    """
    return bool(conn.execute(_PAUSED_SHARED if hold else _PAUSED).scalar_one())


def set_paused(conn: Connection, paused: bool) -> bool:
    """Pause or resume processing; return False if it already was so."""
    return conn.execute(_SET_PAUSED, {"paused": paused}).rowcount == 1


def _stored(row: Row[Any]) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        provider=row.provider,
        event_id=row.event_id,
        event_type=row.event_type,
        body=bytes(row.body),
        status=row.status,
        customer_id=row.customer_id,
        received_at=row.received_at,
    )
