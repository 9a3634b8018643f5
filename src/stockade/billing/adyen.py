"""Adyen standard notifications: the JSON body and the items Stockade stores.

A body (https://docs.adyen.com/development-resources/webhooks/webhook-types) is
``{"live": "false", "notificationItems": [{"NotificationRequestItem": {...}}, ...]}``.
Each item is signed on its own (``signatures.verify_adyen``) and stored as its own
event. Adyen may deliver an item more than once and names no event id, so an item is
identified by its ``pspReference``, ``eventCode`` and ``success`` together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockade.billing.events import IncomingEvent

# Adyen batches at most a handful of items; more than this is not a delivery of theirs.
MAX_ITEMS = 100
_REQUIRED_TEXT = ("pspReference", "eventCode", "merchantAccountCode", "merchantReference")


class MalformedNotification(ValueError):
    """The body is not an Adyen notification of the expected shape; the message names the field."""


@dataclass(frozen=True)
class NotificationItem:
    fields: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return f"{self.fields['pspReference']}:{self.fields['eventCode']}:{self.fields['success']}"

    def incoming(self) -> IncomingEvent:
        """Return the event to store: the item itself, as compact JSON."""
        body = json.dumps(self.fields, separators=(",", ":"), sort_keys=True).encode()
        return IncomingEvent(
            provider="adyen",
            event_id=self.event_id,
            event_type=str(self.fields["eventCode"]),
            body=body,
            provider_created_at=_event_date(self.fields.get("eventDate")),
            object_id=str(self.fields["pspReference"]),
        )


def parse_notification(body: bytes) -> list[NotificationItem]:
    """Parse a notification body into its items, checking each field the signature covers."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedNotification("the body is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise MalformedNotification("the body is not a JSON object")
    wrapped = document.get("notificationItems")
    if not isinstance(wrapped, list) or not 1 <= len(wrapped) <= MAX_ITEMS:
        raise MalformedNotification(f"'notificationItems' is not a list of 1 to {MAX_ITEMS} items")
    return [_item(entry, index) for index, entry in enumerate(wrapped)]


def _item(entry: object, index: int) -> NotificationItem:
    where = f"notificationItems[{index}].NotificationRequestItem"
    item = entry.get("NotificationRequestItem") if isinstance(entry, dict) else None
    if not isinstance(item, dict):
        raise MalformedNotification(f"'{where}' is not a JSON object")
    for name in _REQUIRED_TEXT:
        value = item.get(name)
        if not isinstance(value, str) or not value or len(value) > 200:
            raise MalformedNotification(f"'{where}.{name}' is not a string of 1 to 200 characters")
    if item.get("success") not in ("true", "false"):
        raise MalformedNotification(f'\'{where}.success\' is not "true" or "false"')
    original = item.get("originalReference", "")
    if not isinstance(original, str):
        raise MalformedNotification(f"'{where}.originalReference' is not a string")
    amount = item.get("amount")
    if not isinstance(amount, dict):
        raise MalformedNotification(f"'{where}.amount' is not a JSON object")
    value = amount.get("value")
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedNotification(f"'{where}.amount.value' is not a whole number")
    currency = amount.get("currency")
    if not isinstance(currency, str) or len(currency) != 3:
        raise MalformedNotification(f"'{where}.amount.currency' is not a currency code")
    return NotificationItem(item)


def _event_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
