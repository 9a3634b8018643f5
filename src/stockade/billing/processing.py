"""Apply one stored event exactly once.

``apply_event`` finds the event's tenant, then opens one transaction, scoped to that
tenant on the owner role, that locks the event's row, checks that it is still open and
that processing is not paused, changes the tenant's state, and marks the event finished.
A crash anywhere before the commit leaves the event open and the state unchanged, and
the next job applies it; a second job for a finished event finds nothing to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, text

from stockade.audit.trail import record_event, record_platform_event
from stockade.billing import events, stripe_events, subscriptions
from stockade.billing.context import BillingContext
from stockade.billing.events import EventKey, StoredEvent
from stockade.billing.stripe_events import MalformedEvent, StripeEvent
from stockade.billing.subscriptions import TenantConflict
from stockade.db import Scope, scoped_transaction

log = structlog.get_logger(__name__)

_INSERT_RECEIPT = text(
    "insert into billing_receipts (tenant_id, provider, invoice_id, subscription_id,"
    " customer_id, plan, amount_paid, currency, period_start, period_end, paid_at)"
    " values (:tenant, 'stripe', :invoice, :subscription, :customer, :plan, :amount,"
    " :currency, to_timestamp(:period_start), to_timestamp(:period_end), to_timestamp(:paid_at))"
    " on conflict (invoice_id) do nothing returning id"
)
_SUBSCRIPTION_PLAN = text(
    "select plan from billing_subscriptions where subscription_id = :subscription"
)
_PAYMENT_FAILED = text(
    "update billing_subscriptions set payment_failed_at = to_timestamp(:at)"
    " where subscription_id = :subscription"
    " and (payment_failed_at is null or payment_failed_at < to_timestamp(:at))"
)
_PAYMENT_SUCCEEDED = text(
    "update billing_subscriptions set payment_failed_at = null"
    " where subscription_id = :subscription and payment_failed_at <= to_timestamp(:at)"
)


@dataclass(frozen=True)
class Result:
    """The result of applying an event: its new status and a short outcome for its row."""

    status: str
    outcome: str


@dataclass(frozen=True)
class _Target:
    """The tenant hint, customer and subscription that decide an event's tenant."""

    hint: str | None
    customer_id: str | None
    subscription_id: str | None


Handler = Callable[[Connection, BillingContext, uuid.UUID, StripeEvent], Result]


def apply_event(context: BillingContext, key: EventKey) -> Result | None:
    """Apply a stored event once; return how it was finished, or None if it was not."""
    with context.owner.connect() as conn:
        stored = events.load_event(conn, key)
        paused = events.webhooks_paused(conn)
    if stored is None or stored.status not in events.OPEN_STATUSES:
        return None
    if paused:
        log.info("payment_event_held", provider=key.provider, event_id=key.event_id)
        return None
    if stored.provider != "stripe":
        return _finish_without_tenant(context, stored, Result("processed", "recorded"))

    try:
        event = stripe_events.parse_event(stored.body)
        target = _target(event)
        resolution = subscriptions.resolve_tenant(
            context.owner,
            hint=target.hint,
            customer_id=target.customer_id,
            subscription_id=target.subscription_id,
        )
    except (MalformedEvent, TenantConflict) as exc:
        return _reject(context, stored, str(exc))
    if resolution.tenant_id is None:
        return _finish_without_tenant(
            context, stored, Result("unresolved", "no tenant is linked to this customer yet")
        )
    return _apply_for_tenant(context, stored, event, resolution.tenant_id)


def _apply_for_tenant(
    context: BillingContext, stored: StoredEvent, event: StripeEvent, tenant_id: uuid.UUID
) -> Result | None:
    handler = _HANDLERS[event.type]
    try:
        with scoped_transaction(context.owner, Scope(tenant_id=tenant_id)) as conn:
            if events.lock_open_event(conn, stored.key) is None:
                return None
            if events.webhooks_paused(conn, hold=True):
                return None
            result = handler(conn, context, tenant_id, event)
            events.finish_event(conn, stored, result.status, result.outcome, tenant_id)
    except (MalformedEvent, TenantConflict) as exc:
        return _reject(context, stored, str(exc))
    log.info(
        "payment_event_applied",
        event_id=event.id,
        type=event.type,
        tenant_id=str(tenant_id),
        status=result.status,
        outcome=result.outcome,
    )
    if event.type == stripe_events.CHECKOUT_COMPLETED and event.customer_id:
        _requeue_waiting(context, event.customer_id)
    return result


# Handlers: each runs in the tenant's transaction and returns the event's outcome.


def _subscription_changed(
    conn: Connection, context: BillingContext, tenant_id: uuid.UUID, event: StripeEvent
) -> Result:
    state = stripe_events.subscription_state(event.object)
    applied = subscriptions.apply_subscription(
        conn,
        context.catalog,
        tenant_id,
        state,
        observed_at=event.created,
        rank=subscriptions.EVENT_RANKS[event.type],
        source=f"{event.type} {event.id}",
    )
    if not applied.changed and applied.outcome != "no change":
        return Result("ignored", applied.outcome)
    return Result("processed", applied.outcome)


