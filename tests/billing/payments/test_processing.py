"""Applying stored events: tenants found by metadata or customer, receipts, pause and resume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.billing import events
from stockade.billing.context import BillingContext
from stockade.billing.worker import requeue_open_events
from stockade.runtime import Runtime
from tests.billing.payments.conftest import (
    Subscriber,
    audit_actions,
    event_status,
    plan_of,
    platform_rejections,
    post_stripe,
)
from tests.billing.payments.events import stripe_event
from tests.conftest import Factory


def _event(subscriber: Subscriber, kind: str, *, tenant: bool = True, **fields: object) -> dict:
    return stripe_event(
        kind,
        tenant_id=subscriber.tenant_id if tenant else None,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
        **fields,  # type: ignore[arg-type]
    )


def test_checkout_links_customer_to_tenant(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    post_stripe(client, _event(subscriber, "checkout.session.completed"), webhook_secret)
    drain()

    with runtime.db.owner.connect() as conn:
        linked = conn.execute(
            text("select tenant_id from billing_customers where customer_id = :c"),
            {"c": subscriber.customer},
        ).scalar_one()
    assert linked == subscriber.tenant_id
    assert "checkout:completed" in audit_actions(runtime, subscriber.tenant_id)


def test_event_waits_for_customer_link(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    early = _event(subscriber, "customer.subscription.created", tenant=False)

    post_stripe(client, early, webhook_secret)
    drain()
    waiting = event_status(runtime, str(early["id"]))
    post_stripe(client, _event(subscriber, "checkout.session.completed"), webhook_secret)
    drain()

    assert waiting[0] == "unresolved"
    assert event_status(runtime, str(early["id"]))[0] == "processed"
    assert plan_of(runtime, subscriber.tenant_id) == "pro"


def test_tenant_mismatch_is_rejected(
    client: TestClient,
    runtime: Runtime,
    factory: Factory,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    post_stripe(client, _event(subscriber, "checkout.session.completed"), webhook_secret)
    drain()
    other_tenant, _ = factory.tenant("pay")
    hijack = stripe_event(
        "customer.subscription.created",
        tenant_id=other_tenant,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
    )

    post_stripe(client, hijack, webhook_secret)
    drain()

    status, outcome = event_status(runtime, str(hijack["id"]))
    assert status == "rejected"
    assert "is linked to" in outcome
    assert plan_of(runtime, other_tenant) == "free"
    assert platform_rejections(runtime)[-1]["stage"] == "apply"


def test_unknown_tenant_is_rejected(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = stripe_event(
        "customer.subscription.created",
        tenant_id=uuid.uuid4(),
        customer=subscriber.customer,
        subscription=subscriber.subscription,
    )

    post_stripe(client, event, webhook_secret)
    drain()

    status, outcome = event_status(runtime, str(event["id"]))
    assert status == "rejected"
    assert "names no tenant" in outcome


def test_paid_invoice_issues_one_receipt(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    post_stripe(client, _event(subscriber, "customer.subscription.created"), webhook_secret)
    paid = _event(subscriber, "invoice.paid", invoice=f"in_test{uuid.uuid4().hex[:12]}")
    again = dict(paid, id=f"evt_test{uuid.uuid4().hex[:16]}")

    post_stripe(client, paid, webhook_secret)
    post_stripe(client, again, webhook_secret)
    drain()

    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text("select plan, amount_paid, currency from billing_receipts where tenant_id = :t"),
            {"t": subscriber.tenant_id},
        ).all()
    assert [tuple(row) for row in rows] == [("pro", 4900, "usd")]
    assert audit_actions(runtime, subscriber.tenant_id).count("receipt:issued") == 1


def test_failed_payment_is_audited(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    post_stripe(client, _event(subscriber, "customer.subscription.created"), webhook_secret)
    post_stripe(client, _event(subscriber, "invoice.payment_failed"), webhook_secret)
    drain()

    assert "payment:failed" in audit_actions(runtime, subscriber.tenant_id)
    with runtime.db.owner.connect() as conn:
        failed_at = conn.execute(
            text("select payment_failed_at from billing_subscriptions where subscription_id = :s"),
            {"s": subscriber.subscription},
        ).scalar_one()
    assert failed_at is not None


def test_pause_holds_and_resume_applies(
    client: TestClient,
    runtime: Runtime,
    billing: BillingContext,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = _event(subscriber, "customer.subscription.created")
    with runtime.db.owner.begin() as conn:
        events.set_paused(conn, True)
    try:
        response = post_stripe(client, event, webhook_secret)
        drain()
        held = event_status(runtime, str(event["id"]))
    finally:
        with runtime.db.owner.begin() as conn:
            events.set_paused(conn, False)
    requeued = requeue_open_events(runtime.db.owner, pending_age=timedelta(0))
    drain()

    assert response.status_code == 200
    assert held[0] == "pending"
    assert requeued >= 1
    assert event_status(runtime, str(event["id"]))[0] == "processed"
    assert plan_of(runtime, subscriber.tenant_id) == "pro"


def test_same_second_deletion_wins(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    now = int(time.time())
    deleted = _event(subscriber, "customer.subscription.deleted", created=now)
    updated = _event(subscriber, "customer.subscription.updated", created=now)

    post_stripe(client, deleted, webhook_secret)
    drain()
    post_stripe(client, updated, webhook_secret)
    drain()

    assert event_status(runtime, str(updated["id"]))[0] == "ignored"
    assert plan_of(runtime, subscriber.tenant_id) == "free"


def test_absurd_amount_is_rejected(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    post_stripe(client, _event(subscriber, "customer.subscription.created"), webhook_secret)
    paid = _event(subscriber, "invoice.paid", invoice=f"in_test{uuid.uuid4().hex[:12]}")
    paid["data"]["object"]["amount_paid"] = 2**63

    response = post_stripe(client, paid, webhook_secret)
    drain()

    status, outcome = event_status(runtime, str(paid["id"]))
    assert response.status_code == 200
    assert status == "rejected"
    assert "amount_paid" in outcome


def test_wrong_object_kind_is_rejected(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
) -> None:
    event = _event(subscriber, "customer.subscription.updated")
    event["data"]["object"]["object"] = "invoice"

    response = post_stripe(client, event, webhook_secret)
    drain()

    status, outcome = event_status(runtime, str(event["id"]))
    assert response.status_code == 200
    assert status == "rejected"
    assert "'invoice', not 'subscription'" in outcome
    assert plan_of(runtime, subscriber.tenant_id) != "pro"
