"""Stripe events: strict parsing of the raw body and of the objects Stockade reads.

Shapes follow Stripe's API reference for the API version that the installed ``stripe``
package names (``EXPECTED_API_VERSION``). In that version a subscription's billing
period is on its items, and an invoice names its subscription under
``parent.subscription_details``. Older versions kept both at the top level, and the
readers below accept those places too.

Every reader raises ``MalformedEvent`` with the path of the first field of a wrong type,
so a bad payload is rejected with 400 or stored as rejected, never a server error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe

EXPECTED_API_VERSION: str = stripe.api_version

CHECKOUT_COMPLETED = "checkout.session.completed"
SUBSCRIPTION_CREATED = "customer.subscription.created"
SUBSCRIPTION_UPDATED = "customer.subscription.updated"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
SUBSCRIPTION_EVENTS = frozenset({SUBSCRIPTION_CREATED, SUBSCRIPTION_UPDATED, SUBSCRIPTION_DELETED})
HANDLED_TYPES = frozenset(
    {CHECKOUT_COMPLETED, INVOICE_PAID, INVOICE_PAYMENT_FAILED, *SUBSCRIPTION_EVENTS}
)

_MAX_ID_LENGTH = 255
# Amounts are whole minor units. This bound is far above any real invoice and far
# below the bigint column's limit, so an absurd value is rejected, not retried forever.
_MAX_AMOUNT = 10**15
# Unix times from 2001 to 2286; anything else in `created` is not a Stripe timestamp.
_MIN_TIME, _MAX_TIME = 1_000_000_000, 9_999_999_999


class MalformedEvent(ValueError):
    """The body is not a Stripe event of the expected shape; the message names the field."""


@dataclass(frozen=True)
class StripeEvent:
    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    object: Mapping[str, Any]

    @property
    def object_id(self) -> str | None:
        value = self.object.get("id")
        return value if isinstance(value, str) else None

    @property
    def customer_id(self) -> str | None:
        return _optional_id(self.object, "customer", "data.object.customer")


@dataclass(frozen=True)
class SubscriptionState:
    """The fields of a Stripe subscription that Stockade keeps."""

    subscription_id: str
    customer_id: str
    status: str
    price_ids: tuple[str, ...]
    tenant_hint: str | None
    current_period_end: int | None
    cancel_at_period_end: bool


@dataclass(frozen=True)
class CheckoutCompletion:
    session_id: str
    mode: str
    customer_id: str | None
    subscription_id: str | None
    tenant_hint: str | None


@dataclass(frozen=True)
class InvoiceRecord:
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    tenant_hint: str | None
    amount_paid: int
    currency: str
    price_ids: tuple[str, ...]
    period_start: int | None
    period_end: int | None
    paid_at: int | None


def parse_event(body: bytes) -> StripeEvent:
    """Parse a raw webhook body into a ``StripeEvent``, checking each field it relies on."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise MalformedEvent("the body is not a JSON object")
    if document.get("object") != "event":
        raise MalformedEvent("'object' is not \"event\"")
    event_id = _identifier(document.get("id"), "id")
    event_type = _identifier(document.get("type"), "type")
    created = _timestamp(document.get("created"), "created")
    api_version = document.get("api_version")
    if api_version is not None and not isinstance(api_version, str):
        raise MalformedEvent("'api_version' is not a string")
    livemode = document.get("livemode", False)
    if not isinstance(livemode, bool):
        raise MalformedEvent("'livemode' is not a boolean")
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("'data.object' is not a JSON object")
    return StripeEvent(event_id, event_type, created, api_version, livemode, data["object"])


def _expect_object(document: Mapping[str, Any], kind: str) -> None:
    if document.get("object", kind) != kind:
        raise MalformedEvent(f"the event's object is {document.get('object')!r}, not {kind!r}")


def subscription_state(subscription: Mapping[str, Any]) -> SubscriptionState:
    """Read a subscription object, from an event or from the API."""
    where = "subscription"
    _expect_object(subscription, "subscription")
    items = _list_data(subscription.get("items"), f"{where}.items")
    price_ids: list[str] = []
    period_ends: list[int] = []
    for index, item in enumerate(items):
        item_where = f"{where}.items.data[{index}]"
        if not isinstance(item, dict):
            raise MalformedEvent(f"'{item_where}' is not a JSON object")
        price_ids.append(_price_id(item, item_where))
        end = _optional_timestamp(
            item.get("current_period_end"), f"{item_where}.current_period_end"
        )
        if end is not None:
            period_ends.append(end)
    top_end = _optional_timestamp(
        subscription.get("current_period_end"), f"{where}.current_period_end"
    )
    cancel_at_period_end = subscription.get("cancel_at_period_end", False)
    if not isinstance(cancel_at_period_end, bool):
        raise MalformedEvent(f"'{where}.cancel_at_period_end' is not a boolean")
    return SubscriptionState(
        subscription_id=_identifier(subscription.get("id"), f"{where}.id"),
        customer_id=_required_id(subscription, "customer", f"{where}.customer"),
        status=_identifier(subscription.get("status"), f"{where}.status"),
        price_ids=tuple(price_ids),
        tenant_hint=_metadata_tenant(subscription.get("metadata"), f"{where}.metadata"),
        current_period_end=max(period_ends) if period_ends else top_end,
        cancel_at_period_end=cancel_at_period_end,
    )


