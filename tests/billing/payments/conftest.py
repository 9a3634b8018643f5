"""Fixtures for the payment tests: secrets made at run time, a subscriber, a queue drain."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from stockade.billing.context import BillingContext
from stockade.billing.worker import QUEUE, create_worker_app
from stockade.keys import LocalKeyStore, Secret
from stockade.runtime import Runtime
from tests.billing.payments.events import encode, new_ids, signature
from tests.billing.payments.stripe_stub import StripeStub
from tests.conftest import Factory

# A closed loopback port: any call to "Stripe" from a context built here fails locally.
UNREACHABLE_STRIPE = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Subscriber:
    tenant_id: uuid.UUID
    tenant: str
    customer: str
    subscription: str


@pytest.fixture
def billing(runtime: Runtime) -> BillingContext:
    context = BillingContext.from_runtime(runtime)
    settings = dataclasses.replace(context.settings, stripe_api_base=UNREACHABLE_STRIPE)
    return dataclasses.replace(context, settings=settings)


@pytest.fixture
def webhook_secret(runtime: Runtime) -> str:
    """Make a new endpoint secret that alone verifies (earlier ones retire at once)."""
    value = f"whsec_{secrets.token_urlsafe(24).replace('-', 'A')}"
    runtime.keystore.set_secret("stripe-webhook-secret", Secret(value), overlap=timedelta(0))
    return value


@pytest.fixture
def subscriber(factory: Factory) -> Subscriber:
    tenant_id, name = factory.tenant("pay")
    ids = new_ids()
    return Subscriber(tenant_id, name, ids["customer"], ids["subscription"])


@pytest.fixture
def drain(billing: BillingContext) -> Callable[[], None]:
    """Return a function that runs the billing jobs waiting in the queue, then returns."""

    def run() -> None:
        app = create_worker_app(billing, periodic=False)

        async def work() -> None:
            async with app.open_async():
                await app.run_worker_async(
                    queues=[QUEUE],
                    wait=False,
                    listen_notify=False,
                    install_signal_handlers=False,
                    additional_context={"billing": billing},
                )

        asyncio.run(work())

    return run


def post_stripe(
    client: TestClient, event: dict[str, Any], secret: str, *, timestamp: int | None = None
) -> httpx.Response:
    body = encode(event)
    return client.post(
        "/webhooks/stripe",
        content=body,
        headers={**signature(secret, body, timestamp), "Content-Type": "application/json"},
    )


def plan_of(runtime: Runtime, tenant_id: uuid.UUID) -> str:
    with runtime.db.owner.connect() as conn:
        plan = conn.execute(text("select plan from tenants where id = :t"), {"t": tenant_id})
        return str(plan.scalar_one())


def event_status(runtime: Runtime, event_id: str, provider: str = "stripe") -> tuple[str, str]:
    with runtime.db.owner.connect() as conn:
        row = conn.execute(
            text(
                "select status, coalesce(outcome, '') from payment_events"
                " where provider = :p and event_id = :e"
            ),
            {"p": provider, "e": event_id},
        ).one()
    return str(row[0]), str(row[1])


def audit_actions(runtime: Runtime, tenant_id: uuid.UUID) -> list[str]:
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text("select action from audit_events where tenant_id = :t order by seq"),
            {"t": tenant_id},
        )
        return [str(row[0]) for row in rows]


def platform_rejections(runtime: Runtime) -> list[dict[str, Any]]:
    with runtime.db.owner.connect() as conn:
        rows = conn.execute(
            text(
                "select data from platform_audit_events where action = 'webhook:rejected'"
                " order by seq"
            )
        )
        return [dict(row[0]) for row in rows]


@pytest.fixture
def rejection_audit_unthrottled(client: TestClient) -> Iterator[None]:
    """Record every webhook rejection, so each test can find its own audit event."""
    from stockade.billing.webhooks import WebhookIntake

    app: Any = client.app
    intake = getattr(app.state, "webhook_intake", None)
    if intake is None:
        intake = WebhookIntake(app.state.db.app, app.state.keystore)
        app.state.webhook_intake = intake
    previous = intake.audit.interval
    intake.audit.interval = 0.0
    yield
    intake.audit.interval = previous


@pytest.fixture
def stripe_stub() -> Iterator[StripeStub]:
    stub = StripeStub(api_key=f"sk_test_{secrets.token_hex(16)}").start()
    yield stub
    stub.stop()


@pytest.fixture
def stripe_billing(
    billing: BillingContext, stripe_stub: StripeStub, tmp_path: Path
) -> BillingContext:
    """Return a context with its own key store, containing the stub's API key, and the stub's URL.

    The session's key store never gets a Stripe API key, so nothing else can call out.
    """
    keystore = LocalKeyStore(tmp_path / "stripe-keys")
    keystore.set_secret("stripe-api-key", Secret(stripe_stub.api_key))
    settings = dataclasses.replace(billing.settings, stripe_api_base=stripe_stub.url)
    return dataclasses.replace(billing, settings=settings, keystore=keystore)
