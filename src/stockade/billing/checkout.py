"""Stripe Checkout: a hosted page where a billing admin subscribes the tenant to a plan.

Stockade sends the plan's price and the tenant id, and keeps only the ids Stripe
returns; card details never reach it. The tenant id goes into the session's and the
subscription's ``metadata.tenant_id``, which is how the webhooks find the tenant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import stripe

from stockade.billing.plans import Plan


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class CheckoutFailed(RuntimeError):
    """Stripe rejected the request or did not respond; the message is safe to show."""


def create_checkout_session(
    client: stripe.StripeClient,
    *,
    plan: Plan,
    tenant_id: uuid.UUID,
    customer_id: str | None,
    success_url: str,
    cancel_url: str,
) -> CheckoutSession:
    """Create a subscription-mode Checkout Session for ``plan`` and return its id and URL."""
    metadata = {"tenant_id": str(tenant_id), "plan": plan.name}
    params: dict[str, object] = {
        "mode": "subscription",
        "line_items": [{"price": plan.stripe_price, "quantity": 1}],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(tenant_id),
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
    }
    if customer_id:
        params["customer"] = customer_id
    try:
        session = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise CheckoutFailed(
            f"Stripe did not create the checkout session ({type(exc).__name__},"
            f" HTTP status {exc.http_status or 'none'})"
        ) from exc
    if not session.id or not session.url:
        raise CheckoutFailed("Stripe returned a checkout session without an id or URL")
    return CheckoutSession(id=session.id, url=session.url)