def checkout_completion(session: Mapping[str, Any]) -> CheckoutCompletion:
    where = "checkout.session"
    _expect_object(session, "checkout.session")
    hint = _metadata_tenant(session.get("metadata"), f"{where}.metadata")
    reference = session.get("client_reference_id")
    if reference is not None and not isinstance(reference, str):
        raise MalformedEvent(f"'{where}.client_reference_id' is not a string")
    return CheckoutCompletion(
        session_id=_identifier(session.get("id"), f"{where}.id"),
        mode=_identifier(session.get("mode"), f"{where}.mode"),
        customer_id=_optional_id(session, "customer", f"{where}.customer"),
        subscription_id=_optional_id(session, "subscription", f"{where}.subscription"),
        tenant_hint=hint or reference,
    )


def invoice_record(invoice: Mapping[str, Any]) -> InvoiceRecord:
    where = "invoice"
    _expect_object(invoice, "invoice")
    amount = invoice.get("amount_paid")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= _MAX_AMOUNT:
        raise MalformedEvent(f"'{where}.amount_paid' is not a whole number from 0 to 10**15")
    currency = invoice.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise MalformedEvent(f"'{where}.currency' is not a three-letter currency code")

    subscription_id, tenant_hint = _invoice_subscription(invoice, where)
    lines = _list_data(invoice.get("lines", {"data": []}), f"{where}.lines")
    price_ids = []
    for index, line in enumerate(lines):
        if not isinstance(line, dict):
            raise MalformedEvent(f"'{where}.lines.data[{index}]' is not a JSON object")
        price = _line_price(line, f"{where}.lines.data[{index}]")
        if price is not None:
            price_ids.append(price)

    transitions = invoice.get("status_transitions") or {}
    if not isinstance(transitions, dict):
        raise MalformedEvent(f"'{where}.status_transitions' is not a JSON object")
    return InvoiceRecord(
        invoice_id=_identifier(invoice.get("id"), f"{where}.id"),
        customer_id=_required_id(invoice, "customer", f"{where}.customer"),
        subscription_id=subscription_id,
        tenant_hint=tenant_hint,
        amount_paid=amount,
        currency=currency.lower(),
        price_ids=tuple(price_ids),
        period_start=_optional_timestamp(invoice.get("period_start"), f"{where}.period_start"),
        period_end=_optional_timestamp(invoice.get("period_end"), f"{where}.period_end"),
        paid_at=_optional_timestamp(
            transitions.get("paid_at"), f"{where}.status_transitions.paid_at"
        ),
    )


def parse_tenant_hint(hint: str | None) -> uuid.UUID | None:
    """Return the tenant id that ``metadata.tenant_id`` names, or None if it names none."""
    if hint is None:
        return None
    try:
        return uuid.UUID(hint)
    except ValueError:
        raise MalformedEvent("'metadata.tenant_id' is not a UUID") from None


# Field readers


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("the body is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise MalformedEvent("the body nests JSON too deeply") from None
    except ValueError as exc:
        raise MalformedEvent(f"the body is not JSON: {exc.args[0].split(':')[0]}") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _identifier(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"'{where}' is not a non-empty string")
    if len(value) > _MAX_ID_LENGTH or not value.isprintable():
        raise MalformedEvent(f"'{where}' is longer than {_MAX_ID_LENGTH} or not printable")
    return value


def _timestamp(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"'{where}' is not a Unix time in whole seconds")
    if not _MIN_TIME <= value <= _MAX_TIME:
        raise MalformedEvent(f"'{where}' is not a plausible Unix time")
    return value


def _optional_timestamp(value: object, where: str) -> int | None:
    return None if value is None else _timestamp(value, where)


def _expandable_id(value: object, where: str) -> str | None:
    """Return the id of an expandable field, which is an id or an expanded object."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    return _identifier(value, where)


def _optional_id(document: Mapping[str, Any], key: str, where: str) -> str | None:
    return _expandable_id(document.get(key), where)


def _required_id(document: Mapping[str, Any], key: str, where: str) -> str:
    found = _expandable_id(document.get(key), where)
    if found is None:
        raise MalformedEvent(f"'{where}' is missing")
    return found


def _list_data(value: object, where: str) -> list[Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise MalformedEvent(f"'{where}.data' is not a list")
    data: list[Any] = value["data"]
    return data


def _metadata_tenant(metadata: object, where: str) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise MalformedEvent(f"'{where}' is not a JSON object")
    hint = metadata.get("tenant_id")
    if hint is None:
        return None
    return _identifier(hint, f"{where}.tenant_id")


def _price_id(item: Mapping[str, Any], where: str) -> str:
    price = item.get("price") or item.get("plan")
    found = _expandable_id(price, f"{where}.price")
    if found is None:
        raise MalformedEvent(f"'{where}.price' is missing")
    return found


def _line_price(line: Mapping[str, Any], where: str) -> str | None:
    pricing = line.get("pricing")
    if isinstance(pricing, dict):
        details = pricing.get("price_details")
        if isinstance(details, dict):
            return _expandable_id(details.get("price"), f"{where}.pricing.price_details.price")
    return _expandable_id(line.get("price"), f"{where}.price")


def _invoice_subscription(invoice: Mapping[str, Any], where: str) -> tuple[str | None, str | None]:
    parent = invoice.get("parent")
    if isinstance(parent, dict) and isinstance(parent.get("subscription_details"), dict):
        details = parent["subscription_details"]
        subscription = _expandable_id(
            details.get("subscription"), f"{where}.parent.subscription_details.subscription"
        )
        hint = _metadata_tenant(
            details.get("metadata"), f"{where}.parent.subscription_details.metadata"
        )
        return subscription, hint
    return _optional_id(invoice, "subscription", f"{where}.subscription"), None
