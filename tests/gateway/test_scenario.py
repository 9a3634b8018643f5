"""End to end: a signed Stripe downgrade caps the next calls; an outage is served from cache.

The tenant subscribes to ``pro`` through a signed webhook and makes as many calls as the
``free`` plan allows in a day. The provider then goes down, and a question asked before
is answered from the cache. A billing admin's downgrade to ``free`` arrives as a signed
``customer.subscription.updated`` event; once the worker applies it, the very next
call, cached or not, gets 402 with ``Retry-After`` until midnight UTC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from stockade.billing.context import BillingContext
from stockade.billing.worker import QUEUE, create_worker_app
from stockade.gateway.service import Gateway
from stockade.keys import Secret
from stockade.runtime import Runtime
from tests.billing.payments.conftest import UNREACHABLE_STRIPE, plan_of, post_stripe
from tests.billing.payments.events import new_ids, stripe_event
from tests.gateway.conftest import Caller, ask, ledger_rows
from tests.gateway.upstream import MockUpstream


@pytest.fixture
def apply_webhooks(runtime: Runtime) -> Callable[[], None]:
    """Return a function that runs the queued billing jobs, as the worker would."""
    context = BillingContext.from_runtime(runtime)
    settings = dataclasses.replace(context.settings, stripe_api_base=UNREACHABLE_STRIPE)
    context = dataclasses.replace(context, settings=settings)

    def run() -> None:
        app = create_worker_app(context, periodic=False)

        async def work() -> None:
            async with app.open_async():
                await app.run_worker_async(
                    queues=[QUEUE],
                    wait=False,
                    listen_notify=False,
                    install_signal_handlers=False,
                    additional_context={"billing": context},
                )

        asyncio.run(work())

    return run


def test_downgrade_caps_calls_and_outage_uses_cache(
    client: TestClient,
    runtime: Runtime,
    gateway: Gateway,
    upstream: MockUpstream,
    apply_webhooks: Callable[[], None],
    make_caller: Callable[..., Caller],
) -> None:
    caller = make_caller()
    webhook_secret = f"whsec_{secrets.token_urlsafe(24).replace('-', 'A')}"
    runtime.keystore.set_secret(
        "stripe-webhook-secret", Secret(webhook_secret), overlap=timedelta(0)
    )
    ids = new_ids()
    subscribed = stripe_event(
        "customer.subscription.created",
        tenant_id=caller.tenant_id,
        price="price_pro",
        created=int(time.time()) - 60,
        **ids,
    )
    assert post_stripe(client, subscribed, webhook_secret).status_code == 200
    apply_webhooks()
    assert plan_of(runtime, caller.tenant_id) == "pro"

    free_calls = runtime.plans.by_name("free").llm_calls_per_day
    for index in range(free_calls):
        answered = ask(client, caller, f"question {index}")
        assert answered.status_code == 200, answered.text

    upstream.mode = "error"
    during_outage = ask(client, caller, "question 7")
    assert during_outage.status_code == 200
    assert during_outage.headers["Stockade-Fallback"] == "cache"
    assert during_outage.json()["choices"][0]["message"]["content"] == "Echo: question 7"

    downgraded = stripe_event(
        "customer.subscription.updated", tenant_id=caller.tenant_id, price="price_free", **ids
    )
    assert post_stripe(client, downgraded, webhook_secret).status_code == 200
    apply_webhooks()
    assert plan_of(runtime, caller.tenant_id) == "free"

    capped = ask(client, caller, "question 8")
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert capped.status_code == 402
    assert capped.json()["error"]["type"] == "budget_exceeded"
    assert capped.json()["error"]["kind"] == "llm_call"
    assert (
        abs(int(capped.headers["Retry-After"]) - math.ceil((midnight - now).total_seconds())) <= 2
    )
    assert "Stockade-Fallback" not in capped.headers
    assert upstream.calls == free_calls + 2
    assert len(ledger_rows(runtime, caller.tenant_id, "llm_call")) == free_calls + 1
