"""Build Stripe webhook deliveries from the fixtures in ``fixtures/``.

The fixture files are written for these tests with fake ids. Their shapes follow
Stripe's API reference and the typed objects of the ``stripe`` Python package (16.1,
API version 2026-10-28.endive). They are the Event envelope, a Subscription with its
billing period on the items, a Checkout Session, and an Invoice that names its
subscription under ``parent.subscription_details``. The ``created`` and ``deleted``
subscription events and ``invoice.payment_failed`` reuse the object shapes of the files
they are made from.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from stockade.billing.signatures import stripe_header
from stockade.keys import Secret

FIXTURES = Path(__file__).parent / "fixtures"
_SOURCES = {
    "customer.subscription.created": "customer.subscription.updated.json",
    "customer.subscription.updated": "customer.subscription.updated.json",
    "customer.subscription.deleted": "customer.subscription.updated.json",
    "checkout.session.completed": "checkout.session.completed.json",
    "invoice.paid": "invoice.paid.json",
    "invoice.payment_failed": "invoice.paid.json",
}


def new_ids() -> dict[str, str]:
    """Fresh fake ids for one subscriber, so tests never share Stripe objects."""
    tag = secrets.token_hex(6)
    return {"customer": f"cus_test{tag}", "subscription": f"sub_test{tag}"}


def stripe_event(
    kind: str,
    *,
    tenant_id: uuid.UUID | None,
    customer: str,
    subscription: str,
    price: str = "price_pro",
    status: str | None = None,
    created: int | None = None,
    invoice: str | None = None,
) -> dict[str, Any]:
    """Return an event of type ``kind`` for this subscriber, built from its fixture."""
    event: dict[str, Any] = copy.deepcopy(json.loads((FIXTURES / _SOURCES[kind]).read_text()))
    event["id"] = f"evt_test{secrets.token_hex(10)}"
    event["type"] = kind
    event["created"] = created if created is not None else int(time.time())
    obj = event["data"]["object"]
    tenant = str(tenant_id) if tenant_id else None
    if kind.startswith("customer.subscription."):
        _subscription(obj, tenant, customer, subscription, price, status, kind)
    elif kind == "checkout.session.completed":
        obj["customer"] = customer
        obj["subscription"] = subscription
        obj["client_reference_id"] = tenant
        obj["metadata"] = {"tenant_id": tenant} if tenant else {}
    else:
        _invoice(obj, tenant, customer, subscription, price, invoice, kind)
    return event


def subscription_object(
    *,
    tenant_id: uuid.UUID | None,
    customer: str,
    subscription: str,
    price: str = "price_pro",
    status: str = "active",
) -> dict[str, Any]:
    """Return a subscription as the API lists it (the object inside an event)."""
    event = stripe_event(
        "customer.subscription.updated",
        tenant_id=tenant_id,
        customer=customer,
        subscription=subscription,
        price=price,
        status=status,
    )
    obj: dict[str, Any] = event["data"]["object"]
    return obj


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, indent=2).encode()


def signature(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Return the Stripe-Signature header for ``body`` under ``secret``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Stripe-Signature": stripe_header(Secret(secret), stamp, body)}


def _subscription(
    obj: dict[str, Any],
    tenant: str | None,
    customer: str,
    subscription: str,
    price: str,
    status: str | None,
    kind: str,
) -> None:
    obj["id"] = subscription
    obj["customer"] = customer
    obj["metadata"] = {"tenant_id": tenant} if tenant else {}
    if kind == "customer.subscription.deleted":
        obj["status"] = status or "canceled"
        obj["canceled_at"] = obj["ended_at"] = int(time.time())
    else:
        obj["status"] = status or "active"
    item = obj["items"]["data"][0]
    item["subscription"] = subscription
    item["price"]["id"] = price
    item["plan"]["id"] = price


def _invoice(
    obj: dict[str, Any],
    tenant: str | None,
    customer: str,
    subscription: str,
    price: str,
    invoice: str | None,
    kind: str,
) -> None:
    obj["id"] = invoice or f"in_test{secrets.token_hex(8)}"
    obj["customer"] = customer
    details = obj["parent"]["subscription_details"]
    details["subscription"] = subscription
    details["metadata"] = {"tenant_id": tenant} if tenant else {}
    obj["lines"]["data"][0]["pricing"]["price_details"]["price"] = price
    if kind == "invoice.payment_failed":
        obj["status"] = "open"
        obj["amount_paid"] = 0
        obj["status_transitions"]["paid_at"] = None
