"""Reconciliation against a local server speaking Stripe's subscription listing."""

from __future__ import annotations

import time
from collections.abc import Callable

from croniter import croniter
from fastapi.testclient import TestClient

from stockade.billing.context import BillingContext
from stockade.billing.reconcile import ReconcileFailed, reconcile
from stockade.billing.worker import RECONCILE_CRON, RECONCILE_TASK, create_worker_app
from stockade.runtime import Runtime
from tests.billing.payments.conftest import (
    Subscriber,
    audit_actions,
    plan_of,
    post_stripe,
)
from tests.billing.payments.events import stripe_event, subscription_object
from tests.billing.payments.stripe_stub import StripeStub
from tests.conftest import Factory


def _listed(subscriber: Subscriber, **fields: str) -> dict[str, object]:
    return subscription_object(
        tenant_id=subscriber.tenant_id,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
        **fields,
    )


def test_lost_downgrade_is_repaired(
    client: TestClient,
    runtime: Runtime,
    webhook_secret: str,
    subscriber: Subscriber,
    drain: Callable[[], None],
    stripe_stub: StripeStub,
    stripe_billing: BillingContext,
) -> None:
    upgrade = stripe_event(
        "customer.subscription.created",
        tenant_id=subscriber.tenant_id,
        customer=subscriber.customer,
        subscription=subscriber.subscription,
        price="price_enterprise",
        created=int(time.time()) - 120,
    )
    post_stripe(client, upgrade, webhook_secret)
    drain()
    assert plan_of(runtime, subscriber.tenant_id) == "enterprise"
    # Stripe now has the downgrade, and its webhook never arrives.
    stripe_stub.subscriptions[subscriber.subscription] = _listed(subscriber, price="price_pro")

    report = reconcile(stripe_billing)

    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    assert report.repaired == 1
    assert any(subscriber.subscription in repair for repair in report.repairs)
    actions = audit_actions(runtime, subscriber.tenant_id)
    assert actions.count("subscription:repaired") == 1
    assert actions.count("plan:changed") == 2


def test_lost_cancellation_returns_free_plan(
    runtime: Runtime,
    subscriber: Subscriber,
    stripe_stub: StripeStub,
    stripe_billing: BillingContext,
) -> None:
    stripe_stub.subscriptions[subscriber.subscription] = _listed(subscriber)
    reconcile(stripe_billing)
    assert plan_of(runtime, subscriber.tenant_id) == "pro"
    time.sleep(1.1)  # the next listing must be a later second than the first
    stripe_stub.subscriptions[subscriber.subscription] = _listed(subscriber, status="canceled")

    reconcile(stripe_billing)

    assert plan_of(runtime, subscriber.tenant_id) == "free"


def test_matching_state_is_left_alone(
    runtime: Runtime,
    subscriber: Subscriber,
    stripe_stub: StripeStub,
    stripe_billing: BillingContext,
) -> None:
    stripe_stub.subscriptions[subscriber.subscription] = _listed(subscriber)
    reconcile(stripe_billing)

    second = reconcile(stripe_billing)

    assert second.repaired == 0
    assert second.unchanged >= 1
    assert audit_actions(runtime, subscriber.tenant_id).count("subscription:repaired") == 1


def test_listing_reads_every_page(
    factory: Factory, stripe_stub: StripeStub, stripe_billing: BillingContext, runtime: Runtime
) -> None:
    from tests.billing.payments.events import new_ids

    tenants = []
    for _ in range(3):
        tenant_id, name = factory.tenant("pay")
        ids = new_ids()
        subscriber = Subscriber(tenant_id, name, ids["customer"], ids["subscription"])
        stripe_stub.subscriptions[subscriber.subscription] = _listed(subscriber)
        tenants.append(tenant_id)

    import stockade.billing.reconcile as module

    original, module.PAGE_SIZE = module.PAGE_SIZE, 2
    try:
        report = reconcile(stripe_billing)
    finally:
        module.PAGE_SIZE = original

    assert report.listed == 3
    assert [plan_of(runtime, tenant) for tenant in tenants] == ["pro"] * 3
    pages = [path for method, path in stripe_stub.requests if path.startswith("/v1/subscriptions")]
    assert len(pages) == 2


def test_unknown_customer_is_left_unresolved(
    subscriber: Subscriber, stripe_stub: StripeStub, stripe_billing: BillingContext
) -> None:
    orphan = subscription_object(
        tenant_id=None, customer=subscriber.customer, subscription=subscriber.subscription
    )
    stripe_stub.subscriptions[subscriber.subscription] = orphan

    report = reconcile(stripe_billing)

    assert report.unresolved == 1
    assert report.repaired == 0


def test_wrong_api_key_fails_clearly(
    stripe_stub: StripeStub, stripe_billing: BillingContext
) -> None:
    stripe_stub.api_key = "sk_test_another_key"

    try:
        reconcile(stripe_billing)
    except ReconcileFailed as exc:
        assert "AuthenticationError" in str(exc)
    else:
        raise AssertionError("reconcile did not fail on a rejected API key")


def test_reconcile_runs_every_two_minutes(billing: BillingContext) -> None:
    app = create_worker_app(billing)
    schedules = {
        task.task.name: task.cron for task in app.periodic_registry.periodic_tasks.values()
    }

    assert schedules[RECONCILE_TASK] == RECONCILE_CRON
    start = 1_767_225_600
    schedule = croniter(RECONCILE_CRON, start)
    runs = [schedule.get_next(float) for _ in range(3)]
    assert max(later - earlier for earlier, later in zip([start, *runs], runs, strict=False)) <= 300
