"""``POST /webhooks/adyen``: HMAC-verified notification items, each stored once."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stockade.billing.signatures import adyen_signature
from stockade.keys import Secret
from stockade.runtime import Runtime
from tests.billing.payments.conftest import event_status, platform_rejections

pytestmark = pytest.mark.usefixtures("rejection_audit_unthrottled")


@pytest.fixture
def hmac_key(runtime: Runtime) -> str:
    key = secrets.token_hex(32).upper()
    runtime.keystore.set_secret("adyen-hmac-key", Secret(key), overlap=timedelta(0))
    return key


def _item(key: str, **fields: Any) -> dict[str, Any]:
    """A notification item as Adyen documents it, signed with ``key``."""
    item: dict[str, Any] = {
        "additionalData": {},
        "amount": {"currency": "EUR", "value": 4900},
        "eventCode": "AUTHORISATION",
        "eventDate": "2026-01-01T00:00:00+01:00",
        "merchantAccountCode": "StockadeTestAccount",
        "merchantReference": f"order-{secrets.token_hex(4)}",
        "operations": ["CANCEL", "CAPTURE", "REFUND"],
        "originalReference": "",
        "paymentMethod": "visa",
        "pspReference": secrets.token_hex(8).upper(),
        "reason": "033899:1111:03/2030",
        "success": "true",
        **fields,
    }
    item["additionalData"]["hmacSignature"] = adyen_signature(Secret(key), item)
    return item


def _body(*items: dict[str, Any]) -> bytes:
    wrapped = [{"NotificationRequestItem": item} for item in items]
    return json.dumps({"live": "false", "notificationItems": wrapped}).encode()


def _event_id(item: dict[str, Any]) -> str:
    return f"{item['pspReference']}:{item['eventCode']}:{item['success']}"


def test_signed_notification_is_accepted(
    client: TestClient, runtime: Runtime, hmac_key: str, drain: Callable[[], None]
) -> None:
    first, second = _item(hmac_key), _item(hmac_key, eventCode="CAPTURE")

    response = client.post("/webhooks/adyen", content=_body(first, second))
    drain()

    assert response.status_code == 200
    assert response.text == "[accepted]"
    assert event_status(runtime, _event_id(first), "adyen") == ("processed", "recorded")
    assert event_status(runtime, _event_id(second), "adyen")[0] == "processed"


def test_repeated_notification_stored_once(
    client: TestClient, runtime: Runtime, hmac_key: str
) -> None:
    item = _item(hmac_key)

    answers = [client.post("/webhooks/adyen", content=_body(item)) for _ in range(3)]

    assert [answer.text for answer in answers] == ["[accepted]"] * 3
    from sqlalchemy import text

    with runtime.db.owner.connect() as conn:
        stored = conn.execute(
            text("select count(*) from payment_events where provider = 'adyen' and event_id = :e"),
            {"e": _event_id(item)},
        ).scalar_one()
    assert stored == 1


def test_forged_hmac_is_refused(client: TestClient, runtime: Runtime, hmac_key: str) -> None:
    item = _item(hmac_key)
    item["amount"]["value"] = 1

    response = client.post("/webhooks/adyen", content=_body(item))

    assert response.status_code == 400
    assert response.json()["reason"] == "signature-mismatch"
    assert platform_rejections(runtime)[-1]["provider"] == "adyen"


def test_one_forged_item_refuses_batch(client: TestClient, runtime: Runtime, hmac_key: str) -> None:
    good = _item(hmac_key)
    forged = _item(secrets.token_hex(32))

    response = client.post("/webhooks/adyen", content=_body(good, forged))

    assert response.status_code == 400
    with pytest.raises(Exception, match="No row was found"):
        event_status(runtime, _event_id(good), "adyen")


def test_rotated_keys_both_verify(client: TestClient, runtime: Runtime, hmac_key: str) -> None:
    new_key = secrets.token_hex(32)
    runtime.keystore.set_secret("adyen-hmac-key", Secret(new_key), overlap=timedelta(hours=24))

    old_signed = client.post("/webhooks/adyen", content=_body(_item(hmac_key)))
    new_signed = client.post("/webhooks/adyen", content=_body(_item(new_key)))

    assert old_signed.status_code == 200
    assert new_signed.status_code == 200


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"notificationItems": []}', "list of 1 to 100 items"),
        (
            json.dumps(
                {"notificationItems": [{"NotificationRequestItem": {"pspReference": 7}}]}
            ).encode(),
            "pspReference",
        ),
    ],
)
def test_malformed_notification_gets_400(
    client: TestClient, hmac_key: str, document: bytes, message: str
) -> None:
    response = client.post("/webhooks/adyen", content=document)

    assert response.status_code == 400
    assert message in response.json()["detail"]