def _checkout_completed(
    conn: Connection, context: BillingContext, tenant_id: uuid.UUID, event: StripeEvent
) -> Result:
    completion = stripe_events.checkout_completion(event.object)
    if completion.customer_id is None:
        return Result("ignored", f"checkout session {completion.session_id} has no customer")
    subscriptions.link_customer(conn, tenant_id, completion.customer_id)
    record_event(
        conn,
        tenant_id=tenant_id,
        action="checkout:completed",
        subject=completion.session_id,
        data={"customer": completion.customer_id, "subscription": completion.subscription_id},
    )
    return Result("processed", f"customer {completion.customer_id} linked")


def _invoice_paid(
    conn: Connection, context: BillingContext, tenant_id: uuid.UUID, event: StripeEvent
) -> Result:
    invoice = stripe_events.invoice_record(event.object)
    plan = None
    if invoice.subscription_id:
        plan = conn.execute(
            _SUBSCRIPTION_PLAN, {"subscription": invoice.subscription_id}
        ).scalar_one_or_none()
        conn.execute(
            _PAYMENT_SUCCEEDED, {"subscription": invoice.subscription_id, "at": event.created}
        )
    receipt_id = conn.execute(
        _INSERT_RECEIPT,
        {
            "tenant": tenant_id,
            "invoice": invoice.invoice_id,
            "subscription": invoice.subscription_id,
            "customer": invoice.customer_id,
            "plan": plan,
            "amount": invoice.amount_paid,
            "currency": invoice.currency,
            "period_start": invoice.period_start,
            "period_end": invoice.period_end,
            "paid_at": invoice.paid_at or event.created,
        },
    ).scalar_one_or_none()
    if receipt_id is None:
        return Result("processed", f"receipt for invoice {invoice.invoice_id} exists")
    record_event(
        conn,
        tenant_id=tenant_id,
        action="receipt:issued",
        subject=str(receipt_id),
        data={
            "invoice": invoice.invoice_id,
            "amount_paid": invoice.amount_paid,
            "currency": invoice.currency,
        },
    )
    return Result("processed", f"receipt {receipt_id} issued")


def _invoice_payment_failed(
    conn: Connection, context: BillingContext, tenant_id: uuid.UUID, event: StripeEvent
) -> Result:
    invoice = stripe_events.invoice_record(event.object)
    if invoice.subscription_id:
        conn.execute(
            _PAYMENT_FAILED, {"subscription": invoice.subscription_id, "at": event.created}
        )
    record_event(
        conn,
        tenant_id=tenant_id,
        action="payment:failed",
        subject=invoice.invoice_id,
        data={"subscription": invoice.subscription_id},
    )
    return Result("processed", f"payment of invoice {invoice.invoice_id} failed")


_HANDLERS: dict[str, Handler] = {
    stripe_events.CHECKOUT_COMPLETED: _checkout_completed,
    stripe_events.SUBSCRIPTION_CREATED: _subscription_changed,
    stripe_events.SUBSCRIPTION_UPDATED: _subscription_changed,
    stripe_events.SUBSCRIPTION_DELETED: _subscription_changed,
    stripe_events.INVOICE_PAID: _invoice_paid,
    stripe_events.INVOICE_PAYMENT_FAILED: _invoice_payment_failed,
}


# Helpers


def _target(event: StripeEvent) -> _Target:
    if event.type in stripe_events.SUBSCRIPTION_EVENTS:
        state = stripe_events.subscription_state(event.object)
        return _Target(state.tenant_hint, state.customer_id, state.subscription_id)
    if event.type == stripe_events.CHECKOUT_COMPLETED:
        completion = stripe_events.checkout_completion(event.object)
        return _Target(completion.tenant_hint, completion.customer_id, None)
    if event.type in (stripe_events.INVOICE_PAID, stripe_events.INVOICE_PAYMENT_FAILED):
        invoice = stripe_events.invoice_record(event.object)
        return _Target(invoice.tenant_hint, invoice.customer_id, invoice.subscription_id)
    raise MalformedEvent(f"event type {event.type!r} is not handled")


def _finish_without_tenant(
    context: BillingContext, stored: StoredEvent, result: Result
) -> Result | None:
    with scoped_transaction(context.owner, Scope()) as conn:
        if events.lock_open_event(conn, stored.key) is None:
            return None
        if events.webhooks_paused(conn, hold=True):
            return None
        events.finish_event(conn, stored, result.status, result.outcome)
    log.info(
        "payment_event_finished",
        provider=stored.provider,
        event_id=stored.event_id,
        status=result.status,
        outcome=result.outcome,
    )
    return result


def _reject(context: BillingContext, stored: StoredEvent, reason: str) -> Result | None:
    result = _finish_without_tenant(context, stored, Result("rejected", reason))
    if result is not None:
        log.warning(
            "payment_event_rejected",
            provider=stored.provider,
            event_id=stored.event_id,
            reason=reason,
        )
        record_platform_event(
            context.owner,
            action="webhook:rejected",
            subject=f"{stored.provider}:{stored.event_id}",
            data={"provider": stored.provider, "stage": "apply", "reason": reason[:300]},
        )
    return result


def _requeue_waiting(context: BillingContext, customer_id: str) -> None:
    """Defer jobs for the customer's events that waited for this link."""
    from stockade.billing.worker import requeue  # the worker module imports this one

    with context.owner.connect() as conn:
        waiting = events.unresolved_for_customer(conn, customer_id, limit=100)
    if waiting:
        requeue(context.owner, waiting)
